"""A tiny PASCAL-Context-layout dataset fabricated for tests (import as ``from fake_data import ...``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def make_fake_pascal_context(
    root: str | Path,
    n_images: int = 4,
    sizes: Sequence[tuple[int, int]] = ((48, 64), (64, 40)),
    num_classes: int = 59,
    seed: int = 0,
) -> list[str]:
    """Write random JPEGs and rectangle-patterned label PNGs in mmsegmentation's PASCAL Context layout.

    Writes ``root/VOCdevkit/VOC2010/{JPEGImages/<id>.jpg, SegmentationClassContext/<id>.png,
    ImageSets/SegmentationContext/val.txt}``. Labels hold raw values (0 = background) in ``0..min(num_classes, 59)``,
    valid for reading as Context-59 and Context-60; each image's colour depends on its label, so a model can do
    better than chance.

    Args:
        root: folder to write into (created).
        n_images: number of images.
        sizes: ``(height, width)`` per image, cycled.
        num_classes: raw foreground classes used are ``1..min(num_classes, 59)``.
        seed: random seed.

    Returns:
        The image ids, in split order.
    """
    rng = np.random.default_rng(seed)
    voc = Path(root) / "VOCdevkit" / "VOC2010"
    for sub in ("JPEGImages", "SegmentationClassContext", "ImageSets/SegmentationContext"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    top = min(num_classes, 59)
    palette = rng.integers(0, 256, size=(top + 1, 3))
    ids = [f"2008_{i:06d}" for i in range(n_images)]
    for i, image_id in enumerate(ids):
        height, width = sizes[i % len(sizes)]
        label = np.zeros((height, width), np.uint8)
        for _ in range(4):
            y, x = rng.integers(0, height), rng.integers(0, width)
            label[y : y + rng.integers(1, height + 1), x : x + rng.integers(1, width + 1)] = rng.integers(0, top + 1)
        noise = rng.integers(-20, 21, size=(height, width, 3))
        image = np.clip(palette[label] + noise, 0, 255).astype(np.uint8)
        Image.fromarray(image).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=95)
        Image.fromarray(label).save(voc / "SegmentationClassContext" / f"{image_id}.png")
    (voc / "ImageSets" / "SegmentationContext" / "val.txt").write_text("".join(f"{i}\n" for i in ids))
    return ids
