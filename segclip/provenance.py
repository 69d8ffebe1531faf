"""Provenance recorded with every result: package versions and the git revision of the source tree."""
from __future__ import annotations

import platform
import subprocess
from importlib import metadata as importlib_metadata
from pathlib import Path

PACKAGES = ("segclip", "torch", "open_clip_torch", "lightning", "torchmetrics", "numpy", "opencv-python-headless",
            "Pillow", "scikit-learn", "wordfreq", "safetensors")


def package_versions() -> dict[str, str]:
    """Installed versions of the packages a result depends on."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_revision() -> str | None:
    """The git revision of the segclip source tree (``+dirty`` if modified), or None outside a checkout."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "pyproject.toml").is_file():  # an installed copy: site-packages may sit in someone else's repo
        return None
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("+dirty" if dirty else "")
