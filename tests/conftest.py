"""Shared model fixtures (the isolated cache and thread settings are in the repository's root conftest.py)."""
import contextlib

import pytest
import torch


@pytest.fixture(scope="session")
def bundled_model():
    """The bundled tiny model (N = 512, H = 8, 6x6 grid), loaded once; tests must not modify it."""
    from segclip.models import load_model

    return load_model()


@pytest.fixture(scope="session")
def rn50_random():
    """RN50 with random weights, float32, loaded once; tests must not modify it."""
    from segclip.models import load_model

    return load_model("RN50", "none")


@contextlib.contextmanager
def torch_threads(count: int):
    """Run the block with ``count`` torch threads: a reference computed beside child processes that run with
    ``OMP_NUM_THREADS=1`` must use their thread count, since on some CPUs (AMD EPYC) one and two threads differ in
    the last bit, which swaps near-tied images in top lists."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
