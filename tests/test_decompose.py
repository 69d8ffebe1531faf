"""Exact identities of the decomposition, in float64, on every CLIP-ResNet architecture (docs/method.md §2)."""
import open_clip
import pytest
import torch
from open_clip.modified_resnet import AttentionPool2d

from segclip.core import AttentionPool, PairDirections, RegisterIntervention, trace_pool
from segclip.errors import ConfigError, ModelError
from segclip.models import load_model

ARCHITECTURES = ["RN50", "RN101", "RN50x4", "RN50x16", "RN50x64"]
TABLE = {  # docs/method.md §1.1: (grid, N, H, d)
    "RN50": (7, 2048, 32, 1024), "RN101": (7, 2048, 32, 512), "RN50x4": (9, 2560, 40, 640),
    "RN50x16": (12, 3072, 48, 768), "RN50x64": (14, 4096, 64, 1024),
}
TOL = 1e-12


def make_pool(name: str, seed: int = 0) -> AttentionPool2d:
    """open_clip's own attention pool with the architecture's dimensions, random weights and biases, float64."""
    cfg = open_clip.get_model_config(name)
    vision = cfg["vision_cfg"]
    neurons = vision["width"] * 32
    torch.manual_seed(seed)
    pool = AttentionPool2d(vision["image_size"] // 32, neurons, neurons // 64, cfg["embed_dim"]).double()
    with torch.no_grad():
        for linear in (pool.q_proj, pool.k_proj, pool.v_proj, pool.c_proj):
            linear.weight.normal_(std=neurons ** -0.5)
            linear.bias.normal_(std=0.5)  # large biases, so that bias bookkeeping errors show
    return pool.eval()


def layer4(pool: AttentionPool2d, batch: int, seed: int = 1) -> torch.Tensor:
    grid = int(round((pool.positional_embedding.shape[0] - 1) ** 0.5))
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, pool.v_proj.in_features, grid, grid, generator=generator, dtype=torch.float64).relu()


def scale(reference: torch.Tensor) -> float:
    return max(1.0, reference.abs().max().item())


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_architecture_table(name):
    pool = AttentionPool(make_pool(name))
    assert (pool.grid, pool.neurons, pool.num_heads, pool.embed_dim) == TABLE[name]
    assert pool.head_dim == 64


@pytest.mark.parametrize("name", ARCHITECTURES)
@torch.no_grad()
def test_identities(name):
    """(a) parity with open_clip, (b) pairs + biases = output, (c) token-heads = output, (f) batch N = N x batch 1."""
    original = make_pool(name)
    pool = AttentionPool(original)
    x = layer4(original, batch=3)
    reference = original(x)
    tol = TOL * scale(reference)

    assert (pool(x) - reference).abs().max() < tol  # (a)

    trace = trace_pool(pool, x, token_heads=True)
    assert (trace.output - reference).abs().max() < tol
    pairs = PairDirections(pool)
    summed = pairs.head_biases().sum(0) + pairs.output_bias()
    for head in range(pool.num_heads):  # explicit w[n, h], one head at a time: never N x H x d at once
        summed = summed + trace.pair_scalars[:, :, head] @ pairs.head_vectors(head)
    assert (summed - reference).abs().max() < tol  # (b)
    assert (trace.token_heads.sum(dim=(1, 2)) - reference).abs().max() < tol  # (c)
    assert torch.allclose(trace.attention.sum(-1), torch.ones(3, pool.num_heads, dtype=torch.float64))

    for i in range(3):  # (f)
        single = trace_pool(pool, x[i:i + 1], token_heads=True)
        assert torch.equal(single.pair_scalars[0], trace.pair_scalars[i]) or \
            (single.pair_scalars[0] - trace.pair_scalars[i]).abs().max() < tol
        assert (single.output[0] - trace.output[i]).abs().max() < tol
        assert (single.token_heads[0] - trace.token_heads[i]).abs().max() < tol


