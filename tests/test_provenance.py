"""Provenance: the git revision of the source tree is found (it was silently None after a module move)."""
import re
from pathlib import Path

import pytest

from segclip.io import git_revision, package_versions

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="not a git checkout")
def test_git_revision_of_the_checkout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the revision is the source tree's, wherever the command runs
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", git_revision() or "")


def test_package_versions_name_torch():
    assert package_versions()["torch"] != "not installed"
