"""Exact attribution of a segmentation's class logit at a pixel or region to the method's units.

Every method's window logit is a sum over units at each token (method.md sections 4-5):

- ``neuron-head``: the selected pairs, ``L_h,c(i) Z_n(i) / k``; ``neuron-only``: ``Z_n(i) / k``.
- ``head-only``: the heads, ``L_h,c(i) / H``.
- ``maskclip`` and ``self-self``: the heads, ``(W_O^h v^h_i) . t_c / |f_i|``, and the output bias
  ``b_O . t_c / |f_i|`` (the cosine's norm ``|f_i|`` is the whole feature's, so the terms sum to the cosine).

Stitching the windows and resizing to the original image are linear (:class:`~segclip.segment.stitched.
StitchedLogits`): a pixel's (or a region's mean) logit is ``sum_windows sum_tokens w_t logit_t`` with weights ``w``
read from the stitching maps, so the same weights applied to each unit's window map give contributions that sum to
the logit exactly (to float round-off; tested in float64 for every method).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from segclip.core.trace import HookSpec, Trace, merge_hooks
from segclip.errors import ConfigError
from segclip.explain.intervention import (
    HEAD_METHODS,
    Comparison,
    UnitIntervention,
    compare,
    head_values,
    intervened_method,
)
from segclip.models.loading import CLIPResNet
from segclip.segment.methods import PairMethod, SegmentationMethod, head_maps, self_self_attention, sink_fix
from segclip.segment.stitched import StitchedLogits, axis_spans
from segclip.segment.windows import SlidingWindowProtocol, prepare_windows


@dataclass(frozen=True)
class Unit:
    """One unit of a method: a neuron-head ``pair``, a ``head``, or the output ``bias``."""

    kind: str
    neuron: int | None = None
    head: int | None = None

    @property
    def key(self) -> str:
        """``pair 12:3``, ``head 3`` or ``bias``."""
        return {"pair": f"pair {self.neuron}:{self.head}", "head": f"head {self.head}"}.get(self.kind, "bias")


def unit_words(labels: Mapping[str, object], count: int = 4) -> dict[str, str]:
    """``{unit key: "word +0.31, word -0.12"}`` from :func:`segclip.explore.site.read_labels` (OMP words of
    ``segclip analyze label``): pairs and heads, their first ``count`` words.

    Example:
        >>> unit_words({"pairs": {(3, 1): [["cat", 0.5], ["fur", 0.25]]}, "heads": {}})
        {'pair 3:1': 'cat +0.50, fur +0.25'}
    """
    def text(words) -> str:
        return ", ".join(f"{word} {value:+.2f}" for word, value in list(words)[:count])

    out = {Unit("pair", n, h).key: text(w) for (n, h), w in labels.get("pairs", {}).items()}
    out.update({Unit("head", head=h).key: text(w) for h, w in labels.get("heads", {}).items()})
    return out


def unit_window_maps(method: SegmentationMethod, trace: Trace, c: int) -> tuple[list[Unit], torch.Tensor]:
    """Class ``c``'s window logits split into the method's units.

    Args:
        method: a built method.
        trace: the trace of B crops (the one the method's logits come from).
        c: the class index.

    Returns:
        The units and their maps ``(B, U, h, w)`` in the method's work dtype; summed over U they are
        ``method(trace)[:, c]``.
    """
    model = method.model
    texts = method.texts
    grid = trace.grid
    if isinstance(method, PairMethod) and method.name != "head-only":
        neurons, heads, _ = method.selected_pairs(c)
        weights = method.selection.view(model.pairs.num_neurons, len(texts), -1)[neurons, c, heads]  # (k,)
        z = sink_fix(trace.neurons.flatten(2).transpose(1, 2), grid)  # (B, N, h, w) -> (B, K, N)
        per_token = z[..., neurons].to(texts.dtype) * weights.to(texts.dtype) / method.k  # (B, K, k)
        if method.name == "neuron-head":
            per_token = per_token * head_maps(model, trace, texts[c:c + 1])[:, :, 0, heads]
        units = [Unit("pair", int(n), int(h)) for n, h in zip(neurons.tolist(), heads.tolist())]
    elif method.name == "head-only":
        per_token = head_maps(model, trace, texts[c:c + 1])[:, :, 0] / model.pairs.num_heads  # (B, K, H)
        units = [Unit("head", head=h) for h in range(per_token.shape[-1])]
    else:
        pool = model.pool.pool
        values = head_values(method, trace)  # (B, K, H, hd)
        features = torch.nn.functional.linear(values.flatten(2), pool.c_proj.weight, pool.c_proj.bias)  # (B, K, d)
        norm = features.to(texts.dtype).norm(dim=-1, keepdim=True).clamp_min(1e-12)  # F.normalize's eps
        text = texts[c].to(values.dtype)
        projected = torch.einsum("hdc,d->hc", model.pool.heads.w_o, text)  # W_O^h^T t_c: (H, hd)
        per_head = torch.einsum("bkhc,hc->bkh", values, projected).to(texts.dtype)
        bias = (pool.c_proj.bias.to(text.dtype) @ text).to(texts.dtype).expand(*per_head.shape[:2], 1)
        per_token = torch.cat([per_head, bias], -1) / norm  # (B, K, H+1)
        units = [Unit("head", head=h) for h in range(per_head.shape[-1])] + [Unit("bias")]
    return units, per_token.transpose(1, 2).unflatten(-1, grid)  # (B, K, U) -> (B, U, h, w)


def to_grid(window_maps: torch.Tensor, boxes: Sequence[tuple[int, int, int, int]]) -> torch.Tensor:
    """``(n, U, g_y, g_x)`` window maps -> ``(U, n_y g_y, n_x g_x)``, the layout of ``StitchedLogits.grids``."""
    rows, cols = axis_spans(boxes)
    n, units, gy, gx = window_maps.shape
    return window_maps.view(len(rows), len(cols), units, gy, gx).permute(2, 0, 3, 1, 4).reshape(
        units, len(rows) * gy, len(cols) * gx)


@dataclass
class UnitScore:
    """A unit's share of the logit at the point.

    Attributes:
        unit: the unit.
        contribution: its term of the target class's logit.
        margin: its term of the margin ``logit_target - logit_runner_up``.
        cosine: pairs: ``cos(w[n, h], t_c)``; heads: the cosine of the head's output at the point (``W_O^h`` of
            its weighted values, bias share excluded) with ``t_c``; bias: ``cos(b_O, t_c)``.
        words: the unit's words, when given.
        map: ``(H, W)`` float32 contribution map over the image (top units only), else None.
    """

    unit: Unit
    contribution: float
    margin: float
    cosine: float
    words: str | None = None
    map: np.ndarray | None = None

    def to_dict(self) -> dict[str, object]:
        return {"unit": self.unit.key, "kind": self.unit.kind, "neuron": self.unit.neuron, "head": self.unit.head,
                "contribution": self.contribution, "margin": self.margin, "cosine": self.cosine, "words": self.words}


@dataclass
class Attribution:
    """Why the segmentation says what it says at a pixel or region.

    Attributes:
        method: the method's name.
        names: the class names.
        where: ``{"pixel": [x, y]}`` or ``{"region": pixel count}``.
        scores: ``(C,)`` float64 class logits there (mean over a region).
        target, runner_up: class indices (the arg-max and second by default).
        contributions: ``(U,)`` float64 every unit's term of the target's logit (sums to ``scores[target]``).
        margins: ``{unit key: term of the margin}`` over the units of both classes (sums to the margin).
        units: every unit of the target class, in the order of ``contributions``.
        top: the top units by contribution, with their maps.
    """

    method: str
    names: list[str]
    where: dict[str, object]
    scores: np.ndarray
    target: int
    runner_up: int
    contributions: np.ndarray
    margins: dict[str, float]
    units: list[Unit]
    top: list[UnitScore] = field(default_factory=list)

    @property
    def logit(self) -> float:
        return float(self.scores[self.target])

    @property
    def margin(self) -> float:
        return float(self.scores[self.target] - self.scores[self.runner_up])

    def top_units(self, count: int) -> list[Unit]:
        """The ``count`` units with the largest contributions."""
        order = np.argsort(-self.contributions, kind="stable")[:count]
        return [self.units[i] for i in order]

    def to_dict(self) -> dict[str, object]:
        return {"method": self.method, "where": self.where, "target": self.names[self.target],
                "runner_up": self.names[self.runner_up], "logit": self.logit, "margin": self.margin,
                "scores": {n: float(s) for n, s in zip(self.names, self.scores)},
                "units": len(self.units), "sum_of_contributions": float(self.contributions.sum()),
                "sum_of_margins": float(sum(self.margins.values())),
                "top": [u.to_dict() for u in self.top]}


class ImageExplainer:
    """One image segmented by one method, kept for attribution and interventions (the demo's state).

    Args:
        model: the model.
        image: ``(H, W, 3)`` uint8 RGB.
        method: a built method.
        protocol: the sliding-window protocol (its crop must be the model's input size).
        hooks: hooks for every trace, e.g. the register intervention's.
        batch_size: crops per backbone pass.

    Example:
        >>> from segclip.models import load_model
        >>> from segclip.segment.methods import build_methods
        >>> from segclip.segment.pipeline import protocol_for
        >>> model = load_model()
        >>> method = build_methods(model, ["sky", "grass"], ["maskclip"], templates="single")[0]
        >>> explainer = ImageExplainer(model, np.zeros((64, 96, 3), np.uint8), method, protocol_for(model))
        >>> a = explainer.attribute(at=(10, 20))
        >>> bool(abs(a.contributions.sum() - a.logit) < 1e-4)
        True
    """

    def __init__(self, model: CLIPResNet, image: np.ndarray, method: SegmentationMethod,
                 protocol: SlidingWindowProtocol, hooks: HookSpec | None = None, batch_size: int = 8):
        if protocol.crop != model.info.image_size:
            raise ConfigError(f"The crop ({protocol.crop}) must be the model's input size ({model.info.image_size}).")
        self.model, self.image, self.method, self.protocol = model, image, method, protocol
        self.hooks = merge_hooks(hooks)
        self.batch_size = batch_size
        self.windows = prepare_windows([image], protocol, device=model.device)
        self.boxes = self.windows.boxes[0]
        self.size = self.windows.original_sizes[0]
        self.traces = self._trace(self.hooks)
        self.stitched = self._stitch(method, self.traces)
        self.labels = self.stitched.labels(self.size, protocol.temperature).cpu().numpy()

    @property
    def names(self) -> list[str]:
        return list(self.method.names)

    def _trace(self, hooks: HookSpec) -> list[Trace]:
        with torch.no_grad():
            return [self.model.trace(chunk, hooks=hooks, check_finite=False)
                    for chunk in self.windows.crops.split(self.batch_size)]

    def _stitch(self, method: SegmentationMethod, traces: list[Trace]) -> StitchedLogits:
        logits = torch.cat([method(trace) for trace in traces])  # (n, C, g, g)
        height, width = self.windows.resized_sizes[0]
        return StitchedLogits.from_windows(logits, self.boxes, height, width, self.protocol.crop)

    def weights(self, at: tuple[int, int] | None = None, region: np.ndarray | None = None) -> torch.Tensor:
        """The stitching weights of a pixel ``at=(x, y)`` of the original image, or the mean over a boolean
        ``region`` ``(H, W)``: ``(n_y g, n_x g)`` float64 on the grid layout.

        Raises:
            ConfigError: neither or both given, a pixel outside the image, a region of another size or empty.
        """
        rows, cols = (m.double() for m in self.stitched.maps(self.size))
        height, width = self.size
        if (at is None) == (region is None):
            raise ConfigError("Give a pixel (--at X,Y) or a region mask (--region FILE), one of them.")
        if at is not None:
            x, y = int(at[0]), int(at[1])
            if not (0 <= x < width and 0 <= y < height):
                raise ConfigError(f"The pixel ({x}, {y}) is outside the {width}x{height} image; x in 0..{width - 1}, "
                                  f"y in 0..{height - 1}.")
            return torch.outer(rows[y], cols[x])
        mask = np.asarray(region, dtype=bool)
        if mask.shape != (height, width):
            raise ConfigError(f"The region mask is {mask.shape[1]}x{mask.shape[0]} but the image is {width}x{height}.")
        if not mask.any():
            raise ConfigError("The region mask is empty; mark the region with non-zero pixels.")
        m = torch.from_numpy(mask).to(rows)
        return rows.T @ m @ cols / m.sum()

    def attribute(self, at: tuple[int, int] | None = None, region: np.ndarray | None = None,
                  target: int | None = None, top: int = 8, words: Mapping[str, str] | None = None,
                  maps: bool = True) -> Attribution:
        """Attribute the segmentation at a pixel or region to the method's units.

        Args:
            at: ``(x, y)`` pixel of the original image.
            region: ``(H, W)`` boolean mask (its mean logit is attributed).
            target: the class to explain (default: the top class there); the runner-up is the best other class.
            top: how many top units get a score entry with a map.
            words: ``{unit key: words}`` (e.g. OMP labels), shown with the top units.
            maps: compute the top units' maps over the image.

        Returns:
            The :class:`Attribution`.

        Raises:
            ConfigError: a bad point, region or class index.
        """
        weights = self.weights(at, region)
        window_weights = self._window_weights(weights)  # (n, g, g)
        all_logits = torch.cat([self.method(trace) for trace in self.traces]).double()  # (n, C, g, g)
        scores = torch.einsum("ncyx,nyx->c", all_logits, window_weights.to(all_logits.device)).cpu().numpy()
        order = np.argsort(-scores, kind="stable")
        if target is not None and not 0 <= target < len(scores):
            raise ConfigError(f"Class index {target} is out of range 0..{len(scores) - 1}.")
        target = int(order[0]) if target is None else int(target)
        runner_up = int(next(c for c in order if c != target))
        units, contributions, unit_maps = self._contributions(target, window_weights)
        other_units, other, _ = self._contributions(runner_up, window_weights)
        margins: dict[str, float] = {}
        for unit, value in zip(units, contributions):
            margins[unit.key] = margins.get(unit.key, 0.0) + float(value)
        for unit, value in zip(other_units, other):
            margins[unit.key] = margins.get(unit.key, 0.0) - float(value)
        where: dict[str, object] = ({"pixel": [int(at[0]), int(at[1])]} if at is not None
                                    else {"region": int(np.asarray(region, bool).sum())})
        attribution = Attribution(self.method.name, self.names, where, scores, target, runner_up, contributions,
                                  margins, units)
        best = np.argsort(-contributions, kind="stable")[:top]
        cosines = self._cosines(target, [units[i] for i in best], window_weights)
        rows, cols = self.stitched.maps(self.size)
        for i, cosine in zip(best, cosines):
            unit = units[i]
            picture = None
            if maps:
                grid = unit_maps[i].to(rows)
                picture = (rows @ grid @ cols.T).float().cpu().numpy()  # (H, W)
            attribution.top.append(UnitScore(unit, float(contributions[i]), margins[unit.key], cosine,
                                             (words or {}).get(unit.key), picture))
        return attribution

    def _window_weights(self, weights: torch.Tensor) -> torch.Tensor:
        """``(n_y g, n_x g)`` grid weights -> ``(n, g, g)`` per-window weights (the inverse of :func:`to_grid`)."""
        rows, cols = axis_spans(self.boxes)
        gy, gx = self.traces[0].grid
        return weights.view(len(rows), gy, len(cols), gx).permute(0, 2, 1, 3).reshape(-1, gy, gx)

    def _contributions(self, c: int, window_weights: torch.Tensor) -> tuple[list[Unit], np.ndarray, torch.Tensor]:
        """Units of class c, their float64 terms at the weights, and their ``(U, n_y g, n_x g)`` grid maps."""
        parts, units = [], []
        with torch.inference_mode():
            for trace in self.traces:
                units, maps = unit_window_maps(self.method, trace, c)
                parts.append(maps)
        maps = torch.cat(parts).double()  # (n, U, g, g)
        values = torch.einsum("nuyx,nyx->u", maps, window_weights.to(maps.device)).cpu().numpy()
        return units, values, to_grid(maps, self.boxes)

    def _cosines(self, c: int, units: list[Unit], window_weights: torch.Tensor) -> list[float]:
        model = self.model
        text = self.method.texts[c].double()
        if any(u.kind == "pair" for u in units):
            neurons = torch.tensor([u.neuron for u in units])
            heads = torch.tensor([u.head for u in units])
            cos = model.pairs.cosines(self.method.texts[c:c + 1])[0, neurons, heads]
            return [float(x) for x in cos]
        heads = model.pool.heads
        with torch.inference_mode():
            if self.method.name in HEAD_METHODS and self.method.name != "head-only":
                values = torch.cat([head_values(self.method, t) for t in self.traces])  # (n, K, H, hd)
            else:
                values = torch.cat([model.pool.project(t.tokens, "v")[:, 1:] * t.attention[:, :, 1:].transpose(1, 2)
                                    [..., None] for t in self.traces])
        weighted = torch.einsum("nkhc,nk->hc", values.double(), window_weights.flatten(1).to(values.device).double())
        outputs = torch.einsum("hdc,hc->hd", heads.w_o.double(), weighted)  # (H, d)
        result = []
        for unit in units:
            vector = heads.b_o.double() if unit.kind == "bias" else outputs[unit.head]
            result.append(float(vector @ text / vector.norm().clamp_min(1e-12)))
        return result

    def head_neurons(self, head: int, at: tuple[int, int] | None = None, region: np.ndarray | None = None,
                     target: int | None = None) -> tuple[np.ndarray, float]:
        """A head's share of the logit split over the neurons feeding it (``maskclip`` and ``self-self``).

        Head h's term is ``(W_O^h (W_v^h x^h_i + c_i b_v^h)) . t_c / |f_i|`` with ``x^h_i = z_i``, ``c_i = 1``
        (``maskclip``) or ``x^h_i = sum_j A^h_ij z'_j``, ``c_i = sum_j A^h_ij`` (``self-self``): linear in each neuron.

        Args:
            head: the head.
            at, region: the pixel or region (as :meth:`attribute`).
            target: the class (default: the top class there).

        Returns:
            ``(N,)`` float64 each neuron's share, and the value bias's share; they sum to the head's contribution.

        Raises:
            ConfigError: a method whose units are not per-head outputs, or a head out of range.
        """
        if self.method.name not in ("maskclip", "self-self"):
            raise ConfigError(f"Neurons through a head are for maskclip and self-self; {self.method.name} has pairs "
                              "(or head maps) as units.")
        heads = self.model.pool.heads
        if not 0 <= head < heads.num_heads:
            raise ConfigError(f"Head {head} does not exist: the model has {heads.num_heads} heads.")
        window_weights = self._window_weights(self.weights(at, region))
        if target is None:
            target = self.attribute(at, region, maps=False, top=1).target
        text = self.method.texts[target].double()
        projected = heads.w_o[head].double().T @ text  # W_O^h^T t_c: (hd,)
        gain = heads.w_v[head].double().T @ projected  # (N,)
        bias = float(heads.b_v[head].double() @ projected)
        pool = self.model.pool.pool
        neurons_total, bias_total, start = torch.zeros_like(gain), 0.0, 0
        with torch.inference_mode():
            for trace in self.traces:
                count = len(trace)
                omega = window_weights[start:start + count].flatten(1).to(gain)  # (B, K)
                start += count
                values = head_values(self.method, trace)  # (B, K, H, hd)
                features = torch.nn.functional.linear(values.flatten(2), pool.c_proj.weight, pool.c_proj.bias)
                scale = omega / features.double().norm(dim=-1).clamp_min(1e-12)  # (B, K)
                if self.method.name == "maskclip":
                    mixed = trace.neurons.flatten(2).transpose(1, 2).double()  # (B, K, N)
                    coefficient = torch.ones_like(scale)
                else:
                    tokens = self.model.pool.tokens(trace.neurons)
                    attention = self_self_attention(self.model, tokens)[:, head, 1:].double()  # (B, K, T)
                    mixed = attention @ tokens.double()
                    coefficient = attention.sum(-1)
                neurons_total += torch.einsum("bk,bkn->n", scale, mixed) * gain
                bias_total += float((scale * coefficient).sum()) * bias
        return neurons_total.cpu().numpy(), bias_total

    def intervene(self, intervention: UnitIntervention, truth: np.ndarray | None = None
                  ) -> tuple[StitchedLogits, Comparison]:
        """The segmentation with units removed or scaled, compared with the original.

        Args:
            intervention: the scales (neurons as hooks, heads and pairs in the method).
            truth: ``(H, W)`` ground-truth labels ``0..C-1`` (255 ignored) for the mIoU change, or None.

        Returns:
            The new stitched logits and the :class:`Comparison`.

        Raises:
            ConfigError: units the method does not have.
        """
        method = intervened_method(self.method, intervention)
        traces = self.traces if not intervention.neurons else self._trace(merge_hooks(self.hooks,
                                                                                      intervention.hooks()))
        stitched = self._stitch(method, traces)
        labels = stitched.labels(self.size, self.protocol.temperature).cpu().numpy()
        return stitched, compare(self.labels, labels, self.names, truth)

    def remove_top_units(self, count: int, at: tuple[int, int] | None = None, region: np.ndarray | None = None,
                         target: int | None = None, truth: np.ndarray | None = None
                         ) -> tuple[Attribution, UnitIntervention, Comparison]:
        """Remove the ``count`` units that contribute most to ``target`` (default: the top class) at a pixel or
        region, and compare the segmentations.

        Returns:
            The attribution, the intervention applied and the :class:`Comparison`.

        Raises:
            ConfigError: ``count < 1``, or a bad point, region or class.
        """
        if count < 1:
            raise ConfigError(f"Remove at least one unit; got {count}.")
        attribution = self.attribute(at, region, target, top=count, maps=False)
        chosen = attribution.top_units(count)
        intervention = UnitIntervention(
            heads={u.head: 0.0 for u in chosen if u.kind == "head"},
            pairs={(u.neuron, u.head): 0.0 for u in chosen if u.kind == "pair"})
        _, comparison = self.intervene(intervention, truth)
        return attribution, intervention, comparison

