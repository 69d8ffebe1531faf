"""Exact merge of the streaming accumulators over disjoint image subsets (interleaved shards, planted ties), against
one pass over the union and brute-force top lists."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from segclip.analysis import statistics
from segclip.analysis.evaluation import ConditionAccuracy
from segclip.analysis.statistics import RunningStatistics
from segclip.analysis.units import ConceptScores, ConceptVectors, Embeddings
from segclip.core.trace import trace_pool
from segclip.errors import CacheError
from segclip.models import load_model

BATCH, BATCHES = 3, 6


@pytest.fixture(scope="module")
def model():
    return load_model()


@pytest.fixture(scope="module")
def traces(model):
    """Six batches of three images; image 7 repeats image 1 and image 14 repeats image 4 (every value ties), and
    neuron 0 is dead everywhere (its activation norm ties at 0 on all images)."""
    info = model.info
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(BATCH * BATCHES, info.neurons, info.grid, info.grid, generator=generator).relu()
    x[7], x[14], x[:, 0] = x[1], x[4], 0
    with torch.no_grad():
        return [trace_pool(model.pool, x[b * BATCH:(b + 1) * BATCH]) for b in range(BATCHES)]


def brute_top(values: torch.Tensor, k: int, largest: bool = True) -> torch.Tensor:
    """Image indices of the top-k per unit, ties by the lower image index: (n, U) -> (k, U), via numpy lexsort."""
    flat = values.reshape(values.shape[0], -1).double().numpy()
    key = -flat if largest else flat
    out = np.empty((k, flat.shape[1]), np.int64)
    for u in range(flat.shape[1]):
        out[:, u] = np.lexsort((np.arange(flat.shape[0]), key[:, u]))[:k]
    return torch.from_numpy(out).view(k, *values.shape[1:])


def shards(world: int) -> list[list[int]]:
    """Batches of each of ``world`` processes, strided as the distributed pass assigns them."""
    return [list(range(rank, BATCHES, world)) for rank in range(world)]


@pytest.mark.parametrize("world", [2, 3])
def test_statistics_merge_equals_one_pass(model, traces, world):
    whole = RunningStatistics(model.pool, top_k=4)
    for b, trace in enumerate(traces):
        whole.update(trace, b * BATCH)
    parts = []
    for batches in shards(world):
        part = RunningStatistics(model.pool, top_k=4)
        for b in batches:
            part.update(traces[b], b * BATCH)
        parts.append(part)
    merged = parts[-1]  # merged in reverse rank order: the result must not depend on it
    for part in reversed(parts[:-1]):
        merged.merge(part)
    for key, value in whole.state.items():
        other = merged.state[key]
        if key.endswith(("_values", "_images", "_samples")) or key == "count":
            assert torch.equal(value, other), key  # top lists: bit for bit, tie order included
        else:
            assert torch.allclose(value, other, rtol=1e-12, atol=1e-12), key  # float64 sums: round-off only
    a, b = whole.finalise(top_images=4), merged.finalise(top_images=4)
    assert torch.equal(a.signs, b.signs) and torch.equal(a.deviation_images, b.deviation_images)


def test_top_lists_against_brute_force(model, traces):
    merged = RunningStatistics(model.pool, top_k=4, registers=False)
    for batches in shards(2)[::-1]:
        part = RunningStatistics(model.pool, top_k=4, registers=False)
        for b in batches:
            part.update(traces[b], b * BATCH)
        merged.merge(part)
    alpha = torch.cat([t.pair_scalars for t in traces]).double()
    maps = torch.cat([t.neurons for t in traces]).double().flatten(2).norm(dim=-1)
    assert torch.equal(merged.state["high_images"].movedim(-1, 0), brute_top(alpha, 4))
    assert torch.equal(merged.state["low_images"].movedim(-1, 0), brute_top(alpha, 4, largest=False))
    assert torch.equal(merged.state["activation_images"].T, brute_top(maps, 4))
    assert merged.state["activation_images"][0].tolist() == [0, 1, 2, 3]  # the dead neuron: lowest indices


@pytest.mark.parametrize("pending", [64, 4])
def test_one_pass_breaks_ties_by_image_index(model, traces, pending, monkeypatch):
    """Sequential updates (the run_pass path) give the same tie order as the brute-force rule, whether the images
    enter the lists at the end or in groups during the pass (the full lists' k-th value then filters them)."""
    monkeypatch.setattr(statistics, "PENDING_IMAGES", pending)
    running = RunningStatistics(model.pool, top_k=5, registers=False)
    for b, trace in enumerate(traces):
        running.update(trace, b * BATCH)
        assert len(running._pending) == (0 if pending == 4 and b % 2 else (b + 1 if pending == 64 else 1))
    maps = torch.cat([t.neurons for t in traces]).double().flatten(2).norm(dim=-1)
    alpha = torch.cat([t.pair_scalars for t in traces]).double()
    assert torch.equal(running.state["activation_images"].T, brute_top(maps, 5))
    assert torch.equal(running.state["high_images"].movedim(-1, 0), brute_top(alpha, 5))
    assert torch.equal(running.state["low_images"].movedim(-1, 0), brute_top(alpha, 5, largest=False))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sequential", [True, False])
@pytest.mark.parametrize("largest", [True, False])
def test_merge_top_follows_the_tie_rule(dtype, sequential, largest):
    """Both selections of ``_merge_top`` (int64 keys for float32 lists, top-k with a tie fallback otherwise) against
    numpy's lexsort, on values from a five-element set (ties everywhere, -0.0 beside 0.0) and image indices that
    come after the listed ones (one pass) or interleave with them (shards)."""
    generator = torch.Generator().manual_seed(3)
    units, listed, new, k = 40, 6, 9, 6
    palette = torch.tensor([-1.0, -0.0, 0.0, 0.5, 1.0], dtype=torch.float64)
    images = torch.stack([torch.randperm(listed + new, generator=generator) for _ in range(units)])
    if sequential:
        images = images.sort(-1).values  # new images after the listed ones, each batch in index order
    values = palette[torch.randint(0, 5, (units, listed + new), generator=generator)]
    key = lambda v, i: np.lexsort((i, -v if largest else v))  # noqa: E731
    old = torch.stack([torch.from_numpy(key(values[u, :listed].numpy(), images[u, :listed].numpy()))
                       for u in range(units)])
    old_values, old_images = values[:, :listed].gather(-1, old), images[:, :listed].gather(-1, old)
    merged, (merged_images,) = statistics._merge_top(old_values.to(dtype), [old_images], values[:, listed:].to(dtype),
                                                      [images[:, listed:]], k, largest)
    expected = torch.stack([images[u, torch.from_numpy(key(values[u].numpy(), images[u].numpy()))[:k]]
                            for u in range(units)])
    assert torch.equal(merged_images, expected)
    assert torch.equal(merged.double(), values.gather(-1, (images[:, :, None] == expected[:, None]).float()
                                                      .argmax(1)))


def test_checkpoint_of_another_layout_is_refused(model, traces):
    """A state whose lists run along another dim (segclip before the k-last layout) is refused, not misread."""
    running = RunningStatistics(model.pool, top_k=3, registers=False)
    running.update(traces[0], 0)
    state = {key: value.movedim(-1, 0) if key.endswith(("_values", "_images")) else value
             for key, value in running.state_dict().items()}
    with pytest.raises(CacheError, match="delete it and run again"):
        RunningStatistics(model.pool, top_k=3, registers=False).load_state_dict(state)


def _per_image(model, traces, make, batches):
    acc = make()
    for b in batches:
        acc.update(traces[b], b * BATCH)
    return acc


@pytest.mark.parametrize("kind", ["accuracy", "embeddings", "concepts", "vectors"])
def test_per_image_merge_equals_one_pass(model, traces, kind):
    n, pool = BATCH * BATCHES, model.pool
    generator = torch.Generator().manual_seed(1)
    texts = torch.nn.functional.normalize(torch.randn(5, model.info.embed_dim, generator=generator), dim=-1)
    pairs = torch.stack([torch.randint(0, pool.neurons, (3, 4), generator=generator),
                         torch.randint(0, pool.num_heads, (3, 4), generator=generator)], dim=-1)
    make = {"accuracy": lambda: ConditionAccuracy({"plain": lambda t: t.output}, texts, torch.arange(n) % 5),
            "embeddings": lambda: Embeddings(n, model.info.embed_dim),
            "concepts": lambda: ConceptScores(pool, pairs, n),
            "vectors": lambda: ConceptVectors(pool, pairs, n)}[kind]
    whole = _per_image(model, traces, make, range(BATCHES))
    left, right = (_per_image(model, traces, make, batches) for batches in shards(2))
    left.merge(right)
    for key, value in whole.state_dict().items():
        assert torch.equal(value, left.state_dict()[key]), key
    with pytest.raises(ValueError, match="done in both"):
        left.merge(_per_image(model, traces, make, [0]))
    if kind == "accuracy":
        assert left.accuracies() == whole.accuracies()


def test_concept_vectors_norm_is_the_score_numerator(model, traces):
    """|sum_p r[n_p, h_p]| / |output| of ConceptVectors is ConceptScores' score; each vector against the explicit
    sum of alpha w + c over the pairs."""
    from segclip.core.pairs import PairDirections

    pairs = torch.tensor([[[0, 0], [5, 1], [7, 3]], [[2, 2], [3, 0], [9, 7]]])
    vectors, scores = ConceptVectors(model.pool, pairs, BATCH), ConceptScores(model.pool, pairs, BATCH)
    vectors.update(traces[0], 0)
    scores.update(traces[0], 0)
    norms = vectors.vectors_per_image.double().norm(dim=-1) / traces[0].output.double().norm(dim=-1, keepdim=True)
    assert torch.allclose(norms, scores.scores, rtol=1e-5)
    directions = PairDirections(model.pool)
    w = directions.vectors(pairs[0, :, 0], pairs[0, :, 1]).double()  # (P, d)
    shares = (directions.head_biases() / model.pool.neurons
              + directions.output_bias() / (model.pool.neurons * model.pool.num_heads)).double()
    alpha = traces[0].pair_scalars.double()[1, pairs[0, :, 0], pairs[0, :, 1]]
    explicit = (alpha[:, None] * w + shares[pairs[0, :, 1]]).sum(0)
    assert torch.allclose(vectors.vectors_per_image[1, 0].double(), explicit, rtol=1e-4, atol=1e-5)


def test_a_wider_trace_is_refused(model, traces):
    """A float32 pool keeps its pair lists in float32, where its own alpha is exact: a float64 trace would be
    rounded there (and no longer match the float64 sums), so it is refused."""
    wide = dataclasses.replace(traces[0], pair_scalars=traces[0].pair_scalars.double())
    with pytest.raises(ValueError, match="trace in the pool's dtype"):
        RunningStatistics(model.pool, top_k=3, registers=False).update(wide, 0)
