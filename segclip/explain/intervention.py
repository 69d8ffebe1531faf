"""Interventions on a method's units: remove or scale neurons, heads or neuron-head pairs.

- **Neurons** are scaled where the model computes them: a hook at ``neurons`` (layer4's output, every method reads
  it; the pair methods' attention changes with it), as :class:`~segclip.core.trace.RegisterIntervention` hooks the
  attention pool.
- **Pairs** ``(n, h)`` (``neuron-head``, ``neuron-only``) scale their term ``L_h,c(i) Z_n(i) / k`` (``Z_n / k``) in
  every class whose selection holds them: the selection matrix is weighted, nothing else changes.
- **Heads** scale every term of head h: all its pairs (pair methods), its map ``L_h,c / H`` (``head-only``), or its
  output ``W_O^h v^h_i`` before the cosine (``maskclip``, ``self-self``, where the cosine renormalises).
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from segclip.core.trace import Hook, Trace
from segclip.errors import ConfigError
from segclip.segment.methods import (
    PairMethod,
    SegmentationMethod,
    head_maps,
    self_self_values,
    to_window_logits,
)

HEAD_METHODS = ("maskclip", "self-self", "head-only")  # methods whose units are heads


@dataclass(frozen=True)
class UnitIntervention:
    """Scales of neurons, heads and pairs (0 removes); units not named keep scale 1.

    Args:
        neurons: ``{n: scale}``: layer4 neuron n's activation map, as a hook.
        heads: ``{h: scale}``: every term of head h in the method.
        pairs: ``{(n, h): scale}``: the pair's term (pair methods with a selection only).

    Raises:
        ConfigError: a negative index.

    Example:
        >>> UnitIntervention(pairs={(3, 1): 0.0}).to_dict()
        {'neurons': {}, 'heads': {}, 'pairs': {'3:1': 0.0}}
    """

    neurons: Mapping[int, float] = field(default_factory=dict)
    heads: Mapping[int, float] = field(default_factory=dict)
    pairs: Mapping[tuple[int, int], float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        indices = [*self.neurons, *self.heads, *(i for pair in self.pairs for i in pair)]
        if any(int(i) < 0 for i in indices):
            raise ConfigError("Unit indices must be non-negative (neurons 0..N-1, heads 0..H-1).")

    @property
    def empty(self) -> bool:
        return not (self.neurons or self.heads or self.pairs)

    def hooks(self) -> dict[str, Hook]:
        """``{"neurons": scale the named neurons}`` (empty without neuron scales)."""
        if not self.neurons:
            return {}
        index = torch.tensor(list(self.neurons), dtype=torch.long)
        scales = torch.tensor(list(self.neurons.values()), dtype=torch.float64)

        def scale(values: torch.Tensor) -> torch.Tensor:  # (B, N, h, w)
            out = values.clone()
            out[:, index] *= scales.to(values.device, values.dtype)[:, None, None]
            return out

        return {"neurons": scale}

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {"neurons": {str(n): float(s) for n, s in self.neurons.items()},
                "heads": {str(h): float(s) for h, s in self.heads.items()},
                "pairs": {f"{n}:{h}": float(s) for (n, h), s in self.pairs.items()}}


def _head_scales(intervention: UnitIntervention, heads: int, like: torch.Tensor) -> torch.Tensor:
    scales = torch.ones(heads, dtype=like.dtype, device=like.device)
    for h, s in intervention.heads.items():
        if h >= heads:
            raise ConfigError(f"Head {h} does not exist: the model has {heads} heads (0..{heads - 1}).")
        scales[h] = s
    return scales


def intervened_method(method: SegmentationMethod, intervention: UnitIntervention) -> SegmentationMethod:
    """A copy of ``method`` whose window logits apply the head and pair scales (neuron scales are hooks: pass
    ``intervention.hooks()`` to the trace).

    Args:
        method: a built method.
        intervention: the scales.

    Returns:
        The method itself when nothing applies to it, else a copy.

    Raises:
        ConfigError: pairs for a method without a pair selection, or indices outside the model.
    """
    if not intervention.heads and not intervention.pairs:
        return method
    if intervention.pairs and method.name in HEAD_METHODS:
        raise ConfigError(f"{method.name} has no neuron-head pairs; remove heads or neurons instead.")
    pairs = method.model.pairs
    num_neurons, num_heads = pairs.num_neurons, pairs.num_heads
    clone = copy.copy(method)
    if isinstance(method, PairMethod) and method.name != "head-only":
        weights = torch.ones(num_neurons, num_heads, dtype=method.selection.dtype, device=method.selection.device)
        weights *= _head_scales(intervention, num_heads, weights)[None]
        for (n, h), s in intervention.pairs.items():
            if n >= num_neurons or h >= num_heads:
                raise ConfigError(f"Pair {n}:{h} does not exist: the model has {num_neurons} neurons and {num_heads} "
                                  "heads.")
            weights[n, h] *= s
        clone.selection = method.selection * weights.repeat(1, len(method.texts))  # (N, C H), H fastest
        return clone
    scales = _head_scales(intervention, num_heads, method.texts)
    clone.window_logits = lambda trace: _scaled_head_logits(method, trace, scales)  # type: ignore[method-assign]
    return clone


def _scaled_head_logits(method: SegmentationMethod, trace: Trace, scales: torch.Tensor) -> torch.Tensor:
    """Window logits of a head method with head h's terms scaled by ``scales[h]``."""
    model = method.model
    if method.name == "head-only":
        per_token = (head_maps(model, trace, method.texts) * scales).mean(-1)
        return to_window_logits(per_token, trace.grid)
    values = head_values(method, trace)  # (B, K, H, hd)
    pool = model.pool.pool
    features = F.linear((values * scales.to(values.dtype)[:, None]).flatten(2), pool.c_proj.weight, pool.c_proj.bias)
    cosines = F.normalize(features.to(method.texts.dtype), dim=-1) @ method.texts.T  # (B, K, C)
    return to_window_logits(cosines, trace.grid)


