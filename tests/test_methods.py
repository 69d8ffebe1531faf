"""Segmentation methods against brute-force formulas, a planted concept, and the register intervention."""
import math

import open_clip
import pytest
import torch
import torch.nn.functional as F

from segclip.core import RegisterIntervention
from segclip.errors import ConfigError
from segclip.models import CLIPResNet, ModelInfo
from segclip.segment.methods import (
    METHODS,
    NO_CALIBRATION,
    MaskCLIP,
    PairMethod,
    SelfSelf,
    TextRecipe,
    build_methods,
    class_embeddings,
    head_maps,
    sink_fix,
)

NAMES = ["cat", "dog", "grass"]


def tiny_model(dtype: torch.dtype = torch.float64, seed: int = 0, image_size: int = 128) -> CLIPResNet:
    """A random CLIP-ResNet small enough for unit tests: layer4 of 256 neurons, 4 heads, a 4x4 grid, d = 32."""
    torch.manual_seed(seed)
    clip = open_clip.model.CLIP(
        embed_dim=32,
        vision_cfg={"layers": [1, 1, 1, 1], "width": 8, "image_size": image_size, "head_width": 64},
        text_cfg={"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    ).to(dtype).eval()
    pool = clip.visual.attnpool
    with torch.no_grad():
        for linear in (pool.q_proj, pool.k_proj, pool.v_proj, pool.c_proj):
            linear.bias.normal_(std=0.5)  # large biases, so that bias bookkeeping errors show
    info = ModelInfo(name="tiny-test", pretrained="none", weights_hash=f"random-init:tiny-test:seed{seed}",
                     image_size=image_size, grid=image_size // 32, neurons=256, heads=4, head_dim=64, embed_dim=32,
                     quick_gelu=False)
    return CLIPResNet(clip, open_clip.tokenizer.SimpleTokenizer(context_length=16), info)


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():  # traces are inference tensors; brute-force formulas must not record autograd
        yield


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def trace(model):
    images = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    trace = model.trace(images, token_heads=True)
    assert (trace.neurons > 0).float().mean() > 0.2  # a test on all-zero neurons could not fail
    return trace


@pytest.fixture(scope="module")
def texts():
    return F.normalize(torch.randn(3, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64), dim=-1)


def test_sink_fix():
    maps = torch.arange(9.0).view(1, 9, 1)
    fixed = sink_fix(maps, (3, 3))
    assert fixed[0, 8, 0] == (7 + 5 + 4) / 3 and torch.equal(fixed[0, :8], maps[0, :8])
    with pytest.raises(ValueError):
        sink_fix(maps, (1, 9))


def test_head_maps_equal_token_head_cosines(model, trace, texts):
    """L_h,c from u = a v and Gram matrices == cos(sink-fixed r^h_i, t_c) from the explicit token-head tensor."""
    grid = trace.grid
    explicit = trace.token_heads[:, 1:].clone()  # (B, K, H, d)
    last, width = grid[0] * grid[1] - 1, grid[1]
    explicit[:, last] = (explicit[:, last - 1] + explicit[:, last - width] + explicit[:, last - width - 1]) / 3
    expected = torch.einsum("bkhd,cd->bkch", F.normalize(explicit, dim=-1), texts)
    with torch.inference_mode():
        assert (head_maps(model, trace, texts).double() - expected).abs().max() < 1e-6  # float32 output


def test_maskclip_brute_force(model, trace, texts):
    method = MaskCLIP(model, NAMES, texts=texts)
    logits = method(trace)
    pool = model.pool.pool
    for b in range(2):
        for i in range(16):
            z = trace.neurons[b].flatten(1)[:, i]
            feature = pool.c_proj.weight @ (pool.v_proj.weight @ z + pool.v_proj.bias) + pool.c_proj.bias
            for c in range(3):
                expected = feature.dot(texts[c]) / feature.norm()
                assert abs(logits[b, c].flatten()[i].item() - expected.item()) < 1e-5


def test_self_self_brute_force(model, trace, texts):
    method = SelfSelf(model, NAMES, texts=texts)
    logits = method(trace)
    pool = model.pool.pool
    hd = 64
    for b in range(2):
        spatial = trace.neurons[b].flatten(1).T  # (K, N)
        tokens = torch.cat([spatial.mean(0, keepdim=True), spatial]) + pool.positional_embedding
        q, k, v = (F.linear(tokens, lin.weight, lin.bias) for lin in (pool.q_proj, pool.k_proj, pool.v_proj))
        out = pool.c_proj.bias.expand(17, -1).clone()
        for h in range(4):
            cols = slice(h * hd, (h + 1) * hd)
            attention = ((q[:, cols] @ q[:, cols].T) / 8).softmax(-1) + ((k[:, cols] @ k[:, cols].T) / 8).softmax(-1)
            out = out + (attention @ v[:, cols]) @ pool.c_proj.weight[:, cols].T
        expected = F.normalize(out[1:], dim=-1) @ texts.T  # (K, C)
        assert (logits[b].flatten(1).T.double() - expected).abs().max() < 1e-5


def test_pair_methods_brute_force(model, trace, texts):
    """Eq. 6 summed pair by pair over the explicit top-k list, and the ablations' definitions."""
    k = 40
    signs = torch.where(torch.rand(256, 4, generator=torch.Generator().manual_seed(3)) < 0.5, -1.0, 1.0)
    both = PairMethod(model, NAMES, "neuron-head", k=k, signs=signs, texts=texts)
    neuron_only = PairMethod(model, NAMES, "neuron-only", k=k, signs=signs, texts=texts)
    head_only = PairMethod(model, NAMES, "head-only", k=k, texts=texts)
    pairs = model.pairs
    grid = trace.grid
    with torch.inference_mode():
        heads = head_maps(model, trace, texts).double()  # (B, K, C, H), checked above
    z = sink_fix(trace.neurons.flatten(2).transpose(1, 2), grid)  # (B, K, N)
    for c in range(3):
        directions = torch.stack([pairs.head_vectors(h) for h in range(4)], dim=1)  # (N, H, d), tiny model only
        scores = signs.double() * F.cosine_similarity(directions, texts[c].expand_as(directions), dim=-1)
        top = scores.flatten().topk(k).indices.tolist()
        expected_both = torch.zeros(2, 16, dtype=torch.float64)
        expected_neuron = torch.zeros(2, 16, dtype=torch.float64)
        for index in top:
            n, h = divmod(index, 4)
            expected_both += z[:, :, n] * heads[:, :, c, h] / k
            expected_neuron += z[:, :, n] / k
        assert (both(trace)[:, c].flatten(1).double() - expected_both).abs().max() < 1e-4
        assert (neuron_only(trace)[:, c].flatten(1).double() - expected_neuron).abs().max() < 1e-4
        assert (head_only(trace)[:, c].flatten(1).double() - heads[:, :, c].mean(-1)).abs().max() < 1e-6
    assert both.params["signs"] == "calibration" and both.params["k"] == k and "k" not in head_only.params


def test_planted_concept_recovered_exactly():
    """One neuron fires in a known region and its pair with one head points at class A's text; another neuron fires
    everywhere else with a pair pointing at class B. Eq. 6 with k = 1 gives class A exactly on the region."""
    model = tiny_model(seed=4)
    pool, grid = model.pool.pool, 4
    texts = torch.eye(32, dtype=torch.float64)[:2]  # t_A, t_B
    planted = {0: (17, 1), 1: (200, 3)}  # class -> (neuron, head)
    with torch.no_grad():
        pool.positional_embedding.zero_()
        pool.v_proj.bias.zero_()
        pool.c_proj.bias.zero_()
        for c, (neuron, head) in planted.items():
            w_o = pool.c_proj.weight[:, head * 64:(head + 1) * 64]  # (d, hd)
            pool.v_proj.weight[head * 64:(head + 1) * 64, neuron] = torch.linalg.pinv(w_o) @ texts[c] * 10
    region = torch.zeros(grid, grid, dtype=torch.bool)
    region[:2, 1:3] = True  # away from the bottom-right attention sink
    neurons = torch.zeros(1, 256, grid, grid, dtype=torch.float64)
    neurons[0, 17][region] = 3.0
    neurons[0, 200][~region] = 2.0
    method = PairMethod(model, ["a", "b"], k=1, texts=texts)
    assert method.selection[17, 0 * 4 + 1] == 1 and method.selection[200, 1 * 4 + 3] == 1
    logits = method(model.trace(torch.zeros(1, 3, 128, 128, dtype=torch.float64),
                                hooks={"neurons": lambda x: neurons}))
    assert logits.dtype == torch.float64  # methods keep the model's dtype
    assert torch.allclose(logits[0, 0], torch.where(region, 3.0, 0.0).double(), atol=1e-12)
    assert torch.allclose(logits[0, 1], torch.where(region, 0.0, 2.0).double(), atol=1e-12)
    assert torch.equal(logits[0].argmax(0) == 0, region)
    neurons_a, heads_a, scores_a = method.selected_pairs(0)
    assert (neurons_a.tolist(), heads_a.tolist()) == ([17], [1]) and scores_a[0] > 0.99
    assert method.params["text"]["centring_applied"].startswith("not stated")


def test_selected_pairs_are_the_dense_selection_and_given_centring_is_recorded():
    model = tiny_model(seed=2)
    texts = torch.randn(3, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    method = PairMethod(model, ["a", "b", "c"], k=50, texts=texts, texts_centring="class set (3 classes)")
    assert method.params["text"]["centring_applied"] == "class set (3 classes)"
    dense = method.selection.view(256, 3, 4)  # (N, C, H)
    cosines = model.pairs.cosines(method.texts)
    for c in range(3):
        neurons, heads, scores = method.selected_pairs(c)
        assert len(neurons) == 50 and dense[neurons, c, heads].eq(1).all() and dense[:, c].sum() == 50
        assert torch.allclose(scores, cosines[c, neurons, heads]) and (scores[:-1] >= scores[1:]).all()
        assert scores[-1] >= cosines[c][dense[:, c] == 0].max()


def test_register_intervention_brute_force(model, texts):
    """head-only on a trace with registers == cos of r^h_i written out: registers zeroed (here the whole token entry,
    variant ``tokens``), the original last token an extra key/value, softmax over K+2, the extra column dropped
    without renormalising."""
    registers = torch.tensor([3, 50, 101])
    images = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    method = PairMethod(model, NAMES, "head-only", texts=texts)
    logits = method(model.trace(images, hooks=RegisterIntervention(registers, "tokens").hooks()))
    pool = model.pool.pool
    spatial = model.neurons(images)[0].flatten(1).T
    tokens = torch.cat([spatial.mean(0, keepdim=True), spatial]) + pool.positional_embedding  # (17, N)
    extra = tokens[-1].clone()
    tokens[:, registers] = 0
    keys = torch.cat([tokens, extra[None]])
    q = F.linear(tokens[0], pool.q_proj.weight, pool.q_proj.bias)
    k = F.linear(keys, pool.k_proj.weight, pool.k_proj.bias)
    v = F.linear(tokens, pool.v_proj.weight, pool.v_proj.bias)
    maps = torch.zeros(16, 3, 4, dtype=torch.float64)
    contributions = torch.zeros(16, 4, 32, dtype=torch.float64)
    for h in range(4):
        cols = slice(h * 64, (h + 1) * 64)
        attention = ((k[:, cols] @ q[cols]) / math.sqrt(64)).softmax(0)[:17]
        r = attention[:, None] * (v[:, cols] @ pool.c_proj.weight[:, cols].T) + pool.c_proj.bias / (17 * 4)
        contributions[:, h] = r[1:]
    contributions = sink_fix(contributions[None], (4, 4))[0]
    maps = torch.einsum("khd,cd->kch", F.normalize(contributions, dim=-1), texts)
    assert (logits[0].flatten(1).T.double() - maps.mean(-1)).abs().max() < 1e-5
    plain = method(model.trace(images))
    assert (plain - logits).abs().max() > 1e-3  # the intervention changes the maps


def test_text_recipes_and_centring(model):
    methods = build_methods(model, NAMES, METHODS, k=10, templates="single")
    params = {m.name: m.params for m in methods}
    assert params["neuron-head"]["text"]["centring_applied"].startswith("reference vocabulary (3 classes")
    assert params["maskclip"]["text"]["centring_applied"] == "none"
    assert params["neuron-head"]["signs"] == NO_CALIBRATION
    texts, applied = class_embeddings(model, [f"class {i}" for i in range(10)], TextRecipe("single", "auto"))
    assert applied == "class set (10 classes)" and torch.allclose(texts.norm(dim=-1), torch.ones(10))
    two, _ = class_embeddings(model, ["cat", "dog"], TextRecipe("single", "classes"))
    assert torch.allclose(two[0], -two[1], atol=1e-5)  # why small sets are centred against a reference instead
    two_ref, _ = class_embeddings(model, ["cat", "dog"], TextRecipe("single", "auto"))
    assert not torch.allclose(two_ref[0], -two_ref[1], atol=1e-2)


@pytest.mark.parametrize("names, message", [([], "empty"), (["cat", " "], "blank"), (["cat", "Cat"], "Duplicate")])
def test_bad_class_lists(model, names, message):
    with pytest.raises(ConfigError, match=message):
        build_methods(model, names, ["maskclip"], templates="single")


def test_bad_method_options(model):
    with pytest.raises(ConfigError, match="Unknown methods"):
        build_methods(model, NAMES, ["nope"])
    with pytest.raises(ConfigError, match="more than once"):
        build_methods(model, NAMES, ["maskclip", "maskclip"])
    with pytest.raises(ConfigError, match="at least 1"):
        PairMethod(model, NAMES, k=0, texts=torch.randn(3, 32))
    with pytest.raises(ConfigError, match="shape"):
        PairMethod(model, NAMES, signs=torch.ones(3, 3), texts=torch.randn(3, 32))
    assert PairMethod(model, NAMES, k=10**9, texts=torch.randn(3, 32)).k == 256 * 4
    assert PairMethod(model, NAMES, texts=torch.randn(3, 32)).k == round(1024 * 20000 / 147456)  # the paper's share
