"""segclip's analyses against independent numpy transcriptions of the authors' released procedures
(edmundbu/clip-neur-attn-decomposition: ``sparse_decomposition.py``, ``svd_over_dataset.py``)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import orthogonal_mp
from test_analysis import random_traces, small_model

from segclip.analysis.components import component_directions, majority_signs, principal_components
from segclip.analysis.evaluation import neuron_pca_condition
from segclip.analysis.omp import centre_dictionary, omp, word_dictionary
from segclip.analysis.statistics import (
    RunningStatistics,
    RunningTopDeviations,
    Statistics,
    add_a2,
    head_contributions,
)
from segclip.core import PairDirections
from segclip.errors import ConfigError
from segclip.models import load_model
from segclip.models.text import encode_classes

WORDS = ["cat", "dog", "car", "tree", "sky", "road", "house", "water", "grass", "person", "boat", "bird", "horse",
         "chair", "table", "bottle", "train", "plane", "sheep", "cow", "flower", "mountain", "snow", "sand", "cloud",
         "window", "door", "wall", "floor", "light", "book", "phone", "clock", "cup", "bread", "apple", "orange",
         "banana", "pizza", "cake", "shirt", "shoe", "hat", "bag", "ball", "bike", "bus", "truck", "bridge",
         "river", "lake", "sea", "beach", "forest", "field", "city", "street", "garden", "kitchen", "bed", "sofa",
         "lamp", "mirror", "painting", "statue", "tower"]


def authors_dictionary(embeddings: np.ndarray) -> np.ndarray:
    """sparse_decomposition.py: ``text_descs - text_descs.mean(axis=0)``, then divided by
    ``np.linalg.norm(text_descs, axis=0, keepdims=True)`` (each embedding dimension over the vocabulary)."""
    centred = embeddings - embeddings.mean(axis=0)
    return centred / np.linalg.norm(centred, axis=0, keepdims=True)


@pytest.mark.parametrize("name", ["bundled", pytest.param("RN50", marks=pytest.mark.slow)])
@torch.no_grad()
def test_authors_dictionary_and_its_omp_words_match_numpy_and_scikit_learn(name):
    model = load_model() if name == "bundled" else load_model("RN50", "none")
    raw = encode_classes(model, WORDS, "single", cache=False).double().cpu()
    expected = authors_dictionary(raw.numpy())
    built = centre_dictionary(raw)
    assert np.abs(built.numpy() - expected).max() < 1e-12
    assert torch.allclose(word_dictionary(model, WORDS, "authors", "single").double().cpu(), built, atol=1e-6)
    assert torch.equal(word_dictionary(model, WORDS, "raw", "single").cpu(), raw.float())
    generator = torch.Generator().manual_seed(0)
    targets = torch.nn.functional.normalize(torch.randn(12, raw.shape[1], generator=generator, dtype=torch.float64),
                                            dim=-1)
    m = 8
    index, coefficients = omp(targets, built, m, record=[m])
    reference = orthogonal_mp(expected.T, targets.numpy().T, n_nonzero_coefs=m)  # (V, P): the words' coefficients
    for p in range(len(targets)):
        chosen = np.flatnonzero(reference[:, p])
        assert sorted(index[p].tolist()) == sorted(chosen.tolist())
        ours = dict(zip(index[p].tolist(), coefficients[m][p].tolist()))
        assert max(abs(ours[w] - reference[w, p]) for w in chosen) < 1e-8
    # the preprocessing matters: the raw dictionary picks other first words for some targets
    raw_index, _ = omp(targets, raw, 1)
    assert not torch.equal(raw_index[:, 0], index[:, 0])


def test_unknown_dictionary_is_refused():
    with pytest.raises(ConfigError, match="--dictionary"):
        word_dictionary(small_model(), WORDS, "centred", "single")


# ---- paper A.2: the top-image PCA of svd_over_dataset.py --------------------------------------------------------

def authors_svd_over_dataset(r: np.ndarray, k: int, pcs: int):
    """svd_over_dataset.py per unit (its loop body for each ``--pc_idx`` j < pcs), on explicit contributions
    r (n, U, d): the rows' (n, d) global mean, the k rows of largest |r - mean| (``np.argsort(...)[-k:]``), the SVD
    of those rows as they are, each vh[j] kept if more than ``top_k_pca // 2`` rows project positively, else negated.

    Returns (U, pcs, d) components, per unit the chosen image set, (U, pcs) singular values, and (U, pcs) whether
    the vote tied (the authors' result then is minus whatever sign the SVD returned)."""
    mean = r.mean(axis=0)
    units, d = r.shape[1], r.shape[2]
    out, singular, tied, chosen = np.zeros((units, pcs, d)), np.zeros((units, pcs)), np.zeros((units, pcs), bool), []
    for u in range(units):
        current = r[:, u] - mean[u]
        important = np.argsort(np.linalg.norm(current, axis=-1))[-k:]
        rows = current[important]
        _, s, vh = np.linalg.svd(rows, full_matrices=False)
        for j in range(pcs):
            positive = len(np.nonzero(1.0 * ((rows @ vh[j]) > 0))[0])
            out[u, j] = vh[j] if positive > k // 2 else -vh[j]
            flipped = len(np.nonzero(1.0 * ((rows @ -vh[j]) > 0))[0])
            tied[u, j] = positive <= k // 2 and flipped <= k // 2
        singular[u] = s[:pcs]
        chosen.append(set(important.tolist()))
    return out, chosen, singular, tied


def two_passes(model, traces, batch, top_k, shards=False):
    """The statistics with their A.2 lists, fed batch by batch (or as two shards merged in reverse order)."""
    running = RunningStatistics(model.pool, top_k=top_k, registers=False)
    for i, trace in enumerate(traces):
        running.update(trace, batch * i)
    stats = running.finalise()
    if not shards:
        second = RunningTopDeviations(model.pool, stats.mean_scalars, top_k=top_k)
        for i, trace in enumerate(traces):
            second.update(trace, batch * i)
    else:
        half = len(traces) // 2
        first, second = (RunningTopDeviations(model.pool, stats.mean_scalars, top_k=top_k) for _ in range(2))
        for i, trace in enumerate(traces):
            (first if i < half else second).update(trace, batch * i)
        second.merge(first)
    return add_a2(stats, second)


def neuron_contributions(model, alpha, neurons):
    """r[n] = sum_h r[n, h] for the chosen neurons, materialised: (n, len(neurons), d)."""
    heads = model.info.heads
    grid_n, grid_h = torch.meshgrid(torch.as_tensor(neurons), torch.arange(heads), indexing="ij")
    r = PairDirections(model.pool).contributions(alpha.double(), grid_n.flatten(), grid_h.flatten())
    return r.view(len(alpha), len(neurons), heads, -1).sum(2)


def compare_a2(model, stats, alpha, unit, pcs, units=None):
    """Max |difference| of segclip's top components and singular values from the transcription, the number of
    tied votes and the largest angle (degrees) between the spans; checks the chosen image sets."""
    k = min(stats.top_k, len(alpha))
    if unit == "neurons":
        units = list(range(model.info.neurons)) if units is None else units
        r = neuron_contributions(model, alpha, units)
        images = stats.neuron_a2_images[:, units]
    else:
        units = list(range(model.info.heads))
        r = head_contributions(model.pool, alpha.double())
        images = stats.head_a2_images
    expected, chosen, singular, tied = authors_svd_over_dataset(r.numpy(), k, pcs)
    assert [set(images[:, i].tolist()) for i in range(len(units))] == chosen
    components = principal_components(model.pool, stats, unit, pcs, "top")
    ours = component_directions(model.pool, components)[units].numpy()  # (U, p, d)
    assert np.allclose(np.sqrt(components.variance[units].numpy() * k), singular, rtol=1e-6, atol=1e-9)
    cosine = np.einsum("upd,upd->up", ours, expected)
    # where the vote decides, the sign is the authors'; where it ties, segclip's rule: the projections sum >= 0
    rows = r.numpy() - r.numpy().mean(0)
    for u, j in zip(*np.nonzero(tied)):
        top = rows[sorted(chosen[u]), u]
        assert (top @ ours[u, j]).sum() >= 0
    assert np.all(cosine[~tied] > 0)
    difference = np.abs(ours - expected * np.sign(cosine)[..., None]).max()
    angle = np.degrees(np.arccos(np.clip(np.abs(cosine), -1, 1))).max()
    return difference, int(tied.sum()), angle


@pytest.mark.parametrize("shards", [False, True])
@torch.no_grad()
def test_top_components_equal_the_authors_svd_over_dataset_on_a_small_model(shards):
    model = small_model()
    traces = list(random_traces(model, batches=5, batch=7))
    alpha = torch.cat([t.pair_scalars for t in traces])
    stats = two_passes(model, traces, 7, top_k=6, shards=shards)
    assert stats.neuron_a2_samples.shape == (6, 256, 4) and stats.head_a2_samples.shape == (6, 4, 64)
    for unit, pcs in (("neurons", 3), ("heads", 4)):
        difference, tied, angle = compare_a2(model, stats, alpha, unit, pcs)
        assert difference < 1e-9 and angle < 1e-4, (unit, difference, angle)
    # the samples are the rows about the global mean: x - mean of the listed images
    listed = stats.neuron_a2_images  # (k, N)
    rows = alpha.gather(0, listed[..., None].expand(-1, -1, 4)) - stats.mean_scalars
    assert torch.allclose(stats.neuron_a2_samples, rows, atol=1e-12)


@torch.no_grad()
def test_top_reconstruction_equals_the_authors_hook():
    """hook_replace.py's _project_neurons_reconstruct: per neuron mean + sum_j ((r - mean) . pc_j) pc_j, summed."""
    model = small_model()
    traces = list(random_traces(model, batches=4, batch=7))
    alpha = torch.cat([t.pair_scalars for t in traces])
    stats = two_passes(model, traces, 7, top_k=6)
    r = neuron_contributions(model, alpha, list(range(256))).numpy()
    mean = r.mean(0)
    for p in (1, 2):
        pcs, _, _, _ = authors_svd_over_dataset(r, 6, p)  # (N, p, d)
        dots = np.einsum("bnd,npd->bnp", r - mean, pcs)
        expected = (mean + np.einsum("bnp,npd->bnd", dots, pcs)).sum(1)
        condition = neuron_pca_condition(model.pool, stats, p, "top")
        ours = torch.cat([condition(t) for t in traces]).numpy()
        assert np.abs(ours - expected).max() < 1e-9
        assert np.array_equal(ours.argmax(-1), expected.argmax(-1))


@pytest.mark.parametrize("name", ["bundled", pytest.param("RN50", marks=pytest.mark.slow)])
@torch.no_grad()
def test_top_components_equal_the_authors_on_real_models(name):
    """The bundled model (float32) and random-init RN50 (float32: the lists rank float32 alpha in float64)."""
    model = load_model() if name == "bundled" else load_model("RN50", "none")
    size, neurons = model.info.image_size, model.info.neurons
    generator = torch.Generator().manual_seed(1)
    traces = [model.trace(torch.randn(4, 3, size, size, generator=generator)) for _ in range(2)]
    alpha = torch.cat([t.pair_scalars for t in traces])
    stats = two_passes(model, traces, 4, top_k=4)
    difference, _, angle = compare_a2(model, stats, alpha, "neurons", 2, units=list(range(0, neurons, neurons // 32)))
    assert difference < 1e-4 and angle < 0.05, (difference, angle)
    difference, _, angle = compare_a2(model, stats, alpha, "heads", 2)
    assert difference < 1e-4 and angle < 0.05, (difference, angle)


@pytest.mark.parametrize("k", [4, 5, 6])
def test_majority_vote_matches_the_authors_rule_and_breaks_ties_by_the_sum(k):
    """The authors' rule applied to v and to -v (an SVD may return either): where both give the same direction,
    segclip gives it; where they differ (a tie), segclip orients by the sign of the projections' sum."""
    generator = torch.Generator().manual_seed(k)
    projections = torch.randint(-2, 3, (400, k, 2), generator=generator).double()  # many zeros and ties

    def authors(values):  # +1 if v is kept, -1 if negated
        return torch.where((values > 0).sum(1) > k // 2, 1.0, -1.0).double()

    from_v, from_minus_v = authors(projections), -authors(-projections)
    ours = majority_signs(projections)
    decided = from_v == from_minus_v
    assert torch.equal(ours[decided], from_v[decided])
    tie = torch.where(projections.sum(1) >= 0, 1.0, -1.0).double()
    assert torch.equal(ours[~decided], tie[~decided])
    assert (~decided).any() and decided.any()


@torch.no_grad()
def test_statistics_without_the_a2_lists_are_refused_for_top(tmp_path):
    model = small_model()
    running = RunningStatistics(model.pool, top_k=3, registers=False)
    running.update(next(random_traces(model, batches=1, batch=5)), 0)
    stats = running.finalise()
    with pytest.raises(ConfigError, match="A.2"):
        principal_components(model.pool, stats, "neurons", 1, "top")
    stats.metadata = {"model": "x"}
    stats.save(tmp_path / "s.safetensors")
    assert Statistics.load(tmp_path / "s.safetensors").neuron_a2_samples is None