@pytest.mark.parametrize("name", ["RN50", "RN50x16"])
@torch.no_grad()
def test_pair_contributions_are_rank_one(name):
    """(d) the first principal component of centred r[n, h] over images is +-w[n, h] / |w[n, h]|."""
    original = make_pool(name)
    pool = AttentionPool(original)
    trace = trace_pool(pool, layer4(original, batch=12, seed=3))
    pairs = PairDirections(pool)
    generator = torch.Generator().manual_seed(0)
    neurons = torch.randint(pool.neurons, (16,), generator=generator)
    heads = torch.randint(pool.num_heads, (16,), generator=generator)
    contributions = pairs.contributions(trace.pair_scalars, neurons, heads)  # (B, P, d)
    directions = pairs.vectors(neurons, heads)
    for p in range(len(neurons)):
        samples = contributions[:, p] - contributions[:, p].mean(0)
        _, singular, vh = torch.linalg.svd(samples, full_matrices=False)
        unit = directions[p] / directions[p].norm()
        assert abs(abs(vh[0] @ unit).item() - 1) < 1e-10
        assert singular[1] < 1e-10 * singular[0]  # nothing beyond rank one


@pytest.mark.parametrize("name", ARCHITECTURES)
@torch.no_grad()
def test_closed_form_cosines(name):
    """(e) cosines and norms without w equal the brute-force ones on explicit vectors."""
    pool = AttentionPool(make_pool(name))
    pairs = PairDirections(pool)
    generator = torch.Generator().manual_seed(5)
    texts = torch.randn(4, pool.embed_dim, generator=generator, dtype=torch.float64)
    cosines = pairs.cosines(texts)
    assert cosines.shape == (4, pool.neurons, pool.num_heads)
    neurons = torch.randint(pool.neurons, (64,), generator=generator)
    heads = torch.randint(pool.num_heads, (64,), generator=generator)
    explicit = pairs.vectors(neurons, heads)
    rows = torch.stack([pairs.head_vectors(h)[n] for n, h in zip(neurons[:3], heads[:3])])
    assert (explicit[:3] - rows).abs().max() < 1e-12
    brute = torch.nn.functional.cosine_similarity(explicit[None], texts[:, None], dim=-1)
    assert (cosines[:, neurons, heads] - brute).abs().max() < 1e-12
    assert (pairs.norms()[neurons, heads] - explicit.norm(dim=-1)).abs().max() < 1e-12


@pytest.mark.parametrize("variant", ["activations", "tokens"])
@torch.no_grad()
def test_register_intervention_matches_brute_force(variant):
    """Method.md section 6, written out token by token: the registers' activations are zeroed before P is added
    (``activations``, the paper's), or their whole token entries z + P (``tokens``); the extra key is the original
    last token z_K + P_K in both."""
    original = make_pool("RN50")
    pool = AttentionPool(original)
    x = layer4(original, batch=2)
    registers = torch.tensor([3, 17, 400])
    trace = trace_pool(pool, x, token_heads=True, hooks=RegisterIntervention(registers, variant).hooks())

    spatial = x.flatten(2).transpose(1, 2)
    z = torch.cat([spatial.mean(1, keepdim=True), spatial], 1)  # (B, K+1, N), class token first
    positions = original.positional_embedding
    keep = (z + positions)[:, -1].clone()
    if variant == "activations":
        z[:, :, registers] = 0
        tokens = z + positions
    else:
        tokens = z + positions
        tokens[:, :, registers] = 0
    keys = torch.cat([tokens, keep[:, None]], 1)  # (B, K+2, N)
    q = original.q_proj(tokens[:, 0]).view(2, 32, 64)
    k = original.k_proj(keys).view(2, -1, 32, 64)
    v = original.v_proj(keys).view(2, -1, 32, 64)
    attention = torch.einsum("bhc,bthc->bht", q, k).div(8).softmax(-1)[..., :-1]  # drop, no renormalising
    out = original.c_proj(torch.einsum("bht,bthc->bhc", attention, v[:, :-1]).flatten(1))
    assert (trace.attention - attention).abs().max() < TOL
    assert (trace.output - out).abs().max() < TOL * scale(out)
    assert (trace.attention.sum(-1) < 1).all() and trace.extra_keys == 1
    if variant == "tokens":
        assert (trace.pair_scalars[:, registers] == 0).all()
    else:  # P stays: alpha of a register neuron is its attention-weighted positional embedding
        expected = torch.einsum("bht,tn->bnh", attention, positions[:, registers])
        assert (trace.pair_scalars[:, registers] - expected).abs().max() < TOL


