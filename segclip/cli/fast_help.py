"""``segclip --help`` without importing torch: the parser's help structure, recorded once into ``help.json``.

The command line builds its flags from the commands' config dataclasses, whose modules import torch, Lightning
and open_clip (seconds). Help needs none of that, so :func:`record` runs the same parser construction
(:func:`segclip.cli.build_parser`) against a recorder, and ``help.json`` keeps every command's description,
argument groups and arguments; :func:`help_parser` rebuilds an ``argparse`` parser from it, formatted for the
terminal as usual. ``tests/test_cli.py`` checks that the file equals a fresh recording (regenerate it with
``python -m segclip.cli.fast_help``), so help and the real parser cannot drift apart.
"""
from __future__ import annotations

import argparse
import json
from importlib import resources
from pathlib import Path
from typing import Any

HELP_FILE = "help.json"


class Recorder:
    """Stands in for an ``argparse`` parser, group or sub-parser action and records what is added to it."""

    def __init__(self, **kwargs: Any):
        self.kwargs = {k: v for k, v in kwargs.items() if k in ("prog", "description", "help", "metavar", "dest",
                                                                 "title", "required")}
        self.items: list[dict[str, Any]] = []

    def add_argument_group(self, title: str | None = None, description: str | None = None) -> Recorder:
        group = Recorder(title=title)
        self.items.append({"group": title, "recorder": group})
        return group

    def add_argument(self, *flags: str, **kwargs: Any) -> None:
        if kwargs.get("help") == argparse.SUPPRESS:  # deprecated aliases: not shown
            return
        keep = {k: v for k, v in kwargs.items() if k in ("help", "metavar", "choices", "nargs", "dest")}
        if isinstance(kwargs.get("action"), str):
            keep["action"] = kwargs["action"]
        if keep.get("choices") is not None:
            keep["choices"] = list(keep["choices"])
        self.items.append({"flags": list(flags), **keep})

    def add_subparsers(self, **kwargs: Any) -> Recorder:
        sub = Recorder(**kwargs)
        self.items.append({"subparsers": sub})
        return sub

    def add_parser(self, name: str, **kwargs: Any) -> Recorder:
        parser = Recorder(**kwargs)
        self.items.append({"parser": name, "help": kwargs.get("help"), "recorder": parser})
        return parser

    def set_defaults(self, **kwargs: Any) -> None:
        pass

    def to_json(self) -> dict[str, Any]:
        items = []
        for item in self.items:
            item = dict(item)
            for key in ("recorder", "subparsers"):
                if key in item:
                    item[key] = item[key].to_json()
            items.append(item)
        return {"kwargs": self.kwargs, "items": items}


def record() -> dict[str, Any]:
    """The help structure of the real parser (imports every command's config: slow)."""
    from segclip.cli import build_parser

    root = Recorder()
    build_parser(lambda **kwargs: _root(root, kwargs))
    return root.to_json()


def _root(root: Recorder, kwargs: dict[str, Any]) -> Recorder:
    root.kwargs = {k: v for k, v in kwargs.items() if k in ("prog", "description")}
    return root


def _replay(target: Any, spec: dict[str, Any]) -> None:
    for item in spec["items"]:
        if "group" in item:
            _replay(target.add_argument_group(item["group"]), item["recorder"])
        elif "subparsers" in item:
            sub = item["subparsers"]
            action = target.add_subparsers(**{k: v for k, v in sub["kwargs"].items()})
            for child in sub["items"]:
                parser = action.add_parser(child["parser"], **child["recorder"]["kwargs"])
                _replay(parser, child["recorder"])
        else:
            flags = item.pop("flags")
            item = dict(item)
            if not flags[0].startswith("-") and "dest" in item:
                item.pop("dest")
            target.add_argument(*flags, **item)


def help_parser() -> argparse.ArgumentParser:
    """An ``argparse`` parser with the real one's help, built from ``help.json`` (no torch import)."""
    spec = json.loads(resources.files("segclip.cli").joinpath(HELP_FILE).read_text(encoding="utf-8"))
    parser = argparse.ArgumentParser(**spec["kwargs"])
    _replay(parser, spec)
    return parser


def wants_help(argv: list[str]) -> bool:
    """Whether ``argv`` only asks for help (``-h`` / ``--help`` anywhere, or nothing at all)."""
    return not argv or "-h" in argv or "--help" in argv


if __name__ == "__main__":
    path = Path(__file__).with_name(HELP_FILE)
    path.write_text(json.dumps(record(), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {path}")
