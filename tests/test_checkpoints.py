"""Checkpoints and reused artifacts are trusted only when they are intact and of the same inputs (issue: long runs
that never lie): a content checksum on every safetensors file segclip writes, pass keys over the options, texts,
labels and statistics that decide the numbers, image lists by name and size, and --overwrite recomputing."""
from __future__ import annotations

import pytest
import torch
from test_distributed import write_set

from segclip.analysis.common import pass_inputs, statistics_for
from segclip.analysis.reconstruct import ReconstructConfig
from segclip.analysis.stream import images_digest, run_pass
from segclip.analysis.units import Embeddings
from segclip.io import atomic_save_tensors, read_tensors
from segclip.models import load_model


def flip_two_bytes(path, offset_from_end=64):
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x10
    data[-offset_from_end - 7] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_damaged_file_is_not_used(tmp_path, caplog):
    path = atomic_save_tensors(tmp_path / "a.safetensors", {"x": torch.arange(100.0)}, {"key": "k"})
    assert read_tensors(path)[1] == {"key": "k"}  # the checksum is checked and not handed out
    flip_two_bytes(path, 40)
    assert read_tensors(path) is None and "damaged" in caplog.text


class CrashAt(Embeddings):
    def __init__(self, count, dim, at):
        super().__init__(count, dim)
        self.at = at

    def update(self, trace, first):
        if first == self.at:
            raise RuntimeError("crash")
        super().update(trace, first)


def test_a_damaged_checkpoint_is_discarded_and_recomputed(tmp_path, caplog):
    model = load_model()
    paths = write_set(tmp_path / "images", 8)
    reference = Embeddings(8, model.info.embed_dim)
    run_pass(model, paths, reference, key={"kind": "e"}, batch_size=2, progress=False)
    checkpoint = tmp_path / "run.partial.safetensors"
    with pytest.raises(RuntimeError, match="crash"):
        run_pass(model, paths, CrashAt(8, model.info.embed_dim, at=6), key={"kind": "e"}, batch_size=2,
                 checkpoint=checkpoint, checkpoint_every=0, progress=False)
    saved = read_tensors(checkpoint)
    assert saved is not None and int(saved[1]["done"]) > 0  # a resumable checkpoint of the first batches
    flip_two_bytes(checkpoint)
    again = Embeddings(8, model.info.embed_dim)
    resumed = run_pass(model, paths, again, key={"kind": "e"}, batch_size=2, checkpoint=checkpoint,
                       progress=False)
    assert resumed == 0 and "damaged" in caplog.text  # nothing taken from the damaged file
    torch.testing.assert_close(again.values, reference.values)


def test_pass_inputs_follow_everything_that_decides_the_numbers(tmp_path):
    (tmp_path / "labelled" / "a").mkdir(parents=True)
    config = ReconstructConfig(images=tmp_path / "labelled", out=tmp_path / "o")
    texts, labels = torch.randn(3, 8, dtype=torch.float64), torch.arange(5)
    base = pass_inputs(config, texts, labels)
    assert pass_inputs(ReconstructConfig(images=tmp_path / "labelled", out=tmp_path / "elsewhere", devices=1,
                                         progress=False, overwrite=True), texts, labels) == base  # run-only options
    names = tmp_path / "names.txt"
    names.write_text("a\tan apple\n")
    assert pass_inputs(ReconstructConfig(images=tmp_path / "labelled", out=tmp_path / "o", class_names=names),
                       texts, labels) != base
    assert pass_inputs(ReconstructConfig(images=tmp_path / "labelled", out=tmp_path / "o", pc_samples="all"),
                       texts, labels) != base
    assert pass_inputs(config, texts + 1e-3, labels) != base  # other class texts (a fixed names file)
    stats = tmp_path / "s.safetensors"
    stats.write_bytes(b"one")
    with_stats = pass_inputs(ReconstructConfig(images=tmp_path / "labelled", out=tmp_path / "o", statistics=stats),
                             texts, labels)
    stats.write_bytes(b"two")  # the same path, other contents
    assert pass_inputs(ReconstructConfig(images=tmp_path / "labelled", out=tmp_path / "o", statistics=stats),
                       texts, labels) != with_stats


def test_same_names_other_images_are_other_inputs(tmp_path):
    first = write_set(tmp_path / "a", 4)
    second = tmp_path / "b"
    second.mkdir()
    for i, path in enumerate(first):  # the same names, other pictures (other sizes)
        (second / path.name).write_bytes(first[(i + 1) % 4].read_bytes() + b"\0" * (i + 1))
    assert images_digest(first, sizes=True) != images_digest(sorted(second.iterdir()), sizes=True)
    assert images_digest(first, sizes=True) == images_digest(list(first), sizes=True)


def test_a_checkpoint_of_other_files_under_the_same_names_is_not_resumed(tmp_path, caplog):
    model = load_model()
    paths = write_set(tmp_path / "images", 8)
    checkpoint = tmp_path / "run.partial.safetensors"
    with pytest.raises(RuntimeError, match="crash"):
        run_pass(model, paths, CrashAt(8, model.info.embed_dim, at=6), key={"kind": "e"}, batch_size=2,
                 checkpoint=checkpoint, checkpoint_every=0, progress=False)
    paths[0].write_bytes(paths[7].read_bytes())  # an image the checkpoint already holds is now another file
    resumed = run_pass(model, paths, Embeddings(8, model.info.embed_dim), key={"kind": "e"}, batch_size=2,
                       checkpoint=checkpoint, progress=False)
    assert resumed == 0 and "belongs to another run" in caplog.text


def test_overwrite_recomputes_the_statistics_of_an_earlier_run(tmp_path):
    model = load_model()
    images = tmp_path / "images"
    paths = write_set(images, 6)
    out = tmp_path / "out"
    config = ReconstructConfig(images=images, out=out, top_k=3, batch_size=3, progress=False)
    out.mkdir()
    first = statistics_for(config, model, paths)
    from PIL import Image

    from segclip.data.synthetic import classification_set

    others, _ = classification_set(6, seed=9, size=64)
    for path, image in zip(paths, others):  # another image set under the same names
        Image.fromarray(image).save(path)
    reused = statistics_for(config, model, paths)  # without --overwrite: the earlier run's statistics
    torch.testing.assert_close(reused.mean_scalars.double(), first.mean_scalars.double())
    recomputed = statistics_for(ReconstructConfig(images=images, out=out, top_k=3, batch_size=3, progress=False,
                                                  overwrite=True), model, paths)
    assert not torch.allclose(recomputed.mean_scalars.double(), first.mean_scalars.double())