def test_hooks_at_named_points_and_unknown_names(rn50_random):
    model = rn50_random
    images = torch.randn(1, 3, 224, 224)
    seen = {}
    hooks = {name: (lambda value, name=name: seen.__setitem__(name, tuple(value.shape))) for name in
             model.hook_points if name != "extra_keys"}
    with model.hooks(hooks):
        model.trace(images)
    assert seen["neurons"] == (1, 2048, 7, 7) and seen["activations"] == (1, 50, 2048)
    assert seen["attention"] == (1, 32, 50) and seen["stem"][0] == 1
    model.trace(images)  # the block's hooks are gone after it
    assert len(seen) == len(model.hook_points) - 1
    with pytest.raises(ConfigError, match="Unknown hook point 'neuron'. Valid hook points: stem, layer1"):
        model.trace(images, hooks={"neuron": print})
    with pytest.raises(ConfigError, match="Unknown hook point"):
        with model.hooks({"tokenz": print}):
            pass
    doubled = model.trace(images, hooks={"neurons": lambda value: 2 * value})
    plain = model.trace(images)
    assert torch.allclose(doubled.neurons, 2 * plain.neurons) and not torch.allclose(doubled.output, plain.output)


def test_gradients_flow_through_the_decomposition_when_the_caller_allows(rn50_random):
    model = rn50_random
    images = torch.randn(1, 3, 224, 224, requires_grad=True)
    trace = model.trace(images)
    trace.pair_scalars[0, 5, 3].backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    with torch.inference_mode():
        assert not model.trace(images.detach()).pair_scalars.requires_grad


def test_pair_directions_are_computed_once_per_model():
    model = load_model("RN50", "none")
    assert model.pairs is model.pairs
    first = model.pairs.norms()
    assert model.pairs.norms() is first  # cached
    with torch.no_grad():
        model.pool.pool.v_proj.weight.mul_(2)  # the weights change: the cache notices
    assert torch.allclose(model.pairs.norms(), 2 * first)


def test_wrong_grid_is_a_clear_error():
    pool = AttentionPool(make_pool("RN50"))
    with pytest.raises(ModelError, match="interpolat"):
        pool(torch.rand(1, 2048, 9, 9, dtype=torch.float64))
    interpolating = AttentionPool(make_pool("RN50"), interpolate_positions=True)
    assert interpolating(torch.rand(1, 2048, 9, 9, dtype=torch.float64)).shape == (1, 1024)


@torch.no_grad()
def test_full_model_trace_equals_encode_image():
    """Backbone + pool in float64 on RN50: the trace's output is open_clip's encode_image, batch N = batch 1."""
    model = load_model("RN50", "none", precision="fp64")
    images = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    reference = model.clip.encode_image(images)
    trace = model.trace(images, token_heads=True)
    assert (trace.output - reference).abs().max() < TOL * scale(reference)
    assert trace.neurons.shape == (2, 2048, 7, 7) and (trace.neurons >= 0).all()
    single = model.trace(images[1:])
    assert (single.pair_scalars[0] - trace.pair_scalars[1]).abs().max() < TOL


@pytest.mark.slow
@pytest.mark.parametrize("name", ARCHITECTURES[1:])
@torch.no_grad()
def test_full_model_every_architecture(name):
    """Every architecture through the loader and backbone (float32): trace output = encode_image."""
    model = load_model(name, "none")
    size = model.info.image_size
    images = torch.randn(1, 3, size, size)
    reference = model.clip.encode_image(images)
    trace = model.trace(images)
    assert torch.allclose(trace.output, reference, rtol=1e-4, atol=1e-5 * scale(reference))
    assert trace.pair_scalars.shape == (1, model.info.neurons, model.info.heads)


@pytest.mark.parametrize("bad, message", [
    (torch.zeros(1, 1, 224, 224), "3 \\(RGB\\) channels"),
    (torch.zeros(1, 3, 160, 160), "native input is 224x224"),
    (torch.full((1, 3, 224, 224), float("nan")), "NaN or inf"),
    (torch.zeros(3, 224, 224), "shaped \\(B, 3, H, W\\)"),
])
def test_bad_images(bad, message):
    model = load_model("RN50", "none")
    with pytest.raises(ModelError, match=message):
        model.trace(bad)
