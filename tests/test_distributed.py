"""The Lightning pass of the analyses: one process and DataLoader workers equal ``run_pass``; per-process resume;
2-process CPU DDP (gloo) equals one process for the calibration statistics and a zero-shot accuracy pass."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import torch_threads
from PIL import Image

from segclip.analysis.distributed import (
    ShardBatches,
    collect_statistics_distributed,
    rank_checkpoint,
    remove_checkpoints,
    run_distributed_pass,
)
from segclip.analysis.statistics import Statistics, collect_statistics
from segclip.analysis.units import Embeddings
from segclip.data.synthetic import classification_set
from segclip.errors import ConfigError, ImageError
from segclip.io import read_tensors
from segclip.models import load_model

ROOT = Path(__file__).resolve().parents[1]


def write_set(folder: Path, count: int = 16) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    images, _ = classification_set(count, seed=3, size=64)
    paths = []
    for i, image in enumerate(images):
        paths.append(folder / f"img{i:03d}.png")
        Image.fromarray(image).save(paths[-1])
    return paths


def assert_same_statistics(a: Statistics, b: Statistics) -> None:
    for name, value in a.tensors().items():
        other = b.tensors()[name]
        if value.dtype in (torch.long, torch.int8, torch.int16, torch.int32):
            assert torch.equal(value, other), name
        else:
            assert torch.allclose(value, other, rtol=1e-6, atol=1e-7), name
    assert a.count == b.count and a.metadata == b.metadata


def test_shards_cover_every_batch_once():
    seen = sorted(i for rank in range(3) for batch in ShardBatches(11, 2, rank, 3) for i in batch)
    assert seen == list(range(11))
    assert list(ShardBatches(11, 2, 1, 3, skip=1)) == [[8, 9]]


def test_one_process_and_workers_equal_run_pass(tmp_path):
    model = load_model()
    paths = write_set(tmp_path / "images", 10)
    reference = collect_statistics(model, paths, top_k=4, batch_size=3, progress=False)
    for workers in (2,):
        stats = collect_statistics_distributed(model, paths, top_k=4, batch_size=3, num_workers=workers)
        assert_same_statistics(reference, stats)


def test_resume_per_process(tmp_path):
    model = load_model()
    paths = write_set(tmp_path / "images", 10)
    reference = run_distributed_pass(model, paths, lambda m: Embeddings(10, m.info.embed_dim), key={"kind": "e"},
                                     batch_size=2).accumulator.values
    checkpoint = tmp_path / "run.partial.safetensors"
    good = paths[6].read_bytes()
    paths[6].write_bytes(b"broken")
    with pytest.raises(ImageError, match="img006"):
        run_distributed_pass(model, paths, lambda m: Embeddings(10, m.info.embed_dim), key={"kind": "e"},
                             batch_size=2, checkpoint=checkpoint)
    assert rank_checkpoint(checkpoint, 0, 1).is_file()
    paths[6].write_bytes(good)
    result = run_distributed_pass(model, paths, lambda m: Embeddings(10, m.info.embed_dim), key={"kind": "e"},
                                  batch_size=2, checkpoint=checkpoint)
    assert result.resumed_batches == 3 and torch.equal(result.accumulator.values, reference)  # saved at the error
    other = run_distributed_pass(model, paths, lambda m: Embeddings(10, m.info.embed_dim), key={"kind": "other"},
                                 batch_size=2, checkpoint=checkpoint)
    assert other.resumed_batches == 0  # another key: not resumed
    remove_checkpoints(checkpoint, 1)
    assert not rank_checkpoint(checkpoint, 0, 1).exists()


class CrashAt(Embeddings):
    """Embeddings whose update fails at one image (a crash that is not an image error: nothing saves on it)."""

    def __init__(self, count: int, dim: int, at: int):
        super().__init__(count, dim)
        self.at = at

    def update(self, trace, first: int) -> None:
        if first == self.at:
            raise RuntimeError("crash")
        super().update(trace, first)


@pytest.mark.parametrize("every, saved", [(0.0, 3), (1e9, None)])
def test_checkpoints_are_spaced_in_seconds(tmp_path, every, saved):
    """--checkpoint-every 0 saves after every batch; a long interval saves none before the end, so a crash (not an
    unreadable image) loses what came after the last checkpoint, and only that."""
    model = load_model()
    paths = write_set(tmp_path / "images", 10)
    checkpoint = tmp_path / "run.partial.safetensors"
    with pytest.raises(RuntimeError, match="crash"):
        run_distributed_pass(model, paths, lambda m: CrashAt(10, m.info.embed_dim, at=6), key={"kind": "e"},
                             batch_size=2, checkpoint=checkpoint, checkpoint_every=every)
    path = rank_checkpoint(checkpoint, 0, 1)
    assert (int(read_tensors(path)[1]["done_batches"]) if path.is_file() else None) == saved


def test_bad_process_options():
    with pytest.raises(ConfigError, match="--num-nodes"):
        run_distributed_pass(load_model(), [], lambda m: Embeddings(0, 64), key={}, num_nodes=0)


SCRIPT = """
import sys
from pathlib import Path

