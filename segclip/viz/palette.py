"""Class colours and label-map PNGs.

**Colours.** A class's colour depends on its name, not on its place in the list: the name's SHA-256 picks one of
:data:`BASE_COLOURS` fixed colours, chosen once (greedily, farthest point first in CIELAB, among RGB colours of
lightness 30-88, away from black, white and each other: the first 12 are at least 50 CIELAB units apart, the first
24 at least 36, all 48 at least 26; 2.3 is a just-noticeable difference).
Within one class list a taken colour is never given twice: a name whose colour is taken moves to the next free
one in a fixed order, names earlier in the list first; lists longer than :data:`BASE_COLOURS` continue with further
colours of the same farthest-point sequence. So "sky" is the same blue in every run of a list, and no two classes
of a list share a colour. The background (``--background-threshold``) is black.

**Label maps.** :func:`label_png` writes a palette PNG (mode ``P``: the pixel values are the class indices, the
palette holds the class colours, as VOC's ``SegmentationClass`` files) when the classes (and the background) fit in
256 values, and a 16-bit grayscale PNG (mode ``I;16``: indices only) otherwise; :func:`read_label_png` reads both,
and anything written by segclip, back to indices.
"""
from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

BACKGROUND_COLOUR = (0, 0, 0)
BASE_COLOURS = 48  # names hash into the first 48 colours of the sequence
PALETTE_FORMAT, WIDE_FORMAT = "palette PNG (mode P, 8-bit class indices)", "16-bit PNG (mode I;16, class indices)"


def _lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1] ``(..., 3)`` -> CIELAB (D65) ``(..., 3)``."""
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = linear @ np.array([[0.4124, 0.2126, 0.0193], [0.3576, 0.7152, 0.1192], [0.1805, 0.0722, 0.9505]])
    xyz = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


@lru_cache(maxsize=4)
def colour_sequence(count: int) -> np.ndarray:
    """The first ``count`` colours of the farthest-point sequence: ``(count, 3)`` uint8 RGB.

    Candidates are the RGB colours on a 17-step grid with CIELAB lightness 30..88; each next colour is the candidate
    farthest (CIELAB distance) from black, white and every colour chosen so far. Deterministic; ``count`` up to
    the number of candidates (a few thousand).

    Example:
        >>> colour_sequence(3).tolist() == colour_sequence(5)[:3].tolist()
        True
    """
    steps = np.linspace(0, 1, 17)
    grid = np.stack(np.meshgrid(steps, steps, steps, indexing="ij"), -1).reshape(-1, 3)  # (17^3, 3)
    lab = _lab(grid)
    keep = (lab[:, 0] >= 30) & (lab[:, 0] <= 88)
    grid, lab = grid[keep], lab[keep]
    if count > len(grid):
        raise ValueError(f"at most {len(grid)} distinct colours, asked for {count}")
    anchors = _lab(np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]))
    nearest = np.min(np.linalg.norm(lab[:, None] - anchors[None], axis=-1), axis=1)  # (candidates,)
    chosen = []
    for _ in range(count):
        best = int(np.argmax(nearest))
        chosen.append(best)
        nearest = np.minimum(nearest, np.linalg.norm(lab - lab[best], axis=1))
    return (grid[chosen] * 255).round().astype(np.uint8)


def _slot(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") % BASE_COLOURS


def class_colours(names: Sequence[str]) -> np.ndarray:
    """The colour of each class of a list: ``(len(names), 3)`` uint8 RGB (see the module docstring).

    Args:
        names: the class names, in list order.

    Returns:
        One colour per name; all distinct; a name's colour depends only on the names before it in the list that
        hash to a colour it would take (usually none).

    Example:
        >>> a = class_colours(["sky", "grass", "ball"])
        >>> b = class_colours(["ball", "sky"])
        >>> a[0].tolist() == b[1].tolist(), len({tuple(c) for c in class_colours([str(i) for i in range(300)])})
        (True, 300)
    """
    sequence = colour_sequence(max(BASE_COLOURS, len(names)))
    taken: set[int] = set()
    found = []
    for name in names:
        slot = _slot(name)
        for step in range(BASE_COLOURS):  # the next free base colour, in a fixed order
            if (slot + step) % BASE_COLOURS not in taken:
                slot = (slot + step) % BASE_COLOURS
                break
        else:  # every base colour taken: the next colours of the sequence, in list order
            slot = BASE_COLOURS + sum(1 for t in taken if t >= BASE_COLOURS)
        taken.add(slot)
        found.append(sequence[slot])
    return np.array(found, np.uint8).reshape(len(names), 3)


def label_colours(names: Sequence[str], background: bool = False) -> np.ndarray:
    """Colours indexed by label value: the classes', then black for the background value ``len(names)``."""
    colours = class_colours(names)
    return np.concatenate([colours, np.array([BACKGROUND_COLOUR], np.uint8)]) if background else colours


