"""Nothing silently wrong (issue 10): every failure a demanding new user found, each with a test that failed before.

Outputs never collide or clobber inputs; caches that cannot lie; long class names; clear messages for bad input;
quiet progress; file modes from the umask; bounded legends and labelled heatmaps.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_methods import tiny_model

import segclip.cli
from segclip.cli import main
from segclip.config import progress_bars
from segclip.data import synthetic
from segclip.errors import ConfigError, ImageError, ModelError, OutputError
from segclip.io import atomic_write_bytes
from segclip.models import loading
from segclip.models.text import encode_classes

FAST = ["--short-side", "128", "--templates", "single", "--k", "200", "--no-progress"]


@pytest.fixture
def tiny(monkeypatch):
    model = tiny_model(torch.float32)
    monkeypatch.setattr(segclip.cli, "load_model_for", lambda config, devices=1: model)
    return model


def write_image(path: Path, seed: int = 0, size: tuple[int, int] = (60, 80)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


def test_outputs_of_two_images_never_collide(tiny, tmp_path, capsys):
    """`segment a.jpg a_overlay.jpg` used to write a's overlay and then the second image's label map to the same
    file, and exit 0."""
    a = write_image(tmp_path / "in" / "a.png")
    b = write_image(tmp_path / "in" / "a_overlay.png", seed=1)
    out = tmp_path / "out"
    assert main(["segment", str(a), str(b), "--classes", "cat,dog", "--out", str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert "'a' and 'a_overlay' would both be" in err and "a_overlay.png" in err
    assert not out.exists() or not list(out.glob("*.png"))


def test_an_input_is_never_overwritten_not_even_with_overwrite(tiny, tmp_path, capsys):
    image = write_image(tmp_path / "x.png")
    before = image.read_bytes()
    assert main(["segment", str(image), "--classes", "cat,dog", "--out", str(tmp_path), "--overwrite", *FAST]) == 2
    assert "would replace the input image" in capsys.readouterr().err
    assert image.read_bytes() == before


def test_heatmaps_for_any_class_name_with_a_colour_bar(tiny, tmp_path):
    image = write_image(tmp_path / "in" / "x.png")
    long_name = " ".join(["extraordinarily"] * 80)  # used to crash with 'File name too long'
    out = tmp_path / "out"
    assert main(["segment", str(image), "--classes", f"cat,{long_name}", "--out", str(out), "--heatmaps", *FAST]) == 0
    files = sorted((out / "heatmaps" / "x").iterdir())
    assert [f.name[:3] for f in files] == ["00_", "01_"] and all(len(f.name) < 60 for f in files)
    heat = Image.open(files[1])
    assert heat.size[1] > 60  # the map plus a strip with the colour bar and the class name
    strip = np.asarray(heat)[60:]
    assert (strip.std(axis=(0, 2)) > 0).sum() > 40  # the strip is drawn (bar and text), not blank


def test_overlay_legend_stays_bounded_for_long_names():
    from segclip.viz.overlay import overlay

    labels = np.array([[0, 1] * 20] * 30)
    short = overlay(np.zeros((30, 40, 3), np.uint8), labels, ["a", "b"])
    long = overlay(np.zeros((30, 40, 3), np.uint8), labels, ["a", "b" * 500])
    assert long.size[0] - short.size[0] < 300


def test_a_folder_passed_as_an_image_is_named(tiny, tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    assert main(["segment", str(tmp_path / "photos"), "--classes", "cat", "--out", str(tmp_path / "o")]) == 2
    assert "is a folder, not an image file" in capsys.readouterr().err
    from segclip.data.images import read_image

    with pytest.raises(ImageError, match="is a folder, not an image file"):
        read_image(tmp_path / "photos")


def test_registers_above_the_neurons_and_absurd_short_sides_are_errors(tiny, tmp_path, capsys):
    from segclip.core.calibration import CALIBRATION_VERSION, Calibration

    calibration = Calibration(signs=torch.ones(256, 4), registers=torch.arange(32), mean_scalars=torch.zeros(256, 4),
                              register_scores=torch.rand(256), sink_attention=torch.rand(4),
                              metadata={"model": tiny.info.name, "weights_hash": tiny.info.weights_hash,
                                        "count": 3, "version": CALIBRATION_VERSION})
    calibration.save(tmp_path / "c.safetensors")
    image = write_image(tmp_path / "in" / "x.png")
    base = ["segment", str(image), "--classes", "cat,dog", "--out", str(tmp_path / "o"), "--templates", "single",
            "--calibration", str(tmp_path / "c.safetensors")]
    assert main([*base, "--zero-registers", "300"]) == 2  # used to be clamped to 32 silently
    assert "--zero-registers 300 is more than the model's 256 neurons" in capsys.readouterr().err
    assert main([*base, "--zero-registers", "40"]) == 2
    assert "more than the 32 register neurons the calibration holds" in capsys.readouterr().err
    assert main([*base, "--short-side", "16"]) == 2
    assert "--short-side 16 is below the stride" in capsys.readouterr().err


def test_text_cache_detects_bytes_flipped_inside_the_tensor(tmp_path, caplog):
    model = tiny_model(torch.float32)
    cache = tmp_path / "text"
    first = encode_classes(model, ["cat", "dog"], "single", cache_root=cache)
    entry = next(cache.glob("*.safetensors"))
    data = bytearray(entry.read_bytes())
    data[-5] ^= 0x40  # inside the float data: the file still parses, one value changes
    entry.write_bytes(bytes(data))
    caplog.set_level(logging.WARNING)
    again = encode_classes(model, ["cat", "dog"], "single", cache_root=cache)
    assert torch.equal(again, first) and "damaged" in caplog.text
    caplog.clear()
    assert torch.equal(encode_classes(model, ["cat", "dog"], "single", cache_root=cache), first)
    assert "damaged" not in caplog.text  # rebuilt: the entry is sound again


def test_synthetic_benchmark_detects_a_damaged_image_that_still_decodes(tmp_path, caplog):
    root = synthetic.generate_benchmark(tmp_path / "syn", n_val=3, height=64, width=80)
    image = root / "VOCdevkit/VOC2010/JPEGImages/synthetic_00001.jpg"
    original = image.read_bytes()
    Image.fromarray(np.zeros((64, 80, 3), np.uint8)).save(image, quality=95)  # a valid JPEG, the wrong pixels
    caplog.set_level(logging.WARNING)
    synthetic.generate_benchmark(tmp_path / "syn", n_val=3, height=64, width=80)
    assert "damaged" in caplog.text and image.read_bytes() == original
    manifest = json.loads((root / "synthetic.json").read_text())["sha256"]
    assert len(manifest) == 3 * 2 + 2


def test_a_full_disk_while_generating_the_benchmark_is_a_clear_error(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(synthetic, "_write", full)
    with pytest.raises(OutputError, match="No space left on device.*Free some space"):
        synthetic.generate_benchmark(tmp_path / "syn", n_val=2, height=64, width=80)
    assert not [p for p in (tmp_path / "syn").iterdir() if p.name.startswith(".synthetic-tmp")]


def test_class_names_longer_than_the_text_context(caplog):
    model = tiny_model(torch.float32)  # a 16-token text context
    long = "a " * 20 + "cat"
    caplog.set_level(logging.WARNING)
    encode_classes(model, ["dog", long], "single", cache=False)
    assert "makes prompts of up to" in caplog.text and "text context of tiny-test is 16" in caplog.text
    with pytest.raises(ConfigError, match="identical after their prompts are cut to the 16-token text context"):
        encode_classes(model, ["a " * 20 + "cat", "a " * 20 + "dog"], "single", cache=False)


def test_offline_weight_fetch_fails_fast(monkeypatch):
    monkeypatch.setattr(loading, "_cached_weights", lambda cfg, cache: None)
    monkeypatch.setattr(loading, "_online", lambda cfg, timeout=3.0: False)

    def download(*args, **kwargs):
        raise AssertionError("no download attempt (and no retries) when the server is unreachable")

    monkeypatch.setattr(loading.open_clip, "download_pretrained", download)
    with pytest.raises(ModelError, match="cannot reach their server.*--pretrained /path/to/RN50.pt"):
        loading.load_model("RN50", "openai")


def test_quickgelu_mismatches_are_warned_about(caplog):
    caplog.set_level(logging.WARNING)
    assert loading._quick_gelu("RN50", "yfcc15m", False, {}) is True  # every RN tag was trained with QuickGELU
    assert "trained with QuickGELU" in caplog.text
    caplog.clear()
    assert loading._quick_gelu("RN50-quickgelu", "openai", False, {"quick_gelu": True}) is True
    assert caplog.text == ""
    assert loading._quick_gelu("RN50-quickgelu", "/no/such/weights.pt", False, {"quick_gelu": True}) is True
    assert "does not say whether it was trained with QuickGELU" in caplog.text
    caplog.clear()
    assert loading._quick_gelu("RN50", "bundled", False, {}) is False and caplog.text == ""


def test_no_progress_means_no_bar(capsys):
    model = tiny_model(torch.float32)
    prompts = [f"a photo of a thing number {i}." for i in range(40)]
    with progress_bars(False):
        model.encode_text(prompts, batch_size=4)  # 10 batches: a bar by default
    assert capsys.readouterr().err == ""
    model.encode_text(prompts, batch_size=4)
    assert capsys.readouterr().err == ""  # library calls are quiet by default
    with progress_bars(True):  # as the command line runs them
        model.encode_text(prompts, batch_size=4)
    assert "text" in capsys.readouterr().err


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_artifacts_get_the_umask_permissions(tmp_path):
    """safetensors' save_file creates 0600 files: artifacts (calibrations, statistics, text caches) were private."""
    from segclip.io import atomic_save_tensors

    old = os.umask(0o022)
    try:
        path = atomic_save_tensors(tmp_path / "a.safetensors", {"x": torch.zeros(2)}, {"k": "v"})
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        assert stat.S_IMODE(atomic_write_bytes(tmp_path / "a.bin", b"x").stat().st_mode) == 0o644
        os.umask(0o077)
        assert stat.S_IMODE(atomic_write_bytes(tmp_path / "b.bin", b"x").stat().st_mode) == 0o600
    finally:
        os.umask(old)