def head_values(method: SegmentationMethod, trace: Trace) -> torch.Tensor:
    """``(B, K, H, hd)`` per-head values whose ``c_proj`` image is ``maskclip``'s or ``self-self``'s feature:
    ``W_v^h z_i + b_v^h`` (no positional embedding) or the self-self mix ``(A^h V^h)_i``."""
    if method.name == "maskclip":
        spatial = trace.neurons.flatten(2).transpose(1, 2)  # (B, N, h, w) -> (B, K, N)
        return method.model.pool.project(spatial, "v")
    if method.name == "self-self":
        return self_self_values(method.model, trace.neurons)[:, 1:]
    raise ValueError(f"{method.name} has no per-head values")


@dataclass
class Comparison:
    """A segmentation before and after an intervention.

    Attributes:
        before, after: ``(H, W)`` int64 labels.
        changed: fraction of pixels whose label changed.
        pixels: per class name, ``(before, after)`` pixel counts.
        miou: ``(before, after)`` mIoU against the ground truth, or None without one.
    """

    before: np.ndarray
    after: np.ndarray
    changed: float
    pixels: dict[str, tuple[int, int]]
    miou: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, object]:
        return {"changed_fraction": self.changed, "pixels": {k: list(v) for k, v in self.pixels.items()},
                "miou": None if self.miou is None else {"before": self.miou[0], "after": self.miou[1],
                                                        "change": self.miou[1] - self.miou[0]}}


def mean_iou(labels: np.ndarray, truth: np.ndarray, classes: int, ignore_index: int = 255) -> float:
    """Mean IoU of one image over the classes present in the prediction or the truth (``ignore_index`` skipped).

    Example:
        >>> mean_iou(np.array([[0, 1]]), np.array([[0, 0]]), 2)
        0.25
    """
    keep = truth != ignore_index
    confusion = np.bincount(truth[keep].astype(np.int64) * classes + labels[keep], minlength=classes * classes)
    confusion = confusion.reshape(classes, classes)
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    return float(np.mean(tp[union > 0] / union[union > 0])) if (union > 0).any() else float("nan")


def compare(before: np.ndarray, after: np.ndarray, names: list[str], truth: np.ndarray | None = None) -> Comparison:
    """Compare two label maps (and their mIoU when ``truth`` is given, labels ``0..C-1``, 255 ignored).

    Raises:
        ConfigError: a ground truth whose size differs from the labels'.
    """
    counts = [np.bincount(x.ravel(), minlength=len(names) + 1) for x in (before, after)]
    pixels = {name: (int(counts[0][c]), int(counts[1][c])) for c, name in enumerate(names)}
    miou = None
    if truth is not None:
        if truth.shape != before.shape:
            raise ConfigError(f"The ground truth is {truth.shape[1]}x{truth.shape[0]} but the image is "
                              f"{before.shape[1]}x{before.shape[0]}; give the label map of this image.")
        miou = (mean_iou(before, truth, len(names) + 1), mean_iou(after, truth, len(names) + 1))
    return Comparison(before, after, float((before != after).mean()), pixels, miou)
