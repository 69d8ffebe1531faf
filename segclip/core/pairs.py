"""Pair directions w[n, h] = W_O^h W_v^h[:, n] in closed form, without forming N x H x d (docs/method.md §2.5).

    cos(w[n, h], t) = W_v^h[:, n] . (W_O^h^T t) / |w[n, h]|
    |w[n, h]|^2     = W_v^h[:, n]^T G_h W_v^h[:, n],     G_h = W_O^h^T W_O^h  (head_dim x head_dim)

All pairs against C texts cost O(N H head_dim C).
"""
from __future__ import annotations

import torch

from segclip.core.attnpool import AttentionPool


class PairDirections:
    """The fixed (image-independent) part of the neuron-head decomposition.

    Args:
        pool: the model's :class:`AttentionPool`.

    Attributes:
        num_neurons, num_heads, head_dim, embed_dim: N, H, head_dim, d.

    Example:
        >>> from segclip.models import load_model
        >>> model = load_model("RN50", "none")
        >>> pairs = model.pairs  # the model keeps one PairDirections
        >>> pairs.norms().shape
        torch.Size([2048, 32])
    """

    def __init__(self, pool: AttentionPool):
        self.pool = pool
        self.num_neurons, self.num_heads = pool.neurons, pool.num_heads
        self.head_dim, self.embed_dim = pool.head_dim, pool.embed_dim
        self._cache: dict[str, tuple[tuple, torch.Tensor]] = {}

    def _cached(self, name: str, compute) -> torch.Tensor:
        """``compute()`` once per state of the pool's parameters (storage, version, dtype, device)."""
        params = (self.pool.pool.v_proj.weight, self.pool.pool.v_proj.bias, self.pool.pool.c_proj.weight)
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)
        hit = self._cache.get(name)
        if hit is None or hit[0] != key:
            with torch.no_grad():
                hit = (key, compute())
            self._cache[name] = hit
        return hit[1]

    @property
    def value_weight(self) -> torch.Tensor:
        """(H, head_dim, N): W_v^h."""
        return self.pool.heads.w_v

    @property
    def output_weight(self) -> torch.Tensor:
        """(H, d, head_dim): W_O^h."""
        return self.pool.heads.w_o

    def head_biases(self) -> torch.Tensor:
        """(H, d): beta[h] = W_O^h b_v^h."""
        heads = self.pool.heads
        return torch.einsum("hdc,hc->hd", heads.w_o, heads.b_v)

    def output_bias(self) -> torch.Tensor:
        """(d,): b_O."""
        return self.pool.heads.b_o

    def gram(self) -> torch.Tensor:
        """(H, hd, hd): G_h = W_O^h^T W_O^h."""
        return self._cached("gram", lambda: torch.einsum("hdc,hde->hce", self.output_weight, self.output_weight))

    def norms(self) -> torch.Tensor:
        """(N, H): |w[n, h]| via the per-head Gram matrices G_h (computed once)."""
        def compute() -> torch.Tensor:
            w_v = self.value_weight
            return torch.einsum("hcn,hce,hen->nh", w_v, self.gram(), w_v).clamp_min(0).sqrt()

        return self._cached("norms", compute)

    def dots(self, texts: torch.Tensor) -> torch.Tensor:
        """(C, N, H): w[n, h] . t_c for texts (C, d)."""
        projected = torch.einsum("hdc,kd->khc", self.output_weight, texts.to(self.output_weight.dtype))
        return torch.einsum("khc,hcn->knh", projected, self.value_weight)

    def cosines(self, texts: torch.Tensor) -> torch.Tensor:
        """(C, N, H): cos(w[n, h], t_c) for texts (C, d)."""
        texts = texts.to(self.output_weight.dtype)
        unit = texts / texts.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return self.dots(unit) / self.norms().clamp_min(1e-12)

    def vectors(self, neurons: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
        """Explicit directions for chosen pairs only.

        Args:
            neurons: (P,) neuron indices.
            heads: (P,) head indices.

        Returns:
            (P, d): w[n_p, h_p].
        """
        w_v = self.value_weight[heads, :, neurons]  # (P, hd)
        out = w_v.new_empty(len(neurons), self.embed_dim)
        w_o = self.output_weight
        for head in heads.unique().tolist():  # one (P_h, hd) x (hd, d) product per head present
            chosen = heads == head
            out[chosen] = w_v[chosen] @ w_o[head].T
        return out

    def head_vectors(self, head: int) -> torch.Tensor:
        """(N, d): the directions w[:, head] of every neuron through one head."""
        return (self.output_weight[head] @ self.value_weight[head]).T

    def contributions(self, pair_scalars: torch.Tensor, neurons: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
        """The paper's r[n, h] for chosen pairs: alpha w + beta[h] / N + b_O / (N H).

        Args:
            pair_scalars: (B, N, H) alpha.
            neurons, heads: (P,) pair indices.

        Returns:
            (B, P, d).
        """
        alpha = pair_scalars[:, neurons, heads]  # (B, P)
        shared = self.head_biases()[heads] / self.num_neurons + self.output_bias() / (self.num_neurons * self.num_heads)
        return alpha[..., None] * self.vectors(neurons, heads) + shared
