"""Segmentation in memory: ``segclip.segment(model, image, classes)`` -> arrays, drawn or saved on request.

The command ``segclip segment`` writes files; this is the same segmentation for a notebook or a script::

    import segclip
    model = segclip.load_model()                     # the bundled tiny model
    seg = segclip.segment(model, "scene.png", ["sky", "grass", "ball"])
    seg.labels                                       # (H, W) int64 class indices
    seg.overlay()                                    # a PIL image with a legend
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from segclip.config import ShortRepr
from segclip.data.images import read_image
from segclip.errors import ConfigError, ImageError
from segclip.io import atomic_write_bytes, atomic_write_json
from segclip.models.loading import CLIPResNet
from segclip.models.text import check_class_names
from segclip.segment.methods import METHODS
from segclip.segment.pipeline import segment_images
from segclip.segment.options import MethodOptions, prepare_methods
from segclip.segment.stitched import StitchedLogits
from segclip.viz.overlay import heatmap, overlay, picture_bytes
from segclip.viz.palette import class_colours, label_format, label_png


@dataclass(repr=False)
class SegmentedImage(ShortRepr):
    """One image segmented by one method, in memory.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB, the input.
        labels: ``(H, W)`` int64 class indices in ``0..C-1`` (``C`` = background with a background threshold).
        classes: the C class names, in label order.
        method: the method's name; params: its parameters (k, signs, registers, ...).
        probabilities: ``(C, H, W)`` float32 class probabilities (softmax of temperature x logits), when asked
            for (``probabilities=True``); :meth:`heatmap` computes one class's map without them.
        background_threshold: the threshold that made label ``C`` the background, or None.
    """

    image: np.ndarray
    labels: np.ndarray
    classes: list[str]
    method: str
    params: dict[str, Any]
    probabilities: np.ndarray | None = None
    background_threshold: float | None = None
    stitched: StitchedLogits | None = field(default=None, repr=False)
    temperature: float = field(default=40.0, repr=False)

    @property
    def colours(self) -> np.ndarray:
        """``(C, 3)`` uint8 RGB colour of each class (:func:`segclip.viz.palette.class_colours`)."""
        return class_colours(self.classes)

    def probability(self, c: int | str) -> np.ndarray:
        """``(H, W)`` float32 probability of class ``c`` (an index or a name).

        Raises:
            ConfigError: an unknown class.
        """
        index = self._index(c)
        if self.probabilities is not None:
            return self.probabilities[index]
        if self.stitched is None:
            raise ConfigError("This segmentation keeps no logits; segment with probabilities=True.")
        with torch.inference_mode():
            for i, probability in enumerate(self.stitched.probability_maps(self.labels.shape, self.temperature)):
                if i == index:
                    return probability.cpu().numpy()
        raise AssertionError("unreachable")  # pragma: no cover

    def _index(self, c: int | str) -> int:
        if isinstance(c, str):
            if c not in self.classes:
                raise ConfigError(f"Unknown class {c!r}; the classes are {', '.join(self.classes)}.")
            return self.classes.index(c)
        if not 0 <= int(c) < len(self.classes):
            raise ConfigError(f"Class index {c} is outside 0..{len(self.classes) - 1}.")
        return int(c)

    def overlay(self, alpha: float = 0.5) -> Image.Image:
        """The labels' colours blended over the image, with a legend of the classes present (a PIL image)."""
        return overlay(self.image, self.labels, self.classes, alpha,
                       background="background" if self.background_threshold is not None else None)

    def heatmap(self, c: int | str) -> Image.Image:
        """Class ``c``'s probability map (an index or a name) as a PIL image with a colour bar and its name."""
        return heatmap(self.probability(c), self.classes[self._index(c)])

    def save(self, out: str | Path, name: str = "image", *, heatmaps: bool = False, format: str = "png",
             dpi: int = 150) -> list[Path]:
        """Write ``NAME.png`` (the label map: a palette PNG, 16-bit above 256 label values), ``NAME_overlay.FORMAT``,
        with ``heatmaps`` ``NAME_heatmap_<i>.FORMAT`` per class, and ``NAME.json`` (classes, colours, method,
        format); ``format`` is png, svg or pdf (:func:`~segclip.viz.overlay.picture_bytes`) at ``dpi``.

        Returns:
            The files written.

        Raises:
            OutputError: a file cannot be written.
        """
        out = Path(out)
        background = self.background_threshold is not None
        written = [atomic_write_bytes(out / f"{name}.png", label_png(self.labels, self.classes,
                                                                     background=background))]
        written.append(atomic_write_bytes(out / f"{name}_overlay.{format}", picture_bytes(self.overlay(), format,
                                                                                            dpi)))
        if heatmaps:
            for i in range(len(self.classes)):
                written.append(atomic_write_bytes(out / f"{name}_heatmap_{i:02d}.{format}",
                                                  picture_bytes(self.heatmap(i), format, dpi)))
        values = len(self.classes) + int(background)
        written.append(atomic_write_json(out / f"{name}.json", {
            "method": self.method, "params": self.params, "classes": self.classes,
            "background_threshold": self.background_threshold,
            "label_values": f"0..{len(self.classes) - 1} in class-list order"
                            + (f", {len(self.classes)} = background" if background else ""),
            "label_format": label_format(values),
            "class_colours": {n: "#%02x%02x%02x" % tuple(int(v) for v in c) for n, c in zip(self.classes,
                                                                                             self.colours)}}))
        return written


