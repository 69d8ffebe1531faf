"""Images -> windows -> one batched trace -> every method -> stitched logits and labels (docs/method.md §5).

All crops of all given images are stacked (:func:`~segclip.segment.windows.prepare_windows`) and traced in chunks
of ``batch_size`` crops; every method reads the same trace. Nothing depends on how images are grouped: batch N
gives the same labels as N batches of one (tested).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from segclip.core.trace import RegisterIntervention
from segclip.data.queries import assign_query_labels
from segclip.errors import ConfigError
from segclip.models.loading import CLIPResNet
from segclip.segment.methods import SegmentationMethod
from segclip.segment.refine import guide_image, refine_stitched
from segclip.segment.stitched import StitchedLogits
from segclip.segment.windows import SlidingWindowProtocol, prepare_windows

log = logging.getLogger(__name__)


@dataclass
class Segmentation:
    """One method's result on one image.

    Attributes:
        stitched: the window logits with their stitching (:class:`~segclip.segment.stitched.StitchedLogits`),
            on the model's device; with a :class:`QueryLabelRule`, one class row per distinct query name. Not
            refined: with a method's refinement (PAMR) the labels come from the refined logits
            (:func:`~segclip.segment.refine.refine_stitched` recomputes them).
        labels: ``(H, W)`` int64 labels at the original size, ``0..C-1`` (``C`` = background when a background
            threshold was given; with a label rule, the rule's classes), on the CPU.
    """

    stitched: StitchedLogits
    labels: torch.Tensor

    @property
    def logits(self) -> torch.Tensor:
        """``(C, h, w)`` float32 stitched logits on the resized image (before the temperature), materialised on the
        CPU (for inspection; labels never need them)."""
        return self.stitched.logits().cpu()


# (stitched, or with a refinement the (C, H, W) refined logits; (H, W)) -> (H, W) labels
LabelRule = Callable[[StitchedLogits | torch.Tensor, tuple[int, int]], torch.Tensor]


def dense_labels(logits: torch.Tensor, temperature: float = 40.0,
                 background_threshold: float | None = None) -> torch.Tensor:
    """:meth:`~segclip.segment.stitched.StitchedLogits.labels` on materialised ``(C, H, W)`` logits: the arg-max
    (first class on ties); with ``background_threshold``, pixels whose top probability softmax(temperature x
    logits) is below it get label C.

    Example:
        >>> dense_labels(torch.tensor([[[0.0, 1.0]], [[0.5, 1.0]]]), 1.0, background_threshold=0.6)
        tensor([[1, 2]])
    """
    top, labels = logits.max(0)  # (H, W)
    if background_threshold is not None:
        total = ((logits - top) * temperature).exp_().sum(0)  # top probability = 1 / total
        labels[total.reciprocal() < background_threshold] = logits.shape[0]
    return labels


def distinct_queries(queries: Sequence[str]) -> tuple[list[str], list[int]]:
    """The distinct query names (first spelling kept, compared without case) and the row of each query among them.

    Text embeddings and methods are built once per distinct name (:func:`~segclip.models.text.check_class_names`
    refuses repeats); a name listed twice (SCLIP's COCO-Object file has ``bed`` twice) still counts twice in the
    softmax over queries, by reading its row twice.

    Example:
        >>> distinct_queries(["sky", "bed", "cat", "Bed"])
        (['sky', 'bed', 'cat'], [0, 1, 2, 1])
    """
    names: list[str] = []
    first: dict[str, int] = {}
    rows = []
    for query in queries:
        key = str(query).strip().lower()
        if key not in first:
            first[key] = len(names)
            names.append(str(query).strip())
        rows.append(first[key])
    return names, rows


@dataclass(frozen=True)
class QueryLabelRule:
    """Labels from query logits by the benchmark suite's rule (:func:`~segclip.data.queries.assign_query_labels`).

    Stitched logits ``(R, h, w)`` (one row per distinct query name) are resized bilinearly to the original image
    (``align_corners=False``, as :func:`~segclip.segment.windows.logits_to_labels`), expanded to the Q queries by
    ``query_rows``, and labelled: one softmax of ``scale`` x logits over all queries, a class's probability the max
    over its synonyms, the area rule, then pixels below ``prob_threshold`` to class 0.

    Args:
        query_rows: ``(Q,)`` row of the logits each query reads (:func:`distinct_queries`).
        query_to_class: ``(Q,)`` class of each query.
        scale: logit scale before the softmax (the dataset protocol's, replacing the temperature).
        prob_threshold: top class probability below which a pixel becomes class 0 (0: off).
        area_threshold: VOC21's area rule, or None.

    Raises:
        ValueError: ``query_rows`` and ``query_to_class`` differ in length.

    Example:
        >>> rule = QueryLabelRule((0, 1, 1), (0, 1, 1), scale=10.0)
        >>> rule(torch.tensor([[[0.0, 0.0]], [[1.0, -1.0]]]), (1, 2))  # a (R, h, w) tensor or StitchedLogits
        tensor([[1, 0]])
    """

    query_rows: tuple[int, ...]
    query_to_class: tuple[int, ...]
    scale: float
    prob_threshold: float = 0.0
    area_threshold: float | None = None

    def __post_init__(self) -> None:
        if len(self.query_rows) != len(self.query_to_class):
            raise ValueError(f"{len(self.query_rows)} query rows for {len(self.query_to_class)} query classes")

    @property
    def num_classes(self) -> int:
        return max(self.query_to_class) + 1

    def __call__(self, stitched: StitchedLogits | torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        """Stitched logits (or their ``(R, h, w)`` tensor) -> ``(H, W)`` int64 labels at ``out_size``."""
        if isinstance(stitched, StitchedLogits):
            logits = stitched.logits(tuple(out_size))  # (R, H, W), resized in the same product
        else:
            logits = stitched.float()
            if tuple(logits.shape[-2:]) != tuple(out_size):
                logits = F.interpolate(logits[None], size=tuple(out_size), mode="bilinear", align_corners=False)[0]
        rows = torch.as_tensor(self.query_rows, dtype=torch.long, device=logits.device)
        return assign_query_labels(logits[rows], list(self.query_to_class), self.scale, self.prob_threshold,
                                   self.area_threshold)

    def to_dict(self) -> dict[str, object]:
        """The rule for result files."""
        return {"rule": "softmax of scale x logits over every query, class = max over its synonyms, area rule, "
                        "top probability below prob_threshold -> class 0",
                "scale": self.scale, "prob_threshold": self.prob_threshold, "area_threshold": self.area_threshold,
                "queries": len(self.query_rows), "distinct_query_rows": len(set(self.query_rows))}


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


AUTOCAST = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # the backbone's autocast dtype


def check_autocast(name: str, device: torch.device) -> torch.dtype | None:
    """The dtype of an ``--autocast`` name (None for off).

    Raises:
        ConfigError: an unknown name, or fp16 on a CPU (half-precision convolutions there are slow and not
            autocast's CPU default; use bf16).
    """
    if name not in AUTOCAST:
        raise ConfigError(f"Unknown autocast {name!r}; use one of {', '.join(AUTOCAST)}.")
    if name == "fp16" and device.type == "cpu":
        raise ConfigError("--autocast fp16 needs a GPU; on a CPU use bf16 (or off, the default).")
    return AUTOCAST[name]


def window_logits(model: CLIPResNet, crops: torch.Tensor, methods: Sequence[SegmentationMethod], batch_size: int,
                  intervention: RegisterIntervention | None = None, autocast: str = "off") -> list[torch.Tensor]:
    """Trace crops in chunks and run every method on each chunk's trace.

    Args:
        model: the model.
        crops: ``(N, 3, S, S)`` normalised crops (finite: they come from uint8 images).
        methods: the methods.
        batch_size: crops per backbone pass.
        intervention: the register intervention (docs/method.md §6.2), or None.
        autocast: ``off``, ``bf16`` or ``fp16`` (GPU): the convolutional backbone under autocast
            (:data:`AUTOCAST`); the attention pool, its decomposition, the maps and the labels are computed in the
            model's dtype whatever it is.

    Returns:
        Per method, ``(N, C, g, g)`` float32 window logits on the model's device.
    """
    dtype = check_autocast(autocast, model.device)
    outputs: list[list[torch.Tensor]] = [[] for _ in methods]
    hooks = None if intervention is None else intervention.hooks()
    with torch.inference_mode():
        for chunk in crops.split(batch_size):  # no host synchronisation inside: labels come after the loop
            trace = model.trace(chunk, hooks=hooks, autocast=dtype, check_finite=False)
            for out, method in zip(outputs, methods):
                out.append(method(trace))
    return [torch.cat(out) for out in outputs]


def segment_images(model: CLIPResNet, images: Sequence[np.ndarray], methods: Sequence[SegmentationMethod],
                   protocol: SlidingWindowProtocol, batch_size: int = 8, *,
                   intervention: RegisterIntervention | None = None, background_threshold: float | None = None,
                   label_rule: LabelRule | None = None, autocast: str = "off") -> list[dict[str, Segmentation]]:
    """Segment images with several methods from one batched backbone pass.

    Args:
        model: the model.
        images: ``(H_i, W_i, 3)`` uint8 RGB images of any sizes.
        methods: built methods (:func:`~segclip.segment.methods.build_methods`), all for the same class list.
        protocol: the sliding-window protocol (its crop must be the model's input size).
        batch_size: crops per backbone pass (memory bound; results do not depend on it).
        intervention: the register intervention, or None.
        background_threshold: pixels whose top probability is below it get label ``C``.
        label_rule: how stitched logits become labels, e.g. a :class:`QueryLabelRule` (methods built on its
            distinct query names); default: the arg-max at the original size, the softmax of
            ``protocol.temperature`` x logits only for a background threshold (the labels of
            :func:`~segclip.segment.windows.logits_to_labels`, computed in bands by
            :meth:`~segclip.segment.stitched.StitchedLogits.labels`).
        autocast: the backbone's autocast, ``off`` (default), ``bf16`` or ``fp16`` (GPU) (:func:`window_logits`).

    Returns:
        Per image, ``{method name: Segmentation}``.

    Raises:
        ConfigError: no methods, a batch size below 1, a crop that is not the model's input size, or both a
            background threshold and a label rule.

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
    if label_rule is not None and background_threshold is not None:
        raise ConfigError("A background threshold and a label rule exclude each other (the rule has its own).")
    if protocol.crop != model.info.image_size:
        raise ConfigError(
            f"The crop ({protocol.crop}) must be the model's input size ({model.info.image_size}): the positional "
            "embedding is not interpolated.")
    windows = prepare_windows(images, protocol, device=model.device)
    log.debug("%d images -> %d windows, %d per backbone pass", len(images), len(windows.crops), batch_size)
    per_method = window_logits(model, windows.crops, methods, batch_size, intervention, autocast)
    results: list[dict[str, Segmentation]] = [{} for _ in images]
    guides: dict[int, torch.Tensor] = {}  # PAMR's guide per image, shared by the methods that refine
    for method, logits in zip(methods, per_method):
        refine = getattr(method, "refine", None)
        for index, (result, stitched, size) in enumerate(zip(results, windows.stitched(logits),
                                                             windows.original_sizes)):
            scores: StitchedLogits | torch.Tensor = stitched
            if refine is not None:  # (C, H, W) at the original size (segclip.segment.refine)
                if index not in guides:
                    guides[index] = guide_image(images[index], windows.resized_sizes[index], model.device)
                scores = refine_stitched(stitched, images[index], refine, guides[index])
            if label_rule is not None:
                labels = label_rule(scores, size)
            elif refine is not None:
                labels = dense_labels(scores, protocol.temperature, background_threshold)
            else:
                labels = stitched.labels(size, protocol.temperature, background_threshold)
            result[method.name] = Segmentation(stitched, labels.cpu())
    return results
