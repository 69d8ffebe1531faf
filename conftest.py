"""Settings for every test and docstring example: an isolated cache, two threads."""
import os

import pytest
import torch


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test and doctest gets its own segclip cache, so none reads another's artifacts."""
    monkeypatch.setenv("SEGCLIP_CACHE", str(tmp_path_factory.mktemp("segclip-cache")))


@pytest.fixture(autouse=True, scope="session")
def _threads():
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
