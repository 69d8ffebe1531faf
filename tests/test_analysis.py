"""Streaming statistics against two-pass references, merging, resuming (float64, a small random CLIP-ResNet)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from segclip.analysis.components import component_directions, principal_components
from segclip.analysis.statistics import (
    RunningStatistics,
    Statistics,
    collect_statistics,
    head_contributions,
    head_values,
    pass_key,
)
from segclip.analysis.stream import run_pass
from segclip.core import PairDirections, trace_pool
from segclip.core.registers import sink_changes
from segclip.errors import DataError, ImageError
from segclip.io import read_tensors
from segclip.models.loading import CLIPResNet, ModelInfo

SMALL_CFG = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 64},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def small_model(seed: int = 0) -> CLIPResNet:
    """A random CLIP-ResNet with N = 256 neurons, H = 4 heads, a 2 x 2 grid and d = 32, in float64."""
    torch.manual_seed(seed)
    clip = open_clip.model.CLIP(**SMALL_CFG).double().eval()
    with torch.no_grad():
        for linear in (clip.visual.attnpool.v_proj, clip.visual.attnpool.c_proj):
            linear.bias.normal_(std=0.3)
    info = ModelInfo(name="small-rn", pretrained="none", weights_hash=f"random-init:small-rn:seed{seed}",
                     image_size=64, grid=2, neurons=256, heads=4, head_dim=64, embed_dim=32, quick_gelu=False)
    return CLIPResNet(clip, open_clip.tokenizer.SimpleTokenizer(context_length=16), info)


def write_images(folder: Path, count: int, seed: int = 0, size: int = 64) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"img{i:04d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def random_traces(model: CLIPResNet, batches: int, batch: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(batches):
        x = torch.randn(batch, 256, 2, 2, generator=generator, dtype=torch.float64).relu()
        x[:, :3] *= 4  # a few neurons with skewed, large values
        yield trace_pool(model.pool, x)


@torch.no_grad()
def test_one_pass_matches_two_pass_reference():
    model = small_model()
    k, traces = 5, list(random_traces(model, batches=4, batch=7))
    running = RunningStatistics(model.pool, top_k=k)
    first = 0
    for trace in traces:
        running.update(trace, first)
        first += len(trace)
    stats = running.finalise(top_fraction=0.1, top_images=4)
    alpha = torch.cat([t.pair_scalars for t in traces])  # (n, N, H), all of it: the two-pass reference
    n = alpha.shape[0]
    mean = alpha.mean(0)
    assert torch.allclose(stats.mean_scalars, mean, atol=1e-12)
    order = (alpha - mean).abs().argsort(dim=0, descending=True)[:k]
    assert torch.equal(stats.deviation_images, order)
    assert torch.allclose(stats.deviations, (alpha - mean).gather(0, order), atol=1e-12)
    votes = torch.sign((alpha - mean).gather(0, order)).sum(0)
    assert torch.equal(stats.signs.long(), torch.where(votes >= 0, 1, -1))
    assert (stats.signs == -1).any() and (stats.signs == 1).any()

    pairs = PairDirections(model.pool)
    neurons, heads = torch.meshgrid(torch.arange(256), torch.arange(4), indexing="ij")
    contributions = pairs.contributions(alpha, neurons.flatten(), heads.flatten()).view(n, 256, 4, -1)
    norms = contributions.norm(dim=-1)  # (n, N, H)
    assert stats.norm_k == 3  # ceil(0.1 * 28)
    top = norms.sort(dim=0, descending=True)
    assert torch.allclose(stats.pair_top_norm, top.values[:3].mean(0), atol=1e-12)
    assert torch.equal(stats.pair_top_images, top.indices[:4])
    neuron_norms = contributions.sum(2).norm(dim=-1)  # (n, N)
    assert torch.allclose(stats.neuron_top_norm, neuron_norms.sort(0, descending=True).values[:3].mean(0))
    assert torch.equal(stats.neuron_top_images, neuron_norms.argsort(0, descending=True)[:4])
    centred = alpha - mean
    assert torch.allclose(stats.neuron_covariance, torch.einsum("bnh,bnk->nhk", centred, centred) / n, atol=1e-12)
    top = alpha.gather(0, neuron_norms.argsort(0, descending=True)[:k, :, None].expand(-1, -1, 4))  # (k, N, H)
    top_centred = top - top.mean(0)
    assert torch.allclose(stats.neuron_top_mean, top.mean(0), atol=1e-12)
    assert torch.allclose(stats.neuron_top_covariance, torch.einsum("knh,knj->nhj", top_centred, top_centred) / k,
                          atol=1e-12)
    maps = torch.cat([t.neurons for t in traces]).flatten(2)
    assert torch.allclose(stats.activation_mean, maps.mean(0))
    assert torch.equal(stats.activation_top_images, maps.norm(dim=-1).argsort(0, descending=True)[:4])
    head_norms = torch.cat([trace_pool(model.pool, t.neurons, token_heads=True).token_heads.sum(1)
                            for t in traces]).norm(dim=-1)  # (n, H)
    assert torch.allclose(stats.head_top_norm, head_norms.sort(0, descending=True).values[:3].mean(0))
    values = head_values(model.pool, alpha)  # (n, H, hd)
    value_centred = values - values.mean(0)
    assert torch.allclose(stats.head_covariance, torch.einsum("bhc,bhe->hce", value_centred, value_centred) / n,
                          atol=1e-12)
    top_values = values.gather(0, head_norms.argsort(0, descending=True)[:k, :, None].expand(-1, -1, 64))
    assert torch.allclose(stats.head_top_mean, top_values.mean(0), atol=1e-12)
    top_centred = top_values - top_values.mean(0)
    assert torch.allclose(stats.head_top_covariance, torch.einsum("khc,khe->hce", top_centred, top_centred) / k,
                          atol=1e-12)
    sink = torch.cat([t.attention[..., -1] for t in traces]).mean(0)
    assert torch.allclose(stats.sink_attention, sink)


@pytest.fixture(scope="module")
def pca_setup():
    """(model, statistics with top_k = 6, alpha (28, N, H)) of 28 random layer4 maps."""
    model = small_model()
    traces = list(random_traces(model, batches=4, batch=7))
    running = RunningStatistics(model.pool, top_k=6, registers=False)
    for i, trace in enumerate(traces):
        running.update(trace, 7 * i)
    return model, running.finalise(), torch.cat([t.pair_scalars for t in traces])


@torch.no_grad()
@pytest.mark.parametrize("unit, samples, p", [("neurons", "all", 2), ("heads", "all", 3)])  # top (A.2): see
# tests/test_authors_procedures.py
def test_principal_components_match_an_svd_of_explicit_contributions(unit, samples, p, pca_setup):
    model, stats, alpha = pca_setup
    k = stats.top_k
    if unit == "neurons":  # r[n] = sum_h r[n, h], materialised: (n, N, d)
        neurons, heads = torch.meshgrid(torch.arange(256), torch.arange(4), indexing="ij")
        r = PairDirections(model.pool).contributions(alpha, neurons.flatten(), heads.flatten())
        r = r.view(len(alpha), 256, 4, -1).sum(2)
    else:
        r = head_contributions(model.pool, alpha)  # (n, H, d); d = 32 < head_dim: W_O^h is rank deficient
    chosen = r if samples == "all" else r.gather(0, r.norm(dim=-1).argsort(0, descending=True)[:k, :, None]
                                                 .expand(-1, -1, r.shape[-1]))
    _, singular, vh = torch.linalg.svd((chosen - chosen.mean(0)).transpose(0, 1), full_matrices=False)
    components = principal_components(model.pool, stats, unit, p, samples)
    directions = component_directions(model.pool, components)  # (U, p, d)
    assert torch.allclose(torch.einsum("ujd,ujd->uj", directions, vh[:, :p]).abs(), torch.ones(1, dtype=alpha.dtype),
                          atol=1e-9)
    assert torch.allclose(components.variance, singular[:, :p] ** 2 / len(chosen), atol=1e-10)
    coordinates = alpha if unit == "neurons" else head_values(model.pool, alpha)
    coefficients = torch.einsum("ujq,buq->buj", components.analysis, coordinates - components.mean)
    assert torch.allclose(coefficients, torch.einsum("bud,ujd->buj", r - r.mean(0), directions), atol=1e-10)
    top_images = r.norm(dim=-1).argsort(0, descending=True)[:k]  # orientation: top images project positively
    assert (coefficients.gather(0, top_images[..., None].expand(-1, -1, p)).mean(0) >= 0).all()


@pytest.mark.parametrize("variant", ["activations", "tokens"])
@torch.no_grad()
def test_register_scores_match_a_loop_over_neurons(variant):
    """The closed-form search against zeroing each neuron and re-running the attention: its activation before the
    positional embedding is added (the paper's), or its whole token entry (segclip 0.1)."""
    model = small_model()
    pool = model.pool
    trace = next(random_traces(model, batches=1, batch=3))
    activations = pool.activations(trace.neurons)
    removed = activations if variant == "activations" else None
    changes = sink_changes(pool, trace.tokens, removed, block_elements=500)  # several neuron and image blocks
    base = pool.class_attention(trace.tokens)[..., -1]
    for neuron in range(256):
        if variant == "activations":
            zeroed = activations.clone()
            zeroed[:, :, neuron] = 0
            tokens = pool.add_positions(zeroed, trace.grid)
        else:
            tokens = trace.tokens.clone()
            tokens[:, :, neuron] = 0
        brute = (pool.class_attention(tokens)[..., -1] - base).mean(1)
        assert torch.allclose(changes[:, neuron], brute, atol=1e-14)
    running = RunningStatistics(pool, top_k=2, register_variant=variant)
    running.update(trace, 0)
    stats = running.finalise()
    assert torch.allclose(stats.register_scores, changes.abs().mean(0))
    assert torch.allclose(stats.register_decrease, -changes.mean(0))


@torch.no_grad()
def test_top_lists_are_sorted_with_fewer_images_than_top_k():
    model = small_model()
    trace = next(random_traces(model, batches=1, batch=6, seed=11))
    running = RunningStatistics(model.pool, top_k=50, registers=False)
    running.update(trace, 0)
    stats = running.finalise(top_fraction=0.5, top_images=4)
    maps = trace.neurons.flatten(2).norm(dim=-1)  # (6, N)
    ranked = maps.sort(0, descending=True).values  # compared by value: some neurons are 0 on several images
    assert torch.allclose(maps.gather(0, stats.activation_top_images), ranked[:4])
    assert torch.allclose(stats.activation_top_norm, ranked[:3].mean(0))
    head_norms = trace_pool(model.pool, trace.neurons, token_heads=True).token_heads.sum(1).norm(dim=-1)
    assert torch.equal(stats.head_top_images, head_norms.argsort(0, descending=True)[:4])


@torch.no_grad()
def test_merged_shards_equal_one_pass():
    model = small_model()
    traces = list(random_traces(model, batches=4, batch=5, seed=3))
    whole, left, right = (RunningStatistics(model.pool, top_k=4) for _ in range(3))
    for i, trace in enumerate(traces):
        whole.update(trace, 5 * i)
        (left if i < 2 else right).update(trace, 5 * i)
    left.merge(right)
    a, b = whole.finalise(), left.finalise()
    for name, value in a.tensors().items():
        other = b.tensors()[name]
        assert torch.equal(value, other) if value.dtype in (torch.long, torch.int8) else \
            torch.allclose(value, other, atol=1e-12), name


def test_resume_gives_identical_artifacts(tmp_path, caplog):
    model = small_model()
    paths = write_images(tmp_path / "images", 10)
    reference = collect_statistics(model, paths, top_k=3, batch_size=2, progress=False,
                                   checkpoint=tmp_path / "reference.partial.safetensors")
    reference.save(tmp_path / "reference.safetensors")

    good = paths[6].read_bytes()
    paths[6].write_bytes(b"not an image")  # the run stops at its fourth batch
    checkpoint = tmp_path / "run.partial.safetensors"
    with pytest.raises(ImageError, match="img0006"):
        collect_statistics(model, paths, top_k=3, batch_size=2, progress=False, checkpoint=checkpoint)
    assert checkpoint.is_file()  # the three batches before it are kept (no periodic checkpoint was due)
    caplog.set_level("INFO")
    paths[6].write_bytes(good)
    resumed = collect_statistics(model, paths, top_k=3, batch_size=2, progress=False,
                                 checkpoint=checkpoint)
    assert "resuming statistics" in caplog.text and "6 of 10" in caplog.text
    resumed.save(tmp_path / "resumed.safetensors")
    a, b = Statistics.load(tmp_path / "reference.safetensors"), Statistics.load(tmp_path / "resumed.safetensors")
    assert (tmp_path / "reference.safetensors").read_bytes() == (tmp_path / "resumed.safetensors").read_bytes()
    assert a.count == b.count == 10 and a.metadata == b.metadata


class CrashAt(RunningStatistics):
    """Statistics whose update fails at one image: a crash that is not an image error (nothing saves on it)."""

    def __init__(self, pool, at: int, **kwargs):
        super().__init__(pool, **kwargs)
        self.at = at

    def update(self, trace, first: int) -> None:
        if first == self.at:
            raise RuntimeError("crash")
        super().update(trace, first)


@pytest.mark.parametrize("every, done", [(0.0, "6"), (1e9, None)])
def test_run_pass_checkpoints_are_spaced_in_seconds(tmp_path, every, done):
    model = small_model()
    paths = write_images(tmp_path / "images", 10)
    checkpoint = tmp_path / "run.partial.safetensors"
    with pytest.raises(RuntimeError, match="crash"):
        run_pass(model, paths, CrashAt(model.pool, 6, top_k=3), key=pass_key(3, True, "activations"),
                 checkpoint=checkpoint, batch_size=2, checkpoint_every=every, progress=False)
    assert (read_tensors(checkpoint)[1]["done"] if checkpoint.is_file() else None) == done


def test_saved_artifact_is_compact_and_reads_back(tmp_path):
    model = small_model()
    running = RunningStatistics(model.pool, top_k=5, registers=False)
    for i, trace in enumerate(random_traces(model, batches=2, batch=4, seed=5)):
        running.update(trace, 4 * i)
    stats = running.finalise()
    stats.save(tmp_path / "stats.safetensors")
    loaded = Statistics.load(tmp_path / "stats.safetensors")
    for name, value in stats.tensors().items():
        other = getattr(loaded, name)
        assert other.shape == value.shape, name
        if value.dtype in (torch.long, torch.int8):
            assert torch.equal(other, value), name
        elif name == "deviations":  # float16: relative rounding <= 2^-11
            assert torch.allclose(other.double(), value, rtol=2 ** -11, atol=0), name
        else:  # float32; covariances stored as upper triangles come back symmetric
            assert torch.equal(other, value.float()), name
    with safe_open(tmp_path / "stats.safetensors", "pt") as f:
        assert f.get_slice("deviations").get_dtype() == "F16"
        assert f.get_slice("neuron_covariance").get_shape() == [256, 4 * 5 // 2]
        assert f.get_slice("head_covariance").get_shape() == [4, 64 * 65 // 2]


def test_empty_folder_is_a_clear_error(tmp_path):
    from segclip.analysis.calibration import CalibrateConfig, run_calibrate

    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        run_calibrate(CalibrateConfig(images=tmp_path / "empty", progress=False), small_model())
