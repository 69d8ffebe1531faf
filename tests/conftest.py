"""Shared model fixtures (the isolated cache and thread settings are in the repository's root conftest.py)."""
import pytest


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
