"""The README's Python blocks run as written, each on its own (a fresh namespace, a scratch folder)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_python_blocks():
    assert len(python_blocks()) >= 4


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_block_runs_on_its_own(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}  # nothing from another block: each must import what it uses
    exec(compile(python_blocks()[index], f"{README} block {index + 1}", "exec"), namespace)
    if "seg" in namespace:  # the in-memory API block
        seg = namespace["seg"]
        assert seg.labels.shape == (256, 320) and seg.probabilities.shape == (4, 256, 320)
        assert (tmp_path / "runs" / "example-api" / "image.png").is_file()
    if "cosines" in namespace:
        assert namespace["cosines"].shape == (2, 512, 8)
    if "segmented" in namespace:
        assert (tmp_path / "runs" / "example" / "example_overlay.png").is_file()
        assert (tmp_path / "runs" / "reconstruct" / "reconstruct.json").is_file()
