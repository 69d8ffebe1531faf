"""Streaming statistics of neuron-head pairs, neurons and heads over an image set, in constant memory.

Per image only alpha (N, H), the layer4 maps and the attention are seen (docs/method.md §2.5); nothing of size
N x H x d is formed. The running state holds sums and, per unit, running top-k lists:

- pairs: the k largest and k smallest alpha[n, h] with their image indices. The top-k deviations
  |alpha - mean| are among them (for any mean), and so are the top-k contribution norms, because
  |r[n, h]|^2 = alpha^2 |w|^2 + 2 alpha (w . c_h) + |c_h|^2 (c_h = beta_h / N + b_O / (N H)) is convex in alpha.
  Both are therefore exact after one pass, whatever the final mean turns out to be.
- neurons: the second moment of alpha[n, :] (N, H, H), for principal components of r[n] = sum_h r[n, h] in closed
  form; per image |r[n]|^2 = alpha_n^T G_n alpha_n + 2 alpha_n . (W_n^T C) + |C|^2 with the per-neuron Gram
  G_n = W_n^T W_n (H x H), W_n = [w[n, 1] .. w[n, H]], C = sum_h c_h; running top-k norms; the mean activation
  map and running top-k activation norms |x[n]| (over the grid).
  The top-k list also carries each top image's alpha[n, :]; their mean and covariance are kept for principal
  components of the top samples (paper A.2) and for orienting components.
- heads: the second moment of the value v^h = W_v^h alpha[:, h] + b_v^h (H, head_dim, head_dim), since
  r[h] = W_O^h v^h + b_O / H; running top-k norms of r[h], carrying each top image's v^h (their mean is kept).
- the attention sink: the mean attention of the class token to the last token per head, and the mean
  |change| and mean decrease of it when each neuron is zeroed (register neurons; :mod:`segclip.core.registers`;
  zeroed as the paper does, the activation before the positional embedding, unless ``register_variant="tokens"``).

The state is mergeable (:meth:`RunningStatistics.merge`) and savable (:meth:`RunningStatistics.state_dict`), so
:func:`segclip.analysis.stream.run_pass` checkpoints and resumes it.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from segclip.analysis.stream import run_pass
from segclip.core.attnpool import AttentionPool, HeadWeights
from segclip.core.pairs import PairDirections
from segclip.core.registers import RegisterSearch, sink_attention
from segclip.core.trace import Trace
from segclip.errors import CacheError, ConfigError, DataError
from segclip.io import atomic_save_tensors, read_tensors
from segclip.models.loading import CLIPResNet

STATISTICS_VERSION = 5  # 5: the A.2 lists (second pass); 4: register search zeroes activations (before P)
STATE_LAYOUT = 3  # of the running state in checkpoints; 2: top lists along the last dim; 3: pair lists in float32
PENDING_IMAGES = 256  # at most this many images wait to enter the top lists together ...
PENDING_BYTES = 1 << 27  # ... and at most about this much of their values (128 MB; 163 images of RN50)
TOP_LISTS = ("high", "low", "neuron", "activation", "head")
SAMPLES = {"neuron": "neuron_samples", "head": "head_samples"}  # per-image coordinates carried by top lists


def pass_key(top_k: int, registers: bool, register_variant: str) -> dict[str, Any]:
    """What a statistics checkpoint must match to be resumed (see :func:`segclip.analysis.stream.run_pass`)."""
    return {"kind": "statistics", "version": STATISTICS_VERSION, "state": STATE_LAYOUT, "top_k": top_k,
            "registers": registers, "register_variant": register_variant}


def _rank_keys(values: torch.Tensor, images: torch.Tensor, largest: bool) -> torch.Tensor:
    """One int64 per entry whose ascending order is the top lists' order of float32 ``values`` (descending when
    ``largest``), ties by the lower image index: the value's bits, mapped to a signed integer of the same order,
    times 2^32 (negated when ``largest``), plus the image index. Keys of distinct images are distinct, so a plain
    (smallest) top-k of them is exact.

    Example:
        >>> values = torch.tensor([[1.0, -2.0, 1.0, -0.0, 0.0]])
        >>> _rank_keys(values, torch.arange(5)[None], largest=True).topk(5, largest=False).indices
        tensor([[0, 2, 3, 4, 1]])
    """
    bits = (values + 0.0).view(torch.int32)  # + 0.0: -0.0 -> 0.0, which ties with it
    ordered = (bits ^ ((bits >> 31) & 0x7FFFFFFF)).long()  # negative floats' bits count the wrong way: flip them
    return torch.sub(images, ordered, alpha=1 << 32) if largest else torch.add(images, ordered, alpha=1 << 32)


def _merge_top(values: torch.Tensor, carried: list[torch.Tensor], new_values: torch.Tensor,
               new_carried: list[torch.Tensor], k: int, largest: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Merge two top-k lists along the last dim of ``values``: (..., k1) + (..., k2) -> (..., min(k, k1+k2)).

    The lists run along the last dim of ``values`` (contiguous, so sorting and gathering stay in cache); each
    ``carried`` tensor (image indices first, then per-image coordinates (..., k, q)) has the list at the same dim
    and is reordered with it. Every list is kept sorted by (value, image index): ties go to the lower image index,
    so the result does not depend on the order in which images and shards were merged. When the new images all
    come after the listed ones (one pass over the images), only the units where a new value beats the current
    k-th one are touched, and the candidates need no ordering by index.
    """
    dim = values.dim() - 1
    old_images, new_images = carried[0], new_carried[0]
    sequential = old_images.numel() == 0 or new_images.numel() == 0 or (
        bool(new_images.amin() > old_images.amax()) and bool((new_images.diff(dim=dim) >= 0).all()))
    if sequential and values.shape[dim] >= k and new_values.numel():
        worst = values[..., k - 1:k]
        enters = (new_values > worst if largest else new_values < worst).any(dim)  # ties lose: later images
        if not bool(enters.all()):
            rows = enters.nonzero(as_tuple=True)
            merged, merged_carried = _merge_top(values[rows], [c[rows] for c in carried], new_values[rows],
                                                [c[rows] for c in new_carried], k, largest)
            values, carried = values.clone(), [c.clone() for c in carried]
            values[rows] = merged
            for c, m in zip(carried, merged_carried):
                c[rows] = m
            return values, carried
    values = torch.cat([values, new_values], dim)
    carried = [torch.cat([old, new], dim) for old, new in zip(carried, new_carried)]
    if values.dtype == torch.float32 and values.numel() and int(carried[0].max()) < 1 << 32:
        # one top-k of keys that order by (value, image index) with no ties: exact, and no sort of all candidates
        order = _rank_keys(values, carried[0], largest).topk(min(k, values.shape[dim]), dim, largest=False).indices
    else:
        # one selection of the best k+1 by value, in order: where those k+1 values are distinct, the best k and
        # their order follow from the values alone; only units with a tie among them need the rule (value, then
        # image index), which two stable sorts give
        best = values.topk(min(k + 1, values.shape[dim]), dim, largest=largest, sorted=True)
        order = best.indices[..., :k]
        tied = (best.values[..., 1:] == best.values[..., :-1]).any(dim)
        if bool(tied.any()):
            rows = tied.nonzero(as_tuple=True)
            exact = carried[0][rows].argsort(dim=-1, stable=True) if not sequential else None
            tied_values = values[rows] if exact is None else values[rows].gather(-1, exact)
            ranked = tied_values.sort(dim=-1, descending=largest, stable=True).indices[..., :k]
            order[rows] = ranked if exact is None else exact.gather(-1, ranked)
    values = values.gather(dim, order)
    carried = [c.gather(dim, order.view(*order.shape, *[1] * (c.dim() - order.dim())).expand(
        *order.shape, *c.shape[order.dim():])) for c in carried]
    return values, carried


