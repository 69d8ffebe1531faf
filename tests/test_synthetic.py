"""Synthetic scenes and benchmark: determinism, exact masks, captions, the PASCAL Context layout, idempotence."""
import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from segclip.data import synthetic
from segclip.data.synthetic import (
    BENCHMARK_STREAM,
    SYNTHETIC_CLASSES,
    classification_set,
    generate_benchmark,
    render_scene,
    render_single_class,
)
from segclip.errors import OutputError


def scene(seed: int, height: int = 96, width: int = 128) -> synthetic.Scene:
    return render_scene(np.random.default_rng(seed), height, width)


def test_classes():
    assert len(SYNTHETIC_CLASSES) >= 10 and len(set(SYNTHETIC_CLASSES)) == len(SYNTHETIC_CLASSES)
    assert all(re.fullmatch(r"[a-z]+", name) for name in SYNTHETIC_CLASSES)
    assert set(synthetic._BASE_HSV) == set(SYNTHETIC_CLASSES)


def test_same_seed_same_bytes_and_different_seed_differs():
    a, b, c = scene(7), scene(7), scene(8)
    assert a.image.tobytes() == b.image.tobytes() and a.mask.tobytes() == b.mask.tobytes()
    assert (a.caption, a.classes, a.phrase) == (b.caption, b.classes, b.phrase)
    assert a.image.tobytes() != c.image.tobytes()


@pytest.mark.parametrize("seed", range(12))
def test_every_pixel_labelled_and_caption_names_exactly_the_present_classes(seed):
    s = scene(seed)
    assert s.image.shape == (96, 128, 3) and s.image.dtype == np.uint8
    assert s.mask.shape == (96, 128) and s.mask.dtype == np.uint8
    assert s.mask.max() < len(SYNTHETIC_CLASSES)
    assert s.classes == sorted(np.unique(s.mask).tolist())
    words = set(re.findall(r"[a-z]+", s.caption))
    assert {SYNTHETIC_CLASSES[c] for c in s.classes} == words & set(SYNTHETIC_CLASSES)
    assert s.caption.startswith("a photo of ") and s.caption.endswith(".")
    assert set(re.findall(r"[a-z]+", s.phrase)) & set(SYNTHETIC_CLASSES) == words & set(SYNTHETIC_CLASSES)


def test_scenes_vary_and_cover_every_class():
    scenes = [scene(seed, 64, 64) for seed in range(60)]
    assert set().union(*(s.classes for s in scenes)) == set(range(len(SYNTHETIC_CLASSES)))
    assert max(len(s.classes) for s in scenes) >= 4  # several objects and two stuff regions occur


def test_masks_are_exactly_the_painted_regions(monkeypatch):
    """With every class painted in its own flat colour and no camera noise, the image is the mask's palette."""
    palette = np.random.default_rng(0).permutation(256)[: 3 * len(SYNTHETIC_CLASSES)].reshape(-1, 3)

    def flat(name):
        colour = (palette[SYNTHETIC_CLASSES.index(name)] / 255).astype(np.float32)
        return lambda rng, y, x, base, *pose: np.broadcast_to(colour, y.shape + (3,)).copy()

    for table in (synthetic._STUFF_TEXTURES, synthetic._OBJECT_TEXTURES):
        for name in table:
            monkeypatch.setitem(table, name, flat(name))
    monkeypatch.setattr(synthetic, "_camera", lambda rng, image: np.round(image * 255).astype(np.uint8))
    for seed in range(20):
        s = scene(seed, 80, 112)
        np.testing.assert_array_equal(s.image, palette[s.mask].astype(np.uint8))


def test_textures_give_each_class_its_colour():
    """Under real rendering, the chromaticity of a class's most saturated pixels is nearest its own base colour."""
    def chroma(rgb):
        return rgb / (rgb.sum(-1, keepdims=True) + 1e-6)

    base = chroma(np.array([synthetic.colorsys.hsv_to_rgb(*synthetic._BASE_HSV[n]) for n in SYNTHETIC_CLASSES]))
    hits = total = 0
    for seed in range(30):
        s = scene(seed)
        for c in s.classes:
            pixels = s.image[s.mask == c].astype(np.float32)
            if len(pixels) < 100:
                continue
            saturation = np.ptp(pixels, axis=1)
            typical = np.median(pixels[saturation >= np.median(saturation)], axis=0)
            hits += int(np.abs(chroma(typical) - base).sum(-1).argmin() == c)
            total += 1
    assert total > 60 and hits / total >= 0.95


