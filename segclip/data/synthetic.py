"""Procedural captioned scenes with pixel-exact masks, and a synthetic benchmark in PASCAL Context's layout.

A scene is one or two "stuff" regions (a top and a bottom region split by a wavy horizon) with up to four distinct
objects painted on top. Every class has its own colour and its own texture (clouds, grass blades, waves, sand
ripples, bricks, snow sparkle; a shaded ball, a taped box, a flat star, a striped triangle, a chequered diamond, a
banded ring), jittered per instance (hue, saturation, value, scale, position, rotation, texture phase) and overlaid
with camera noise. Masks are the painting masks themselves, so they are exact: every pixel belongs to the class
that was painted last on it. Everything is drawn from a ``numpy.random.Generator``; nothing uses global state.

The benchmark (:func:`generate_benchmark`) is written in the layout mmsegmentation's PASCAL Context converter writes,
so :mod:`segclip.data.pascal_context` reads it unchanged; class ``c`` is stored as ``c + 1`` (Context-59
convention: 0 would be background, and it never occurs because every pixel has a class).
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from segclip.errors import OutputError

log = logging.getLogger(__name__)

STUFF_CLASSES: tuple[str, ...] = ("sky", "grass", "water", "sand", "wall", "snow")
OBJECT_CLASSES: tuple[str, ...] = ("ball", "box", "star", "triangle", "diamond", "ring")
SYNTHETIC_CLASSES: tuple[str, ...] = STUFF_CLASSES + OBJECT_CLASSES
BENCHMARK_STREAM = (0xBE4C,)  # spawn key of benchmark scenes
GENERATOR_VERSION = 2  # 2: benchmark scenes on a stream of their own, disjoint from training batches
SYNTHETIC_VAL = 200  # images of the synthetic benchmark (segclip eval --dataset synthetic)
BENCHMARK_SIZE = (256, 320)  # (height, width): short side 4/3 of the tiny model's 192 crop, as 512 is of 384

# Base colour per class in HSV (hue, saturation, value), each in [0, 1]; jittered per instance.
_BASE_HSV: dict[str, tuple[float, float, float]] = {
    "sky": (0.58, 0.45, 0.95), "grass": (0.30, 0.75, 0.60), "water": (0.61, 0.80, 0.55),
    "sand": (0.11, 0.35, 0.85), "wall": (0.03, 0.65, 0.60), "snow": (0.60, 0.06, 0.95),
    "ball": (0.00, 0.85, 0.90), "box": (0.07, 0.90, 0.95), "star": (0.15, 0.90, 1.00),
    "triangle": (0.88, 0.80, 0.90), "diamond": (0.76, 0.70, 0.75), "ring": (0.48, 0.85, 0.85),
}
_WHITE = np.ones(3, np.float32)


@dataclass
class Scene:
    """One rendered scene.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        mask: (H, W) uint8 class indices into :data:`SYNTHETIC_CLASSES`; every pixel is labelled.
        caption: names every class in ``mask``, e.g. ``"a photo of a ball and a star on grass under sky."``
        classes: sorted class indices present in ``mask``.
        phrase: the caption's content without article and prefix, e.g. ``"ball and star on grass under sky"``,
            to be put into prompt templates (``"a photo of a {}."``).
    """

    image: np.ndarray
    mask: np.ndarray
    caption: str
    classes: list[int]
    phrase: str


@dataclass(frozen=True)
class _Pose:
    """Where an object sits: centre (cy, cx) and size r in pixels, rotation in radians."""

    cy: float
    cx: float
    r: float
    angle: float


# ---------------------------------------------------------------------------------------------------- textures


def _colour(rng: np.random.Generator, name: str) -> np.ndarray:
    """The class's base colour with hue / saturation / value jitter, as (3,) float32 RGB in [0, 1]."""
    h, s, v = _BASE_HSV[name]
    h = (h + rng.uniform(-0.02, 0.02)) % 1.0
    s = float(np.clip(s + rng.uniform(-0.08, 0.08), 0, 1))
    v = float(np.clip(v + rng.uniform(-0.08, 0.08), 0, 1))
    return np.array(colorsys.hsv_to_rgb(h, s, v), np.float32)


