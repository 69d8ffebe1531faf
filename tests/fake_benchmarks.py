"""Tiny copies of the ten benchmark layouts, fabricated for tests (import as ``from fake_benchmarks import ...``).

:func:`make_fake_benchmarks` writes, under one root laid out as mmsegmentation's ``data/`` folder, in the real
formats (file names, suffixes, PNG modes)::

    VOCdevkit/VOC2012/JPEGImages/2007_00000{0,1,2}.jpg
    VOCdevkit/VOC2012/SegmentationClass/<id>.png          palette-mode (P) PNG, VOC palette, 0..20, 255 boundary
    VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt
    VOCdevkit/VOC2010/JPEGImages/2008_00000{0,1,2}.jpg
    VOCdevkit/VOC2010/SegmentationClassContext/<id>.png   L-mode PNG, 0..59 (0 = background)
    VOCdevkit/VOC2010/ImageSets/SegmentationContext/val.txt
    coco_stuff164k/images/val2017/00000000000{1,2,3}.jpg
    coco_stuff164k/annotations/val2017/<id>_labelTrainIds.png     L-mode, 0..170 and 255
    coco_stuff164k/annotations/val2017/<id>_instanceTrainIds.png  L-mode, 0..80 (no 255)
    cityscapes/leftImg8bit/val/{frankfurt,lindau}/<city>_000000_00001{0,1}_leftImg8bit.png   (RGB PNG, 2 + 1 images)
    cityscapes/gtFine/val/<city>/<city>_000000_00001{0,1}_gtFine_labelTrainIds.png    L-mode, 0..18 and 255
    ade/ADEChallengeData2016/images/validation/ADE_val_0000000{1,2,3}.jpg
    ade/ADEChallengeData2016/annotations/validation/<id>.png      L-mode, 0..150 (0 = other, ignored)
    VOCdevkit/VOC2010/annotations_detectron2/pc459_val/2008_00000{0,1,2}.tif   16-bit TIFF (I;16), 0..458, 459 and
                                                                              65535 (CAT-Seg's LabelMap - 1)
    ADE20K_2021_17_01/images_detectron2/validation/ADE_val_0000000{1,2,3}.jpg
    ADE20K_2021_17_01/annotations_detectron2/validation/<id>.tif  16-bit TIFF (I;16), 0..846 and 65535

The two wide benchmarks' TIFFs are written as CAT-Seg's converters write them (``Image.fromarray(uint16 array)
.save(path, "TIFF")``); their values include 255 (a class there) and values above 255.

Labels are a few random rectangles of raw values valid for the dataset (every raw value a reader accepts can
occur, 255 included where the dataset has it); each image's colour follows its label, so a model can do better
than chance.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map (256 RGB triples, flattened), as in the devkit's ``VOClabelcolormap``."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


def _label(rng: np.random.Generator, size: tuple[int, int], values: np.ndarray, ignore: bool) -> np.ndarray:
    height, width = size
    label = np.full((height, width), values[0], np.uint8)
    for _ in range(4):
        y, x = rng.integers(0, height), rng.integers(0, width)
        label[y: y + rng.integers(2, height + 1), x: x + rng.integers(2, width + 1)] = rng.choice(values)
    if ignore:  # a one-pixel boundary / void line, as VOC draws around objects
        label[rng.integers(0, height), :] = 255
    return label


def _image(rng: np.random.Generator, label: np.ndarray) -> np.ndarray:
    colours = np.random.default_rng(7).integers(0, 256, size=(256, 3))
    noise = rng.integers(-15, 16, size=(*label.shape, 3))
    return np.clip(colours[label.astype(np.int64) % 256] + noise, 0, 255).astype(np.uint8)


def _wide_label(rng: np.random.Generator, size: tuple[int, int], classes: int, ignore: tuple[int, ...]) -> np.ndarray:
    """A uint16 label of rectangles: class 255 (a class here), classes above 255, others, and the ignore values."""
    height, width = size
    label = np.full((height, width), 255, np.uint16)
    for value in [classes - 1, 256, *rng.integers(0, classes, size=3)]:
        y, x = rng.integers(0, height), rng.integers(0, width)
        label[y: y + rng.integers(2, height + 1), x: x + rng.integers(2, width + 1)] = value
    for row, value in enumerate(ignore):
        label[rng.integers(0, height), :] = value
    return label


def make_fake_wide_benchmarks(root: str | Path, seed: int = 1) -> dict[str, list[str]]:
    """Write PASCAL Context 459 and ADE20K-847 in CAT-Seg's layouts under ``root`` (module docstring).

    Returns:
        ``{"pc459": ids, "ade847": ids}``, in the order the readers list them.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    sizes = [(40, 56), (48, 36), (33, 47)]
    context = root / "VOCdevkit" / "VOC2010"
    context_ids = [f"2008_{i:06d}" for i in range(3)]
    for sub in ("JPEGImages", "annotations_detectron2/pc459_val"):
        (context / sub).mkdir(parents=True, exist_ok=True)
    for image_id, size in zip(context_ids, sizes):
        label = _wide_label(rng, size, 459, (459, 65535))
        if not (context / "JPEGImages" / f"{image_id}.jpg").exists():
            Image.fromarray(_image(rng, label)).save(context / "JPEGImages" / f"{image_id}.jpg", quality=95)
        Image.fromarray(label).save(context / "annotations_detectron2" / "pc459_val" / f"{image_id}.tif", "TIFF")
    ade = root / "ADE20K_2021_17_01"
    ade_ids = [f"ADE_val_{i:08d}" for i in (1, 2, 3)]
    for sub in ("images_detectron2/validation", "annotations_detectron2/validation"):
        (ade / sub).mkdir(parents=True, exist_ok=True)
    for image_id, size in zip(ade_ids, sizes):
        label = _wide_label(rng, size, 847, (65535,))
        Image.fromarray(_image(rng, label)).save(ade / "images_detectron2" / "validation" / f"{image_id}.jpg")
        Image.fromarray(label).save(ade / "annotations_detectron2" / "validation" / f"{image_id}.tif")
    return {"pc459": context_ids, "ade847": ade_ids}