def test_single_class_images_and_classification_set():
    images, labels = classification_set(30, seed=3, size=48)
    again, labels_again = classification_set(30, seed=3, size=48)
    assert images.shape == (30, 48, 48, 3) and images.dtype == np.uint8 and labels.dtype == np.int64
    assert images.tobytes() == again.tobytes() and labels.tolist() == labels_again.tolist()
    assert np.bincount(labels, minlength=len(SYNTHETIC_CLASSES)).min() >= 2
    ball = render_single_class(np.random.default_rng(0), SYNTHETIC_CLASSES.index("ball"), 64)
    centre, corner = ball[28:36, 28:36].reshape(-1, 3).mean(0), ball[:6, :6].reshape(-1, 3).mean(0)
    assert centre[0] > centre[1] + 60  # a red ball in the middle ...
    assert np.ptp(corner) < 20  # ... on a grey backdrop
    with pytest.raises(ValueError):
        render_single_class(np.random.default_rng(0), len(SYNTHETIC_CLASSES), 64)


def test_benchmark_layout(tmp_path):
    root = generate_benchmark(tmp_path / "syn", n_val=3, seed=5, height=64, width=80)
    voc = root / "VOCdevkit" / "VOC2010"
    ids = (voc / "ImageSets" / "SegmentationContext" / "val.txt").read_text().split()
    assert ids == [f"synthetic_{i:05d}" for i in range(3)]
    assert (root / "classnames.txt").read_text().split("\n")[:-1] == list(SYNTHETIC_CLASSES)
    meta = json.loads((root / "synthetic.json").read_text())
    assert (meta["seed"], meta["n_val"], meta["height"], meta["width"]) == (5, 3, 64, 80)
    assert sorted(p.name for p in root.iterdir()) == ["VOCdevkit", "classnames.txt", "synthetic.json"]
    for i, image_id in enumerate(ids):
        stream = np.random.SeedSequence([5, i], spawn_key=BENCHMARK_STREAM)
        expected = render_scene(np.random.default_rng(stream), 64, 80)
        label = np.array(Image.open(voc / "SegmentationClassContext" / f"{image_id}.png"))
        np.testing.assert_array_equal(label, expected.mask + 1)  # class c stored as c + 1; 0 never occurs
        jpeg = Image.open(voc / "JPEGImages" / f"{image_id}.jpg")
        assert jpeg.format == "JPEG" and jpeg.mode == "RGB" and jpeg.size == (80, 64)
        assert np.abs(np.asarray(jpeg, np.float32) - expected.image).mean() < 5  # quality 95, no chroma subsampling


def test_benchmark_is_reused_and_regenerated_when_incomplete_or_different(tmp_path):
    root = tmp_path / "syn"
    generate_benchmark(root, n_val=2, height=48, width=64)
    png = root / "VOCdevkit" / "VOC2010" / "SegmentationClassContext" / "synthetic_00001.png"
    os.utime(png, ns=(1, 1))
    generate_benchmark(root, n_val=2, height=48, width=64)
    assert png.stat().st_mtime_ns == 1  # complete and equal: untouched
    png.unlink()  # half-written
    generate_benchmark(root, n_val=2, height=48, width=64)
    assert png.is_file() and png.stat().st_mtime_ns != 1
    generate_benchmark(root, n_val=3, height=48, width=64)  # other parameters: replaced
    assert json.loads((root / "synthetic.json").read_text())["n_val"] == 3
    assert len(list((root / "VOCdevkit" / "VOC2010" / "JPEGImages").iterdir())) == 3
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_benchmark_prefix_is_stable(tmp_path):
    small = generate_benchmark(tmp_path / "a", n_val=1, height=48, width=64)
    large = generate_benchmark(tmp_path / "b", n_val=2, height=48, width=64)
    name = "VOCdevkit/VOC2010/SegmentationClassContext/synthetic_00000.png"
    assert (small / name).read_bytes() == (large / name).read_bytes()


def test_unwritable_root_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match=r"a-file.*--data-root"):
        generate_benchmark(blocker / "syn", n_val=1, height=48, width=64)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="permissions do not bind root")
def test_read_only_root_is_a_clear_error(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(OutputError, match=r"locked.*--data-root"):
            generate_benchmark(locked / "syn", n_val=1, height=48, width=64)
    finally:
        locked.chmod(0o700)
