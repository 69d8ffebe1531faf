"""TextSpan labels for attention heads (Gandelsman et al., ICLR 2024), computed from covariances alone.

TextSpan describes a head by greedily picking, from a text pool, the text direction along which the head's
(centred) contributions vary most, then projecting that direction out of the contributions and of every text; m
rounds give m texts that span most of the head's variance. The authors run it on the stored contributions (images x
d). Everything it reads is a quadratic form of the contributions' covariance Sigma_h, so here it runs on
Sigma_h = W_O^h S_h W_O^h^T with S_h the covariance of the head's value v^h (kept by the streaming statistics):
any number of images, nothing of size images x d.

As in the authors' code (``replace_with_iterative_removal``): texts are first projected onto the span of the head's
outputs (here exactly the range of W_O^h); round i scores every text t by the variance of the data along it,
t^T Sigma t (t not renormalised after projections), picks the largest, and replaces Sigma by P Sigma P and every
text by P t, with P = I - t_i t_i^T / |t_i|^2. The chosen t_i are mutually orthogonal, and the reconstruction from
the first j texts is the orthogonal projection of the centred contribution onto their span. The projected texts are
never formed: every score is updated in closed form, O(V r) per round for V texts and a head rank r (RN50x16, 48
heads, 30,000 words, 64 rounds: 12 s on 2 CPU cores, against 126 s when projecting all texts every round).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from segclip.analysis.components import PC_SAMPLES, a2_rows
from segclip.analysis.evaluation import Condition
from segclip.analysis.statistics import Statistics, head_values
from segclip.core.attnpool import AttentionPool
from segclip.core.pairs import PairDirections
from segclip.core.trace import Trace
from segclip.errors import ConfigError


@dataclass
class HeadSpans:
    """The TextSpan result of every head.

    Attributes:
        index: (H, m) long, the chosen texts in order.
        directions: (H, m, d) unit vectors along the chosen texts after the earlier projections (orthonormal per
            head; zero where a head's outputs span fewer than m dimensions).
        variance: (H, m) variance of the head's contribution along each direction when it was chosen.
        total_variance: (H,) trace of the head's covariance (explained share: variance / total).
        samples: ``all`` or ``top`` (the covariance of each head's A.2 rows, its k images farthest from its mean).
    """

    index: torch.Tensor
    directions: torch.Tensor
    variance: torch.Tensor
    total_variance: torch.Tensor
    samples: str


@torch.no_grad()
def text_span(pool: AttentionPool, stats: Statistics, texts: torch.Tensor, rounds: int, samples: str = "all"
              ) -> HeadSpans:
    """TextSpan of every head over a text pool.

    Args:
        pool: the attention pool.
        stats: statistics with ``head_covariance`` (H, head_dim, head_dim), and for ``top`` the A.2 lists.
        texts: (V, d) text embeddings (unit norm, as CLIP's).
        rounds: m, texts per head (at most the rank of W_O^h, itself at most min(head_dim, d)).
        samples: ``all`` images or each head's ``top`` k images farthest from its mean over all images (the A.2
            rows; TextSpan scores texts by variance, so over these rows about their own mean).

    Returns:
        The :class:`HeadSpans` (float64, on ``texts.device``).

    Raises:
        ConfigError: unknown samples, or ``rounds`` out of range.

    Example:
        >>> from segclip.models import load_model
        >>> from segclip.analysis.statistics import RunningStatistics
        >>> model = load_model("RN50", "none")
        >>> running = RunningStatistics(model.pool, top_k=2, registers=False)
        >>> running.update(model.trace(torch.randn(3, 3, 224, 224)), first=0)
        >>> words = torch.nn.functional.normalize(torch.randn(100, 1024), dim=-1)
        >>> text_span(model.pool, running.finalise(), words, 5).index.shape
        torch.Size([32, 5])
    """
    if samples not in PC_SAMPLES:
        raise ConfigError(f"unknown TextSpan samples '{samples}'; use one of {', '.join(PC_SAMPLES)}")
    device = texts.device
    w_o = PairDirections(pool).output_weight.to(device, torch.float64)  # (H, d, hd)
    heads, d, hd = w_o.shape
    if not 1 <= rounds <= min(hd, d):
        raise ConfigError(f"TextSpan rounds must be between 1 and {min(hd, d)} (head dim and d), got {rounds}")
    if samples == "all":
        covariance = stats.head_covariance.to(device, torch.float64)
    else:  # each head's A.2 rows (the k farthest from its mean over all images); TextSpan scores by variance, so
        rows = a2_rows(stats, "heads").to(device, torch.float64)  # (H, k, hd) ... their own covariance
        rows = rows - rows.mean(1, keepdim=True)
        covariance = torch.einsum("hkc,hke->hce", rows, rows) / rows.shape[1]
    sigma = w_o @ covariance @ w_o.transpose(1, 2)  # (H, d, d), the covariance of r[h]
    left, singular, _ = torch.linalg.svd(w_o, full_matrices=False)  # range of W_O^h: (H, d, min(d, hd))
    basis = left * (singular > singular[:, :1] * 1e-10)[:, None, :]  # (H, d, r), zero columns beyond the rank
    rank = basis.shape[-1]
    sigma = basis.transpose(1, 2) @ sigma @ basis  # (H, r, r) in basis coordinates
    pool_texts = texts.to(torch.float64) @ basis  # (H, V, r): texts projected on the range
    index = torch.zeros(heads, rounds, dtype=torch.long, device=device)
    chosen = torch.zeros(heads, rounds, rank, dtype=torch.float64, device=device)
    variance = torch.zeros(heads, rounds, dtype=torch.float64, device=device)
    total = torch.diagonal(sigma, dim1=1, dim2=2).sum(-1)
    rows = torch.arange(heads, device=device)
    scores = ((pool_texts @ sigma) * pool_texts).sum(-1)  # (H, V): t^T Sigma t, then updated in O(V r) a round
    for step in range(rounds):
        # The texts after the projections so far are T (I - U U^T), U = the units chosen so far: never formed.
        top = scores.argmax(-1)
        t = pool_texts[rows, top]  # (H, r)
        t = t - torch.einsum("hmc,hm->hc", chosen[:, :step], torch.einsum("hmc,hc->hm", chosen[:, :step], t))
        norm2 = (t * t).sum(-1)
        unit = t / norm2.clamp_min(1e-300).sqrt()[:, None]
        index[:, step], variance[:, step] = top, scores[rows, top] / norm2.clamp_min(1e-300)
        chosen[:, step] = unit * (norm2 > 1e-24)[:, None]  # a text with nothing left in the span adds nothing
        sigma_unit = (sigma @ unit[..., None])[..., 0]  # Sigma u
        # u and Sigma u are orthogonal to U, so the projected texts give the same products as T itself
        along, cross = (pool_texts @ torch.stack([unit, sigma_unit], -1)).unbind(-1)  # t . u, t^T Sigma u: (H, V)
        # with P = I - u u^T: (P t)^T (P Sigma P) (P t) = t^T Sigma t - 2 (t . u)(t^T Sigma u) + (t . u)^2 u^T Sigma u
        scores = scores - 2 * along * cross + along ** 2 * (unit * sigma_unit).sum(-1, keepdim=True)
        projector = torch.eye(rank, dtype=torch.float64, device=device) - unit[:, :, None] * unit[:, None, :]
        sigma = projector @ sigma @ projector
    directions = torch.einsum("hdc,hmc->hmd", basis, chosen)
    return HeadSpans(index, directions, variance.clamp_min(0), total, samples)


def text_span_condition(pool: AttentionPool, stats: Statistics, spans: HeadSpans, rounds: int) -> Condition:
    """Each head's contribution replaced by its mean plus its projection on the first ``rounds`` TextSpan texts.

    out_hat = out(mean alpha) + sum_h sum_{i < rounds} (t_i . W_O^h (v^h - mean v^h)) t_i, t_i the unit directions
    (:attr:`HeadSpans.directions`).
    """
    w_o = PairDirections(pool).output_weight  # (H, d, hd)
    directions = spans.directions[:, :rounds]

    def condition(trace: Trace) -> torch.Tensor:
        alpha = trace.pair_scalars
        device, dtype = alpha.device, alpha.dtype
        mean = stats.mean_scalars.to(device, dtype)
        values = head_values(pool, alpha) - head_values(pool, mean[None])  # (B, H, hd)
        along = torch.einsum("hmd,hdc->hmc", directions.to(device, dtype), w_o.to(device, dtype))  # (H, m, hd)
        coefficients = torch.einsum("hmc,bhc->bhm", along, values)
        return pool.output_from_pair_scalars(mean.expand_as(alpha)) + \
            torch.einsum("bhm,hmd->bd", coefficients, directions.to(device, dtype))
    return condition