def _noise(rng: np.random.Generator, h: int, w: int, cell_y: float, cell_x: float) -> np.ndarray:
    """Smooth value noise in [0, 1] with features about ``cell_y`` x ``cell_x`` pixels; (h, w) float32."""
    grid = rng.random((int(h / cell_y) + 2, int(w / cell_x) + 2), dtype=np.float32)
    return np.clip(cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC), 0, 1)


def _mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Blend colours a and b by weight t: (3,) or (H, W, 3), t (H, W) -> (H, W, 3)."""
    return a * (1 - t[..., None]) + b * t[..., None]


def _sky(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, base: np.ndarray) -> np.ndarray:
    h, w = y.shape
    sky = base * (0.85 + 0.2 * y / h)[..., None]  # lighter towards the horizon
    cloud = 0.65 * _noise(rng, h, w, 30, 50) + 0.35 * _noise(rng, h, w, 10, 14)
    return _mix(sky, _WHITE, np.clip((cloud - 0.52) * 3.5, 0, 0.95))


def _grass(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, base: np.ndarray) -> np.ndarray:
    h, w = y.shape
    blades = _noise(rng, h, w, rng.uniform(6, 14), rng.uniform(1.2, 2.0))  # tall, thin streaks
    return base * (0.45 + 0.6 * blades + 0.25 * (_noise(rng, h, w, 40, 40) - 0.5))[..., None]


def _water(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, base: np.ndarray) -> np.ndarray:
    h, w = y.shape
    phase = 2 * np.pi * y / rng.uniform(7, 12) + 4 * _noise(rng, h, w, 30, 60)
    wave = np.sin(phase)
    return _mix(base * (0.8 + 0.2 * wave)[..., None], _WHITE, np.clip((wave - 0.85) * 4, 0, 0.6))


def _sand(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, base: np.ndarray) -> np.ndarray:
    h, w = y.shape
    a = rng.uniform(-0.6, 0.6)
    ripple = np.sin(2 * np.pi * (x * np.sin(a) + y * np.cos(a)) / rng.uniform(9, 16) + 3 * _noise(rng, h, w, 25, 25))
    speckle = 0.09 * rng.standard_normal((h, w), np.float32)
    return base * (0.92 + 0.07 * ripple + speckle)[..., None]


def _wall(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, base: np.ndarray) -> np.ndarray:
    bh = rng.uniform(10, 16)
    bw = bh * rng.uniform(2.0, 2.6)
    row = np.floor(y / bh).astype(np.int64)
    xs = x + (row % 2) * bw / 2
    col = np.floor(xs / bw).astype(np.int64)
    shade = rng.uniform(0.75, 1.15, (row.max() + 1, col.max() + 1)).astype(np.float32)
    brick = base * shade[row, col][..., None]
    mortar = ((y % bh) < 2) | ((xs % bw) < 2)
    return np.where(mortar[..., None], np.float32(0.78), brick)


def _snow(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, base: np.ndarray) -> np.ndarray:
    h, w = y.shape
    snow = base * (0.93 + 0.1 * (_noise(rng, h, w, 30, 30) - 0.5))[..., None]
    return _mix(snow, _WHITE, (rng.random((h, w)) < 0.02).astype(np.float32))


def _local(y: np.ndarray, x: np.ndarray, p: _Pose) -> tuple[np.ndarray, np.ndarray]:
    """Object-frame coordinates (u, v) of every pixel: rotated by the pose's angle about its centre."""
    c, s = np.cos(p.angle), np.sin(p.angle)
    dx, dy = x - p.cx, y - p.cy
    return c * dx + s * dy, -s * dx + c * dy


def _ball(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, base: np.ndarray, p: _Pose) -> np.ndarray:
    nx, ny = (x - p.cx) / p.r, (y - p.cy) / p.r
    nz = np.sqrt(np.clip(1 - nx**2 - ny**2, 0, 1))
    diffuse = np.clip(-0.45 * nx - 0.55 * ny + 0.7 * nz, 0, 1)  # light from the upper left
    return _mix(base * (0.3 + 0.8 * diffuse)[..., None], _WHITE, 0.7 * diffuse**24)


