"""Colour overlays of label maps with a legend, and per-class heatmaps (PIL only; no display needed)."""
from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from segclip.viz.palette import BACKGROUND_COLOUR, class_colours, colour_sequence

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


def font_size(height: int, width: int) -> int:
    """The legend's font size for an image: 2.5% of its shorter side, at least 12 px (a 1600 x 1200 image: 30 px).

    Example:
        >>> font_size(192, 256), font_size(1200, 1600)
        (12, 30)
    """
    return max(12, round(0.025 * min(height, width)))


def palette(count: int) -> np.ndarray:
    """``count`` distinct RGB colours by index (:func:`segclip.viz.palette.colour_sequence`): ``(count, 3)`` uint8.
    Class lists get colours by name (:func:`segclip.viz.palette.class_colours`)."""
    return colour_sequence(count).copy()


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
        :data:`LEGEND_CHARACTERS` are shortened, so the strip's width is bounded). Colours are the classes' own
        (:func:`segclip.viz.palette.class_colours`: the same name, the same colour), the background black; the
        legend's font is :func:`font_size` of the image.

    Example:
        >>> overlay(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), int), ["sky"]).size[1] >= 8
        True
    """
    colours = np.concatenate([class_colours(class_names), np.array([BACKGROUND_COLOUR], np.uint8)])
    blended = np.empty_like(image, dtype=np.uint8)
    for rows in _row_bands(image.shape[:2]):  # in bands: bounded memory on any image size
        blend = image[rows].astype(np.float32) * (1 - alpha) + colours[labels[rows]].astype(np.float32) * alpha
        blended[rows] = blend.round().clip(0, 255).astype(np.uint8)
    blended = Image.fromarray(blended)
    present = [int(v) for v in np.flatnonzero(np.bincount(labels.ravel(), minlength=1))]
    names = [shorten(class_names[v] if v < len(class_names) else (background or "background")) for v in present]
    size = font_size(*image.shape[:2])
    font = _font(size)
    row, pad = round(1.5 * size), max(4, size // 3)
    width = pad + size + pad + max((int(font.getlength(n)) for n in names), default=0) + 2 * pad
    height = max(image.shape[0], row * len(present) + 2 * pad)
    canvas = Image.new("RGB", (image.shape[1] + width, height), (255, 255, 255))
    canvas.paste(blended, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, (value, name) in enumerate(zip(present, names)):
        x, y = image.shape[1] + pad, pad + i * row
        draw.rectangle((x, y, x + size, y + size), fill=tuple(int(c) for c in colours[value]), outline=(0, 0, 0),
                       width=max(1, size // 12))
        draw.text((x + size + pad, y + size / 2), name, fill=(0, 0, 0), font=font, anchor="lm")
    return canvas


def picture_bytes(picture: Image.Image, format: str = "png", dpi: int = 150) -> bytes:
    """An overlay or heatmap as the bytes of a ``png``, ``pdf`` (the image on a page of its size at ``dpi``) or
    ``svg`` file (the PNG embedded at that size, so that it scales inside a vector document).

    Example:
        >>> picture_bytes(Image.new("RGB", (4, 3)), "svg")[:4], picture_bytes(Image.new("RGB", (4, 3)), "pdf")[:4]
        (b'<svg', b'%PDF')
    """
    buffer = io.BytesIO()
    if format == "pdf":
        picture.convert("RGB").save(buffer, format="PDF", resolution=float(dpi))
    elif format == "svg":
        picture.save(buffer, format="PNG", dpi=(dpi, dpi))
        width, height = (72 * side / dpi for side in picture.size)  # points
        data = base64.b64encode(buffer.getvalue()).decode("ascii")
        return (f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
                f'width="{width:.2f}pt" height="{height:.2f}pt" viewBox="0 0 {picture.size[0]} {picture.size[1]}">'
                f'<image width="{picture.size[0]}" height="{picture.size[1]}" xlink:href="data:image/png;base64,'
                f'{data}"/></svg>\n').encode("ascii")
    elif format == "png":
        picture.save(buffer, format="PNG", dpi=(dpi, dpi))
    else:
        raise ValueError(f"unknown picture format {format!r}; png, svg or pdf")
    return buffer.getvalue()


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
    size = font_size(height, width)
    font = _font(size)
    pad = max(4, size // 3)
    strip = 2 * size + 3 * pad
    canvas = Image.new("RGB", (max(width, 10 * size), height + strip), (255, 255, 255))
    canvas.paste(Image.fromarray(rgb), (0, 0))
    digit = int(font.getlength("0")) + pad
    bar_width = max(40, min(canvas.size[0] - 2 * digit - 2 * pad, 16 * size))
    bar = colours(np.linspace(0, 1, bar_width))[None, :, :3].repeat(max(8, size * 2 // 3), axis=0)
    canvas.paste(Image.fromarray((bar * 255).round().astype(np.uint8)), (pad + digit, height + pad))
    draw = ImageDraw.Draw(canvas)
    middle = height + pad + bar.shape[0] / 2
    draw.text((pad, middle), "0", fill=(0, 0, 0), font=font, anchor="lm")
    draw.text((pad + digit + bar_width + pad, middle), "1", fill=(0, 0, 0), font=font, anchor="lm")
    label, limit = name or "probability", LEGEND_CHARACTERS
    while limit > 4 and font.getlength(shorten(label, limit)) > canvas.size[0] - 2 * pad:
        limit -= 1
    draw.text((pad, height + 2 * pad + size), shorten(label, limit), fill=(0, 0, 0), font=font)
    return canvas
