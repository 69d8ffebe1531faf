"""Images -> windows -> one batched trace -> every method -> stitched logits and labels (method.md section 7).

All crops of all given images are stacked (:func:`~segclip.segment.windows.prepare_windows`) and traced in chunks
of ``batch_size`` crops; every method reads the same trace. Nothing depends on how images are grouped: batch N
gives the same labels as N batches of one (tested).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from segclip.core.trace import RegisterIntervention
from segclip.errors import ConfigError
from segclip.models.loading import CLIPResNet
from segclip.segment.methods import SegmentationMethod
from segclip.segment.windows import SlidingWindowProtocol, logits_to_labels, prepare_windows

log = logging.getLogger(__name__)


@dataclass
class Segmentation:
    """One method's result on one image.

    Attributes:
        logits: ``(C, h, w)`` float32 stitched window logits on the resized image (before the temperature).
        labels: ``(H, W)`` int64 labels at the original size, ``0..C-1`` (``C`` = background when a background
            threshold was given).
    """

    logits: torch.Tensor
    labels: torch.Tensor


def protocol_for(model: CLIPResNet, short_side: int | None = None, stride: int | None = None) -> SlidingWindowProtocol:
    """The sliding-window protocol scaled to a model: crop = its native size, stride = half a crop, short side =
    4/3 of a crop (the paper's 384 / 192 / 512 for RN50x16), unless given.

    Args:
        model: the model.
        short_side: short side after resizing (default ``4/3`` crop).
        stride: window step (default ``crop / 2``).

    Returns:
        The protocol.

    Raises:
        ConfigError: non-positive sizes or a stride larger than the crop.
    """
    crop = model.info.image_size
    return SlidingWindowProtocol(short_side=short_side or round(crop * 4 / 3), crop=crop, stride=stride or crop // 2)


def window_logits(model: CLIPResNet, crops: torch.Tensor, methods: Sequence[SegmentationMethod], batch_size: int,
                  intervention: RegisterIntervention | None = None) -> list[torch.Tensor]:
    """Trace crops in chunks and run every method on each chunk's trace.

    Args:
        model: the model.
        crops: ``(N, 3, S, S)`` normalised crops.
        methods: the methods.
        batch_size: crops per backbone pass.
        intervention: the register intervention (method.md section 6), or None.

    Returns:
        Per method, ``(N, C, g, g)`` float32 window logits on the model's device.
    """
    outputs: list[list[torch.Tensor]] = [[] for _ in methods]
    hooks = None if intervention is None else intervention.hooks()
    with torch.inference_mode():
        for chunk in crops.split(batch_size):
            trace = model.trace(chunk.to(model.device), hooks=hooks)
            for out, method in zip(outputs, methods):
                out.append(method(trace))
    return [torch.cat(out) for out in outputs]


def segment_images(model: CLIPResNet, images: Sequence[np.ndarray], methods: Sequence[SegmentationMethod],
                   protocol: SlidingWindowProtocol, batch_size: int = 8, *,
                   intervention: RegisterIntervention | None = None, background_threshold: float | None = None
                   ) -> list[dict[str, Segmentation]]:
    """Segment images with several methods from one batched backbone pass.

    Args:
        model: the model.
        images: ``(H_i, W_i, 3)`` uint8 RGB images of any sizes.
        methods: built methods (:func:`~segclip.segment.methods.build_methods`), all for the same class list.
        protocol: the sliding-window protocol (its crop must be the model's input size).
        batch_size: crops per backbone pass (memory bound; results do not depend on it).
        intervention: the register intervention, or None.
        background_threshold: pixels whose top probability is below it get label ``C``.

    Returns:
        Per image, ``{method name: Segmentation}``.

    Raises:
        ConfigError: no methods, a batch size below 1, or a crop that is not the model's input size.

    Example:
        >>> from segclip.models import load_model
        >>> from segclip.segment.methods import build_methods
        >>> model = load_model("RN50", "none")
        >>> methods = build_methods(model, ["cat", "dog"], ["maskclip"], templates="single")
        >>> result = segment_images(model, [np.zeros((40, 60, 3), np.uint8)], methods, protocol_for(model))
        >>> result[0]["maskclip"].labels.shape
        torch.Size([40, 60])
    """
    if not methods:
        raise ConfigError("No segmentation method given.")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}.")
    if protocol.crop != model.info.image_size:
        raise ConfigError(
            f"The crop ({protocol.crop}) must be the model's input size ({model.info.image_size}): the positional "
            "embedding is not interpolated.")
    windows = prepare_windows(images, protocol)
    log.debug("%d images -> %d windows, %d per backbone pass", len(images), len(windows.crops), batch_size)
    per_method = window_logits(model, windows.crops, methods, batch_size, intervention)
    results: list[dict[str, Segmentation]] = [{} for _ in images]
    for method, logits in zip(methods, per_method):
        for result, stitched, size in zip(results, windows.stitch(logits), windows.original_sizes):
            labels, _ = logits_to_labels(stitched, size, protocol.temperature, background_threshold)
            result[method.name] = Segmentation(stitched.cpu(), labels.cpu())
    return results