import torch
from segclip.analysis.distributed import collect_statistics_distributed, run_distributed_pass
from segclip.analysis.evaluation import ConditionAccuracy
from segclip.data.synthetic import SYNTHETIC_CLASSES
from segclip.models import load_model
from segclip.models.text import encode_classes

devices, out, folder = int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
torch.set_num_threads(1)
paths = sorted(folder.glob("*.png"))
model = load_model()
stats = collect_statistics_distributed(model, paths, top_k=4, batch_size=3, devices=devices,
                                       checkpoint=out / "statistics.partial.safetensors")
texts = encode_classes(model, list(SYNTHETIC_CLASSES), "single", cache=False)
labels = torch.arange(len(paths)) % len(SYNTHETIC_CLASSES)
result = run_distributed_pass(model, paths, lambda m: ConditionAccuracy({"plain": lambda t: t.output}, texts, labels),
                              key={"kind": "accuracy"}, devices=devices, batch_size=3, num_workers=1)
if result.is_primary:
    stats.save(out / "statistics.safetensors")
    torch.save(result.accumulator.predictions, out / "predictions.pt")
"""


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    """collect_statistics and a zero-shot accuracy pass: 2 CPU processes (DDP, gloo) == the one-process run_pass."""
    from segclip.analysis.evaluation import ConditionAccuracy
    from segclip.analysis.stream import run_pass
    from segclip.data.synthetic import SYNTHETIC_CLASSES
    from segclip.models.text import encode_classes

    paths = write_set(tmp_path / "images", 16)
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(SCRIPT))
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "SEGCLIP_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, str(script), "2", str(out), str(tmp_path / "images")],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert rank_checkpoint(out / "statistics.partial.safetensors", 1, 2).is_file()

    model = load_model()
    with torch_threads(1):  # the children's thread count (see conftest.torch_threads)
        reference = collect_statistics(model, paths, top_k=4, batch_size=3, progress=False)
    reference.save(tmp_path / "reference.safetensors")
    assert_same_statistics(Statistics.load(tmp_path / "reference.safetensors"),
                           Statistics.load(out / "statistics.safetensors"))
    texts = encode_classes(model, list(SYNTHETIC_CLASSES), "single", cache=False)
    accuracy = ConditionAccuracy({"plain": lambda t: t.output}, texts, torch.arange(16) % len(SYNTHETIC_CLASSES))
    with torch_threads(1):
        run_pass(model, paths, accuracy, key={}, batch_size=3, progress=False)
    assert torch.equal(torch.load(out / "predictions.pt"), accuracy.predictions)
    assert (accuracy.predictions >= 0).all()


def test_process_config():
    from segclip.analysis.distributed import ProcessConfig
    from segclip.config import build_config

    assert build_config(ProcessConfig, {"devices": "2", "num-nodes": "3"}).world_size == 6
    with pytest.raises(ConfigError, match="--devices"):
        ProcessConfig(devices=0)


IDLE_SCRIPT = """
import json
import sys
from pathlib import Path

import torch
from segclip.analysis.distributed import run_distributed_pass
from segclip.models import load_model


class Seen:
    '''How often each image was fed (exact, mergeable): every image must be seen exactly once.'''

    def __init__(self, count):
        self.seen = torch.zeros(count, dtype=torch.long)

    def update(self, trace, first):
        self.seen[first:first + len(trace)] += 1

    def state_dict(self):
        return {"seen": self.seen}

    def load_state_dict(self, state):
        self.seen = state["seen"].clone()

    def merge(self, other):
        self.seen += other.seen


devices, out, folder = int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
torch.set_num_threads(1)
paths = sorted(folder.glob("*.png"))
model = load_model()
found = {}
for count in (0, 1, 2, 3, 4, 5, 3 * 5):
    for attempt in ("fresh", "resumed"):  # resumed: every process already finished its share
        result = run_distributed_pass(model, paths[:count], lambda m: Seen(count), key={"count": count},
                                      devices=devices, batch_size=1, checkpoint=out / f"seen{count}.safetensors",
                                      checkpoint_every=0)
        if result.is_primary:
            found[f"{count} {attempt}"] = result.accumulator.seen.tolist()
if found:
    (out / "seen.json").write_text(json.dumps(found))
"""


@pytest.mark.slow
@pytest.mark.parametrize("devices", [1, 2, 3])
def test_idle_processes_take_part_in_the_merge(tmp_path, devices):
    """Any number of batches per process, none included (fewer images than processes, or a resume after every
    process finished its share): the pass ends, and rank 0 holds every image exactly once."""
    write_set(tmp_path / "images", 15)
    script = tmp_path / "idle.py"
    script.write_text(textwrap.dedent(IDLE_SCRIPT))
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "SEGCLIP_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, str(script), str(devices), str(out), str(tmp_path / "images")],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads((out / "seen.json").read_text())
    for count in (0, 1, 2, 3, 4, 5, 15):
        for attempt in ("fresh", "resumed"):
            assert found[f"{count} {attempt}"] == [1] * count, (count, attempt)
