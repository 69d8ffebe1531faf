"""Attribution identities in float64 for every method, checked against plain numpy transcriptions of method.md, and
interventions that remove planted units."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from segclip.errors import ConfigError
from segclip.explain import ImageExplainer, UnitIntervention, intervened_method, unit_window_maps
from segclip.models import load_model
from segclip.segment.methods import METHODS, build_methods
from segclip.segment.pipeline import protocol_for

NAMES = ["sky", "grass", "water", "ball"]


@pytest.fixture(scope="module")
def model64():
    return load_model(precision="fp64")


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (120, 170, 3), dtype=np.uint8)
    picture[:50] = (90, 140, 230)  # a sky-coloured band
    return picture


@pytest.fixture(scope="module")
def explainers(model64, image):
    methods = build_methods(model64, NAMES, list(METHODS), templates="single", k=40)
    return {m.name: ImageExplainer(model64, image, m, protocol_for(model64), batch_size=3) for m in methods}


def numpy_sink_fix(tokens: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(B, K, ...) -> copy with the last token = mean of its west, north and north-west neighbours."""
    out = tokens.copy()
    last, width = grid[0] * grid[1] - 1, grid[1]
    out[:, last] = (tokens[:, last - 1] + tokens[:, last - width] + tokens[:, last - width - 1]) / 3
    return out


@pytest.mark.parametrize("name", METHODS)
def test_contributions_sum_to_the_logit_and_margin(explainers, name):
    explainer = explainers[name]
    reference = explainer.stitched.logits(explainer.size).double()  # (C, H, W), the segmentation's own path
    for x, y in [(0, 0), (169, 119), (77, 33)]:
        attribution = explainer.attribute(at=(x, y), maps=False)
        assert attribution.contributions.sum() == pytest.approx(attribution.logit, abs=1e-12)
        assert sum(attribution.margins.values()) == pytest.approx(attribution.margin, abs=1e-12)
        np.testing.assert_allclose(attribution.scores, reference[:, y, x].numpy(), atol=1e-5)  # float32 stitching
        assert attribution.target == int(reference[:, y, x].argmax())
    region = np.zeros(explainer.size, bool)
    region[10:40, 20:90] = True
    attribution = explainer.attribute(region=region, target=2)
    assert attribution.target == 2
    assert attribution.contributions.sum() == pytest.approx(attribution.logit, abs=1e-12)
    np.testing.assert_allclose(attribution.scores, reference[:, region].mean(-1).numpy(), atol=1e-5)
    best = attribution.top[0]
    assert best.contribution == pytest.approx(attribution.contributions.max())
    np.testing.assert_allclose(best.map[region].mean(), best.contribution, rtol=1e-5, atol=1e-7)


