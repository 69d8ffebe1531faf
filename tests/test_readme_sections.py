"""The README's analysis and explorer sections run top to bottom as written, from ``segclip demo-data``.

Their ``bash`` blocks are read from README.md and run in order in a temporary folder: each ``segclip`` command
in-process (``segclip.cli.main``, the console script's entry point, so the run takes seconds, not an import per
command), ``cd`` and ``NAME="value"`` as the shell does them. Anything else in those blocks fails the test, so the
README cannot grow a command this runner silently skips.
"""
from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest

from segclip.cli import main as segclip

README = Path(__file__).resolve().parents[1] / "README.md"
SECTIONS = ("## Analyses on the bundled tiny model", "## Explorer: every pair, neuron and head on a page")


def section_blocks(text: str, title: str) -> list[str]:
    """The ``bash`` blocks of the README section that starts with ``title`` (up to the next ``## `` heading)."""
    start = text.index(title + "\n")
    end = text.find("\n## ", start + len(title))
    return re.findall(r"```bash\n(.*?)```", text[start:end if end >= 0 else None], flags=re.S)


def commands(block: str) -> list[str]:
    """The block's commands: continuation lines joined, blank lines dropped, each ``a && b`` split in two."""
    joined = re.sub(r"\s*\\\n\s*", " ", block)
    found = []
    for line in joined.splitlines():
        words = line.split("#", 1)[0].strip() if "#" in line else line.strip()
        if words:
            found += [part.strip() for part in words.split("&&")]
    return found


def run_line(line: str, variables: dict[str, str]) -> None:
    """Run one command line as bash would for the subset the README uses (see the module docstring)."""
    assignment = re.fullmatch(r'([A-Z_]+)="([^"]*)"', line)
    if assignment:
        variables[assignment[1]] = assignment[2]
        return
    expanded = re.sub(r"\$([A-Z_]+)", lambda m: variables[m[1]], line)
    words = shlex.split(expanded)
    if words[0] == "cd":
        os.chdir(words[1])
        return
    assert words[0] == "segclip", f"the README runner knows segclip, cd and NAME=value, not: {line}"
    assert segclip(words[1:]) == 0, f"failed: {line}"


def test_commands_parse_the_readme_syntax():
    block = 'segclip demo-data d && cd d\nS="--a b"   \n\nsegclip x $S \\\n    --out y      # comment\n'
    assert commands(block) == ["segclip demo-data d", "cd d", 'S="--a b"', "segclip x $S --out y"]


@pytest.mark.slow
def test_readme_analysis_and_explorer_sections_run_in_order(tmp_path, monkeypatch):
    text = README.read_text(encoding="utf-8")
    lines = [line for title in SECTIONS for block in section_blocks(text, title) for line in commands(block)]
    assert lines[0].startswith("segclip demo-data"), "the sections start from segclip demo-data"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SEGCLIP_CACHE", str(tmp_path / "cache"))
    variables: dict[str, str] = {}
    for line in lines:
        run_line(line, variables)
    demo = tmp_path / "demo"
    for name in ("reconstruct/reconstruct.json", "ablate/ablate.json", "label/label.json", "shift/shift.json",
                 "top-images/top-images.json", "sink/sink.json", "subconcepts/subconcepts.json"):
        assert (demo / "runs" / name).is_file(), name
    assert (demo / "site" / "index.html").is_file()