def make_fake_benchmarks(root: str | Path, seed: int = 0) -> dict[str, list[str]]:
    """Write tiny copies of all ten benchmark layouts under ``root`` (see the module docstring).

    Args:
        root: the data root to write (created).
        seed: random seed.

    Returns:
        ``{benchmark name: image ids in the order the readers list them}`` for all ten names.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    sizes = [(40, 56), (48, 36), (33, 47)]
    ids: dict[str, list[str]] = {}

    voc = root / "VOCdevkit" / "VOC2012"
    voc_ids = [f"2007_{i:06d}" for i in range(3)]
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    for image_id, size in zip(voc_ids, sizes):
        label = _label(rng, size, np.arange(21), ignore=True)
        Image.fromarray(_image(rng, label)).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=95)
        png = Image.fromarray(label).convert("P")
        png.putpalette(voc_palette())
        png.save(voc / "SegmentationClass" / f"{image_id}.png")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("".join(f"{i}\n" for i in voc_ids))
    ids["voc21"] = ids["voc20"] = voc_ids

    context = root / "VOCdevkit" / "VOC2010"
    context_ids = [f"2008_{i:06d}" for i in range(3)]
    for sub in ("JPEGImages", "SegmentationClassContext", "ImageSets/SegmentationContext"):
        (context / sub).mkdir(parents=True, exist_ok=True)
    for image_id, size in zip(context_ids, sizes):
        label = _label(rng, size, np.arange(60), ignore=False)
        Image.fromarray(_image(rng, label)).save(context / "JPEGImages" / f"{image_id}.jpg", quality=95)
        Image.fromarray(label).save(context / "SegmentationClassContext" / f"{image_id}.png")
    (context / "ImageSets" / "SegmentationContext" / "val.txt").write_text("".join(f"{i}\n" for i in context_ids))
    ids["context60"] = ids["context59"] = context_ids

    coco = root / "coco_stuff164k"
    coco_ids = [f"{i:012d}" for i in (1, 2, 3)]
    for sub in ("images/val2017", "annotations/val2017"):
        (coco / sub).mkdir(parents=True, exist_ok=True)
    for image_id, size in zip(coco_ids, sizes):
        stuff = _label(rng, size, np.append(np.arange(171), 255), ignore=True)
        objects = np.where(stuff < 80, stuff + 1, 0).astype(np.uint8)  # things 0..79 -> 1..80, the rest -> 0
        Image.fromarray(_image(rng, stuff)).save(coco / "images" / "val2017" / f"{image_id}.jpg", quality=95)
        Image.fromarray(stuff).save(coco / "annotations" / "val2017" / f"{image_id}_labelTrainIds.png")
        Image.fromarray(objects).save(
            coco / "annotations" / "val2017" / f"{image_id}_instanceTrainIds.png")
    ids["coco_stuff"] = ids["coco_object"] = coco_ids

    city = root / "cityscapes"
    city_names = [("frankfurt", "frankfurt_000000_000010"), ("frankfurt", "frankfurt_000000_000011"),
                  ("lindau", "lindau_000000_000010")]
    for (town, stem), (height, width) in zip(city_names, [(32, 64), (32, 64), (24, 48)]):
        (city / "leftImg8bit" / "val" / town).mkdir(parents=True, exist_ok=True)
        (city / "gtFine" / "val" / town).mkdir(parents=True, exist_ok=True)
        label = _label(rng, (height, width), np.append(np.arange(19), 255), ignore=True)
        Image.fromarray(_image(rng, label)).save(city / "leftImg8bit" / "val" / town / f"{stem}_leftImg8bit.png")
        Image.fromarray(label).save(city / "gtFine" / "val" / town / f"{stem}_gtFine_labelTrainIds.png")
    ids["cityscapes"] = [stem for _, stem in city_names]

    ade = root / "ade" / "ADEChallengeData2016"
    ade_ids = [f"ADE_val_{i:08d}" for i in (1, 2, 3)]
    for sub in ("images/validation", "annotations/validation"):
        (ade / sub).mkdir(parents=True, exist_ok=True)
    for image_id, size in zip(ade_ids, sizes):
        label = _label(rng, size, np.arange(151), ignore=False)
        Image.fromarray(_image(rng, label)).save(ade / "images" / "validation" / f"{image_id}.jpg", quality=95)
        Image.fromarray(label).save(ade / "annotations" / "validation" / f"{image_id}.png")
    ids["ade20k"] = ade_ids
    ids.update(make_fake_wide_benchmarks(root, seed + 1))
    return {name: ids[name] for name in ("voc21", "context60", "coco_object", "voc20", "context59", "coco_stuff",
                                         "cityscapes", "ade20k", "pc459", "ade847")}
