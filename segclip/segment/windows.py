"""The sliding-window protocol (docs/method.md §5.1), with mmsegmentation's arithmetic.

An image is resized keeping its aspect (mmcv ``imrescale``: ``Resize(scale=(long_side, short_side),
keep_ratio=True)``, cv2 bilinear), CLIP-normalised, and cut into ``crop x crop`` windows every ``stride`` pixels,
the last window of each axis shifted back to end at the border (mmseg ``slide_inference``). A side shorter than the
crop gives one window covering it; the crop is zero-padded at the bottom / right to ``crop x crop`` (0 after
normalisation is the CLIP mean colour; the positional embedding is never interpolated) and only its valid part is
stitched back. Window logits are upsampled bilinearly to the crop, summed into a canvas and divided by the overlap
count, then resized to the original image, scaled by the temperature, soft-maxed and arg-maxed. :func:`stitch` and
:func:`logits_to_labels` do that step by step (the reference); the pipeline computes the same labels from the
factorised form of :mod:`segclip.segment.stitched` (no canvas, no softmax unless a threshold asks for one).

Crops of many images are stacked (:func:`prepare_windows`) so one batched backbone pass serves them all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from segclip.data.images import normalise
from segclip.errors import ConfigError
from segclip.segment.stitched import StitchedLogits

Box = tuple[int, int, int, int]  # (y1, y2, x1, x2), half-open
MIN_SHORT_SIDE = 32  # one layer4 cell


def rescale_size(height: int, width: int, short_side: int, long_side: int = 2048) -> tuple[int, int]:
    """Size after mmcv ``imrescale`` with ``keep_ratio``: the largest size within ``(long_side, short_side)``.

    ``scale = min(long_side / max(h, w), short_side / min(h, w))``; each side becomes ``int(side * scale + 0.5)``
    (at least 1, where mmcv would fail).

    Args:
        height: image height.
        width: image width.
        short_side: target of the short side.
        long_side: bound on the long side.

    Returns:
        ``(new_height, new_width)``.

    Raises:
        ValueError: a non-positive argument.

    Example:
        >>> rescale_size(375, 500, short_side=512)
        (512, 683)
    """
    if min(height, width, short_side, long_side) <= 0:
        raise ValueError(f"sizes must be positive, got {height=}, {width=}, {short_side=}, {long_side=}")
    scale = min(long_side / max(height, width), short_side / min(height, width))
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize with cv2 bilinear interpolation, as mmcv ``imresize`` does.

    Args:
        image: ``(H, W, 3)`` uint8.
        size: ``(new_height, new_width)``.

    Returns:
        ``(new_height, new_width, 3)`` uint8.
    """
    return cv2.resize(np.ascontiguousarray(image), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def _starts(length: int, crop: int, stride: int) -> list[tuple[int, int]]:
    """Half-open ``(start, end)`` of the windows along one axis (mmseg ``slide_inference``)."""
    grids = max(length - crop + stride - 1, 0) // stride + 1
    ends = [min(i * stride + crop, length) for i in range(grids)]
    return [(max(end - crop, 0), end) for end in ends]


def window_boxes(height: int, width: int, crop: int, stride: int) -> list[Box]:
    """Sliding windows over an image, row by row.

    Per axis of length ``L``: ``max(L - crop + stride - 1, 0) // stride + 1`` windows starting every ``stride``
    pixels, the last shifted back to end at ``L``; a side shorter than ``crop`` gets one window of its length.

    Args:
        height: image height (after resizing).
        width: image width (after resizing).
        crop: window side.
        stride: step between windows (at most ``crop``, so that windows cover the image).

    Returns:
        ``(y1, y2, x1, x2)`` boxes, half-open.

    Raises:
        ValueError: non-positive sizes, or ``stride > crop``.

    Example:
        >>> window_boxes(512, 683, crop=384, stride=192)[:3]
        [(0, 384, 0, 384), (0, 384, 192, 576), (0, 384, 299, 683)]
    """
    if min(height, width, crop, stride) <= 0 or stride > crop:
        raise ValueError(f"need positive sizes and stride <= crop, got {height=}, {width=}, {crop=}, {stride=}")
    return [(y1, y2, x1, x2) for y1, y2 in _starts(height, crop, stride) for x1, x2 in _starts(width, crop, stride)]


def extract_crops(image: torch.Tensor, boxes: Sequence[Box], crop: int) -> torch.Tensor:
    """Cut windows out of a normalised image, zero-padding short ones at the bottom / right.

    Args:
        image: ``(3, H, W)`` float, CLIP-normalised (so the 0 padding is the mean colour).
        boxes: ``(y1, y2, x1, x2)`` boxes from :func:`window_boxes`.
        crop: window side.

    Returns:
        ``(n, 3, crop, crop)``, the box's pixels at the top left of each.
    """
    crops = image.new_zeros(len(boxes), image.shape[0], crop, crop)
    for crop_pixels, (y1, y2, x1, x2) in zip(crops, boxes):
        crop_pixels[:, : y2 - y1, : x2 - x1] = image[:, y1:y2, x1:x2]
    return crops


def stitch(window_logits: torch.Tensor, boxes: Sequence[Box], height: int, width: int, crop: int) -> torch.Tensor:
    """Average window logits over the image (mmseg ``slide_inference``).

    Each window's logits are upsampled bilinearly (``align_corners=False``) to ``crop x crop``; the part over the
    valid box (the top left, for padded windows) is added into a canvas, which is divided by the overlap count.

    Args:
        window_logits: ``(n, C, g, g)`` logits of the windows, in the order of ``boxes``.
        boxes: ``(y1, y2, x1, x2)`` boxes covering the image.
        height: image height (after resizing).
        width: image width (after resizing).
        crop: window side.

    Returns:
        ``(C, height, width)`` float32 logits.

    Raises:
        ValueError: the window count differs from the box count, or the boxes leave pixels uncovered.
    """
    if window_logits.shape[0] != len(boxes):
        raise ValueError(f"{window_logits.shape[0]} window logits for {len(boxes)} boxes")
    canvas = window_logits.new_zeros(window_logits.shape[1], height, width, dtype=torch.float32)
    count = window_logits.new_zeros(1, height, width, dtype=torch.float32)
    for logits, (y1, y2, x1, x2) in zip(window_logits, boxes):
        up = F.interpolate(logits[None].float(), size=(crop, crop), mode="bilinear", align_corners=False)[0]
        canvas[:, y1:y2, x1:x2] += up[:, : y2 - y1, : x2 - x1]  # (C, crop, crop) -> valid part
        count[:, y1:y2, x1:x2] += 1
    if bool((count == 0).any()):
        raise ValueError("the boxes do not cover the image")
    return canvas / count


def logits_to_labels(
    logits: torch.Tensor,
    out_size: tuple[int, int],
    temperature: float = 40.0,
    background_threshold: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn stitched logits into class probabilities and labels at the original image size.

    Args:
        logits: ``(C, h, w)`` stitched logits (on the resized image).
        out_size: ``(H, W)`` of the original image; logits are resized bilinearly (``align_corners=False``).
        temperature: logit scale before the softmax (40 in the protocol).
        background_threshold: if given, pixels whose highest probability is below it get label ``C`` (one past the
            last class: a background index that has no probability channel).

    Returns:
        ``labels`` ``(H, W)`` int64 in ``0..C-1`` (or ``C`` for background) and ``probs`` ``(C, H, W)`` float32.
    """
    logits = logits.float()
    if tuple(logits.shape[-2:]) != tuple(out_size):
        logits = F.interpolate(logits[None], size=tuple(out_size), mode="bilinear", align_corners=False)[0]
    probs = (logits * temperature).softmax(dim=0)
    confidence, labels = probs.max(dim=0)
    if background_threshold is not None:
        labels[confidence < background_threshold] = logits.shape[0]
    return labels, probs


@dataclass(frozen=True)
class SlidingWindowProtocol:
    """Resize, crop and stride of the sliding-window protocol (defaults: the paper's; the authors' config: 384).

    Args:
        short_side: short side after resizing (512 in the paper, 384 in the authors' released config).
        long_side: bound on the long side after resizing.
        crop: window side (the model's native input size; 384 for RN50x16).
        stride: step between windows.
        temperature: logit scale before the softmax.

    Raises:
        ConfigError: non-positive sizes, ``stride > crop`` or a non-positive temperature.
    """

    short_side: int = 512
    long_side: int = 2048
    crop: int = 384
    stride: int = 192
    temperature: float = 40.0

    def __post_init__(self) -> None:
        if min(self.short_side, self.long_side, self.crop, self.stride) <= 0 or self.stride > self.crop:
            raise ConfigError(f"sliding window needs positive sizes and stride <= crop, got {self}")
        if self.short_side < max(MIN_SHORT_SIDE, self.stride):
            raise ConfigError(f"--short-side {self.short_side} is below the stride ({self.stride}) or below "
                              f"{MIN_SHORT_SIDE} pixels: images would be shrunk to a few pixels. Use a short side of "
                              f"at least the crop ({self.crop}) or leave it at its default.")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be positive, got {self.temperature}")

    def to_dict(self) -> dict[str, float | int]:
        """The protocol as a plain dict, for result files."""
        return asdict(self)


@dataclass
class WindowBatch:
    """Windows of several images, stacked for one backbone pass.

    Attributes:
        crops: ``(N, 3, crop, crop)`` normalised crops of all images, image by image.
        boxes: per image, its ``(y1, y2, x1, x2)`` boxes on the resized image.
        resized_sizes: per image, ``(h, w)`` after resizing.
        original_sizes: per image, ``(H, W)`` as read.
        crop: window side.
    """

    crops: torch.Tensor
    boxes: list[list[Box]]
    resized_sizes: list[tuple[int, int]]
    original_sizes: list[tuple[int, int]]
    crop: int

    def split(self, window_outputs: torch.Tensor) -> list[torch.Tensor]:
        """Split ``(N, ...)`` per-window outputs into one ``(n_i, ...)`` tensor per image."""
        return list(window_outputs.split([len(b) for b in self.boxes]))

    def stitch(self, window_logits: torch.Tensor) -> list[torch.Tensor]:
        """Stitch ``(N, C, g, g)`` window logits into one ``(C, h_i, w_i)`` map per image (resized size): the
        reference path, crop-sized upsampling per window into a canvas (:meth:`stitched` is the fast one)."""
        return [
            stitch(logits, boxes, *size, self.crop)
            for logits, boxes, size in zip(self.split(window_logits), self.boxes, self.resized_sizes)
        ]

    def stitched(self, window_logits: torch.Tensor) -> list[StitchedLogits]:
        """Per image, its window logits with the stitching kept factorised (:mod:`segclip.segment.stitched`); on
        the logits' device."""
        return [
            StitchedLogits.from_windows(logits, boxes, *size, self.crop)
            for logits, boxes, size in zip(self.split(window_logits), self.boxes, self.resized_sizes)
        ]


def prepare_windows(images: Sequence[np.ndarray], protocol: SlidingWindowProtocol,
                    device: torch.device | str | None = None) -> WindowBatch:
    """Resize, normalise and cut images into windows, stacking all crops.

    Args:
        images: ``(H_i, W_i, 3)`` uint8 RGB images of any sizes.
        protocol: the sliding-window protocol.
        device: where the crops are normalised and cut (the resize is cv2's, on the CPU; only the resized uint8
            image is copied over). Default: the CPU.

    Returns:
        A :class:`WindowBatch` whose ``crops`` hold every window of every image, in order.

    Raises:
        ValueError: no images.

    Example:
        >>> batch = prepare_windows([np.zeros((375, 500, 3), np.uint8)], SlidingWindowProtocol())
        >>> tuple(batch.crops.shape), batch.resized_sizes
        ((6, 3, 384, 384), [(512, 683)])
    """
    if not images:
        raise ValueError("no images to cut into windows")
    crops, boxes, resized, original = [], [], [], []
    for image in images:
        size = rescale_size(image.shape[0], image.shape[1], protocol.short_side, protocol.long_side)
        image_boxes = window_boxes(*size, protocol.crop, protocol.stride)
        pixels = torch.from_numpy(resize_image(image, size)).to(device or "cpu", non_blocking=True)
        crops.append(extract_crops(normalise(pixels)[0], image_boxes, protocol.crop))
        boxes.append(image_boxes)
        resized.append(size)
        original.append((image.shape[0], image.shape[1]))
    return WindowBatch(torch.cat(crops), boxes, resized, original, protocol.crop)