def _box(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, base: np.ndarray, p: _Pose) -> np.ndarray:
    u, v = _local(y, x, p)
    grain = np.sin(2 * np.pi * u / rng.uniform(4, 7) + 2 * _noise(rng, *y.shape, 20, 20))
    box = base * (0.85 + 0.12 * grain)[..., None]
    tape = np.abs(v) < 0.14 * p.r
    edge = np.maximum(np.abs(u), np.abs(v)) > 0.72 * p.r
    box = np.where(tape[..., None], _mix(base, _WHITE, np.full(y.shape, 0.55, np.float32)), box)
    return np.where(edge[..., None], base * 0.5, box)


def _star(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, base: np.ndarray, p: _Pose) -> np.ndarray:
    rho = np.hypot(x - p.cx, y - p.cy) / p.r
    return base * (1.05 - 0.35 * rho + 0.03 * rng.standard_normal(y.shape, np.float32))[..., None]


def _triangle(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, base: np.ndarray, p: _Pose) -> np.ndarray:
    u, v = _local(y, x, p)
    stripe = (np.floor((u + v) / (p.r * rng.uniform(0.2, 0.3))) % 2).astype(np.float32)
    return _mix(base, _mix(base, _WHITE, np.full(y.shape, 0.6, np.float32)), stripe)


def _diamond(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, base: np.ndarray, p: _Pose) -> np.ndarray:
    u, v = _local(y, x, p)
    cell = p.r * rng.uniform(0.25, 0.35)
    check = ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)
    return _mix(base, _mix(base * 0.6, _WHITE, np.full(y.shape, 0.5, np.float32)), check)


def _ring(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, base: np.ndarray, p: _Pose) -> np.ndarray:
    rho = np.hypot(x - p.cx, y - p.cy)
    band = np.sin(2 * np.pi * rho / (p.r * rng.uniform(0.12, 0.18)))
    return base * (0.75 + 0.3 * band)[..., None]


_StuffTexture = Callable[[np.random.Generator, np.ndarray, np.ndarray, np.ndarray], np.ndarray]
_ObjectTexture = Callable[[np.random.Generator, np.ndarray, np.ndarray, np.ndarray, _Pose], np.ndarray]
_STUFF_TEXTURES: dict[str, _StuffTexture] = {
    "sky": _sky, "grass": _grass, "water": _water, "sand": _sand, "wall": _wall, "snow": _snow,
}
_OBJECT_TEXTURES: dict[str, _ObjectTexture] = {
    "ball": _ball, "box": _box, "star": _star, "triangle": _triangle, "diamond": _diamond, "ring": _ring,
}


# ---------------------------------------------------------------------------------------------------- shapes


def _shape(name: str, y: np.ndarray, x: np.ndarray, p: _Pose) -> np.ndarray:
    """The object's pixel mask, (H, W) bool; shapes are sized so their areas are alike for equal r."""
    u, v = _local(y, x, p)
    rr = u**2 + v**2
    if name == "ball":
        return rr <= p.r**2
    if name == "box":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.85 * p.r
    if name == "diamond":
        return np.abs(u) / (0.8 * p.r) + np.abs(v) / (1.25 * p.r) <= 1
    if name == "ring":
        return (rr <= p.r**2) & (rr >= (0.55 * p.r) ** 2)
    if name == "triangle":  # equilateral, circumradius 1.3 r: inside every edge's half-plane
        phis = np.pi / 2 + 2 * np.pi / 3 * np.arange(3)
        return np.all([u * np.cos(f) + v * np.sin(f) <= 0.65 * p.r for f in phis], axis=0)
    if name == "star":  # five points, outer radius 1.2 r, inner 0.5 r; fold into one half-sector and test one edge
        outer, inner, half = 1.2 * p.r, 0.5 * p.r, np.pi / 5
        a = np.arctan2(v, u) % (2 * half)
        a = np.minimum(a, 2 * half - a)  # 0 at a tip, pi/5 at an inner corner
        rho = np.sqrt(rr)
        px, py = rho * np.cos(a), rho * np.sin(a)
        ex, ey = inner * np.cos(half) - outer, inner * np.sin(half)  # edge from the tip (outer, 0) to the corner
        return ex * py - ey * (px - outer) >= 0  # on the centre's side of the edge
    raise ValueError(f"unknown object class {name!r}")