def as_image(image: Any) -> np.ndarray:
    """A path, a PIL image or an ``(H, W, 3)`` uint8 array as ``(H, W, 3)`` uint8 RGB.

    Raises:
        ImageError: an unreadable file, or an array of another shape or type.
    """
    if isinstance(image, (str, Path)):
        return read_image(image)
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ImageError(f"Expected an (H, W, 3) uint8 RGB array, a PIL image or a file path; got an array of "
                         f"shape {array.shape} and type {array.dtype}.")
    return np.ascontiguousarray(array)


def class_list(classes: str | Sequence[str] | None, model: CLIPResNet) -> list[str]:
    """``classes`` as a list: a comma-separated string is split (never into letters); None: the model's own.

    Raises:
        ConfigError: no classes, a name that is not a string, blank or repeated names.
    """
    if classes is None:
        names = list(model.info.classes)
        if not names:
            raise ConfigError(f"{model.info.name} has no classes of its own; pass classes=[...].")
        return names
    if isinstance(classes, str):
        classes = [c.strip() for c in classes.split(",")]
    names = list(classes)
    wrong = [c for c in names if not isinstance(c, str)]
    if wrong:
        raise ConfigError(f"Class names must be strings; got {wrong[0]!r}.")
    return check_class_names(names)


def segment(model: CLIPResNet, image: Any, classes: str | Sequence[str] | None = None, *,
            method: str = "neuron-head", probabilities: bool = False, background_threshold: float | None = None,
            **options: Any) -> SegmentedImage:
    """Segment one image by class names, in memory (the segmentation of ``segclip segment``).

    Args:
        model: a loaded model (:func:`segclip.load_model`).
        image: a file path, a PIL image or an ``(H, W, 3)`` uint8 RGB array.
        classes: class names (a list, or one comma-separated string); None: the model's own classes (the bundled
            model's 12).
        method: ``neuron-head`` (default), ``maskclip``, ``self-self``, ``neuron-only`` or ``head-only``.
        probabilities: also compute every class's probability map (``(C, H, W)`` float32; C full-size maps).
        background_threshold: label pixels whose top probability is below it as background (label ``C``).
        **options: the method options of ``segclip segment`` (:class:`~segclip.segment.run.MethodOptions`: ``k``,
            ``short_side``, ``stride``, ``registers``, ``calibration``, ``templates``, ``centring``,
            ``batch_size``, ``autocast``).

    Returns:
        A :class:`SegmentedImage` (``.labels``, ``.overlay()``, ``.heatmap(c)``, ``.save(dir)``).

    Raises:
        ConfigError: unknown method or option, bad class names or threshold.
        ImageError: an unreadable image.

    Example:
        >>> from segclip.models import load_model
        >>> from segclip.paths import example_image_path
        >>> seg = segment(load_model(), example_image_path(), "sand,water,star,ring", templates="single")
        >>> seg.labels.shape, seg.labels.dtype.name, seg.classes[seg.labels[0, 0]], seg.classes[seg.labels[-1, 0]]
        ((256, 320), 'int64', 'sand', 'water')
    """
    if method not in METHODS:
        raise ConfigError(f"Unknown method {method!r}; choose from {', '.join(METHODS)}.")
    if background_threshold is not None and not 0 < background_threshold < 1:
        raise ConfigError(f"background_threshold must be between 0 and 1, got {background_threshold}.")
    known = {f.name for f in dataclasses.fields(MethodOptions)} - {"progress"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"Unknown options {unknown}; known: {', '.join(sorted(known))}.")
    pixels = as_image(image)
    names = class_list(classes, model)
    settings = MethodOptions(progress=False, **options)
    prepared = prepare_methods(model, names, [method], settings, None)
    with torch.inference_mode():
        result = segment_images(model, [pixels], prepared.methods, prepared.protocol, settings.batch_size,
                                intervention=prepared.intervention, background_threshold=background_threshold,
                                autocast=settings.autocast)[0][method]
        maps = None
        if probabilities:
            maps = np.stack([p.cpu().numpy() for p in result.stitched.probability_maps(
                pixels.shape[:2], prepared.protocol.temperature)])  # (C, H, W)
    return SegmentedImage(pixels, result.labels.numpy().astype(np.int64), names, method,
                          prepared.params()[method], maps, background_threshold, result.stitched,
                          prepared.protocol.temperature)
