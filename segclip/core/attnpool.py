"""CLIP-ResNet's attention pool, re-implemented from its parameters (docs/method.md §1).

open_clip's ``AttentionPool2d.forward`` changed between versions; its parameters did not. This module reads
``positional_embedding``, ``q_proj``, ``k_proj``, ``v_proj``, ``c_proj`` and ``num_heads`` and exposes every
intermediate: tokens, per-head projections and the class token's attention. Parity with ``attnpool(x)`` is
tested for every ResNet architecture.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from segclip.errors import ModelError


@dataclass(frozen=True)
class HeadWeights:
    """The attention pool's parameters split per head (views that share the parameters' storage).

    Head h owns rows ``[h*hd, (h+1)*hd)`` of the q/k/v projections and the same columns of ``c_proj.weight``.

    Attributes:
        w_q, w_k, w_v: (H, hd, N): W_q^h, W_k^h, W_v^h.
        b_q, b_k, b_v: (H, hd).
        w_o: (H, d, hd): W_O^h.
        b_o: (d,): b_O.
    """

    w_q: torch.Tensor
    b_q: torch.Tensor
    w_k: torch.Tensor
    b_k: torch.Tensor
    w_v: torch.Tensor
    b_v: torch.Tensor
    w_o: torch.Tensor
    b_o: torch.Tensor

    @property
    def num_heads(self) -> int:
        return self.w_v.shape[0]

    def to(self, dtype: torch.dtype) -> HeadWeights:
        """Copies in ``dtype`` (for float64 accumulation without re-casting the weights per batch)."""
        return HeadWeights(*(getattr(self, f.name).to(dtype) for f in fields(self)))

    def bias_share(self, tokens: int) -> torch.Tensor:
        """(d,): b_O / ((K+1) H), the share of b_O that each token-head contribution r^h_i carries."""
        return self.b_o / (tokens * self.num_heads)


class AttentionPool(nn.Module):
    """A view of open_clip's ``AttentionPool2d`` with named access points; shares its parameters.

    Args:
        pool: open_clip's ``AttentionPool2d`` (``model.visual.attnpool``).
        interpolate_positions: accept layer4 grids other than the native one by bicubic interpolation of the
            spatial positional embedding. Off by default: the paper's protocol uses native crops.

    Example:
        >>> import torch
        >>> from open_clip.modified_resnet import AttentionPool2d
        >>> pool = AttentionPool(AttentionPool2d(7, 2048, 32, 1024))
        >>> x = torch.randn(2, 2048, 7, 7)
        >>> torch.allclose(pool(x), pool.pool(x), atol=1e-4)
        True
    """

    def __init__(self, pool: nn.Module, interpolate_positions: bool = False):
        super().__init__()
        self.pool = pool
        self.interpolate_positions = interpolate_positions
        self.num_heads = int(pool.num_heads)
        self.neurons = int(pool.v_proj.in_features)
        self.head_dim = self.neurons // self.num_heads
        self.embed_dim = int(pool.c_proj.out_features)
        self.grid = int(round(math.sqrt(pool.positional_embedding.shape[0] - 1)))

    @property
    def heads(self) -> HeadWeights:
        """The parameters split per head (:class:`HeadWeights`); views, so they follow ``.to()`` and updates."""
        pool, heads, hd, n = self.pool, self.num_heads, self.head_dim, self.neurons

        def split(linear: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
            return linear.weight.view(heads, hd, n), linear.bias.view(heads, hd)

        (w_q, b_q), (w_k, b_k), (w_v, b_v) = split(pool.q_proj), split(pool.k_proj), split(pool.v_proj)
        w_o = pool.c_proj.weight.view(self.embed_dim, heads, hd).permute(1, 0, 2)  # (d, H*hd) -> (H, d, hd)
        return HeadWeights(w_q, b_q, w_k, b_k, w_v, b_v, w_o, pool.c_proj.bias)

    def positional_embedding(self, height: int, width: int) -> torch.Tensor:
        """Positional embedding for a layer4 grid of ``height`` x ``width``: (K+1, N), class token first."""
        pos = self.pool.positional_embedding
        if (height, width) == (self.grid, self.grid):
            return pos
        if not self.interpolate_positions:
            raise ModelError(
                f"The layer4 grid is {height}x{width} but the model's native grid is {self.grid}x{self.grid} "
                f"(input {self.grid * 32}x{self.grid * 32}). Resize or crop images to the native size, or enable "
                "positional-embedding interpolation (interpolate_positions=True / --interpolate-positions).")
        spatial = pos[1:].T.reshape(1, self.neurons, self.grid, self.grid)
        spatial = F.interpolate(spatial.float(), size=(height, width), mode="bicubic", align_corners=False)
        return torch.cat([pos[:1], spatial.to(pos.dtype).reshape(self.neurons, -1).T])

    def activations(self, neurons: torch.Tensor) -> torch.Tensor:
        """Token activations z before the positional embedding: (B, N, h, w) -> (B, K+1, N).

        Token 0 is the mean of the K spatial columns (row-major, token 1 top-left).
        """
        spatial = neurons.flatten(2).transpose(1, 2)  # (B, N, h, w) -> (B, K, N)
        return torch.cat([spatial.mean(dim=1, keepdim=True), spatial], dim=1)

    def tokens(self, neurons: torch.Tensor) -> torch.Tensor:
        """Tokens z' = z + P entering the attention: (B, N, h, w) -> (B, K+1, N)."""
        return self.add_positions(self.activations(neurons), neurons.shape[-2:])

    def add_positions(self, activations: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """z -> z' = z + P for a layer4 grid ``(h, w)``: (B, K+1, N) -> (B, K+1, N)."""
        return activations + self.positional_embedding(*grid).to(activations.dtype)

    def project(self, tokens: torch.Tensor, which: str) -> torch.Tensor:
        """Per-head query, key or value projections: (B, T, N) -> (B, T, H, head_dim)."""
        linear = {"q": self.pool.q_proj, "k": self.pool.k_proj, "v": self.pool.v_proj}[which]
        out = F.linear(tokens, linear.weight, linear.bias)
        return out.unflatten(-1, (self.num_heads, self.head_dim))

    def class_attention(self, tokens: torch.Tensor, extra_keys: torch.Tensor | None = None) -> torch.Tensor:
        """Attention of the class token over all tokens, per head.

        Args:
            tokens: (B, T, N), the class token first.
            extra_keys: optional (B, E, N) tokens appended as more keys (the register intervention's sink copy).

        Returns:
            (B, H, T + E); rows sum to one; the softmax is computed in float32 at least.
        """
        return self.attention(*self.query_keys(tokens, extra_keys))

    def query_keys(self, tokens: torch.Tensor, extra_keys: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """The class token's query (B, H, hd) and every token's key (B, T + E, H, hd); arguments as
        :meth:`class_attention`."""
        query = self.project(tokens[:, :1], "q")[:, 0]  # (B, H, hd)
        keys = tokens if extra_keys is None else torch.cat([tokens, extra_keys], dim=1)
        return query, self.project(keys, "k")

    def attention(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """softmax_i(q^h . k^h_i / sqrt(hd)) in float32 at least: (B, H, hd), (B, T, H, hd) -> (B, H, T)."""
        logits = torch.einsum("bhc,bthc->bht", query, key) / math.sqrt(self.head_dim)
        work = torch.promote_types(logits.dtype, torch.float32)
        return logits.to(work).softmax(dim=-1).to(query.dtype)

    def output_from_pair_scalars(self, pair_scalars: torch.Tensor, attention_mass: torch.Tensor | None = None
                                 ) -> torch.Tensor:
        """The pool's output from alpha: sum_h W_O^h (W_v^h alpha[:, h] + b_v^h * mass_h) + b_O.

        Args:
            pair_scalars: (B, N, H) alpha.
            attention_mass: (B, H) sum of each head's attention over the kept tokens (1 without interventions).

        Returns:
            (B, d).
        """
        heads = self.heads
        values = torch.einsum("bnh,hcn->bhc", pair_scalars, heads.w_v)
        values = values + (heads.b_v if attention_mass is None else attention_mass[..., None] * heads.b_v)
        return torch.einsum("bhc,hdc->bd", values, heads.w_o) + heads.b_o

    def forward(self, neurons: torch.Tensor) -> torch.Tensor:
        """The image embedding: (B, N, h, w) -> (B, d); equals open_clip's ``attnpool(x)``."""
        tokens = self.tokens(neurons)
        attention = self.class_attention(tokens)
        pair_scalars = torch.einsum("bht,btn->bnh", attention, tokens)
        return self.output_from_pair_scalars(pair_scalars)