def label_format(values: int) -> str:
    """How a label map of ``values`` distinct label values (classes, plus one for a background) is stored.

    Example:
        >>> label_format(256) == PALETTE_FORMAT, label_format(257) == WIDE_FORMAT
        (True, True)
    """
    if values > 65536:
        raise ValueError(f"label maps hold at most 65536 values, got {values}")
    return PALETTE_FORMAT if values <= 256 else WIDE_FORMAT


def label_png(labels: np.ndarray, names: Sequence[str] | None = None, *, values: int | None = None,
              background: bool = False) -> bytes:
    """A label map as PNG bytes: palette PNG when the label values fit in 8 bits, else 16-bit grayscale.

    Args:
        labels: ``(H, W)`` integer class indices (``len(names)`` for the background, with ``background``).
        names: the class names (their colours fill the palette); None: colours by index (:func:`colour_sequence`).
        values: the number of possible label values (default: ``len(names)``, plus one with ``background``); it,
            not the image's content, decides the format, so every map of a run has the same one.
        background: label value ``len(names)`` is the background (black).

    Returns:
        The PNG file's bytes.

    Raises:
        ValueError: a label outside ``0..values-1``, or neither ``names`` nor ``values``.

    Example:
        >>> data = label_png(np.array([[0, 1], [2, 1]]), ["sky", "grass"], background=True)
        >>> picture = Image.open(io.BytesIO(data))
        >>> picture.mode, np.asarray(picture).tolist(), picture.getpalette()[6:9]
        ('P', [[0, 1], [2, 1]], [0, 0, 0])
        >>> Image.open(io.BytesIO(label_png(np.array([[300]]), values=301))).mode
        'I;16'
    """
    if values is None:
        if names is None:
            raise ValueError("pass the class names or the number of label values")
        values = len(names) + int(background)
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= values):
        raise ValueError(f"labels in {labels.min()}..{labels.max()}, outside 0..{values - 1}")
    buffer = io.BytesIO()
    if label_format(values) == PALETTE_FORMAT:
        if names is not None:
            colours = label_colours(names, background)
        else:
            colours = colour_sequence(max(values, 1))
        flat = np.zeros((256, 3), np.uint8)
        flat[:len(colours)] = colours[:256]
        picture = Image.fromarray(labels.astype(np.uint8), mode="L")
        picture = picture.convert("P") if picture.mode != "P" else picture
        picture.putpalette(flat.ravel().tolist())
        picture.save(buffer, format="PNG")
    else:
        Image.fromarray(labels.astype(np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


def read_label_png(path: str | Path | io.BytesIO) -> np.ndarray:
    """A label map written by :func:`label_png` (palette or 16-bit) or any single-channel PNG of indices, as
    ``(H, W)`` int64 class indices (the palette's colours are not applied: the values are the indices).

    Raises:
        ValueError: the image has several channels.

    Example:
        >>> read_label_png(io.BytesIO(label_png(np.array([[0, 299]]), values=300))).tolist()
        [[0, 299]]
    """
    with Image.open(path) as picture:
        if picture.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N"):
            raise ValueError(f"a label map has one channel of class indices; this image has mode {picture.mode}")
        return np.asarray(picture).astype(np.int64)