@torch.no_grad()
def pair_constants(pool: AttentionPool, dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    """Image-independent quantities of the norm formulas, in ``dtype``.

    Returns:
        ``norms2`` (N, H) |w|^2; ``w_dot_c`` (N, H) w[n, h] . c_h; ``c_norm2`` (H,) |c_h|^2; ``gram`` (N, H, H)
        w[n, h] . w[n, h']; ``w_dot_total`` (N, H) w[n, h] . C; ``total_norm2`` () |C|^2.
    """
    pairs = PairDirections(pool)
    n, h = pairs.num_neurons, pairs.num_heads
    w_o = pairs.output_weight.to(dtype)  # (H, d, hd)
    w_v = pairs.value_weight.to(dtype)  # (H, hd, N)
    shares = pairs.head_biases().to(dtype) / n + pairs.output_bias().to(dtype) / (n * h)  # c_h: (H, d)
    total = shares.sum(0)
    projected = torch.einsum("hdc,hd->hc", w_o, shares)  # W_O^h^T c_h: (H, hd)
    gram = torch.empty(n, h, h, dtype=dtype, device=w_o.device)
    step = max(1, (1 << 23) // (h * pairs.embed_dim))
    for start in range(0, n, step):
        vectors = torch.einsum("hdc,hcn->nhd", w_o, w_v[:, :, start:start + step])  # (n, H, d)
        gram[start:start + step] = vectors @ vectors.transpose(1, 2)
    return {"norms2": torch.diagonal(gram, dim1=1, dim2=2).clone(),
            "w_dot_c": torch.einsum("hc,hcn->nh", projected, w_v),
            "c_norm2": (shares * shares).sum(-1),
            "gram": gram,
            "w_dot_total": torch.einsum("hdc,d,hcn->nh", w_o, total, w_v),
            "total_norm2": total @ total}


class RunningStatistics:
    """The streaming state; feed it traces with :meth:`update`, then :meth:`finalise`.

    Args:
        pool: the model's attention pool.
        top_k: length of every running top list (and of the stored top deviations; docs/method.md §7.1 uses 50).
        registers: also accumulate register-neuron scores (the sink change of every neuron; costs about one
            extra attention computation per neuron chunk).
        dtype: accumulation dtype (float64 by default, so sums do not depend on chunking).

    Example:
        >>> from segclip.models import load_model
        >>> model = load_model("RN50", "none")
        >>> running = RunningStatistics(model.pool, top_k=4)
        >>> running.update(model.trace(torch.randn(2, 3, 224, 224)), first=0)
        >>> running.finalise().mean_scalars.shape
        torch.Size([2048, 32])
    """

    def __init__(self, pool: AttentionPool, *, top_k: int = 50, registers: bool = True,
                 register_variant: str = "activations", dtype: torch.dtype = torch.float64):
        if top_k < 1:
            raise ValueError("top_k must be at least 1")
        if register_variant not in ("activations", "tokens"):
            raise ValueError(f"unknown register variant {register_variant!r}")
        self.pool, self.top_k, self.registers, self.dtype = pool, top_k, registers, dtype
        self.register_variant = register_variant
        self.constants = pair_constants(pool, dtype)
        self.heads = pool.heads.to(dtype)
        self.register_search = RegisterSearch(pool)
        n, h, k = pool.neurons, pool.num_heads, pool.grid ** 2
        device = pool.pool.c_proj.weight.device
        zeros = lambda *shape: torch.zeros(*shape, dtype=dtype, device=device)  # noqa: E731
        self._state: dict[str, torch.Tensor] = {
            "count": torch.zeros(1, dtype=torch.long, device=device),
            "alpha_sum": zeros(n, h), "alpha_outer": zeros(n, h, h), "activation_sum": zeros(n, k),
            "value_sum": zeros(h, pool.head_dim), "value_outer": zeros(h, pool.head_dim, pool.head_dim),
            "sink_sum": zeros(h), "register_sum": zeros(n), "register_decrease_sum": zeros(n)}
        # alpha of a float32 (or narrower) model is exact in float32: the pair lists keep it so (half the memory,
        # and keys that make their merge one top-k); norms and sums stay in ``dtype``
        narrow = pool.pool.c_proj.weight.dtype in (torch.float32, torch.bfloat16, torch.float16)
        self.pair_dtype = torch.float32 if narrow else dtype
        per_image = n * h * (self.pair_dtype.itemsize + dtype.itemsize) + (2 * n + h * (pool.head_dim + 1)) * 8
        self.pending_images = max(1, min(PENDING_IMAGES, PENDING_BYTES // per_image))
        for name, shape in zip(TOP_LISTS, [(n, h), (n, h), (n,), (n,), (h,)]):  # lists along the last dim
            self._state[f"{name}_values"] = zeros(*shape, 0).to(self.pair_dtype if name in ("high", "low") else dtype)
            self._state[f"{name}_images"] = torch.zeros(*shape, 0, dtype=torch.long, device=device)
        self._state["neuron_samples"], self._state["head_samples"] = zeros(n, 0, h), zeros(h, 0, pool.head_dim)
        # per batch, what waits to enter the top lists: "index" (B,), each list's values (..., B) ("high" serves
        # both pair lists), their samples
        self._pending: list[dict[str, torch.Tensor]] = []

    @property
    def state(self) -> dict[str, torch.Tensor]:
        """The running state (top lists up to date)."""
        self._flush()
        return self._state

    def _flush(self) -> None:
        """Merge the pending images into the top lists: one selection per ``pending_images`` images instead of one
        per batch (each list's k entries take part once for all of them)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        index = torch.cat([entry["index"] for entry in pending])
        joined: dict[str, torch.Tensor] = {}
        for name in TOP_LISTS:
            source = "high" if name == "low" else name  # both pair lists take their candidates from alpha
            if source not in joined:
                joined[source] = torch.cat([entry[source] for entry in pending], -1)  # (..., M): along the last dim
            values = joined[source]
            samples = torch.cat([entry[SAMPLES[name]] for entry in pending], 1) if name in SAMPLES else None
            self._push(name, values, index.expand_as(values), samples, largest=name != "low")

    @property
    def count(self) -> int:
        return int(self._state["count"].item())

    def _push(self, name: str, values: torch.Tensor, images: torch.Tensor, samples: torch.Tensor | None = None,
              largest: bool = True) -> None:
        keys = [f"{name}_images"] + ([SAMPLES[name]] if name in SAMPLES else [])
        new = [images] + ([samples] if name in SAMPLES else [])
        self._state[f"{name}_values"], carried = _merge_top(
            self._state[f"{name}_values"], [self._state[key] for key in keys], values, new, self.top_k, largest)
        self._state.update(zip(keys, carried))

    @torch.inference_mode()
    def update(self, trace: Trace, first: int) -> None:
        """Add a batch of B images whose indices are ``first .. first + B - 1``."""
        alpha = trace.pair_scalars.to(self.dtype)  # (B, N, H)
        batch = alpha.shape[0]
        index = torch.arange(first, first + batch, device=alpha.device)
        c, s = self.constants, self._state
        s["count"] += batch
        s["alpha_sum"] += alpha.sum(0)
        s["alpha_outer"] += torch.einsum("bnh,bnk->nhk", alpha, alpha)
        neuron_norm2 = (torch.einsum("bnh,nhk,bnk->bn", alpha, c["gram"], alpha)
                        + 2 * torch.einsum("bnh,nh->bn", alpha, c["w_dot_total"]) + c["total_norm2"])
        maps = trace.neurons.to(self.dtype).flatten(2)  # (B, N, K)
        s["activation_sum"] += maps.sum(0)
        values = head_values(self.pool, alpha, self.heads)  # (B, H, hd)
        s["value_sum"] += values.sum(0)
        s["value_outer"] += torch.einsum("bhc,bhe->hce", values, values)
        if trace.pair_scalars.dtype.itemsize > self.pair_dtype.itemsize:
            raise ValueError(f"a {trace.pair_scalars.dtype} trace for statistics of a {self.pair_dtype} pool: the "
                             "pair lists would round it; trace in the pool's dtype")
        listed = trace.pair_scalars.to(self.pair_dtype).permute(1, 2, 0).contiguous()  # (N, H, B): along the last dim
        self._pending.append({
            "index": index, "high": listed, "neuron": neuron_norm2.clamp_min(0).sqrt().T,
            "neuron_samples": alpha.transpose(0, 1), "activation": maps.norm(dim=-1).T,
            "head": head_contributions(self.pool, alpha, values, self.heads).norm(dim=-1).T,
            "head_samples": values.transpose(0, 1)})
        if sum(len(entry["index"]) for entry in self._pending) >= self.pending_images:
            self._flush()
        s["sink_sum"] += sink_attention(trace.attention).to(self.dtype).sum(0)
        if self.registers:
            removed = self.pool.activations(trace.neurons) if self.register_variant == "activations" else None
            changes = self.register_search(trace.tokens, removed, query=trace.query, keys=trace.keys)  # (B, N)
            changes = changes.to(self.dtype)
            s["register_sum"] += changes.abs().sum(0)
            s["register_decrease_sum"] -= changes.sum(0)

    @torch.inference_mode()
    def merge(self, other: RunningStatistics) -> None:
        """Add another state computed on other images (with global image indices) into this one."""
        listed = {f"{name}_{part}" for name in TOP_LISTS for part in ("values", "images")} | set(SAMPLES.values())
        self._flush()
        for key, value in other.state.items():
            if key not in listed:
                self._state[key] = self._state[key] + value
        for name in TOP_LISTS:
            self._push(name, other.state[f"{name}_values"], other.state[f"{name}_images"],
                       other.state.get(SAMPLES.get(name, ""), None), largest=name != "low")

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.state)

    @torch.inference_mode()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        device = self._state["count"].device
        missing = set(self._state) - set(state)
        if missing:
            raise CacheError(f"statistics checkpoint lacks {sorted(missing)}; delete it and run again")

        def fixed(key: str, shape: torch.Size) -> tuple[int, ...]:  # the shape without the list dim
            at = 1 if key.endswith("_samples") else -1 if key.endswith(("_values", "_images")) else None
            return tuple(shape) if at is None else tuple(d for i, d in enumerate(shape) if i != at % len(shape))

        wrong = [key for key in self._state if fixed(key, state[key].shape) != fixed(key, self._state[key].shape)
                 or state[key].dim() != self._state[key].dim()]
        if wrong:
            raise CacheError(f"statistics checkpoint has other shapes for {wrong[:3]} (another model or an older "
                             "segclip); delete it and run again")
        self._state = {key: state[key].to(device, self._state[key].dtype) for key in self._state}
        self._pending = []

    @torch.inference_mode()
    def finalise(self, *, top_fraction: float = 0.01, top_images: int = 10) -> Statistics:
        """The statistics of the images seen so far.

        Args:
            top_fraction: units are ranked by the mean of their top ``top_fraction`` norms (the paper's "top
                percentile"), at least 1 and at most ``top_k`` images.
            top_images: how many top images per unit to keep (at most ``top_k``).

        Returns:
            The :class:`Statistics`.

        Raises:
            ValueError: no image was seen.
        """
        n = self.count
        if n == 0:
            raise ValueError("no images were accumulated")
        s, c = self.state, self.constants
        norm_k = min(self.top_k, n, max(1, math.ceil(top_fraction * n)))
        image_k = min(self.top_k, n, max(norm_k, top_images))
        mean = s["alpha_sum"] / n
        candidates = torch.cat([s["high_values"], s["low_values"]], -1)  # (N, H, 2k)
        images = torch.cat([s["high_images"], s["low_images"]], -1)
        order = images.argsort(dim=-1, stable=True)  # an image in both lists counts once
        sorted_images = images.gather(-1, order)
        repeated = torch.zeros_like(images, dtype=torch.bool)
        repeated.scatter_(-1, order[..., 1:], sorted_images[..., 1:] == sorted_images[..., :-1])
        deviation = candidates - mean[..., None]
        dev_top = deviation.abs().masked_fill(repeated, -1).topk(min(self.top_k, n), dim=-1)
        deviations = deviation.gather(-1, dev_top.indices)
        votes = torch.sign(deviations).sum(-1)
        norms = (candidates ** 2 * c["norms2"][..., None] + 2 * candidates * c["w_dot_c"][..., None]
                 + c["c_norm2"][:, None]).clamp_min(0).sqrt()
        norm_top = norms.masked_fill(repeated, -1).topk(image_k, dim=-1)
        covariance = s["alpha_outer"] / n - mean[:, :, None] * mean[:, None, :]
        value_mean = s["value_sum"] / n
        top_mean, top_covariance = _moments(s["neuron_samples"])
        head_top_mean, head_top_covariance = _moments(s["head_samples"])
        first = lambda t: t.movedim(-1, 0).contiguous()  # noqa: E731  (..., k) -> (k, ...), best first
        return Statistics(
            count=n, top_k=self.top_k, norm_k=norm_k,
            mean_scalars=mean, deviations=first(deviations), deviation_images=first(images.gather(-1, dev_top.indices)),
            signs=torch.where(votes >= 0, 1, -1).to(torch.int8),
            pair_top_norm=norm_top.values[..., :norm_k].mean(-1),
            pair_top_images=first(images.gather(-1, norm_top.indices)),
            neuron_covariance=covariance, neuron_top_mean=top_mean, neuron_top_covariance=top_covariance,
            neuron_top_norm=s["neuron_values"][:, :norm_k].mean(-1),
            neuron_top_images=first(s["neuron_images"][:, :image_k]),
            activation_mean=s["activation_sum"] / n,
            activation_top_norm=s["activation_values"][:, :norm_k].mean(-1),
            activation_top_images=first(s["activation_images"][:, :image_k]),
            head_covariance=s["value_outer"] / n - value_mean[:, :, None] * value_mean[:, None, :],
            head_top_mean=head_top_mean, head_top_covariance=head_top_covariance,
            head_top_norm=s["head_values"][:, :norm_k].mean(-1), head_top_images=first(s["head_images"][:, :image_k]),
            sink_attention=s["sink_sum"] / n,
            register_scores=s["register_sum"] / n if self.registers else torch.zeros_like(s["register_sum"]),
            register_decrease=s["register_decrease_sum"] / n if self.registers
            else torch.zeros_like(s["register_decrease_sum"]))


def a2_key(top_k: int, mean_scalars: torch.Tensor) -> dict[str, Any]:
    """What a checkpoint of the A.2 pass (:class:`RunningTopDeviations`) must match: its k and the global mean
    it ranks by (a hash of its bytes)."""
    import hashlib

    digest = hashlib.sha256(mean_scalars.detach().cpu().double().contiguous().numpy().tobytes()).hexdigest()
    return {"kind": "statistics-a2", "version": STATISTICS_VERSION, "top_k": top_k, "mean": digest}


class RunningTopDeviations:
    """The second pass of paper A.2: per neuron and per head, the k images whose contribution lies farthest from
    its mean over all images, with their coordinates about the mean.

    The authors (``svd_over_dataset.py``, ``--top_k_pca 50``) centre every image's contribution r_u at the global
    mean, keep the k rows of largest |r_u - mean| and take the SVD of those rows as they are (not re-centred).
    Here r_n - mean = W_n (alpha[n, :] - mean_n) and r_h - mean = W_O^h (v^h - mean_v), so
    |r_u - mean|^2 = (x - m)^T G_u (x - m) with the Gram G_u = W_u^T W_u, and each list carries x - m (q values,
    not d). The ranking needs the mean over *all* images, known only after the first pass, and cannot be exact in
    one pass with bounded memory for q >= 2: which points are farthest from a centre depends on the centre's
    direction (points on a circle: each is the farthest for some centre), and images still to come move the mean
    anywhere. So this is an exact second pass with the mean fixed. Lists are sorted by (distance, image index),
    ties to the lower index (``np.argsort`` of the authors leaves ties to its sort), so merging processes' lists
    is exact and order-free.

    Args:
        pool: the model's attention pool.
        mean_scalars: (N, H) mean alpha over all images (the first pass's ``mean_scalars``).
        top_k: rows per unit (the authors' ``--top_k_pca``, 50).
        dtype: accumulation dtype.

    Example:
        >>> from segclip.models import load_model
        >>> model = load_model("RN50", "none")
        >>> trace = model.trace(torch.randn(3, 3, 224, 224))
        >>> running = RunningTopDeviations(model.pool, trace.pair_scalars.double().mean(0), top_k=2)
        >>> running.update(trace, first=0)
        >>> running.state["neuron_samples"].shape
        torch.Size([2048, 2, 32])
    """

    def __init__(self, pool: AttentionPool, mean_scalars: torch.Tensor, *, top_k: int = 50,
                 dtype: torch.dtype = torch.float64):
        if top_k < 1:
            raise ValueError("top_k must be at least 1")
        device = pool.pool.c_proj.weight.device
        self.pool, self.top_k, self.dtype = pool, top_k, dtype
        self.heads = pool.heads.to(dtype)
        self.mean = mean_scalars.to(device, dtype)  # (N, H)
        self.value_mean = head_values(pool, self.mean[None], self.heads)[0]  # (H, hd): v^h is affine in alpha
        self.neuron_gram = pair_constants(pool, dtype)["gram"]  # (N, H, H)
        self.head_gram = torch.einsum("hdc,hde->hce", self.heads.w_o, self.heads.w_o)  # (H, hd, hd)
        n, h, hd = pool.neurons, pool.num_heads, pool.head_dim
        self._state = {"count": torch.zeros(1, dtype=torch.long, device=device),
                       "neuron_values": torch.zeros(n, 0, dtype=dtype, device=device),
                       "neuron_images": torch.zeros(n, 0, dtype=torch.long, device=device),
                       "neuron_samples": torch.zeros(n, 0, h, dtype=dtype, device=device),
                       "head_values": torch.zeros(h, 0, dtype=dtype, device=device),
                       "head_images": torch.zeros(h, 0, dtype=torch.long, device=device),
                       "head_samples": torch.zeros(h, 0, hd, dtype=dtype, device=device)}

    @property
    def state(self) -> dict[str, torch.Tensor]:
        return self._state

    def _push(self, name: str, values: torch.Tensor, images: torch.Tensor, samples: torch.Tensor) -> None:
        s = self._state
        s[f"{name}_values"], (s[f"{name}_images"], s[f"{name}_samples"]) = _merge_top(
            s[f"{name}_values"], [s[f"{name}_images"], s[f"{name}_samples"]], values, [images, samples],
            self.top_k, largest=True)

    @torch.inference_mode()
    def update(self, trace: Trace, first: int) -> None:
        """Add a batch of B images whose indices are ``first .. first + B - 1``."""
        alpha = trace.pair_scalars.to(self.dtype)  # (B, N, H)
        index = torch.arange(first, first + alpha.shape[0], device=alpha.device)
        self._state["count"] += alpha.shape[0]
        centred = (alpha - self.mean).transpose(0, 1)  # (N, B, H)
        distance = torch.einsum("nbh,nhk,nbk->nb", centred, self.neuron_gram, centred).clamp_min(0).sqrt()
        self._push("neuron", distance, index.expand_as(distance), centred)
        values = (head_values(self.pool, alpha, self.heads) - self.value_mean).transpose(0, 1)  # (H, B, hd)
        distance = torch.einsum("hbc,hce,hbe->hb", values, self.head_gram, values).clamp_min(0).sqrt()
        self._push("head", distance, index.expand_as(distance), values)

    @torch.inference_mode()
    def merge(self, other: RunningTopDeviations) -> None:
        """Add another state computed on other images (with global image indices) into this one."""
        self._state["count"] = self._state["count"] + other.state["count"]
        for name in ("neuron", "head"):
            self._push(name, other.state[f"{name}_values"], other.state[f"{name}_images"],
                       other.state[f"{name}_samples"])

    def count_value(self) -> int:
        return int(self._state["count"].item())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self._state)

    @torch.inference_mode()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        wrong = [key for key in self._state if key not in state or state[key].dim() != self._state[key].dim()
                 or state[key].shape[0] != self._state[key].shape[0]]
        if wrong:
            raise CacheError(f"A.2 checkpoint lacks or has other shapes for {wrong[:3]}; delete it and run again")
        device = self._state["count"].device
        self._state = {key: state[key].to(device, self._state[key].dtype) for key in self._state}

    def finalise(self) -> dict[str, torch.Tensor]:
        """The Statistics fields ``neuron_a2_samples`` (k, N, H), ``neuron_a2_images`` (k, N), ``head_a2_samples``
        (k, H, hd), ``head_a2_images`` (k, H): farthest first, k = min(top_k, images)."""
        s = self._state
        return {"neuron_a2_samples": s["neuron_samples"].movedim(1, 0).contiguous(),
                "neuron_a2_images": s["neuron_images"].T.contiguous(),
                "head_a2_samples": s["head_samples"].movedim(1, 0).contiguous(),
                "head_a2_images": s["head_images"].T.contiguous()}


def a2_checkpoint_path(checkpoint: Path) -> Path:
    """Where the A.2 pass checkpoints, next to the first pass's ``checkpoint``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name.removesuffix(".safetensors") + ".a2.safetensors")


def add_a2(stats: Statistics, running: RunningTopDeviations) -> Statistics:
    """``stats`` with the A.2 lists of ``running`` (whose pass saw the same images)."""
    if running.count_value() != stats.count:
        raise ValueError(f"the A.2 pass saw {running.count_value()} images, the statistics {stats.count}")
    for key, value in running.finalise().items():
        setattr(stats, key, value)
    return stats


def _moments(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance over the list dim: (U, k, q) -> (U, q), (U, q, q)."""
    mean = samples.mean(1)
    centred = samples - mean[:, None]
    return mean, torch.einsum("ukq,ukp->uqp", centred, centred) / samples.shape[1]


def _pack(matrices: torch.Tensor) -> torch.Tensor:
    """Upper triangles of symmetric matrices: (..., q, q) -> (..., q (q + 1) / 2)."""
    rows, cols = torch.triu_indices(*matrices.shape[-2:], device=matrices.device)
    return matrices[..., rows, cols]


def _unpack(packed: torch.Tensor, q: int) -> torch.Tensor:
    """Inverse of :func:`_pack`: (..., q (q + 1) / 2) -> symmetric (..., q, q)."""
    rows, cols = torch.triu_indices(q, q, device=packed.device)
    out = packed.new_zeros(*packed.shape[:-1], q, q)
    out[..., rows, cols] = packed
    out[..., cols, rows] = packed
    return out


@torch.no_grad()
def head_values(pool: AttentionPool, pair_scalars: torch.Tensor, heads: HeadWeights | None = None) -> torch.Tensor:
    """v^h = W_v^h alpha[:, h] + b_v^h, the head's attention-weighted value: (B, N, H) -> (B, H, head_dim).

    ``heads``: the pool's weights already in ``pair_scalars``' dtype (``pool.heads.to(dtype)``), if at hand."""
    heads = pool.heads.to(pair_scalars.dtype) if heads is None else heads
    return torch.einsum("bnh,hcn->bhc", pair_scalars, heads.w_v) + heads.b_v


@torch.no_grad()
def head_contributions(pool: AttentionPool, pair_scalars: torch.Tensor, values: torch.Tensor | None = None,
                       heads: HeadWeights | None = None) -> torch.Tensor:
    """r[h] = W_O^h v^h + b_O / H: (B, N, H) -> (B, H, d); summed over h = the output. ``values``: v^h if known;
    ``heads`` as in :func:`head_values`."""
    heads = pool.heads.to(pair_scalars.dtype) if heads is None else heads
    values = head_values(pool, pair_scalars, heads) if values is None else values
    return torch.einsum("bhc,hdc->bhd", values, heads.w_o) + heads.b_o / pool.num_heads


@dataclass
class Statistics:
    """Finalised statistics of one image set (image indices refer to the image list of the run).

    Attributes:
        count: images seen.
        top_k: length of the top lists; norm_k: how many top norms are averaged for ``*_top_norm``.
        mean_scalars: (N, H) mean alpha.
        deviations: (k, N, H) alpha - mean of the top-k images by |alpha - mean|, largest first (signed).
        deviation_images: (k, N, H) their image indices.
        signs: (N, H) int8 +-1: majority sign of the top-k deviations, ties +1 (docs/method.md §7.1).
        pair_top_norm: (N, H) mean of the top ``norm_k`` |r[n, h]|; pair_top_images: (t, N, H) top images by it.
        neuron_covariance: (N, H, H) covariance of alpha[n, :] over images.
        neuron_top_norm, neuron_top_images: (N,), (t, N) the same for |r[n]|.
        neuron_top_mean, neuron_top_covariance: (N, H), (N, H, H) mean and covariance of alpha[n, :] over each
            neuron's top-k images by |r[n]| (k = min(top_k, count); paper A.2).
        activation_mean: (N, K) mean layer4 map; activation_top_norm, activation_top_images: (N,), (t, N) for the
            grid norm of x[n].
        head_covariance: (H, head_dim, head_dim) covariance of v^h over images.
        head_top_mean, head_top_covariance: (H, head_dim), (H, head_dim, head_dim) mean and covariance of v^h over
            each head's top-k images by |r[h]|.
        head_top_norm, head_top_images: (H,), (t, H) for |r[h]|.
        sink_attention: (H,) mean attention of the class token to the last token.
        register_scores: (N,) mean |change| of the sink attention (mean over heads) when the neuron is zeroed.
        register_decrease: (N,) mean decrease of it (signed: default minus zeroed).
        metadata: free-form JSON-able provenance (model, weights hash, image folder, image names).
        neuron_a2_samples, neuron_a2_images: (k, N, H), (k, N) alpha[n, :] - mean of each neuron's k images with
            the largest |r[n] - mean| (paper A.2, :class:`RunningTopDeviations`), farthest first; None without the
            second pass.
        head_a2_samples, head_a2_images: (k, H, head_dim), (k, H) the same for v^h - mean of the heads.
    """

    count: int
    top_k: int
    norm_k: int
    mean_scalars: torch.Tensor
    deviations: torch.Tensor
    deviation_images: torch.Tensor
    signs: torch.Tensor
    pair_top_norm: torch.Tensor
    pair_top_images: torch.Tensor
    neuron_covariance: torch.Tensor
    neuron_top_mean: torch.Tensor
    neuron_top_covariance: torch.Tensor
    neuron_top_norm: torch.Tensor
    neuron_top_images: torch.Tensor
    activation_mean: torch.Tensor
    activation_top_norm: torch.Tensor
    activation_top_images: torch.Tensor
    head_covariance: torch.Tensor
    head_top_mean: torch.Tensor
    head_top_covariance: torch.Tensor
    head_top_norm: torch.Tensor
    head_top_images: torch.Tensor
    sink_attention: torch.Tensor
    register_scores: torch.Tensor
    register_decrease: torch.Tensor
    metadata: dict[str, Any] = field(default_factory=dict)
    neuron_a2_samples: torch.Tensor | None = None
    neuron_a2_images: torch.Tensor | None = None
    head_a2_samples: torch.Tensor | None = None
    head_a2_images: torch.Tensor | None = None

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)}

    def save(self, path: str | Path) -> None:
        """Write a compact safetensors artifact atomically.

        Float32 values, except the top deviations in float16 (rounding <= 2^-11 relative, 2^-25 absolute below
        2^-14; the signs are taken before rounding; float32 if a deviation exceeds float16's range); covariances as
        packed upper triangles; image indices in the narrowest int. The running state (checkpoints) keeps full
        precision.

        Raises:
            CacheError: the file cannot be written.
        """
        index_dtype = torch.int16 if self.count <= torch.iinfo(torch.int16).max else torch.int32
        half_range = torch.finfo(torch.float16).max
        tensors = {}
        for key, value in self.tensors().items():
            if key.endswith("_images"):
                value = value.to(index_dtype)
            elif key == "deviations":
                value = value.half() if value.abs().max() <= half_range else value.float()
            elif key.endswith("_covariance"):
                value = _pack(value).float()
            elif value.dtype != torch.int8:
                value = value.float()
            tensors[key] = value.contiguous()
        header = {"version": STATISTICS_VERSION, "count": self.count, "top_k": self.top_k, "norm_k": self.norm_k,
                  "metadata": self.metadata}
        header_json = json.dumps(header, sort_keys=True)
        atomic_save_tensors(Path(path), tensors, {"statistics": header_json})  # one key: the same bytes every time

    @classmethod
    def load(cls, path: str | Path) -> Statistics:
        """Read an artifact written by :meth:`save`.

        Raises:
            CacheError: missing, unreadable, of another version, or incomplete.
        """
        path = Path(path)
        saved = read_tensors(path) if path.is_file() else None
        if saved is None:
            raise CacheError(f"Statistics file {path} is missing or unreadable; compute it again.")
        tensors, meta = saved
        try:
            meta = json.loads(meta["statistics"])
        except (KeyError, ValueError):
            raise CacheError(f"Statistics file {path} has no valid header; compute it again.") from None
        if meta.get("version") != STATISTICS_VERSION:
            raise CacheError(f"Statistics file {path} has version {meta.get('version')}, expected "
                             f"{STATISTICS_VERSION}; compute it again.")
        names = [f.name for f in fields(cls) if f.name not in ("count", "top_k", "norm_k", "metadata")
                 and (f.name in tensors or "_a2_" not in f.name)]  # the A.2 lists are optional
        if set(names) - set(tensors):
            raise CacheError(f"Statistics file {path} lacks {sorted(set(names) - set(tensors))}; compute it again.")
        values = {key: tensors[key].long() if key.endswith("_images") else
                  tensors[key].float() if key == "deviations" else
                  _unpack(tensors[key], math.isqrt(8 * tensors[key].shape[-1] + 1) // 2) if key.endswith("_covariance")
                  else tensors[key] for key in names}
        return cls(count=meta["count"], top_k=meta["top_k"], norm_k=meta["norm_k"], metadata=meta["metadata"],
                   **values)


def check_model_statistics(stats: Statistics, model: CLIPResNet, path: str | Path) -> list[str]:
    """The image names of statistics (loaded from ``path``) after checking they were computed with ``model``.

    Raises:
        ConfigError: statistics of another model or other weights.
        DataError: statistics without their image list (or a list of another length).
    """
    meta = stats.metadata
    if (meta.get("model"), meta.get("weights_hash")) != (model.info.name, model.info.weights_hash):
        raise ConfigError(f"--statistics {path} was computed for {meta.get('model')} (weights "
                          f"{meta.get('weights_hash')}), not {model.info.name} ({model.info.weights_hash}); "
                          "compute them for this model with `segclip calibrate`.")
    names = meta.get("images")
    if not names or len(names) != stats.count:
        raise DataError(f"--statistics {path} does not list its images; compute it again with `segclip calibrate`.")
    return list(names)


def collect_statistics(model: CLIPResNet, paths: list[Path], *, top_k: int = 50, registers: bool = True,
                       register_variant: str = "activations", top_fraction: float = 0.01, top_images: int = 10,
                       batch_size: int = 8, checkpoint_every: float = 300.0, checkpoint: Path | None = None,
                       progress: bool = True, a2: bool = True) -> Statistics:
    """Two resumable passes over ``paths`` -> :class:`Statistics` (the calibration and analysis code path): the
    streaming statistics, then (``a2``) the A.2 lists ranked by the distance to the first pass's mean
    (:class:`RunningTopDeviations`; its checkpoint is :func:`a2_checkpoint_path` of ``checkpoint``).

    Args:
        model: the loaded model.
        paths: image files (index i in the results is ``paths[i]``).
        top_k, registers, register_variant: see :class:`RunningStatistics`.
        top_fraction, top_images: see :meth:`RunningStatistics.finalise`.
        batch_size, checkpoint_every, checkpoint, progress: see :func:`segclip.analysis.stream.run_pass`.
        a2: run the second pass (needed by ``--pc-samples top``).

    Returns:
        The statistics, ``metadata`` holding the model, weights hash and image names.

    Raises:
        ImageError: an image is unreadable (the images before it stay in the checkpoint).
    """
    running = RunningStatistics(model.pool, top_k=top_k, registers=registers, register_variant=register_variant)
    run_pass(model, paths, running, key=pass_key(top_k, registers, register_variant), checkpoint=checkpoint,
             batch_size=batch_size, checkpoint_every=checkpoint_every, progress=progress, description="statistics")
    stats = running.finalise(top_fraction=top_fraction, top_images=top_images)
    if a2:
        second = RunningTopDeviations(model.pool, stats.mean_scalars, top_k=top_k)
        a2_checkpoint = None if checkpoint is None else a2_checkpoint_path(checkpoint)
        run_pass(model, paths, second, key=a2_key(top_k, stats.mean_scalars), checkpoint=a2_checkpoint,
                 batch_size=batch_size, checkpoint_every=checkpoint_every, progress=progress,
                 description="statistics (A.2 pass)")
        add_a2(stats, second)
        if a2_checkpoint is not None:
            a2_checkpoint.unlink(missing_ok=True)
    stats.metadata = {"model": model.info.name, "weights_hash": model.info.weights_hash,
                      "image_folder": str(Path(paths[0]).parent.resolve()) if paths else "",
                      "images": [Path(p).name for p in paths], "register_variant": register_variant}
    return stats
