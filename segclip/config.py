"""Typed configs: one frozen dataclass drives each command (nanoGPT style).

A config field is declared with :func:`option`, which carries its command-line help; the command line builds its
flags from the fields (``segclip.cli``), and a ``--config`` YAML file fills the same fields, so a YAML key and a
flag are one and the same thing. :func:`build_config` turns a mapping of raw values (from YAML or flags) into the
dataclass, converting types and naming the key at fault. Every config derives from :class:`Config`, whose
``__post_init__`` checks each field's value against its declared type (:func:`validate_fields`), so a config built
from Python is held to the same rules as one built from flags or YAML.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers
import os
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from segclip.errors import ConfigError

T = TypeVar("T")


def option(default: Any = dataclasses.MISSING, *, help: str, choices: tuple[str, ...] | None = None,
           positional: bool = False, metavar: str | None = None, flag: str | None = None,
           aliases: tuple[str, ...] = ()) -> Any:
    """A config field with its command-line help.

    Args:
        default: the default; leave it out for a required field. Lists and tuples are stored as tuples.
        help: the ``--help`` text.
        choices: allowed values (strings).
        positional: a positional argument on the command line instead of ``--name``.
        metavar: the placeholder shown in ``--help``.
        flag: the flag's name when it is not the field's (``--name`` with '-' for '_').
        aliases: deprecated flag names that still work, with a warning naming the new one.

    Returns:
        A :func:`dataclasses.field`.
    """
    metadata = {"help": help, "choices": choices, "positional": positional, "metavar": metavar, "flag": flag,
                "aliases": tuple(aliases)}
    if isinstance(default, list):
        default = tuple(default)
    return dataclasses.field(default=default, metadata=metadata)


def _is_optional(hint: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return True, args[0]
    return False, hint


def field_types(cls: type) -> dict[str, Any]:
    """``{field name: resolved type hint}`` of a config dataclass."""
    return typing.get_type_hints(cls)


def convert(name: str, hint: Any, value: Any) -> Any:
    """Convert a raw value (a YAML value or a command-line string) to a field's type.

    Raises:
        ConfigError: the value does not fit (the message names the field).
    """
    optional, inner = _is_optional(hint)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{_field_label(name)} needs a value, got None.")
    origin = typing.get_origin(inner)
    try:
        if origin is tuple:
            item = typing.get_args(inner)[0]
            if not isinstance(value, (str, list, tuple)):
                raise TypeError(value)  # a mapping or a number is not a list (list() would take a dict's keys)
            items = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
            return tuple(convert(name, item, v) for v in items)
        if inner is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if inner is Path:
            return Path(str(value)).expanduser()
        if inner is int:
            if isinstance(value, float) and not value.is_integer() or isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if inner is float:
            return float(value)
        if inner is str:
            if isinstance(value, (dict, list)):
                raise ValueError(value)
            return str(value)
    except (TypeError, ValueError):
        kinds = {int: "an integer", float: "a number", bool: "true or false", str: "a string", Path: "a path"}
        kind = "a list or a comma-separated string" if origin is tuple else kinds.get(inner, f"a {inner}")
        raise ConfigError(f"{_field_label(name)} must be {kind}, got {value!r}.") from None
    return value


def _field_label(name: str) -> str:
    return f"'{name}' (--{name.replace('_', '-')})"


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def check_value(name: str, hint: Any, value: Any, choices: tuple[str, ...] | None = None) -> Any:
    """A field's value checked against its type hint; returns it (converted where unambiguous).

    Conversions: a list or a comma-separated string (``"a,b"`` -> ``("a", "b")``) for a tuple (a tuple of paths:
    one path), a string or path-like for a ``Path``, an int for a float. Everything else that does not fit is refused, never coerced: a string is not
    split into letters, ``None`` is not a name, a float or a string is not an integer, NaN and infinities are not
    numbers, an empty item is not a list entry.

    Args:
        name: the field's name (for messages).
        hint: its resolved type hint (``int``, ``float``, ``str``, ``bool``, ``Path``, ``tuple[X, ...]``, ``X | None``).
        value: the value given.
        choices: the allowed strings (of the value, or of each item of a tuple).

    Returns:
        The value, or its converted form.

    Raises:
        ConfigError: the value does not fit (the message names the field, the flag and what was given).

    Example:
        >>> check_value("classes", tuple[str, ...], "sky, ring")
        ('sky', 'ring')
        >>> check_value("batch_size", int, "8")
        Traceback (most recent call last):
        ...
        segclip.errors.ConfigError: 'batch_size' (--batch-size) must be an integer, got '8' (str).
    """
    optional, inner = _is_optional(hint)
    label = _field_label(name)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{label} needs a value, got None.")
    origin = typing.get_origin(inner)
    if origin is tuple:
        args = typing.get_args(inner)
        if isinstance(value, (str, os.PathLike)) and args and args[0] is Path:
            items: list[Any] = [value]  # one path (a file name may hold a comma)
        elif isinstance(value, str):
            items = [v.strip() for v in value.split(",")]
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            raise ConfigError(f"{label} must be a list or a comma-separated string, got {_describe(value)}.")
        item_hint = args[0] if len(args) == 2 and args[1] is Ellipsis else None
        if item_hint is None:  # a fixed-length tuple: not used by the configs; leave it to the config's own checks
            return tuple(items)
        checked = []
        for item in items:
            if isinstance(item, str) and not item.strip():
                raise ConfigError(f"{label} has a blank entry in {value!r}; list non-blank values separated by "
                                  "commas.")
            try:
                if isinstance(value, str):  # entries of a comma-separated string are read as a flag's would be
                    item = convert(name, item_hint, item)
                checked.append(check_value(name, item_hint, item, choices))
            except ConfigError as err:
                raise ConfigError(f"{label} entries: {str(err).removeprefix(label + ' ')}") from None
        return tuple(checked)
    if inner is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{label} must be True or False, got {_describe(value)}.")
    if inner is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ConfigError(f"{label} must be an integer, got {_describe(value)}.")
        return int(value)
    if inner is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ConfigError(f"{label} must be a number, got {_describe(value)}.")
        if not math.isfinite(value):
            raise ConfigError(f"{label} must be a finite number, got {value!r}.")
        return float(value)
    if inner is str:
        if not isinstance(value, str):
            raise ConfigError(f"{label} must be a string, got {_describe(value)}.")
        if choices and value not in choices:
            raise ConfigError(f"{label} must be one of {', '.join(choices)}, got {value!r}.")
        return value
    if inner is Path:
        if isinstance(value, Path):
            return value
        if isinstance(value, (str, os.PathLike)) and str(os.fspath(value)).strip():
            return Path(value)
        raise ConfigError(f"{label} must be a path, got {_describe(value)}.")
    return value


def validate_fields(config: Any) -> None:
    """Check every field of a config dataclass against its type (:func:`check_value`), in place.

    Converted values (a tuple from a list or a comma-separated string, a ``Path`` from a string, a float from an
    int) replace the given ones, also on frozen dataclasses.

    Raises:
        ConfigError: the first field whose value does not fit, named.
    """
    hints = field_types(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        checked = check_value(f.name, hints[f.name], value, f.metadata.get("choices"))
        if checked is not value:
            object.__setattr__(config, f.name, checked)


def build_config(cls: type[T], values: Mapping[str, Any], *, source: str = "options") -> T:
    """Build a config dataclass from raw values, converting each to its field's type.

    Args:
        cls: the config dataclass.
        values: ``{field name: value}`` (``-`` in names is read as ``_``); missing fields take their defaults.
        source: where the values came from, for messages (``"config file x.yaml"``).

    Returns:
        The config (its ``__post_init__`` validation has run).

    Raises:
        ConfigError: an unknown key, a missing required field, or a value of the wrong type.

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass(frozen=True)
        ... class Demo:
        ...     size: int = option(8, help="a size")
        >>> build_config(Demo, {"size": "12"})
        Demo(size=12)
    """
    hints = field_types(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"Unknown {'option' if len(unknown) == 1 else 'options'} {', '.join(unknown)} in {source}; "
                          f"known: {', '.join(sorted(fields))}.")
    kwargs = {name: convert(name, hints[name], value) for name, value in values.items()}
    missing = [name for name, f in fields.items() if name not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        flags = ", ".join(fields[m].metadata.get("flag") or "--" + m.replace("_", "-") for m in missing)
        raise ConfigError(f"Missing required {'option' if len(missing) == 1 else 'options'} {flags} (a flag, or a "
                          "key in --config).")
    return cls(**kwargs)


def check_positive(config: Any, *names: str, allow_zero: bool = False) -> None:
    """Raise :class:`ConfigError` unless each named field of ``config`` is None or >= 1 (>= 0 with ``allow_zero``)."""
    for name in names:
        value = getattr(config, name)
        if value is not None and value < (0 if allow_zero else 1):
            raise ConfigError(f"--{name.replace('_', '-')} must be at least {0 if allow_zero else 1}, got {value}.")


_PROGRESS = [False]  # library calls are quiet; the command line turns bars on (unless --no-progress)


def progress_enabled() -> bool:
    """Whether progress bars may show: only inside :func:`progress_bars` ``(True)``, which the command line enters
    (library calls stay quiet unless they do the same)."""
    return _PROGRESS[-1]


@contextlib.contextmanager
def progress_bars(enabled: bool) -> Iterator[None]:
    """Turn every segclip progress bar on or off inside the block (text encoding, passes, OMP, Lightning).

    Example:
        >>> with progress_bars(False):
        ...     progress_enabled()
        False
    """
    _PROGRESS.append(enabled)
    try:
        yield
    finally:
        _PROGRESS.pop()


def _short(value: Any, depth: int = 0) -> str:
    """A bounded repr: arrays and tensors as their shape and dtype, long containers and strings cut."""
    shape = getattr(value, "shape", None)
    if shape is not None and hasattr(value, "dtype") and not isinstance(value, (int, float)):
        kind = type(value).__name__
        return f"{kind}({', '.join(str(s) for s in tuple(shape))}) {str(value.dtype).removeprefix('torch.')}"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return short_repr(value) if depth < 2 else f"{type(value).__name__}(...)"
    if isinstance(value, dict):
        items = list(value.items())
        shown = ", ".join(f"{k!r}: {_short(v, depth + 1)}" for k, v in items[:4])
        return "{" + shown + (f", ... ({len(items)} keys)" if len(items) > 4 else "") + "}"
    if isinstance(value, (list, tuple)):
        shown = ", ".join(_short(v, depth + 1) for v in value[:4])
        if isinstance(value, tuple) and len(value) == 1:
            shown += ","
        open_, close = ("(", ")") if isinstance(value, tuple) else ("[", "]")
        return open_ + shown + (f", ... ({len(value)} items)" if len(value) > 4 else "") + close
    if isinstance(value, Path):
        return repr(str(value))
    text = repr(value)
    return text if len(text) <= 80 else text[:76] + "...'"


def short_repr(obj: Any) -> str:
    """A repr of a dataclass that fits a line or two: tensors and arrays as shapes, long lists and dicts cut, fields
    left at their defaults omitted.

    Example:
        >>> import numpy as np
        >>> @dataclasses.dataclass
        ... class Demo(ShortRepr):
        ...     maps: Any
        ...     names: tuple = ()
        ...     k: int = 3
        >>> Demo(np.zeros((2, 5), np.float32), tuple("abcdefg"))
        Demo(maps=ndarray(2, 5) float32, names=('a', 'b', 'c', 'd', ... (7 items)))
    """
    parts = []
    for field in dataclasses.fields(obj):
        if not field.repr:
            continue
        value = getattr(obj, field.name, None)
        if field.default is not dataclasses.MISSING:
            try:
                if value == field.default:
                    continue
            except (TypeError, ValueError, RuntimeError):  # arrays and tensors compare elementwise
                pass
        parts.append(f"{field.name}={_short(value)}")
    return f"{type(obj).__name__}({', '.join(parts)})"


class ShortRepr:
    """Mix-in for dataclasses (configs, results, traces): :func:`short_repr` as their repr, in subclasses too (set
    before ``@dataclass`` runs, which keeps a ``__repr__`` the class already has)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__repr__" not in cls.__dict__:
            cls.__repr__ = short_repr  # type: ignore[method-assign]


class Config(ShortRepr):
    """Base of every command config: its ``__post_init__`` validates each field by type (:func:`validate_fields`).

    A config dataclass derives from it and, when it defines its own ``__post_init__``, calls
    ``super().__post_init__()`` first, so that its range checks see values of the right type.

    Example:
        >>> @dataclasses.dataclass(frozen=True, kw_only=True)
        ... class Demo(Config):
        ...     classes: tuple[str, ...] = option(("a",), help="class names")
        ...     rate: float = option(0.5, help="a rate")
        >>> Demo(classes="sky,ring").classes
        ('sky', 'ring')
        >>> Demo(rate=float("nan"))
        Traceback (most recent call last):
        ...
        segclip.errors.ConfigError: 'rate' (--rate) must be a finite number, got nan.
    """

    def __post_init__(self) -> None:
        validate_fields(self)


FIGURE_FORMATS = ("png", "svg", "pdf")


def figure_format_option() -> Any:
    """The ``--format`` field of a command that writes figures."""
    return option("png", choices=FIGURE_FORMATS, flag="--format", metavar="{png,svg,pdf}",
                  help="format of the figures written: png (default), svg or pdf (vector plots; label maps stay PNG).")


def dpi_option() -> Any:
    """The ``--dpi`` field of a command that writes figures."""
    return option(150, help="resolution of the figures in dots per inch (PNG, and images inside SVG/PDF; default: "
                            "150).")


def check_figure_options(config: Any) -> None:
    """Raise :class:`ConfigError` unless ``config.figure_format`` is a known format and ``config.dpi`` >= 1."""
    if config.figure_format not in FIGURE_FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FIGURE_FORMATS)}, got {config.figure_format!r}.")
    if isinstance(config.dpi, bool) or not isinstance(config.dpi, int) or config.dpi < 1:
        raise ConfigError(f"--dpi must be a whole number of at least 1, got {config.dpi!r}.")
