"""CLIP-ResNet's attention sink and the register-neuron search (paper A.6; method.md section 6).

The class token attends strongly to the last spatial token. A neuron's effect on that sink is the change of the
class token's attention to the last token (mean over heads) when the neuron is zeroed in all K+1 pool tokens.
"Zeroing" removes e_i[n] from token i: its activation z_i[n] (the paper's and the authors' search: the positional
embedding stays), or the whole entry z'_i[n] = z_i[n] + P_i[n] (segclip 0.1). All N neurons are done at once,
exactly: removing e_i[n] from every token changes the per-head logits by

    q.k_i -> (q - e_0[n] a_n) . (k_i - e_i[n] b_n)
           = q.k_i - e_0[n] (a_n . k_i) - e_i[n] (q . b_n) + e_0[n] e_i[n] (a_n . b_n),

with a_n = W_q^h[:, n], b_n = W_k^h[:, n] (head h's columns); a softmax over the K+1 corrected logits gives the
new attention. No forward pass per neuron; memory is bounded by chunking neurons.

Ranking (method.md section 6): by the mean |change| over images (the authors' ``find_registers``; default), or by
the signed mean decrease of the sink (their segmentor's ``mean(default - zeroed)``).
"""
from __future__ import annotations

import math

import torch

from segclip.core.attnpool import AttentionPool


def sink_attention(attention: torch.Tensor) -> torch.Tensor:
    """The class token's attention to the last spatial token: (B, H, K+1) -> (B, H)."""
    return attention[..., -1]


REGISTER_RANKINGS = ("absolute", "signed")


@torch.inference_mode()
def sink_changes(pool: AttentionPool, tokens: torch.Tensor, removed: torch.Tensor | None = None, *,
                 chunk_elements: int = 1 << 24) -> torch.Tensor:
    """Change of the sink attention (mean over heads) when each neuron is zeroed in all tokens.

    Args:
        pool: the attention pool.
        tokens: (B, K+1, N) pool tokens z' (class token first).
        removed: (B, K+1, N) what zeroing a neuron removes from each token: the activations z (before the
            positional embedding; the paper's search) or None for the whole tokens z' (segclip 0.1).
        chunk_elements: bound on the size of the (B, H, neurons, K+1) logit block computed at once.

    Returns:
        (B, N): mean_h [a'^h_K(n) - a^h_K], signed, in float32 at least.

    Example:
        >>> from open_clip.modified_resnet import AttentionPool2d
        >>> pool = AttentionPool(AttentionPool2d(7, 2048, 32, 1024))
        >>> sink_changes(pool, pool.tokens(torch.rand(1, 2048, 7, 7))).shape
        torch.Size([1, 2048])
    """
    work = torch.promote_types(tokens.dtype, torch.float32)
    tokens = tokens.to(work)
    removed = tokens if removed is None else removed.to(work)
    batch, count, neurons = tokens.shape
    heads, hd = pool.num_heads, pool.head_dim
    scale = 1 / math.sqrt(hd)
    query = pool.project(tokens[:, :1], "q")[:, 0].to(work)  # (B, H, hd)
    key = pool.project(tokens, "k").to(work)  # (B, T, H, hd)
    logits = torch.einsum("bhc,bthc->bht", query, key) * scale
    base = logits.softmax(-1)[..., -1]  # (B, H)
    weights = pool.heads
    w_q, w_k = weights.w_q.to(work), weights.w_k.to(work)  # (H, hd, N)
    query_key = torch.einsum("bhc,hcn->bhn", query, w_k)  # q . b_n: (B, H, N)
    both = torch.einsum("hcn,hcn->hn", w_q, w_k)  # a_n . b_n: (H, N)
    step = max(1, chunk_elements // max(1, batch * heads * count))
    out = torch.empty(batch, neurons, dtype=work, device=tokens.device)
    for start in range(0, neurons, step):
        cols = slice(start, min(start + step, neurons))
        z0 = removed[:, 0, cols]  # (B, n)
        zi = removed[:, :, cols]  # (B, T, n)
        key_query = torch.einsum("hcn,bthc->bhnt", w_q[:, :, cols], key)  # a_n . k_i: (B, H, n, T)
        delta = (z0[:, None, :, None] * key_query
                 + zi.permute(0, 2, 1)[:, None] * query_key[:, :, cols, None]
                 - (z0[:, None, :, None] * zi.permute(0, 2, 1)[:, None]) * both[None, :, cols, None])
        changed = (logits[:, :, None] - delta * scale).softmax(-1)[..., -1]  # (B, H, n)
        out[:, cols] = (changed - base[:, :, None]).mean(1)
    return out


def rank_registers(scores: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` neurons with the largest scores, most important first: (N,) -> (R,) long.

    Pass the mean |change| (``absolute`` ranking) or the mean decrease, i.e. minus the mean signed change
    (``signed``).

    Example:
        >>> rank_registers(torch.tensor([0.1, 0.5, 0.3]), 2)
        tensor([1, 2])
    """
    return scores.topk(min(count, scores.numel())).indices.long()
