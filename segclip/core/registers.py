"""CLIP-ResNet's attention sink and the register-neuron search (paper A.6; docs/method.md §6.3).

The class token attends strongly to the last spatial token. A neuron's effect on that sink is the change of the
class token's attention to the last token (mean over heads) when the neuron is zeroed in all K+1 pool tokens.
"Zeroing" removes e_i[n] from token i: its activation z_i[n] (the paper's and the authors' search: the positional
embedding stays), or the whole entry z'_i[n] = z_i[n] + P_i[n] (segclip 0.1). All N neurons are done at once,
exactly: removing e_i[n] from every token changes the per-head logits by

    q.k_i -> (q - e_0[n] a_n) . (k_i - e_i[n] b_n)
           = q.k_i - e_0[n] (a_n . k_i) - e_i[n] (q . b_n) + e_0[n] e_i[n] (a_n . b_n),

with a_n = W_q^h[:, n], b_n = W_k^h[:, n] (head h's columns); a softmax over the K+1 corrected logits gives the
new attention. No forward pass per neuron; memory is bounded by chunking neurons.

Ranking (docs/method.md §6.4): by the mean |change| over images (the authors' ``find_registers``; default), or by
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


class RegisterSearch:
    """The closed-form search of one attention pool: the sink change of every neuron, all at once.

    The image-independent parts (W_q's columns a_n as contiguous rows, a_n . b_n) are computed once per dtype and
    device, so a pass over many batches pays for them once (make a new search if the weights change). The change is
    computed in blocks of the (H, neurons, images, K) tensor of relative logits x_i - x_K (small enough to stay in
    cache): the last token's new attention is 1 / (1 + sum_{i < K} exp(x_i - x_K)), exactly the softmax's last entry
    without a max pass (a term that overflows makes it 0, which is the float answer), and x_i - x_K is linear in the
    key differences k_i - k_K, so one bmm per block gives it.

    Args:
        pool: the attention pool.
        block_elements: bound on the (H, neurons, images, K) block computed at once (8 MB in float32 by default).

    Example:
        >>> from open_clip.modified_resnet import AttentionPool2d
        >>> pool = AttentionPool(AttentionPool2d(7, 2048, 32, 1024))
        >>> RegisterSearch(pool)(pool.tokens(torch.rand(1, 2048, 7, 7))).shape
        torch.Size([1, 2048])
    """

    def __init__(self, pool: AttentionPool, *, block_elements: int = 1 << 21):
        self.pool, self.block_elements = pool, block_elements
        self._constants: dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def constants(self, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(a_n as rows (H, N, hd), W_k^h (H, hd, N), a_n . b_n (H, N)) in ``dtype`` on ``device``, cached."""
        key = (dtype, device)
        if key not in self._constants:
            weights = self.pool.heads
            w_q, w_k = weights.w_q.to(device, dtype), weights.w_k.to(device, dtype)  # (H, hd, N)
            both = torch.einsum("hcn,hcn->hn", w_q, w_k)
            self._constants[key] = (w_q.transpose(1, 2).contiguous(), w_k, both)
        return self._constants[key]

    @torch.inference_mode()
    def __call__(self, tokens: torch.Tensor, removed: torch.Tensor | None = None, *,
                 query: torch.Tensor | None = None, keys: torch.Tensor | None = None) -> torch.Tensor:
        """Change of the sink attention (mean over heads) when each neuron is zeroed in all tokens.

        Args:
            tokens: (B, K+1, N) pool tokens z' (class token first).
            removed: (B, K+1, N) what zeroing a neuron removes from each token: the activations z (before the
                positional embedding; the paper's search) or None for the whole tokens z' (segclip 0.1).
            query, keys: the class token's query (B, H, hd) and the tokens' keys (B, >= K+1, H, hd) when known
                (``Trace.query``, ``Trace.keys``; keys beyond K+1 are ignored); computed from ``tokens`` otherwise.

        Returns:
            (B, N): mean_h [a'^h_K(n) - a^h_K], signed, in float32 at least.
        """
        pool = self.pool
        work = torch.promote_types(tokens.dtype, torch.float32)
        tokens = tokens.to(work)
        removed = tokens if removed is None else removed.to(work)
        batch, count, neurons = tokens.shape
        heads, hd, others = pool.num_heads, pool.head_dim, count - 1
        scale = 1 / math.sqrt(hd)
        if query is None or keys is None:
            query, keys = pool.query_keys(tokens)
        query, keys = query.to(work), keys[:, :count].to(work)  # (B, H, hd), (B, T, H, hd)
        rows_q, w_k, both = self.constants(work, tokens.device)
        # everything relative to the last token K: x_i - x_K for i < K
        keys = keys[:, :-1] - keys[:, -1:]  # k_i - k_K: (B, K, H, hd)
        logits = torch.einsum("bhc,bthc->hbt", query, keys) * scale  # l_i - l_K: (H, B, K)
        base = (logits.exp().sum(-1) + 1).reciprocal()  # a_K = 1 / (1 + sum_i exp(l_i - l_K)): (H, B)
        keys = keys.permute(2, 3, 0, 1).contiguous()  # (B, K, H, hd) -> (H, hd, B, K)
        # x_i - x_K = (l_i - l_K) - scale * (z_0[n] a_n . (k_i - k_K) + (z_i[n] - z_K[n]) (q . b_n - z_0[n] a_n . b_n))
        first = removed[:, 0].T.contiguous()  # z_0: (N, B)
        first_scaled = first * -scale
        spread = ((removed[:, :-1] - removed[:, -1:]).permute(2, 0, 1) * -scale).contiguous()  # (N, B, K)
        # q . b_n - z_0[n] a_n . b_n: (H, N, B)
        coefficient = (torch.einsum("bhc,hcn->hnb", query, w_k) - first[None] * both[..., None]).contiguous()
        step_b = max(1, min(batch, self.block_elements // (heads * 16 * others)))  # at least 16 neurons per block
        step_n = max(1, self.block_elements // (heads * step_b * others))
        out = torch.empty(neurons, batch, dtype=work, device=tokens.device)
        for b0 in range(0, batch, step_b):
            rows = slice(b0, min(b0 + step_b, batch))
            images = rows.stop - rows.start
            block_keys = keys[:, :, rows].reshape(heads, hd, images * others)  # (H, hd, b*K)
            block_logits, block_base = logits[:, None, rows], base[:, None, rows]  # (H, 1, b, K), (H, 1, b)
            for n0 in range(0, neurons, step_n):
                cols = slice(n0, min(n0 + step_n, neurons))
                x = torch.bmm(rows_q[:, cols], block_keys).view(heads, -1, images, others)  # a_n . (k_i - k_K)
                torch.addcmul(block_logits, x, first_scaled[cols, rows, None], out=x)
                x.addcmul_(spread[cols, rows], coefficient[:, cols, rows, None])  # x_i - x_K: (H, n, b, K)
                changed = x.exp_().sum(-1).add_(1).reciprocal_()  # (H, n, b)
                out[cols, rows] = (changed - block_base).mean(0)
        return out.T


def sink_changes(pool: AttentionPool, tokens: torch.Tensor, removed: torch.Tensor | None = None, *,
                 query: torch.Tensor | None = None, keys: torch.Tensor | None = None,
                 block_elements: int = 1 << 21) -> torch.Tensor:
    """Functional form of :class:`RegisterSearch`: (B, K+1, N) tokens -> (B, N) sink changes (arguments as there).

    Example:
        >>> from open_clip.modified_resnet import AttentionPool2d
        >>> pool = AttentionPool(AttentionPool2d(7, 2048, 32, 1024))
        >>> sink_changes(pool, pool.tokens(torch.rand(1, 2048, 7, 7))).shape
        torch.Size([1, 2048])
    """
    return RegisterSearch(pool, block_elements=block_elements)(tokens, removed, query=query, keys=keys)


def rank_registers(scores: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` neurons with the largest scores, most important first: (N,) -> (R,) long.

    Pass the mean |change| (``absolute`` ranking) or the mean decrease, i.e. minus the mean signed change
    (``signed``).

    Example:
        >>> rank_registers(torch.tensor([0.1, 0.5, 0.3]), 2)
        tensor([1, 2])
    """
    return scores.topk(min(count, scores.numel())).indices.long()