# ---------------------------------------------------------------------------------------------------- scenes


def _camera(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Exposure jitter and sensor noise; (H, W, 3) float in [0, 1] -> uint8."""
    image = image * rng.uniform(0.9, 1.1) + rng.uniform(0.01, 0.03) * rng.standard_normal(image.shape, np.float32)
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def _listing(names: list[str], article: str) -> str:
    """``["ball", "star", "box"]`` -> ``"ball, star and box"`` (with ``article`` before each name)."""
    words = [f"{article}{n}" for n in names]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _describe(objects: list[str], bottom: str | None, top: str | None, article: str) -> str:
    """Name every visible class: objects (in painting order), then the ground and the region above it."""
    stuff = " under ".join(s for s in (bottom, top) if s)
    if not objects:
        return stuff
    return f"{_listing(objects, article)} on {stuff}" if stuff else _listing(objects, article)


def render_scene(rng: np.random.Generator, height: int, width: int) -> Scene:
    """Render one captioned scene with its exact mask.

    Args:
        rng: the only source of randomness; the same generator state gives the same scene, byte for byte.
        height: image height in pixels (at least 32).
        width: image width in pixels (at least 32).

    Returns:
        A :class:`Scene`: image (height, width, 3) uint8, mask (height, width) uint8, caption naming every class in
        the mask (objects first, then the ground and the region above it), the classes present.

    Raises:
        ValueError: ``height`` or ``width`` below 32.

    Example:
        >>> scene = render_scene(np.random.default_rng(0), 192, 192)
        >>> scene.image.shape, scene.mask.shape, scene.caption.startswith("a photo of ")
        ((192, 192, 3), (192, 192), True)
    """
    if height < 32 or width < 32:
        raise ValueError(f"scenes need at least 32 x 32 pixels, got {height} x {width}")
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.zeros((height, width, 3), np.float32)
    mask = np.zeros((height, width), np.uint8)

    def paint(name: str, region: np.ndarray, texture: np.ndarray, window: tuple[slice, slice]) -> None:
        np.copyto(image[window], texture, where=region[..., None])
        mask[window][region] = SYNTHETIC_CLASSES.index(name)

    stuff = [str(s) for s in rng.choice(STUFF_CLASSES, size=2, replace=False)]
    bottom, top = (stuff[0], stuff[1]) if rng.random() < 0.6 else (stuff[0], None)
    full = (slice(None), slice(None))
    paint(bottom, np.ones_like(mask, bool), _STUFF_TEXTURES[bottom](rng, y, x, _colour(rng, bottom)), full)
    if top is not None:
        horizon = height * rng.uniform(0.3, 0.65) + height * rng.uniform(0, 0.06) * np.sin(
            2 * np.pi * x / (width * rng.uniform(0.4, 1.2)) + rng.uniform(0, 2 * np.pi)
        )
        paint(top, y < horizon, _STUFF_TEXTURES[top](rng, y, x, _colour(rng, top)), full)

    short = min(height, width)
    poses: list[_Pose] = []
    objects: list[str] = []
    count = rng.choice(5, p=[0.1, 0.25, 0.3, 0.2, 0.15])
    for name in rng.choice(OBJECT_CLASSES, size=count, replace=False):
        for _ in range(20):  # rejection sampling: objects may overlap, rarely hide each other; captions say what shows
            r = short * rng.uniform(0.09, 0.26)
            pose = _Pose(rng.uniform(0.3 * r, height - 0.3 * r), rng.uniform(0.3 * r, width - 0.3 * r), r,
                         rng.uniform(0, 2 * np.pi))
            if all(np.hypot(pose.cy - q.cy, pose.cx - q.cx) > 0.9 * (pose.r + q.r) for q in poses):
                break
        else:
            continue
        poses.append(pose)
        objects.append(str(name))
        reach = 1.35 * pose.r  # every shape fits in this radius
        window = (slice(max(0, int(pose.cy - reach)), int(pose.cy + reach) + 1),
                  slice(max(0, int(pose.cx - reach)), int(pose.cx + reach) + 1))
        yw, xw = y[window], x[window]
        paint(name, _shape(name, yw, xw, pose), _OBJECT_TEXTURES[name](rng, yw, xw, _colour(rng, name), pose), window)

    present = sorted(int(c) for c in np.unique(mask))
    visible = [n for n in objects if SYNTHETIC_CLASSES.index(n) in present]
    bottom_v, top_v = (s if s and SYNTHETIC_CLASSES.index(s) in present else None for s in (bottom, top))
    return Scene(
        image=_camera(rng, image),
        mask=mask,
        caption=f"a photo of {_describe(visible, bottom_v, top_v, 'a ')}.",
        classes=present,
        phrase=_describe(visible, bottom_v, top_v, ""),
    )


def render_single_class(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
    """One image that shows exactly one class: what "the class of an image" means in this module.

    A stuff class fills the whole frame with its texture. An object class is one large object (r = 28-38 % of the
    side, so it covers roughly a quarter to half of the frame) near the centre, on a plain grey backdrop that belongs
    to no class (mid grey, softly shaded, never as light as snow nor textured like sand or wall).

    Args:
        rng: the only source of randomness.
        label: index into :data:`SYNTHETIC_CLASSES`.
        size: side of the square image in pixels (at least 32).

    Returns:
        (size, size, 3) uint8 RGB.

    Raises:
        ValueError: ``size`` below 32 or ``label`` out of range.

    Example:
        >>> render_single_class(np.random.default_rng(0), SYNTHETIC_CLASSES.index("ball"), 64).shape
        (64, 64, 3)
    """
    if size < 32 or not 0 <= label < len(SYNTHETIC_CLASSES):
        raise ValueError(f"need size >= 32 and 0 <= label < {len(SYNTHETIC_CLASSES)}, got size {size}, label {label}")
    name = SYNTHETIC_CLASSES[label]
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    if name in _STUFF_TEXTURES:
        return _camera(rng, _STUFF_TEXTURES[name](rng, y, x, _colour(rng, name)))
    grey = rng.uniform(0.35, 0.6) + 0.1 * (_noise(rng, size, size, size / 3, size / 3) - 0.5)
    image = np.repeat(grey[..., None], 3, axis=2)
    pose = _Pose(size * rng.uniform(0.42, 0.58), size * rng.uniform(0.42, 0.58), size * rng.uniform(0.28, 0.38),
                 rng.uniform(0, 2 * np.pi))
    region = _shape(name, y, x, pose)
    image[region] = _OBJECT_TEXTURES[name](rng, y, x, _colour(rng, name), pose)[region]
    return _camera(rng, image)


def classification_set(n: int, seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Images of one class each (see :func:`render_single_class`), for zero-shot classification.

    Labels cycle through all classes, so every class has ``n // C`` or ``n // C + 1`` images; the order is shuffled.
    The set is drawn from ``SeedSequence(seed, spawn_key=(0xC1A55,))``, a stream of its own, independent of the
    ``SeedSequence([seed, i])`` streams of training batches and the benchmark's own stream.

    Args:
        n: number of images.
        seed: seed of the set; the same (n, seed, size) gives the same bytes.
        size: side of the square images in pixels (at least 32).

    Returns:
        images (n, size, size, 3) uint8 RGB and labels (n,) int64 indices into :data:`SYNTHETIC_CLASSES`.

    Example:
        >>> images, labels = classification_set(24, seed=0, size=64)
        >>> images.shape, sorted(set(labels.tolist())) == list(range(len(SYNTHETIC_CLASSES)))
        ((24, 64, 64, 3), True)
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0xC1A55,)))
    labels = rng.permutation(np.arange(n) % len(SYNTHETIC_CLASSES)).astype(np.int64)
    images = np.empty((n, size, size, 3), np.uint8)
    for i, label in enumerate(labels):
        images[i] = render_single_class(rng, int(label), size)
    return images, labels


# ---------------------------------------------------------------------------------------------------- benchmark


def _voc(root: Path) -> Path:
    return root / "VOCdevkit" / "VOC2010"


def _image_ids(n_val: int) -> list[str]:
    return [f"synthetic_{i:05d}" for i in range(n_val)]


def _files(meta: dict) -> list[str]:
    """Every file of the benchmark, relative to its root, in a fixed order."""
    voc = "VOCdevkit/VOC2010"
    ids = _image_ids(meta["n_val"])
    return ([f"{voc}/JPEGImages/{i}.jpg" for i in ids] + [f"{voc}/SegmentationClassContext/{i}.png" for i in ids]
            + [f"{voc}/ImageSets/SegmentationContext/val.txt", "classnames.txt"])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _is_complete(root: Path, meta: dict) -> bool:
    """Whether ``root`` holds a finished, undamaged benchmark written with exactly these parameters: every file's
    sha256 is checked against the manifest in ``synthetic.json`` (a damaged file that still decodes would otherwise
    change every score silently)."""
    try:
        written = json.loads((root / "synthetic.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if {k: v for k, v in written.items() if k != "sha256"} != meta:
        return False
    manifest = written.get("sha256") or {}
    for name in _files(meta):
        path = root / name
        try:
            damaged = _sha256(path) != manifest.get(name)
        except OSError:
            damaged = True
        if damaged:
            log.warning("the synthetic benchmark in %s is damaged or incomplete (%s does not match its checksum); "
                        "regenerating it", root, name)
            return False
    return True


def _write(tmp: Path, meta: dict) -> None:
    """Render every scene and write the whole layout under ``tmp`` (the marker file last)."""
    voc = _voc(tmp)
    for sub in ("JPEGImages", "SegmentationClassContext", "ImageSets/SegmentationContext"):
        (voc / sub).mkdir(parents=True)
    ids = _image_ids(meta["n_val"])
    for i, image_id in enumerate(ids):
        stream = np.random.SeedSequence([meta["seed"], i], spawn_key=BENCHMARK_STREAM)
        scene = render_scene(np.random.default_rng(stream), meta["height"], meta["width"])
        Image.fromarray(scene.image).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=95, subsampling=0)
        Image.fromarray(scene.mask + 1).save(voc / "SegmentationClassContext" / f"{image_id}.png")
    (voc / "ImageSets" / "SegmentationContext" / "val.txt").write_text("\n".join(ids) + "\n", encoding="utf-8")
    (tmp / "classnames.txt").write_text("\n".join(SYNTHETIC_CLASSES) + "\n", encoding="utf-8")
    manifest = {name: _sha256(tmp / name) for name in _files(meta)}
    (tmp / "synthetic.json").write_text(json.dumps({**meta, "sha256": manifest}, indent=2) + "\n", encoding="utf-8")


def generate_benchmark(
    root: Path, *, n_val: int = 200, seed: int = 0, height: int = BENCHMARK_SIZE[0], width: int = BENCHMARK_SIZE[1]
) -> Path:
    """Write the synthetic segmentation benchmark under ``root`` in PASCAL Context's layout, or reuse it.

    Writes ``root/VOCdevkit/VOC2010/{JPEGImages/<id>.jpg (quality 95, 4:4:4), SegmentationClassContext/<id>.png (class c
    stored as c + 1), ImageSets/SegmentationContext/val.txt}``, ``root/classnames.txt`` (one name a line, label
    order) and ``root/synthetic.json`` (seed, counts, sizes, classes, generator version, and the sha256 of every
    file, checked whenever the benchmark is reused: a damaged copy is regenerated). Scene ``i`` is drawn from
    ``SeedSequence([seed, i], spawn_key=BENCHMARK_STREAM)`` (never a training batch's stream), so a smaller
    ``n_val`` gives a prefix of a larger one. Everything is rendered into a
    temporary folder inside ``root`` and moved into place, ``synthetic.json`` last: a benchmark with that file and
    the same parameters is complete and is returned untouched (it may be read-only); anything else is replaced.
    Only these three entries of ``root`` are ever touched.

    Args:
        root: the dataset folder (created if missing).
        n_val: number of validation images.
        seed: benchmark seed.
        height: image height; the default is 4/3 of the tiny model's 192-pixel crop (the paper: 512 for 384).
        width: image width.

    Returns:
        ``root``, ready for :mod:`segclip.data.pascal_context` with ``num_classes=59`` semantics.

    Raises:
        OutputError: ``root`` (or its parent) cannot be created or written, or the disk is full; the message names
            it and the fix.

    Example:
        >>> import tempfile
        >>> root = generate_benchmark(Path(tempfile.mkdtemp()) / "synthetic", n_val=2, height=64, width=80)
        >>> sorted(p.name for p in root.iterdir())
        ['VOCdevkit', 'classnames.txt', 'synthetic.json']
    """
    root = Path(root)
    meta = {
        "generator": "segclip.data.synthetic", "version": GENERATOR_VERSION, "seed": seed, "n_val": n_val,
        "height": height, "width": width, "classes": list(SYNTHETIC_CLASSES),
        "label_encoding": "class c stored as c + 1 (0 = background, never used)",
    }
    if _is_complete(root, meta):
        return root
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".synthetic-tmp-", dir=root))
    except OSError as exc:
        raise OutputError(
            f"cannot write the synthetic benchmark to {root}: {exc.strerror or exc}. Pass --data-root with a "
            "writable folder (or set SEGCLIP_CACHE to one)."
        ) from exc
    log.info("rendering %d synthetic scenes (%d x %d, seed %d) into %s", n_val, height, width, seed, root)
    try:
        _write(tmp, meta)
        (root / "synthetic.json").unlink(missing_ok=True)  # from here until the end, root reads as incomplete
        shutil.rmtree(root / "VOCdevkit", ignore_errors=True)
        os.replace(tmp / "VOCdevkit", root / "VOCdevkit")
        os.replace(tmp / "classnames.txt", root / "classnames.txt")
        os.replace(tmp / "synthetic.json", root / "synthetic.json")
    except OSError as exc:
        raise OutputError(
            f"cannot write the synthetic benchmark to {root}: {exc.strerror or exc}. Free some space there, or pass "
            "--data-root with a writable folder on another disk (or set SEGCLIP_CACHE to one)."
        ) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def write_scene_folder(folder: str | Path, count: int, *, seed: int = 0, size: tuple[int, int] = (192, 224)
                       ) -> list[Path]:
    """Write ``count`` synthetic scenes as PNG files ``scene_0000.png`` ... into ``folder`` (for examples and tests).

    Args:
        folder: where to write (created).
        count: number of scenes.
        seed: seed of the scenes' random stream.
        size: ``(height, width)`` of each scene.

    Returns:
        The paths written, in order.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        path = folder / f"scene_{index:04d}.png"
        Image.fromarray(render_scene(rng, *size).image).save(path)
        paths.append(path)
    return paths


def write_labelled_folder(folder: str | Path, per_class: int, *, seed: int = 0, size: int = 192) -> list[Path]:
    """Write a labelled folder ``folder/<class>/<i>.png`` of single-class images (:func:`classification_set`).

    Args:
        folder: where to write (created).
        per_class: images per class.
        seed: seed of the set.
        size: side of the square images.

    Returns:
        The paths written, in order.
    """
    images, labels = classification_set(per_class * len(SYNTHETIC_CLASSES), seed, size)
    paths = []
    for i, (image, label) in enumerate(zip(images, labels)):
        path = Path(folder) / SYNTHETIC_CLASSES[label] / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths
