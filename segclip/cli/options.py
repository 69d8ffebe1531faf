"""Config dataclasses <-> command-line flags: one field, one flag, one ``--config`` YAML key.

Every field of a config (:func:`segclip.config.option`) becomes a flag ``--field-name`` (booleans: ``--name``
when off by default, ``--no-name`` when on), or a positional argument. Flags default to "not given", so that the
values a user gave on the command line, those of a YAML file and the dataclass defaults merge in that order of
precedence, and a required field is satisfied by either a flag or a YAML key.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path
from typing import Any

import yaml

from segclip.config import _is_optional, field_types
from segclip.errors import ConfigError


def flag_name(field: dataclasses.Field) -> str:
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def add_config_arguments(parser: argparse.ArgumentParser | Any, cls: type, title: str | None = None) -> None:
    """Add one argument per field of the config dataclass ``cls`` (all defaulting to "not given")."""
    group = parser.add_argument_group(title) if title else parser
    hints = field_types(cls)
    for field in dataclasses.fields(cls):
        meta, hint = field.metadata, hints[field.name]
        _, inner = _is_optional(hint)
        required = field.default is dataclasses.MISSING
        help_text = meta.get("help", "") + (" (required)" if required and not meta.get("positional") else "")
        help_text = help_text.replace("%", "%%")  # argparse formats help with %
        if meta.get("positional"):
            single = typing.get_origin(inner) is not tuple  # one value (e.g. demo-data DIR), not a list
            group.add_argument(field.name, nargs=None if single and required else "?" if single
                               else "+" if required else "*", default=argparse.SUPPRESS,
                               type=str, metavar=meta.get("metavar") or field.name.upper(), help=help_text)
        elif inner is bool:
            if field.default is True:
                group.add_argument("--no-" + field.name.replace("_", "-"), dest=field.name, action="store_false",
                                   default=argparse.SUPPRESS, help=help_text.replace("show", "hide", 1)
                                   if help_text.startswith("show") else "turn off: " + help_text)
            else:
                group.add_argument(flag_name(field), dest=field.name, action="store_true", default=argparse.SUPPRESS,
                                   help=help_text)
        else:
            is_list = typing.get_origin(inner) is tuple
            for alias in meta.get("aliases", ()):  # deprecated names: still accepted, with a warning
                group.add_argument(alias, dest=field.name, default=argparse.SUPPRESS, help=argparse.SUPPRESS,
                                   choices=None if is_list else meta.get("choices"),
                                   action=_deprecated(alias, flag_name(field)))
            group.add_argument(flag_name(field), dest=field.name, default=argparse.SUPPRESS,
                               choices=None if is_list else meta.get("choices"),
                               metavar=meta.get("metavar") or ("LIST" if is_list else "PATH" if inner is Path
                                                               else None),
                               help=help_text)


def _deprecated(old: str, new: str) -> type[argparse.Action]:
    class Deprecated(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            print(f"segclip: warning: {old} is deprecated; use {new}.", file=sys.stderr)
            setattr(namespace, self.dest, values)
    return Deprecated


def deprecated_names(cls: type) -> dict[str, str]:
    """``{old field name: field name}`` from the fields' deprecated flag aliases (``--registers`` -> ...)."""
    return {alias.lstrip("-").replace("-", "_"): field.name for field in dataclasses.fields(cls)
            for alias in field.metadata.get("aliases", ())}


def config_fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def read_yaml(path: Path) -> dict[str, Any]:
    """The mapping of a ``--config`` file, keys with ``-`` read as ``_``.

    Raises:
        ConfigError: unreadable, not YAML, or not a mapping.
    """
    try:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as err:
        raise ConfigError(f"Cannot read config file {path}: {err.strerror}.") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"Config file {path} is not valid YAML: {err}.") from err
    if not isinstance(values, dict):
        raise ConfigError(f"Config file {path} must hold a mapping of option names to values.")
    return {str(key).replace("-", "_"): value for key, value in values.items()}


def split_values(values: dict[str, Any], classes: list[type], source: str) -> list[dict[str, Any]]:
    """Distribute ``values`` over the configs ``classes`` by field name.

    Raises:
        ConfigError: a key that belongs to none of them.
    """
    parts: list[dict[str, Any]] = [{} for _ in classes]
    unknown = []
    for key, value in values.items():
        key = str(key).replace("-", "_")
        for part, cls in zip(parts, classes):
            renamed = deprecated_names(cls)
            if key in renamed:  # a deprecated name (a YAML key of an older version): the field it became
                print(f"segclip: warning: {source}: {key} is deprecated; use {renamed[key]}.", file=sys.stderr)
                key = renamed[key]
            if key in config_fields(cls):
                part[key] = value
                break
        else:
            unknown.append(key)
    if unknown:
        known = sorted(set().union(*(config_fields(c) for c in classes)))
        raise ConfigError(f"{source} has unknown options {sorted(unknown)}; known: {', '.join(known)}.")
    return parts