def test_neuron_head_pairs_match_numpy(explainers, model64):
    explainer = explainers["neuron-head"]
    method = explainer.method
    trace = model64.trace(explainer.windows.crops[:2], token_heads=True)
    c = 1
    units, maps = unit_window_maps(method, trace, c)
    grid = trace.grid
    z = numpy_sink_fix(trace.neurons.flatten(2).transpose(1, 2).numpy(), grid)  # (B, K, N)
    r = numpy_sink_fix(trace.token_heads[:, 1:].numpy(), grid)  # (B, K, H, d)
    text = method.texts[c].numpy()
    cos = (r @ text) / np.linalg.norm(r, axis=-1)  # (B, K, H)
    for u, unit in enumerate(units[:10]):
        expected = cos[:, :, unit.head] * z[:, :, unit.neuron] / method.k
        np.testing.assert_allclose(maps[:, u].flatten(1).numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("name", ["maskclip", "self-self"])
def test_head_terms_match_numpy(explainers, model64, name):
    explainer = explainers[name]
    method = explainer.method
    trace = model64.trace(explainer.windows.crops[:2])
    units, maps = unit_window_maps(method, trace, 0)
    pool = model64.pool.pool
    w_v, b_v = pool.v_proj.weight.numpy(), pool.v_proj.bias.numpy()
    w_o, b_o = pool.c_proj.weight.numpy(), pool.c_proj.bias.numpy()
    heads, hd = model64.pool.num_heads, model64.pool.head_dim
    z = trace.neurons.flatten(2).transpose(1, 2).numpy()  # (B, K, N)
    if name == "maskclip":
        values = z @ w_v.T + b_v  # (B, K, N)
    else:  # self-self transcribed: tokens with the mean token and positions, softmax(QQ^T) + softmax(KK^T)
        tokens = np.concatenate([z.mean(1, keepdims=True), z], 1) + pool.positional_embedding.numpy()
        per_head = []
        for h in range(heads):
            rows = slice(h * hd, (h + 1) * hd)
            proj = {k: tokens @ getattr(pool, f"{k}_proj").weight.numpy()[rows].T
                    + getattr(pool, f"{k}_proj").bias.numpy()[rows] for k in "qkv"}
            attention = 0
            for x in (proj["q"], proj["k"]):
                logits = x @ x.transpose(0, 2, 1) / np.sqrt(hd)
                e = np.exp(logits - logits.max(-1, keepdims=True))
                attention = attention + e / e.sum(-1, keepdims=True)
            per_head.append(attention @ proj["v"])
        values = np.concatenate(per_head, -1)[:, 1:]
    feature = values @ w_o.T + b_o
    text = method.texts[0].numpy()
    norm = np.linalg.norm(feature, axis=-1)
    for h in range(heads):
        cols = slice(h * hd, (h + 1) * hd)
        expected = (values[..., cols] @ w_o[:, cols].T @ text) / norm
        np.testing.assert_allclose(maps[:, h].flatten(1).numpy(), expected, atol=1e-10)
    assert units[-1].kind == "bias"
    np.testing.assert_allclose(maps[:, -1].flatten(1).numpy(), (b_o @ text) / norm, atol=1e-12)


def test_removing_a_planted_pair_changes_exactly_its_term(explainers, model64):
    explainer = explainers["neuron-head"]
    method = explainer.method
    neurons, heads, _ = method.selected_pairs(0)
    pair = (int(neurons[3]), int(heads[3]))  # a pair of class 0; which other classes hold it is read off below
    trace = model64.trace(explainer.windows.crops)
    before = method(trace).numpy()
    after = intervened_method(method, UnitIntervention(pairs={pair: 0.0}))(trace).numpy()
    for c in range(len(NAMES)):
        held = [(int(n), int(h)) for n, h in zip(*method.selected_pairs(c)[:2])]
        if pair in held:
            units, maps = unit_window_maps(method, trace, c)
            term = maps[:, [u.key for u in units].index(f"pair {pair[0]}:{pair[1]}")].numpy()
            np.testing.assert_allclose(before[:, c] - after[:, c], term, atol=1e-12)
            assert np.abs(term).max() > 0
        else:
            np.testing.assert_array_equal(after[:, c], before[:, c])


def test_scaled_head_and_neuron_hook(explainers, model64):
    explainer = explainers["maskclip"]
    method = explainer.method
    trace = model64.trace(explainer.windows.crops[:1])
    scaled = intervened_method(method, UnitIntervention(heads={1: 0.5}))(trace)
    units, maps = unit_window_maps(method, trace, 2)
    pool = model64.pool.pool
    z = trace.neurons.flatten(2).transpose(1, 2)
    hd = model64.pool.head_dim
    values = pool.v_proj(z)
    values[..., hd:2 * hd] *= 0.5
    feature = pool.c_proj(values)
    expected = torch.nn.functional.normalize(feature, dim=-1) @ method.texts[2]
    torch.testing.assert_close(scaled[0, 2].flatten(), expected[0], atol=1e-12, rtol=0)
    hooked = model64.trace(explainer.windows.crops[:1], hooks=UnitIntervention(neurons={5: 0.0}).hooks())
    manual = trace.neurons.clone()
    manual[:, 5] = 0
    torch.testing.assert_close(hooked.neurons, manual, atol=0, rtol=0)
    assert not torch.equal(method(hooked), method(trace))


def test_remove_top_units_and_comparison(explainers, image):
    explainer = explainers["head-only"]
    truth = explainer.labels.copy()
    truth[:5] = 255
    attribution, intervention, comparison = explainer.remove_top_units(2, at=(60, 20), truth=truth)
    assert set(intervention.heads) == {u.head for u in attribution.top_units(2)}
    assert comparison.miou[0] == pytest.approx(1.0)
    assert 0 <= comparison.changed <= 1
    assert comparison.changed == pytest.approx(float((comparison.after != explainer.labels).mean()))
    assert sum(b for b, _ in comparison.pixels.values()) == truth.size


def test_errors(explainers):
    explainer = explainers["maskclip"]
    with pytest.raises(ConfigError, match="outside"):
        explainer.attribute(at=(170, 0))
    with pytest.raises(ConfigError, match="one of them"):
        explainer.attribute()
    with pytest.raises(ConfigError, match="region mask is 3x2"):
        explainer.attribute(region=np.ones((2, 3), bool))
    with pytest.raises(ConfigError, match="no neuron-head pairs"):
        explainer.intervene(UnitIntervention(pairs={(0, 0): 0.0}))
    with pytest.raises(ConfigError, match="Head 99"):
        explainer.intervene(UnitIntervention(heads={99: 0.0}))


@pytest.mark.parametrize("name", ["maskclip", "self-self"])
def test_neurons_through_a_head_sum_to_the_head(explainers, name):
    explainer = explainers[name]
    attribution = explainer.attribute(at=(77, 33), maps=False)
    for head in (0, 3):
        neurons, bias = explainer.head_neurons(head, at=(77, 33))
        share = attribution.contributions[[u.key for u in attribution.units].index(f"head {head}")]
        assert neurons.sum() + bias == pytest.approx(share, abs=1e-12)
        assert np.count_nonzero(neurons) > 1
    with pytest.raises(ConfigError, match="Head 99"):
        explainer.head_neurons(99, at=(1, 1))
    with pytest.raises(ConfigError, match="maskclip and self-self"):
        explainers["neuron-head"].head_neurons(0, at=(1, 1))
