"""The README's Python blocks run as written (in a scratch folder)."""
from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    blocks = python_blocks()
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:  # one namespace: later blocks use the model of the first, as a reader would
        exec(compile(block, str(README), "exec"), namespace)
    assert (tmp_path / "runs" / "example" / "example_overlay.png").is_file()
    assert (tmp_path / "runs" / "reconstruct" / "reconstruct.json").is_file()
    assert namespace["cosines"].shape == (2, 512, 8)
