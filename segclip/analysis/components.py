"""Principal components of neuron and head contributions in closed form (paper Table 1, Figure 2, A.2).

A unit u (a neuron n or a head h) contributes r_u = W_u x_u + const, with per-image coordinates x_u (q,) and a fixed
map W_u (d, q): a neuron has x = alpha[n, :] (q = H) and W_n = [w[n, 1] .. w[n, H]]; a head has the value
x = v^h = W_v^h alpha[:, h] + b_v^h (q = head_dim) and W = W_O^h. With the Gram G = W^T W = U diag(lam) U^T and
M = diag(lam^1/2) U^T (W = Q M, Q orthonormal on the range of W), the covariance of r_u is Q (M S M^T) Q^T for the
(q, q) covariance S of x. Its principal directions are therefore v_j = W B_j with B = U diag(lam^-1/2) Y for the top
eigenvectors Y of M S M^T (unit norm and orthonormal by construction, also when W is rank deficient), and the
coefficient of an image on v_j is c_j = (Y^T M)_j (x - mean). Only G, S and means are needed: nothing of size
N x H x d. Over all images (``samples="all"``) S is the covariance and each component is oriented so that the
unit's top images by contribution norm project positively on average (the pairs' sign rule, docs/method.md §7.1,
with the mean in place of the vote).

``samples="top"`` is the authors' paper A.2 procedure (``svd_over_dataset.py`` of
edmundbu/clip-neur-attn-decomposition, ``--top_k_pca 50``): contributions centred at the mean over *all* images,
the k rows of largest |r_u - mean| kept, and the SVD of those rows taken as they are (not re-centred, so the
direction from the global mean towards the top images stays in the components). Here S = X^T X / k for the rows'
coordinates X = x - mean (the :class:`~segclip.analysis.statistics.RunningTopDeviations` pass); the right singular
vectors of the rows W X^T are the v_j above. Each component is then oriented by the authors' majority vote: v_j
is kept if more than k // 2 of the rows project on it positively (a zero projection is not positive), else negated.
That rule does not depend on the sign an SVD routine returns, except when neither v_j nor -v_j wins the vote (an
even k split evenly, or zero projections): the authors' code then returns the negation of whatever sign their SVD
gave, which no other implementation can reproduce; segclip then orients v_j so that the rows' projections sum to a
positive number (and keeps the eigen-solver's sign if that sum is zero). k is the number of rows, min(top_k,
images); the authors compare with ``top_k_pca // 2`` even on a set of fewer images (which negates every component).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from segclip.analysis.statistics import Statistics, head_values, pair_constants
from segclip.core.attnpool import AttentionPool
from segclip.core.pairs import PairDirections
from segclip.errors import ConfigError

UNITS = ("pairs", "neurons", "heads")
PC_SAMPLES = ("all", "top")


@dataclass
class Components:
    """The top principal components of every unit of one kind.

    Attributes:
        unit: ``neurons`` or ``heads``.
        samples: ``all`` (covariance over all images) or ``top`` (paper A.2: the second moment about the global
            mean of each unit's k images farthest from it, majority-vote orientation).
        mean: (U, q) mean coordinates over all images (the centre of reconstructions).
        analysis: (U, p, q) A, the coefficients c = A (x - mean) of coordinates x on the components.
        synthesis: (U, p, q) B, the components v_j = W B_j in coordinates.
        variance: (U, p) variance along each component (over the samples used; for ``top`` the mean square
            about the global mean, the squared singular values over k).
    """

    unit: str
    samples: str
    mean: torch.Tensor
    analysis: torch.Tensor
    synthesis: torch.Tensor
    variance: torch.Tensor

    def projector(self) -> torch.Tensor:
        """(U, q, q) P with W P (x - mean) = the projection of r_u - mean on the components."""
        return self.synthesis.transpose(1, 2) @ self.analysis


def unit_coordinates(pool: AttentionPool, unit: str, pair_scalars: torch.Tensor) -> torch.Tensor:
    """Per-image coordinates x_u: (B, N, H) alpha -> (B, N, H) for neurons, (B, H, head_dim) for heads."""
    return pair_scalars if unit == "neurons" else head_values(pool, pair_scalars)


@torch.no_grad()
def principal_components(pool: AttentionPool, stats: Statistics, unit: str, components: int,
                         samples: str = "all") -> Components:
    """The first ``components`` principal components of each neuron's or head's contribution.

    Args:
        pool: the attention pool.
        stats: calibration statistics (covariances, means, top-image means).
        unit: ``neurons`` or ``heads``.
        components: p, components per unit (1 <= p <= q).
        samples: ``all`` or ``top`` (paper A.2, the authors' procedure: see the module docstring).

    Returns:
        The :class:`Components` (float64, on the pool's device).

    Raises:
        ConfigError: unknown unit or samples, p out of range, ``top`` with statistics lacking the A.2 lists.

    Example:
        >>> from segclip.models import load_model
        >>> from segclip.analysis.statistics import RunningStatistics
        >>> model = load_model("RN50", "none")
        >>> running = RunningStatistics(model.pool, top_k=2, registers=False)
        >>> running.update(model.trace(torch.randn(3, 3, 224, 224)), first=0)
        >>> principal_components(model.pool, running.finalise(), "neurons", 2).synthesis.shape
        torch.Size([2048, 2, 32])
    """
    if samples not in PC_SAMPLES:
        raise ConfigError(f"unknown principal-component samples '{samples}'; use one of {', '.join(PC_SAMPLES)}")
    if unit == "neurons":
        gram = pair_constants(pool)["gram"]
        mean = stats.mean_scalars
        covariance, top_mean = stats.neuron_covariance, stats.neuron_top_mean
    elif unit == "heads":
        w_o = PairDirections(pool).output_weight.double()
        gram = torch.einsum("hdc,hde->hce", w_o, w_o)
        mean = head_values(pool, stats.mean_scalars[None].to(w_o))[0]
        covariance, top_mean = stats.head_covariance, stats.head_top_mean
    else:
        raise ConfigError(f"unknown unit '{unit}' for principal components; use neurons or heads")
    q = gram.shape[-1]
    if not 1 <= components <= q:
        raise ConfigError(f"components must be between 1 and {q} for {unit}, got {components}")
    device = gram.device
    rows = a2_rows(stats, unit).to(device, torch.float64) if samples == "top" else None  # (U, k, q)
    if rows is not None:
        covariance = torch.einsum("ukq,ukp->uqp", rows, rows) / rows.shape[1]  # about the global mean
    mean, covariance, top_mean = (t.to(device, torch.float64) for t in (mean, covariance, top_mean))
    lam, u = torch.linalg.eigh(gram.double())
    kept = lam > lam[:, -1:].clamp_min(1e-300) * 1e-10
    root = torch.where(kept, lam.clamp_min(0).sqrt(), 0)
    inverse_root = torch.where(kept, 1 / root.clamp_min(1e-300), 0)
    m = root[..., :, None] * u.transpose(1, 2)  # (U, q, q) diag(lam^1/2) U^T
    variance, y = torch.linalg.eigh(m @ covariance @ m.transpose(1, 2))
    y, variance = y[..., -components:].flip(-1), variance[..., -components:].flip(-1)  # (U, q, p), (U, p)
    analysis = y.transpose(1, 2) @ m  # (U, p, q)
    synthesis = ((u * inverse_root[:, None, :]) @ y).transpose(1, 2)
    if rows is None:
        signs = torch.where(torch.einsum("upq,uq->up", analysis, top_mean - mean) >= 0, 1.0, -1.0)[..., None]
    else:
        signs = majority_signs(torch.einsum("upq,ukq->ukp", analysis, rows))[..., None]
    return Components(unit, samples, mean, analysis * signs, synthesis * signs, variance.clamp_min(0))


def a2_rows(stats: Statistics, unit: str) -> torch.Tensor:
    """The A.2 rows of every unit: (U, k, q) coordinates about the global mean, farthest first.

    Raises:
        ConfigError: statistics computed without the A.2 pass.
    """
    rows = stats.neuron_a2_samples if unit == "neurons" else stats.head_a2_samples
    if rows is None:
        raise ConfigError("these statistics lack the A.2 lists (top images by distance from the mean) that "
                          "--pc-samples top needs; compute them again with this segclip, or use --pc-samples all.")
    return rows.transpose(0, 1)


def majority_signs(projections: torch.Tensor) -> torch.Tensor:
    """The authors' orientation of components from the rows' projections on them: (U, k, p) -> (U, p) +-1.

    +1 where more than k // 2 projections are positive; -1 where more than k // 2 are negative (the authors negate
    every component that does not win, and then the negated one wins); where neither wins (a tie), the sign of the
    projections' sum, +1 if it is zero (see the module docstring).

    Example:
        >>> majority_signs(torch.tensor([[[1.0], [2.0], [-5.0]], [[1.0], [-1.0], [-3.0]], [[1.0], [-3.0], [0.0]]]))
        tensor([[ 1.],
                [-1.],
                [-1.]])
    """
    k = projections.shape[1]
    positive = (projections > 0).sum(1)
    negative = (projections < 0).sum(1)
    tie = torch.where(projections.sum(1) >= 0, 1.0, -1.0).to(projections.dtype)
    return torch.where(positive > k // 2, 1.0, torch.where(negative > k // 2, -1.0, tie)).to(projections.dtype)


@torch.no_grad()
def component_directions(pool: AttentionPool, components: Components, chunk: int = 256) -> torch.Tensor:
    """The components in embedding space, v_j = W B_j: (U, p, d) float64, unit norm (zero beyond W's rank)."""
    pairs = PairDirections(pool)
    w_o = pairs.output_weight.double()  # (H, d, hd)
    b = components.synthesis
    if components.unit == "heads":
        return torch.einsum("hdc,hjc->hjd", w_o, b)
    w_v = pairs.value_weight.double()  # (H, hd, N)
    out = b.new_empty(*b.shape[:2], pairs.embed_dim)
    for start in range(0, b.shape[0], chunk):  # sum_h B[n, j, h] W_O^h W_v^h[:, n], never (N, H, d)
        rows = slice(start, start + chunk)
        values = torch.einsum("hcn,njh->njhc", w_v[:, :, rows], b[rows])
        out[rows] = torch.einsum("njhc,hdc->njd", values, w_o)
    return out
