"""Backbone autocast (``--autocast``): bf16 against fp32 on the bundled model (labels and mIoU), fp16 refused on a
CPU, and the GPU smoke tests (``-m gpu``: trace on CUDA equals the CPU's, eval in bf16 within a stated mIoU of fp32)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from segclip.data.synthetic import BENCHMARK_SIZE, render_scene
from segclip.errors import ConfigError
from segclip.models import load_model
from segclip.segment.methods import METHODS, build_methods
from segclip.segment.pipeline import protocol_for, segment_images
from segclip.segment.run import CompareConfig, run_compare

BF16_LABEL_AGREEMENT = 0.98  # share of pixels labelled as in fp32, every method, on the bundled scenes
BF16_MIOU_POINTS = 0.5  # |mIoU(bf16) - mIoU(fp32)| on the bundled benchmark, every method
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def scenes(count: int = 4) -> list[np.ndarray]:
    return [render_scene(np.random.default_rng(100 + i), *BENCHMARK_SIZE).image for i in range(count)]


def agreement(model, autocast: str) -> dict[str, float]:
    methods = build_methods(model, list(model.info.classes), list(METHODS))
    protocol, images = protocol_for(model), scenes()
    full = segment_images(model, images, methods, protocol)
    low = segment_images(model, images, methods, protocol, autocast=autocast)
    return {m.name: float(np.mean([(a[m.name].labels == b[m.name].labels).float().mean() for a, b in zip(full, low)]))
            for m in methods}


def test_bf16_backbone_agrees_with_fp32_on_the_bundled_model():
    shares = agreement(load_model(), "bf16")
    assert min(shares.values()) > BF16_LABEL_AGREEMENT, shares
    assert max(shares.values()) < 1.0  # autocast really ran: bf16 changes some pixels


def test_fp16_needs_a_gpu_and_unknown_precisions_are_refused():
    from segclip.segment.pipeline import check_autocast

    with pytest.raises(ConfigError, match="autocast fp16 needs a GPU"):
        check_autocast("fp16", torch.device("cpu"))
    with pytest.raises(ConfigError, match="Unknown autocast"):
        check_autocast("int8", torch.device("cpu"))
    with pytest.raises(ConfigError, match="autocast fp16 needs a GPU"):
        run_compare(CompareConfig(methods=("maskclip",), limit=1, autocast="fp16", progress=False), load_model())


def miou_by_method(model, autocast: str) -> dict[str, float]:
    result = run_compare(CompareConfig(limit=12, autocast=autocast, progress=False), model)
    return {s.method: s.miou for s in result.scores}


@pytest.mark.slow
def test_bf16_eval_within_the_stated_miou_on_cpu():
    model = load_model()
    full, low = miou_by_method(model, "off"), miou_by_method(model, "bf16")
    assert all(abs(full[m] - low[m]) <= BF16_MIOU_POINTS for m in full), (full, low)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("name", ["segclip-tiny", "RN50"])
def test_trace_on_cuda_equals_cpu(name):
    cpu = load_model() if name == "segclip-tiny" else load_model(name, "none")
    gpu = load_model(device="cuda") if name == "segclip-tiny" else load_model(name, "none", device="cuda")
    images = torch.randn(3, 3, cpu.info.image_size, cpu.info.image_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        a, b = cpu.trace(images), gpu.trace(images.cuda())
    for field in ("neurons", "attention", "pair_scalars", "output"):
        x, y = getattr(a, field), getattr(b, field).cpu()
        torch.testing.assert_close(y, x, rtol=1e-3, atol=1e-4 * float(x.abs().max())), field


@pytest.mark.gpu
@cuda
def test_bf16_eval_on_cuda_within_the_stated_miou():
    model = load_model(device="cuda")
    full, low = miou_by_method(model, "off"), miou_by_method(model, "bf16")
    assert all(abs(full[m] - low[m]) <= BF16_MIOU_POINTS for m in full), (full, low)
    assert miou_by_method(model, "fp16").keys() == full.keys()
