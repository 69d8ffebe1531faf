"""Sparse text decomposition of unit directions by orthogonal matching pursuit (paper section 4.1, Figure 2).

Units: pair directions u[n, h] = s w / |w|, and the principal components of neuron and head contributions
(:mod:`segclip.analysis.components`). A batched torch OMP: many targets at once, each step one (P, d) x (d, V)
product against the vocabulary, an incremental QR of the chosen words (Gram-Schmidt reorthogonalised once, "CGS2";
nothing is re-solved from scratch) and a triangular solve for the coefficients at the recorded sparsities only. The
selection product dominates: O(P V d m) in all; ``benchmarks/label.py`` times it for all pairs of RN50x16.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from segclip.analysis.components import (
    Components,
    component_directions,
    unit_coordinates,
)
from segclip.analysis.evaluation import Condition
from segclip.analysis.statistics import Statistics, pair_constants
from segclip.config import progress_enabled
from segclip.core.attnpool import AttentionPool
from segclip.core.pairs import PairDirections
from segclip.core.trace import Trace
from segclip.errors import DataError
from segclip.io import atomic_save_tensors, read_lines, read_tensors

log = logging.getLogger(__name__)


def read_vocabulary(path: str | Path | None = None, size: int = 30000) -> list[str]:
    """The word pool: a user's file (one word or phrase per line) or the ``size`` most common English words.

    Args:
        path: a UTF-8 text file, or None for ``wordfreq.top_n_list('en', size)``.
        size: words taken from wordfreq.

    Returns:
        The words, in order.

    Raises:
        DataError: unreadable file, empty lines, duplicates (case-insensitive) or no words.
    """
    if path is None:
        from wordfreq import top_n_list

        return list(dict.fromkeys(top_n_list("en", size)))
    lines = read_lines(path, "vocabulary file")
    seen: dict[str, int] = {}
    duplicates = []
    for number, line in enumerate(lines, 1):
        word = line.strip().lower()
        if word in seen:
            duplicates.append(f"'{line.strip()}' (lines {seen[word]} and {number})")
        seen.setdefault(word, number)
    if duplicates:
        raise DataError(f"vocabulary file {path} has duplicates: {', '.join(duplicates[:10])}; list each word once")
    if not lines:
        raise DataError(f"vocabulary file {path} is empty")
    return [line.strip() for line in lines]


DICTIONARIES = ("authors", "raw")


def centre_dictionary(words: torch.Tensor) -> torch.Tensor:
    """The authors' OMP dictionary from word embeddings: every word minus the vocabulary mean, then every embedding
    dimension (column) divided by its norm over the vocabulary (``sparse_decomposition.py`` of
    edmundbu/clip-neur-attn-decomposition; SecondOrderLens' ``compute_sparse_decomposition.py`` also multiplies by
    100, which leaves OMP's choice of words unchanged). Rows are then not of unit norm, and OMP selects by the raw
    correlation |r . t|, as scikit-learn's ``orthogonal_mp`` does.

    Args:
        words: (V, d) word embeddings (V >= 2).

    Returns:
        (V, d) in the input's dtype (computed in float64); a column constant over the vocabulary stays zero.

    Example:
        >>> words = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        >>> centre_dictionary(words).norm(dim=0)
        tensor([1., 1.])
    """
    centred = words.double() - words.double().mean(0)
    return (centred / centred.norm(dim=0, keepdim=True).clamp_min(1e-300)).to(words.dtype)


def word_dictionary(model, vocabulary: list[str], dictionary: str = "authors",
                    templates: str = "openai") -> torch.Tensor:
    """The OMP dictionary of ``vocabulary``: its unit-norm text embeddings (averaged over ``templates``), centred
    and column-normalised by :func:`centre_dictionary` for ``dictionary="authors"``, or as they are for ``"raw"``.

    The authors embed their text set with the 80 OpenAI ImageNet templates (``text_set_projection.py``:
    ``--use_templates`` is ``type=bool`` with default True, so any value given on the command line is also True).

    Returns:
        (V, d) float32 on the model's device.

    Raises:
        ConfigError: unknown ``dictionary`` or template set.
    """
    from segclip.errors import ConfigError
    from segclip.models.text import encode_classes

    if dictionary not in DICTIONARIES:
        raise ConfigError(f"unknown --dictionary '{dictionary}'; use one of {', '.join(DICTIONARIES)}")
    words = encode_classes(model, vocabulary, templates).to(model.device, torch.float32)
    return centre_dictionary(words) if dictionary == "authors" else words


@torch.no_grad()
def omp(targets: torch.Tensor, dictionary: torch.Tensor, atoms: int, record: Sequence[int] | None = None,
        ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Orthogonal matching pursuit of every target over the dictionary rows.

    Args:
        targets: (P, d).
        dictionary: (V, d) rows (unit norm for the usual OMP selection rule).
        atoms: m, words per target (m <= min(V, d)).
        record: sparsities at which to return coefficients (default: ``atoms`` only); each <= ``atoms``.

    Returns:
        (indices (P, m) long, the words in the order chosen; {j: (P, j) least-squares coefficients of the first j
        words} for j in ``record``).

    Example:
        >>> words = torch.nn.functional.normalize(torch.randn(50, 16), dim=-1)
        >>> index, coef = omp(2 * words[3:4] - words[7:8], words, 2)
        >>> sorted(index[0].tolist()), coef[2].abs().sum().item() > 0
        ([3, 7], True)
    """
    record = sorted(set(record or [atoms]))
    if atoms > min(dictionary.shape):
        raise ValueError(f"atoms={atoms} exceeds min(V, d)={min(dictionary.shape)}")
    p, d = targets.shape
    residual = targets.clone()
    basis = targets.new_zeros(p, atoms, d)
    upper = targets.new_zeros(p, atoms, atoms)
    projections = targets.new_zeros(p, atoms)
    index = torch.zeros(p, atoms, dtype=torch.long, device=targets.device)
    coefficients = {}
    for j in range(atoms):
        scores = (residual @ dictionary.T).abs_()
        if j:
            scores.scatter_(1, index[:, :j], -1)  # never the same word twice
        index[:, j] = scores.argmax(1)
        atom = dictionary[index[:, j]]  # (P, d)
        vector, along = atom, torch.zeros_like(projections[:, :j])
        for _ in range(2):  # Gram-Schmidt, twice for orthogonality in float32
            step = torch.einsum("pjd,pd->pj", basis[:, :j], vector)
            vector = vector - torch.einsum("pj,pjd->pd", step, basis[:, :j])
            along = along + step
        norm = vector.norm(dim=-1).clamp_min(1e-12)
        basis[:, j] = vector / norm[:, None]
        upper[:, :j, j], upper[:, j, j] = along, norm
        projections[:, j] = (basis[:, j] * targets).sum(-1)
        residual = residual - projections[:, j, None] * basis[:, j]
        if j + 1 in record:
            coefficients[j + 1] = torch.linalg.solve_triangular(
                upper[:, :j + 1, :j + 1], projections[:, :j + 1, None], upper=True)[..., 0]
    return index, coefficients


@torch.no_grad()
def label_directions(directions: torch.Tensor, words: torch.Tensor, atoms: int, record: Sequence[int],
                     chunk: int = 4096, bar: tqdm | None = None) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """OMP of many directions in batches of ``chunk``: (P, d) -> (indices (P, m), {j: (P, j) coefficients}).

    Args:
        directions: (P, d) targets (any device; computed on ``words.device`` in ``words.dtype``).
        words: (V, d) unit word embeddings.
        atoms, record: see :func:`omp`.
        chunk: directions per OMP batch (memory: about chunk x (V + m d) floats).
        bar: a tqdm bar advanced per batch, or None.
    """
    record = sorted(set(record))
    index = torch.zeros(len(directions), atoms, dtype=torch.long, device=words.device)
    coefficients = {j: words.new_zeros(len(directions), j) for j in record}
    for start in range(0, len(directions), chunk):
        rows = slice(start, start + chunk)
        found, coef = omp(directions[rows].to(words), words, atoms, record)
        index[rows] = found
        for j in record:
            coefficients[j][rows] = coef[j]
        if bar is not None:
            bar.update(len(found))
    return index, coefficients


@torch.no_grad()
def label_pairs(pool: AttentionPool, stats: Statistics | None, words: torch.Tensor, atoms: int,
                record: Sequence[int], chunk: int = 4096, progress: bool = True, checkpoint: Path | None = None,
                key: str = "") -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """OMP of every pair's unit direction u[n, h] = s w / |w| over the word embeddings; resumable per head.

    Args:
        pool: the attention pool.
        stats: the calibration statistics (for the signs s; None: s = +1).
        words: (V, d) unit word embeddings, on the device to compute on.
        atoms, record: see :func:`omp`.
        chunk: directions per OMP batch.
        progress: show a tqdm bar.
        checkpoint: safetensors file written (atomically) after each head; a rerun with the same ``key`` resumes
            after the last finished head (None: no checkpoints).
        key: what the run computes (model, vocabulary, m, signs); a checkpoint with another key is ignored.

    Returns:
        (indices (N, H, m), {j: (N, H, j) coefficients}), on ``words.device``.

    Raises:
        CacheError: the checkpoint cannot be written.
    """
    pairs = PairDirections(pool)
    n, h = pairs.num_neurons, pairs.num_heads
    record = sorted(set(record))
    index = torch.zeros(n, h, atoms, dtype=torch.long, device=words.device)
    coefficients = {j: words.new_zeros(n, h, j) for j in record}
    signs = stats.signs.to(words) if stats is not None else words.new_ones(n, h)
    done = 0
    saved = read_tensors(checkpoint) if checkpoint is not None and checkpoint.is_file() else None
    if saved is not None and saved[1].get("key") == key:
        done = int(saved[1]["heads_done"])
        index[:, :done] = saved[0]["index"].to(index)
        for j in record:
            coefficients[j][:, :done] = saved[0][f"coefficients_{j}"].to(words)
        log.info("resuming pair labels from %s: %d of %d heads done", checkpoint, done, h)
    elif saved is not None:
        log.warning("checkpoint %s belongs to another labelling run; starting over", checkpoint)
    with tqdm(total=n * h, initial=n * done, desc="OMP pairs", unit="pair",
              disable=not (progress and progress_enabled()),
              leave=False) as bar:
        for head in range(done, h):
            directions = pairs.head_vectors(head).to(words)  # (N, d)
            directions = directions / directions.norm(dim=-1, keepdim=True).clamp_min(1e-12) * signs[:, head, None]
            index[:, head], found = label_directions(directions, words, atoms, record, chunk, bar)
            for j in record:
                coefficients[j][:, head] = found[j]
            if checkpoint is not None and head + 1 < h:
                atomic_save_tensors(checkpoint, {"index": index[:, :head + 1],
                                                 **{f"coefficients_{j}": coefficients[j][:, :head + 1]
                                                    for j in record}},
                                    {"key": key, "heads_done": str(head + 1)})
    return index, coefficients


@torch.no_grad()
def label_components(pool: AttentionPool, components: Components, words: torch.Tensor, atoms: int,
                     record: Sequence[int], chunk: int = 4096, progress: bool = True
                     ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """OMP of every unit's principal components (unit norm) over the word embeddings.

    Args:
        pool: the attention pool.
        components: neuron or head components (:func:`~segclip.analysis.components.principal_components`).
        words, atoms, record, chunk, progress: see :func:`label_pairs`.

    Returns:
        (indices (U, p, m), {j: (U, p, j) coefficients}), on ``words.device``.
    """
    directions = component_directions(pool, components)  # (U, p, d)
    units, p = directions.shape[:2]
    with tqdm(total=units * p, desc=f"OMP {components.unit}", unit="pc",
              disable=not (progress and progress_enabled()), leave=False) as bar:
        index, coefficients = label_directions(directions.flatten(0, 1), words, atoms, record, chunk, bar)
    return index.view(units, p, atoms), {j: c.view(units, p, j) for j, c in coefficients.items()}


def sparse_text_condition(pool: AttentionPool, stats: Statistics, words: torch.Tensor, index: torch.Tensor,
                          coefficients: torch.Tensor) -> Condition:
    """Each r[n, h] replaced by mean + coefficient * u_hat, u_hat the j-word approximation of u = s w / |w|.

    out_hat = out(mean alpha) + sum_{n,h} (alpha - mean) |w| s u_hat[n, h], computed as per-image word weights
    (B, V) times the word embeddings: nothing of size N x H x d.

    Args:
        pool, stats: the pool and calibration statistics.
        words: (V, d) word embeddings.
        index: (N, H, >= j) chosen words; coefficients: (N, H, j).
    """
    j = coefficients.shape[-1]
    norms = pair_constants(pool)["norms2"].sqrt()
    flat_index = index[..., :j].reshape(-1)

    def condition(trace: Trace) -> torch.Tensor:
        alpha = trace.pair_scalars
        device, dtype = alpha.device, alpha.dtype
        mean = stats.mean_scalars.to(device, dtype)
        scale = (alpha - mean) * (norms * stats.signs).to(device, dtype)  # (B, N, H)
        weights = (scale[..., None] * coefficients.to(device, dtype)).reshape(len(alpha), -1)  # (B, N*H*j)
        per_word = alpha.new_zeros(len(alpha), words.shape[0]).index_add_(1, flat_index.to(device), weights)
        return pool.output_from_pair_scalars(mean.expand_as(alpha)) + per_word @ words.to(device, dtype)
    return condition


def component_text_condition(pool: AttentionPool, stats: Statistics, components: Components, words: torch.Tensor,
                             index: torch.Tensor, coefficients: torch.Tensor) -> Condition:
    """Each neuron (or head) contribution replaced by its mean plus sum_j c_j v_hat_j, v_hat_j the j-word
    approximation of its principal component v_j and c_j = A_j (x - mean) the image's coefficient on v_j.

    out_hat = out(mean alpha) + per-image word weights (B, V) times the word embeddings (the contributions are affine
    in alpha, so the means sum to out(mean alpha)).

    Args:
        pool, stats: the pool and calibration statistics.
        components: the units' components; words: (V, d) word embeddings.
        index: (U, p, >= j) chosen words; coefficients: (U, p, j).
    """
    j = coefficients.shape[-1]
    flat_index = index[..., :j].reshape(-1)

    def condition(trace: Trace) -> torch.Tensor:
        alpha = trace.pair_scalars
        device, dtype = alpha.device, alpha.dtype
        mean = stats.mean_scalars.to(device, dtype)
        x = unit_coordinates(pool, components.unit, alpha)
        c = torch.einsum("upq,buq->bup", components.analysis.to(device, dtype), x - components.mean.to(device, dtype))
        weights = (c[..., None] * coefficients.to(device, dtype)).reshape(len(alpha), -1)  # (B, U*p*j)
        per_word = alpha.new_zeros(len(alpha), words.shape[0]).index_add_(1, flat_index.to(device), weights)
        return pool.output_from_pair_scalars(mean.expand_as(alpha)) + per_word @ words.to(device, dtype)
    return condition
