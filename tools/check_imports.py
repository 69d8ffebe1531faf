"""Fail if any import cycle exists between segclip's modules, or if a layer imports one above it.

Every ``import segclip...`` / ``from segclip... import`` statement counts, wherever it is (inside functions and
``if TYPE_CHECKING:`` blocks too): a cycle that only a lazy import hides is still a cycle. Layers, lowest first:

    foundation  segclip.errors, segclip.paths, segclip.config, segclip.io, segclip.process, segclip.runtime
    core        segclip.core        (the decomposition; imports only the foundation)
    models      segclip.models
    data, viz   segclip.data, segclip.viz
    methods     segclip.segment, segclip.analysis   (neither imports the other)
    explore     segclip.explore, segclip.explain
    cli         segclip.cli         (nothing imports it)

Usage: ``python tools/check_imports.py`` (CI runs it through tests/test_layout.py); exit code 1 on a violation.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "segclip"
LAYERS = [
    {"segclip.errors", "segclip.paths", "segclip.config", "segclip.io", "segclip.process", "segclip.runtime"},
    {"segclip.core"},
    {"segclip.models"},
    {"segclip.data", "segclip.viz"},
    {"segclip.segment", "segclip.analysis"},
    {"segclip.explore", "segclip.explain"},
    {"segclip.cli"},
]
INDEPENDENT = [("segclip.segment", "segclip.analysis")]


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """segclip modules imported by a file (``from a import b`` counts ``a.b`` when that is a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            if name.startswith("segclip"):
                while name not in modules and "." in name:
                    name = name.rsplit(".", 1)[0]
                if name in modules:
                    found.add(name)
    return found


def layer(module: str) -> int | None:
    for index, members in enumerate(LAYERS):
        if any(module == m or module.startswith(m + ".") for m in members):
            return index
    return None


def package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def check(root: Path = ROOT) -> list[str]:
    """Every layer violation and import cycle among the modules of the package at ``root``."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    modules = set(files)
    graph = {m: imports(p, modules) - {m} for m, p in files.items()}
    problems = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            a, b = layer(module), layer(target)
            if a is not None and b is not None and b > a:
                problems.append(f"layer: {module} imports {target}, which sits above it")
            for x, y in INDEPENDENT:
                if {package(module), package(target)} == {x, y}:
                    problems.append(f"layer: {module} imports {target}; {x} and {y} must stay independent")
    # cycles between modules (Tarjan's strongly connected components); a package's __init__ re-exporting its
    # own modules is not a cycle of concern, so edges from a package to its own submodules are left out
    edges = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in graph.items()}
    index, low, stack, on_stack, counter = {}, {}, [], set(), [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                problems.append("cycle: " + " -> ".join(sorted(component)))

    sys.setrecursionlimit(10000)
    for node in sorted(edges):
        if node not in index:
            visit(node)
    return problems


def main() -> int:
    problems = check()
    for problem in problems:
        print(problem)
    print(f"{len(problems)} problem(s) in the imports of segclip/")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
