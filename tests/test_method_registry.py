"""The contract every registered segmentation method keeps (segclip.segment.methods.REGISTRY): run over every row,
so a new method is tested the moment it is registered."""
import pytest
import torch
from test_methods import tiny_model

from segclip.core import RegisterIntervention
from segclip.segment.methods import METHODS, REGISTRY, build_methods

NAMES = ["sky", "grass", "ball", "box", "ring", "water", "sand", "wall", "snow", "star", "triangle"]


@pytest.fixture(scope="module")
def model():
    return tiny_model(torch.float32)


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 128, 128, generator=torch.Generator().manual_seed(1))


def test_the_registry_is_the_method_list():
    assert tuple(REGISTRY) == METHODS and len(METHODS) == 5
    for name, spec in REGISTRY.items():
        assert spec.name == name and spec.section.startswith("docs/method.md §")


@pytest.mark.parametrize("name", METHODS)
def test_method_contract(model, images, name):
    spec = REGISTRY[name]
    (method,) = build_methods(model, NAMES, [name], k=64, templates="single")
    assert method.name == name and method.uses_registers == spec.uses_registers
    assert ("k" in method.params or name == "head-only") == spec.takes_pairs
    with torch.no_grad():
        trace = model.trace(images)
        logits = method(trace)
        # shapes and dtype: (B, C, h, w) in at least float32
        assert logits.shape == (3, len(NAMES), *trace.grid) and logits.dtype == torch.float32
        assert torch.isfinite(logits).all()
        # batch 1 = batch N (each image alone gives its row of the batch)
        for i in range(3):
            alone = method(model.trace(images[i:i + 1]))
            torch.testing.assert_close(alone[0], logits[i], rtol=1e-4, atol=1e-5)
        # the register intervention changes exactly the methods that read the class-token attention
        zeroed = method(model.trace(images, hooks=RegisterIntervention([0, 1, 2, 3, 4, 5, 6, 7]).hooks()))
    if spec.uses_registers:
        assert not torch.allclose(zeroed, logits)
    else:
        assert torch.equal(zeroed, logits)
