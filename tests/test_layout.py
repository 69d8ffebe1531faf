"""The package's architecture: no import cycles, no upward imports (tools/check_imports.py)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def checker():
    spec = importlib.util.spec_from_file_location("check_imports", ROOT / "tools" / "check_imports.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_segclip_has_no_import_cycle_and_no_upward_import():
    assert checker().check() == []


def test_the_checker_finds_cycles_lazy_imports_and_upward_imports(tmp_path):
    package = tmp_path / "segclip"
    (package / "core").mkdir(parents=True)
    (package / "segment").mkdir()
    for folder in (package, package / "core", package / "segment"):
        (folder / "__init__.py").write_text("")
    (package / "core" / "a.py").write_text("def f():\n    from segclip.core import b\n")  # lazy: still counts
    (package / "core" / "b.py").write_text("from segclip.core.a import f\n")
    (package / "core" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                           "    from segclip.segment import run\n")
    (package / "segment" / "run.py").write_text("")
    problems = checker().check(package)
    assert "cycle: segclip.core.a -> segclip.core.b" in problems
    assert "layer: segclip.core.c imports segclip.segment.run, which sits above it" in problems
