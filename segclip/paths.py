"""Where segclip keeps its caches (text embeddings, calibration artifacts, synthetic data, file hashes)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache root: ``$SEGCLIP_CACHE`` if set, else ``$XDG_CACHE_HOME/segclip`` or ``~/.cache/segclip``."""
    if os.environ.get("SEGCLIP_CACHE"):
        return Path(os.environ["SEGCLIP_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "segclip"


def bundled_dir() -> Path:
    """Folder of the bundled tiny model (``config.json``, ``weights.safetensors``, ``calibration.safetensors``)."""
    from importlib import resources

    return Path(str(resources.files("segclip") / "assets" / "tiny-rn"))


def example_image_path() -> Path:
    """The bundled example scene (rendered by segclip's synthetic scene generator)."""
    from importlib import resources

    return Path(str(resources.files("segclip") / "assets" / "example.jpg"))
