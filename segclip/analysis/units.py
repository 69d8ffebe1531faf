"""Per-image quantities of chosen units: image embeddings (for polysemanticity), concept scores (distribution
shift, paper section 5.2) and the grouping CSV that aggregates them."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import torch

from segclip.analysis.stream import merge_rows
from segclip.core.attnpool import AttentionPool
from segclip.core.pairs import PairDirections
from segclip.core.trace import Trace
from segclip.errors import DataError


class Embeddings:
    """Unit-norm image embeddings of every image (an accumulator for ``run_pass``): (n, d) float32."""

    def __init__(self, count: int, dim: int):
        self.values = torch.zeros(count, dim)

    def update(self, trace: Trace, first: int) -> None:
        out = trace.output.float()
        self.values[first:first + len(trace)] = (out / out.norm(dim=-1, keepdim=True)).cpu()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"values": self.values}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.values = state["values"].clone()

    def merge(self, other: Embeddings) -> None:
        """Take the rows ``other`` computed (a row is done when it is nonzero: embeddings have norm one)."""
        self.values = merge_rows(self.values, other.values, self.values.abs().sum(-1) > 0,
                                 other.values.abs().sum(-1) > 0, "embeddings")


def inertia(embeddings: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Inertia (sum of squared distances to the centroid) of each unit's top images' unit embeddings.

    Args:
        embeddings: (n, d) unit-norm.
        images: (t, ...) image indices per unit.

    Returns:
        (...) inertia = t - t |mean embedding|^2 (the embeddings have norm one).
    """
    t = images.shape[0]
    flat = images.reshape(t, -1)
    out = torch.empty(flat.shape[1])
    step = max(1, (1 << 22) // (t * embeddings.shape[1]))
    for start in range(0, flat.shape[1], step):
        centroid = embeddings[flat[:, start:start + step]].mean(0)  # (units, d)
        out[start:start + step] = t - t * (centroid * centroid).sum(-1)
    return out.view(images.shape[1:])


def concept_pairs(pool: AttentionPool, texts: torch.Tensor, top: int = 5) -> torch.Tensor:
    """The ``top`` pairs most cosine-similar to each concept text: (C, d) -> (C, top, 2) (neuron, head)."""
    cosines = PairDirections(pool).cosines(texts)  # (C, N, H)
    flat = cosines.flatten(1).topk(top, dim=1).indices
    return torch.stack([flat // pool.num_heads, flat % pool.num_heads], dim=-1)


class ConceptScores:
    """Per image and concept, |sum of the concept's pairs' r[n, h]| / |sum of all r| (the output norm).

    Args:
        pool: the attention pool.
        pairs: (C, P, 2) neuron-head pairs per concept.
        count: number of images.
    """

    def __init__(self, pool: AttentionPool, pairs: torch.Tensor, count: int):
        self.pool, self.pairs = pool, pairs
        directions = PairDirections(pool)
        neurons, heads = pairs[..., 0].flatten(), pairs[..., 1].flatten()
        self.vectors = directions.vectors(neurons, heads).view(*pairs.shape[:2], -1).detach()  # (C, P, d)
        shares = directions.head_biases() / pool.neurons + directions.output_bias() / (pool.neurons * pool.num_heads)
        self.shared = shares[pairs[..., 1]].sum(1).detach()  # (C, d)
        self.scores = torch.full((count, pairs.shape[0]), float("nan"), dtype=torch.float64)

    @torch.inference_mode()
    def update(self, trace: Trace, first: int) -> None:
        alpha = trace.pair_scalars[:, self.pairs[..., 0], self.pairs[..., 1]]  # (B, C, P)
        summed = torch.einsum("bcp,cpd->bcd", alpha, self.vectors.to(alpha)) + self.shared.to(alpha)
        score = summed.norm(dim=-1) / trace.output.norm(dim=-1, keepdim=True)
        self.scores[first:first + len(trace)] = score.double().cpu()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"scores": self.scores}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.scores = state["scores"].clone()

    def merge(self, other: ConceptScores) -> None:
        """Take the rows ``other`` computed (a row is done when it is not NaN)."""
        self.scores = merge_rows(self.scores, other.scores, ~self.scores.isnan().all(-1),
                                 ~other.scores.isnan().all(-1), "concept scores")


class ConceptVectors(ConceptScores):
    """Per image and concept, the summed contribution vector of the concept's pairs, sum_p r[n_p, h_p] (the
    numerator of :class:`ConceptScores` before its norm), for the MMD and domain-classifier drift tests
    (:mod:`segclip.analysis.drift`): ``vectors_per_image`` (n, C, d) float32, NaN until computed.

    Example:
        >>> from segclip.models import load_model
        >>> model = load_model()
        >>> acc = ConceptVectors(model.pool, torch.tensor([[[0, 0], [1, 2]]]), count=2)
        >>> acc.update(model.trace(torch.randn(2, 3, 192, 192)), 0)
        >>> acc.vectors_per_image.shape, bool(acc.vectors_per_image.isnan().any())
        (torch.Size([2, 1, 64]), False)
    """

    def __init__(self, pool: AttentionPool, pairs: torch.Tensor, count: int):
        super().__init__(pool, pairs, count)
        self.scores = torch.zeros(0)
        self.vectors_per_image = torch.full((count, pairs.shape[0], pool.embed_dim), float("nan"))

    @torch.inference_mode()
    def update(self, trace: Trace, first: int) -> None:
        alpha = trace.pair_scalars[:, self.pairs[..., 0], self.pairs[..., 1]]  # (B, C, P)
        summed = torch.einsum("bcp,cpd->bcd", alpha, self.vectors.to(alpha)) + self.shared.to(alpha)
        self.vectors_per_image[first:first + len(trace)] = summed.float().cpu()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"vectors": self.vectors_per_image}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.vectors_per_image = state["vectors"].clone()

    def merge(self, other: ConceptVectors) -> None:
        """Take the rows ``other`` computed (a row is done when it is not NaN)."""
        done = lambda v: ~v.isnan().flatten(1).all(-1)  # noqa: E731
        self.vectors_per_image = merge_rows(self.vectors_per_image, other.vectors_per_image,
                                            done(self.vectors_per_image), done(other.vectors_per_image),
                                            "concept vectors")


def read_groups(path: str | Path, folder: str | Path, concepts: list[str]
                ) -> tuple[list[Path], list[str], dict[str, list[float]]]:
    """A grouping CSV: columns ``image`` (file name in ``folder``) and ``group``, optionally one 0/1 column per
    concept (per-image ground truth).

    Returns:
        (image paths, group per image, {concept: labels} for the concepts that have a column).

    Raises:
        DataError: unreadable file, missing columns, empty keys, images missing from the folder, labels not 0/1.
    """
    folder = Path(folder)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"cannot read grouping CSV {path}: {err}") from None
    if not rows or not {"image", "group"} <= set(rows[0]):
        raise DataError(f"grouping CSV {path} needs a header with columns 'image' and 'group' and at least one row")
    empty = [i + 2 for i, row in enumerate(rows)
             if not (row["image"] or "").strip() or not (row["group"] or "").strip()]
    if empty:
        raise DataError(f"grouping CSV {path}: rows {empty[:10]} have an empty image or group")
    paths = [folder / row["image"].strip() for row in rows]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"grouping CSV {path} lists {len(missing)} images not in {folder}: {missing[:5]}")
    labels = {}
    for concept in concepts:
        if concept in rows[0]:
            values = [row[concept].strip() for row in rows]
            bad = sorted({v for v in values if v not in ("0", "1")})
            if bad:
                raise DataError(f"grouping CSV {path}: column '{concept}' must hold 0 or 1, found {bad[:5]}")
            labels[concept] = [float(v) for v in values]
    return paths, [row["group"].strip() for row in rows], labels


def point_biserial(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Point-biserial correlation (Pearson between a score and a 0/1 label); NaN when either is constant."""
    scores, labels = scores.double(), labels.double()
    a, b = scores - scores.mean(), labels - labels.mean()
    denominator = math.sqrt((a * a).sum().item() * (b * b).sum().item())
    return (a * b).sum().item() / denominator if denominator > 0 else float("nan")
