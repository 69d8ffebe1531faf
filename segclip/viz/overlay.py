"""Colour overlays of label maps with a legend, and per-class heatmaps (PIL only; no display needed)."""
from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BACKGROUND_COLOUR = (0, 0, 0)
LEGEND_CHARACTERS = 32  # longer names are cut with an ellipsis, so the legend's width stays bounded


def shorten(name: str, limit: int = LEGEND_CHARACTERS) -> str:
    """``name`` cut to ``limit`` characters with an ellipsis.

    Example:
        >>> shorten("a very long class name indeed", 12)
        'a very long…'
    """
    return name if len(name) <= limit else name[:limit - 1].rstrip() + "…"


def _font(size: int = 12) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def palette(count: int) -> np.ndarray:
    """``count`` well-separated RGB colours (golden-ratio hues, alternating brightness): ``(count, 3)`` uint8."""
    colours = [colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 0.95 if i % 2 == 0 else 0.7)
               for i in range(count)]
    return (np.array(colours).reshape(count, 3) * 255).round().astype(np.uint8)


def _row_bands(size: tuple[int, int], pixels: int = 1 << 21) -> list[slice]:
    """Slices of rows holding about ``pixels`` pixels each."""
    step = max(1, pixels // max(1, size[1]))
    return [slice(start, start + step) for start in range(0, size[0], step)]


def overlay(image: np.ndarray, labels: np.ndarray, class_names: Sequence[str], alpha: float = 0.5,
            background: str | None = None) -> Image.Image:
    """Blend a colour-coded label map over an image and add a legend of the classes present.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        labels: ``(H, W)`` integer labels in ``0..C-1``, or ``C`` for background.
        class_names: C names.
        alpha: weight of the colours.
        background: legend name of label ``C`` (None: label ``C`` never occurs).

    Returns:
        An RGB image: the blend, with the legend in a strip to its right (names longer than
        :data:`LEGEND_CHARACTERS` are shortened, so the strip's width is bounded).

    Example:
        >>> overlay(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), int), ["sky"]).size[1] >= 8
        True
    """
    colours = np.concatenate([palette(len(class_names)), np.array([BACKGROUND_COLOUR], np.uint8)])
    blended = np.empty_like(image, dtype=np.uint8)
    for rows in _row_bands(image.shape[:2]):  # in bands: bounded memory on any image size
        blend = image[rows].astype(np.float32) * (1 - alpha) + colours[labels[rows]].astype(np.float32) * alpha
        blended[rows] = blend.round().clip(0, 255).astype(np.uint8)
    blended = Image.fromarray(blended)
    present = [int(v) for v in np.flatnonzero(np.bincount(labels.ravel(), minlength=1))]
    names = [shorten(class_names[v] if v < len(class_names) else (background or "background")) for v in present]
    font = _font()
    row = 16
    width = 24 + max((int(font.getlength(n)) for n in names), default=0) + 8
    height = max(image.shape[0], row * len(present) + 8)
    canvas = Image.new("RGB", (image.shape[1] + width, height), (255, 255, 255))
    canvas.paste(blended, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, (value, name) in enumerate(zip(present, names)):
        x, y = image.shape[1] + 4, 4 + i * row
        draw.rectangle((x, y, x + 12, y + 12), fill=tuple(int(c) for c in colours[value]), outline=(0, 0, 0))
        draw.text((x + 18, y), name, fill=(0, 0, 0), font=font)
    return canvas


def heatmap(probability: np.ndarray, name: str | None = None) -> Image.Image:
    """A ``(H, W)`` map in ``[0, 1]`` as an RGB image (viridis: dark blue 0 -> yellow 1), with a colour bar and, if
    given, the class name in a strip below it.

    Example:
        >>> picture = heatmap(np.linspace(0, 1, 64 * 80).reshape(64, 80), "grass")
        >>> picture.size[0] >= 80 and picture.size[1] > 64  # the map, then a strip with the colour bar and name
        True
    """
    from matplotlib import colormaps

    colours = colormaps["viridis"]
    height, width = probability.shape
    rgb = np.empty((height, width, 3), np.uint8)
    for rows in _row_bands((height, width)):  # in bands: the colour map works in float64 RGBA
        rgb[rows] = (colours(np.clip(probability[rows], 0, 1))[..., :3] * 255).round().astype(np.uint8)
    font = _font()
    strip = 34
    canvas = Image.new("RGB", (max(width, 120), height + strip), (255, 255, 255))
    canvas.paste(Image.fromarray(rgb), (0, 0))
    bar_width = max(40, min(canvas.size[0] - 40, 200))
    bar = colours(np.linspace(0, 1, bar_width))[None, :, :3].repeat(8, axis=0)
    canvas.paste(Image.fromarray((bar * 255).round().astype(np.uint8)), (20, height + 4))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, height + 2), "0", fill=(0, 0, 0), font=font)
    draw.text((24 + bar_width, height + 2), "1", fill=(0, 0, 0), font=font)
    label, limit = name or "probability", LEGEND_CHARACTERS
    while limit > 4 and font.getlength(shorten(label, limit)) > canvas.size[0] - 8:
        limit -= 1
    draw.text((4, height + 16), shorten(label, limit), fill=(0, 0, 0), font=font)
    return canvas
