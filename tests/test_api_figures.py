"""The in-memory API (segclip.segment), label maps (palette and 16-bit PNGs), class colours, short reprs,
scaled legends and demo-data."""
from __future__ import annotations

import hashlib
import io
import json
import sys
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

import segclip
from segclip.data.demo import DemoDataConfig, run_demo_data
from segclip.data.images import read_label
from segclip.data.synthetic import SYNTHETIC_CLASSES
from segclip.errors import ConfigError, OutputError
from segclip.segment.predict import SegmentConfig, run_segment
from segclip.viz.overlay import overlay
from segclip.viz.palette import BASE_COLOURS, class_colours, colour_sequence, label_png, read_label_png

EXAMPLE_CLASSES = ["sand", "water", "star", "ring"]


@pytest.fixture(scope="module")
def model():
    return segclip.load_model()


def test_import_segclip_is_cheap_and_exports_lazily():
    code = ("import sys, segclip; assert 'torch' not in sys.modules, 'torch imported'; "
            "segclip.segment; segclip.SegmentedImage; assert 'torch' in sys.modules; print(len(segclip.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert int(out) >= 30
    with pytest.raises(AttributeError):
        segclip.no_such_name  # noqa: B018


def test_segment_returns_arrays_that_match_the_command(model, tmp_path):
    seg = segclip.segment(model, segclip.example_image_path(), ",".join(EXAMPLE_CLASSES), probabilities=True,
                          templates="single")
    assert seg.classes == EXAMPLE_CLASSES  # a comma-separated string is split into names, never letters
    assert seg.labels.shape == (256, 320) and seg.labels.dtype == np.int64
    assert seg.probabilities.shape == (4, 256, 320)
    # independent: the labels are the arg-max of the probabilities, which sum to one per pixel
    np.testing.assert_allclose(seg.probabilities.sum(0), 1, atol=1e-5)
    assert (seg.probabilities.argmax(0) == seg.labels).mean() > 0.999  # ties at round-off aside
    # the heatmap's map without stored probabilities equals the stored one
    lazy = segclip.segment(model, segclip.example_image_path(), EXAMPLE_CLASSES, templates="single")
    np.testing.assert_allclose(lazy.probability("star"), seg.probabilities[2], atol=1e-5)
    assert lazy.heatmap("star").size[0] >= 320
    # the command writes the same labels
    run_segment(SegmentConfig(images=(segclip.example_image_path(),), classes=tuple(EXAMPLE_CLASSES),
                              out=tmp_path / "cli", templates="single", progress=False), model)
    np.testing.assert_array_equal(read_label_png(tmp_path / "cli" / "example.png"), lazy.labels)
    # the picture: overlay of the image's size plus the legend strip
    assert seg.overlay().size[1] == 256 and seg.overlay().size[0] > 320
    written = seg.save(tmp_path / "api", heatmaps=True)
    assert [p.name for p in written][:2] == ["image.png", "image_overlay.png"] and len(written) == 7
    assert json.loads((tmp_path / "api" / "image.json").read_text())["label_format"].startswith("palette PNG")


def test_segment_background_threshold(model):
    seg = segclip.segment(model, segclip.example_image_path(), EXAMPLE_CLASSES, probabilities=True,
                          background_threshold=0.6, templates="single")
    top = seg.probabilities.max(0)
    expected = np.where(top < 0.6, 4, seg.probabilities.argmax(0))
    assert ((seg.labels == expected) | (np.abs(top - 0.6) < 1e-5)).all()
    assert (seg.labels == 4).any() and (seg.labels < 4).any()


@pytest.mark.parametrize(("arguments", "message"), [
    ({"classes": ["sky", None]}, "strings"),
    ({"classes": ["sky", "sky"]}, "sky"),
    ({"method": "nope"}, "Unknown method"),
    ({"background_threshold": 1.5}, "between 0 and 1"),
    ({"kk": 3}, "Unknown options"),
])
def test_segment_refuses_bad_arguments(model, arguments, message):
    arguments = {"classes": EXAMPLE_CLASSES, **arguments}
    with pytest.raises(ConfigError, match=message):
        segclip.segment(model, segclip.example_image_path(), **arguments)


def test_reprs_are_short(model):
    from segclip.data.preprocess import clip_batch

    images = clip_batch([segclip.read_image(segclip.example_image_path())], model.info.image_size)
    with torch.inference_mode():
        trace = model.trace(images, token_heads=True)
    text = repr(trace)
    assert len(text) < 400 and "pair_scalars=Tensor(1, 512, 8) float32" in text
    seg = segclip.segment(model, segclip.example_image_path(), EXAMPLE_CLASSES, templates="single")
    assert len(repr(seg)) < 500 and "labels=ndarray(256, 320) int64" in repr(seg)
    config = segclip.SegmentConfig(images=tuple(f"{i}.png" for i in range(1000)), out="x")
    assert len(repr(config)) < 200 and "1000 items" in repr(config)


# ------------------------------------------------------------------------------------------ colours and label maps


def _lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB uint8 -> CIELAB, transcribed from the CIE formulas (an independent copy)."""
    c = rgb.astype(np.float64) / 255
    c = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                  [0.0193339, 0.1191920, 0.9503041]])
    xyz = c @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 216 / 24389, np.cbrt(xyz), (24389 / 27 * xyz + 16) / 116)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], 1)


def test_class_colours_follow_the_name_and_are_distinct():
    names = list(SYNTHETIC_CLASSES)
    colours = class_colours(names)
    base = colour_sequence(BASE_COLOURS)
    slot = int.from_bytes(hashlib.sha256(names[0].encode()).digest()[:8], "big") % BASE_COLOURS
    assert colours[0].tolist() == base[slot].tolist()  # the first name always gets its hashed colour
    assert class_colours(["ring", "sky"])[1].tolist() == colours[0].tolist()  # same name, same colour
    lab = _lab(colours)
    distances = np.linalg.norm(lab[:, None] - lab[None], axis=-1) + np.eye(len(names)) * 1e9
    assert distances.min() > 20  # every two classes clearly distinct (2.3 = just noticeable)
    assert np.linalg.norm(lab, axis=1).min() > 20  # and distinct from the black background
    many = class_colours([f"class {i}" for i in range(300)])
    assert len({tuple(c) for c in many.tolist()}) == 300


def test_label_png_is_a_palette_png_up_to_256_values_then_16_bit(tmp_path):
    names = [f"c{i}" for i in range(255)]
    labels = np.arange(256).reshape(16, 16)  # 255 = the background
    picture = Image.open(io.BytesIO(label_png(labels, names, background=True)))
    assert picture.mode == "P"
    assert np.asarray(picture).tolist() == labels.tolist()
    palette = np.array(picture.getpalette()[:256 * 3]).reshape(256, 3)
    assert palette[:255].tolist() == class_colours(names).tolist() and palette[255].tolist() == [0, 0, 0]
    wide = np.array([[0, 255, 256, 299]])
    picture = Image.open(io.BytesIO(label_png(wide, values=300)))
    assert picture.mode == "I;16" and np.asarray(picture).tolist() == wide.tolist()  # 256 + k never saved as k
    (tmp_path / "wide.png").write_bytes(label_png(wide, values=300))
    assert read_label(tmp_path / "wide.png", num_classes=300, reduce_zero_label=False).tolist() == wide.tolist()
    with pytest.raises(ValueError):
        label_png(np.array([[3]]), ["a", "b"])


@pytest.mark.parametrize(("fillers", "threshold", "mode"), [(288, None, "I;16"), (244, 0.99, "I;16"),
                                                            (243, 0.99, "P")])
def test_segment_writes_wide_label_maps(model, tmp_path, fillers, threshold, mode):
    """Beyond 255 classes (or 256 with the background) label maps are 16-bit: with 288 fillers the image's classes
    are 288..299; with 256 classes and a background threshold nearly everything is background 256 (not 0)."""
    names = tuple(f"filler {i}" for i in range(fillers)) + tuple(SYNTHETIC_CLASSES)
    config = SegmentConfig(images=(segclip.example_image_path(),), classes=names, out=tmp_path, templates="single",
                           background_threshold=threshold, progress=False)
    run_segment(config, model).write(tmp_path)
    picture = Image.open(tmp_path / "example.png")
    assert picture.mode == mode
    saved = read_label_png(tmp_path / "example.png")
    expected = segclip.segment(model, segclip.example_image_path(), names, templates="single",
                               background_threshold=threshold).labels
    np.testing.assert_array_equal(saved, expected)
    if threshold is None:
        assert (saved >= 288).mean() > 0.5  # mostly the planted classes, all above 255
    else:
        assert (saved == len(names)).mean() > 0.5  # the background value, whatever the width
    summary = json.loads((tmp_path / "segment.json").read_text())["results"]
    assert summary["label_format"].startswith("16-bit" if mode == "I;16" else "palette")


def test_legend_scales_with_the_image():
    small = overlay(np.zeros((200, 200, 3), np.uint8), np.zeros((200, 200), int), ["sky"])
    large = overlay(np.zeros((1600, 2000, 3), np.uint8), np.zeros((1600, 2000), int), ["sky"])
    assert (large.size[0] - 2000) > 2.5 * (small.size[0] - 200)  # the legend strip grows with the image
    strip = np.asarray(large)[:, 2000:]
    rows = np.flatnonzero((strip != 255).any(axis=(1, 2)))
    assert rows.max() - rows.min() >= 30  # swatch and text at least 30 px tall on a 1600-px image


# ------------------------------------------------------------------------------------------------------ demo data


def test_demo_data_is_reproducible_and_complete(tmp_path):
    options = {"per_class": 1, "scenes": 3, "per_group": 4, "image_size": 32}
    first = run_demo_data(DemoDataConfig(out=tmp_path / "a", **options))
    run_demo_data(DemoDataConfig(out=tmp_path / "b", **options))
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert (tmp_path / "a" / "classes.txt").read_text().split() == list(SYNTHETIC_CLASSES)
    rows = (tmp_path / "a" / "shift" / "groups.csv").read_text().splitlines()
    assert rows[0] == "image,group,snow" and len(rows) == 21
    # shares per group as the groups promise (independent: count the csv), each image present
    per_group: dict[str, list[int]] = {}
    for row in rows[1:]:
        image, group, flag = row.split(",")
        per_group.setdefault(group, []).append(int(flag))
        assert (tmp_path / "a" / "shift" / "images" / image).is_file()
    assert {g: sum(v) for g, v in per_group.items()} == first.positives == {
        "2019": 0, "2020": 1, "2021": 2, "2022": 3, "2023": 4}
    assert len(list((tmp_path / "a" / "labelled").rglob("*.png"))) == 12
    # a rerun with the same options keeps the folder; other options need --overwrite
    assert run_demo_data(DemoDataConfig(out=tmp_path / "a", **options)).reused
    with pytest.raises(OutputError, match="--overwrite"):
        run_demo_data(DemoDataConfig(out=tmp_path / "a", **{**options, "scenes": 4}))
    again = run_demo_data(DemoDataConfig(out=tmp_path / "a", overwrite=True, **{**options, "scenes": 4}))
    assert not again.reused and len(list((tmp_path / "a" / "scenes").iterdir())) == 4


def test_demo_data_command(tmp_path, capsys):
    from segclip.cli import main

    assert main(["demo-data", str(tmp_path / "d"), "--per-class", "1", "--scenes", "2", "--per-group", "2"]) == 0
    assert "wrote labelled/" in capsys.readouterr().out
    assert (tmp_path / "d" / "shift" / "groups.csv").is_file()


# ------------------------------------------------------------------------------------------------------- figures


def _border_is_white(path, width: int = 3) -> bool:
    pixels = np.asarray(Image.open(path).convert("RGB"))
    ring = np.concatenate([pixels[:width].reshape(-1, 3), pixels[-width:].reshape(-1, 3),
                           pixels[:, :width].reshape(-1, 3), pixels[:, -width:].reshape(-1, 3)])
    return bool((ring > 245).all())


def test_figures_hold_long_titles_and_labels(tmp_path):
    """Nothing is clipped: a clipped title or label would reach the picture's edge; the edge stays white."""
    from segclip.viz.plots import montage, twin_plot

    title = "Concept scores by group (segclip-tiny, a long model name): drift vs 2019 " * 2
    path = twin_plot(tmp_path / "twin.png", ["2019", "2020"], {"snow": [0.1, 0.2], "a very long concept": [0, 1]},
                     {"snow": [0.1, 0.9]}, xlabel="group", title=title)
    assert path.suffix == ".png" and _border_is_white(path)
    tiles = [np.full((16, 16, 3), 90, np.uint8)] * 3
    path = montage(tmp_path / "montage.png", {"neuron 117": tiles, "pair 117:7\nwall, box, ball, triangle, diamond,"
                                              " snow": tiles}, tile=16)
    assert _border_is_white(path)


def test_format_and_dpi_reach_every_figure(tmp_path):
    from segclip.cli import main

    run_demo_data(DemoDataConfig(out=tmp_path / "d", per_class=1, scenes=2, per_group=2))
    arguments = ["analyze", "shift", "--images", str(tmp_path / "d/shift/images"), "--groups",
                 str(tmp_path / "d/shift/groups.csv"), "--concepts", "snow", "--no-progress"]
    assert main([*arguments, "--out", str(tmp_path / "pdf"), "--format", "pdf"]) == 0
    assert sorted(p.name for p in (tmp_path / "pdf").glob("shift*.pdf")) == ["shift-drift.pdf", "shift.pdf"]
    assert (tmp_path / "pdf" / "shift.pdf").read_bytes()[:4] == b"%PDF" and not list((tmp_path / "pdf").glob("*.png"))
    assert main([*arguments, "--out", str(tmp_path / "svg"), "--format", "svg"]) == 0
    assert b"<svg" in (tmp_path / "svg" / "shift-drift.svg").read_bytes()[:400]
    assert main([*arguments, "--out", str(tmp_path / "low"), "--dpi", "50"]) == 0
    assert main([*arguments, "--out", str(tmp_path / "high"), "--dpi", "200"]) == 0
    low, high = (Image.open(tmp_path / name / "shift.png").size for name in ("low", "high"))
    assert abs(high[0] / low[0] - 4) < 0.2  # pixels scale with the dpi
    assert main(["segment", str(segclip.example_image_path()), "--classes", "sand,water", "--out",
                 str(tmp_path / "seg"), "--format", "svg", "--heatmaps", "--no-progress", "--templates", "single"]) == 0
    assert (tmp_path / "seg" / "example_overlay.svg").read_bytes().startswith(b"<svg")
    assert Image.open(tmp_path / "seg" / "example.png").mode == "P"  # label maps stay PNG
    assert len(list((tmp_path / "seg" / "heatmaps" / "example").glob("*.svg"))) == 2
    assert main(["segment", str(segclip.example_image_path()), "--out", str(tmp_path / "x"), "--dpi", "0"]) == 2


def test_saved_predictions_keep_wide_class_indices():
    from segclip.segment.results import png_bytes

    labels = np.array([[0, 255, 256, 511]])
    assert read_label_png(io.BytesIO(png_bytes(labels, 512))).tolist() == labels.tolist()
    assert Image.open(io.BytesIO(png_bytes(np.array([[0, 170]]), 171))).mode == "L"  # 8-bit as before
