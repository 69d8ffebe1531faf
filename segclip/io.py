"""Every file segclip writes or reads on a user's behalf: atomic writes, line files, provenance.

All artifacts and results are written through :func:`atomic_write_bytes` (a temporary file in the same folder,
then a rename), so a reader never sees a half-written file and an interrupted run leaves the previous file intact.
Files get the permissions the user's umask gives (safetensors' own ``save_file`` makes 0600 files, so tensors are
serialised to bytes and written here too). A failed write raises
:class:`~segclip.errors.OutputError` naming the path and the reason, whatever the file; a failed read of a user
file raises :class:`~segclip.errors.DataError`.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import platform
import subprocess
from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from segclip.errors import DataError, OutputError

log = logging.getLogger(__name__)

PACKAGES = ("segclip", "torch", "open_clip_torch", "lightning", "torchmetrics", "numpy", "opencv-python-headless",
            "Pillow", "scikit-learn", "wordfreq", "safetensors")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    Args:
        path: the destination; missing parent folders are created.
        data: the bytes.

    Returns:
        The path written.

    Raises:
        OutputError: the folder cannot be created or written (full disk, permissions, a file in the way).

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> atomic_write_bytes(folder / "a" / "b.txt", b"hi").read_bytes()
        b'hi'
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except OSError as err:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # the folder itself is missing or not a folder
            pass
        raise OutputError(f"Cannot write {path} ({err.strerror or err}); free some space or choose a writable "
                          "output location.") from err
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write_bytes` of UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(value: Any) -> Any:
    """Plain JSON values from dataclasses, paths, tensors, numpy values and NaN (-> None)."""
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    return value


def atomic_write_json(path: str | os.PathLike, value: Any) -> Path:
    """Write ``value`` (see :func:`to_jsonable`) as indented JSON, atomically."""
    return atomic_write_text(path, json.dumps(to_jsonable(value), indent=1) + "\n")


RESULT_SCHEMA = "segclip.result/2"  # the envelope of every result file; older layouts are refused, not misread


def write_result(path: str | os.PathLike, provenance: Mapping[str, Any], results: Any,
                 summary: str | None = None) -> Path:
    """Write a result file in the one envelope every command uses, atomically::

        {"schema": "segclip.result/2", "provenance": {...}, "results": {...}[, "summary": "what was printed"]}

    Example:
        >>> import tempfile
        >>> path = write_result(Path(tempfile.mkdtemp()) / "r.json", {"model": None}, {"miou": 1.0})
        >>> read_result(path)["results"]
        {'miou': 1.0}
    """
    envelope = {"schema": RESULT_SCHEMA, "provenance": provenance, "results": results}
    if summary is not None:
        envelope["summary"] = summary
    return atomic_write_json(path, envelope)


def read_result(path: str | os.PathLike) -> dict[str, Any]:
    """A result file written by :func:`write_result`.

    Raises:
        OutputError: the file is unreadable, or holds an older or foreign layout (the message says to rerun with
            ``--overwrite`` or to choose another folder).
    """
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise OutputError(f"{path} is unreadable ({err}); delete it or pass --overwrite to recompute it.") from err
    if not isinstance(value, dict) or value.get("schema") != RESULT_SCHEMA:
        found = value.get("schema", "no schema") if isinstance(value, dict) else "a list (segclip 0.1)"
        raise OutputError(f"{path} is a result file of an older segclip ({found}; this version reads "
                          f"{RESULT_SCHEMA}); pass --overwrite to recompute it, or choose another --out.")
    return value


def atomic_write_csv(path: str | os.PathLike, rows: list[Mapping[str, Any]]) -> Path:
    """Write rows (dicts sharing the first row's keys) as CSV, atomically; no rows -> an empty file."""
    import csv

    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows([{k: "" if v is None else v for k, v in row.items()} for row in rows])
    return atomic_write_text(path, buffer.getvalue())


def read_lines(path: str | os.PathLike, what: str, *, skip_blank: bool = False) -> list[str]:
    """The lines of a UTF-8 file (class names, vocabularies, queries): the one reader of every line file.

    Args:
        path: the file.
        what: what the file is, for messages (e.g. ``"vocabulary file"``).
        skip_blank: drop blank lines (and strip the others) instead of refusing them.

    Returns:
        The lines, without line endings.

    Raises:
        DataError: the file cannot be read as UTF-8, or has empty lines (their 1-based numbers are named).
    """
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()  # a byte-order mark dropped
    except OSError as err:
        raise DataError(f"Cannot read the {what} {path} ({err.strerror or err}).") from None
    except UnicodeDecodeError as err:
        raise DataError(f"The {what} {path} is not UTF-8 (byte {err.start}); save it as UTF-8.") from None
    if skip_blank:
        return [line.strip() for line in lines if line.strip()]
    empty = [i + 1 for i, line in enumerate(lines) if not line.strip()]
    if empty:
        raise DataError(f"The {what} {path} has empty lines {empty[:10]}; remove them.")
    return lines


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


def provenance(model_info: Any, config: Any, **extra: Any) -> dict[str, Any]:
    """The one provenance record of every result file (segmentation and analyses alike).

    Args:
        model_info: the model's :class:`~segclip.models.loading.ModelInfo` (or None for model-free commands).
        config: the command's config dataclass, recorded in full.
        extra: further entries (device, precision, timings).

    Returns:
        ``{"model", "weights_hash", "config", "package_versions", "git_revision", **extra}``.
    """
    info = to_jsonable(model_info) if model_info is not None else None
    return {"model": info, "weights_hash": None if info is None else info.get("weights_hash"),
            "config": to_jsonable(config), "package_versions": package_versions(), "git_revision": git_revision(),
            **to_jsonable(extra)}


PACKED_METADATA = "segclip"  # the one metadata key of the safetensors files segclip writes (a JSON object)


def tensors_checksum(tensors: Mapping[str, Any]) -> str:
    """sha256 over the tensors' names, dtypes, shapes and bytes, in name order (what :func:`read_tensors` checks)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        value = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}\n".encode())
        digest.update(value.view(-1).view(torch_uint8()).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def torch_uint8() -> Any:
    import torch

    return torch.uint8


def atomic_save_tensors(path: str | os.PathLike, tensors: Mapping[str, Any], metadata: Mapping[str, str]) -> Path:
    """Write a safetensors file atomically (tensors moved to the CPU, made contiguous), with a checksum of its
    contents in the metadata (``content_sha256``) that :func:`read_tensors` verifies.

    Raises:
        OutputError: the file cannot be written.
    """
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    # one metadata key: safetensors writes a map's keys in random order, and the same state must give the same bytes
    packed = json.dumps({**dict(metadata), "content_sha256": tensors_checksum(tensors)}, sort_keys=True)
    data = save(tensors, metadata={PACKED_METADATA: packed})
    return atomic_write_bytes(path, data)


def read_tensors(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, str]] | None:
    """(tensors, metadata) of a safetensors file, or None (with a warning) when it is unreadable or damaged."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            tensors, metadata = {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata() or {})
    except Exception as err:  # a damaged file fails in many ways
        log.warning("%s is unreadable (%s: %s); not using it", path, type(err).__name__, err)
        return None
    if PACKED_METADATA in metadata:
        try:
            metadata = json.loads(metadata[PACKED_METADATA])
        except ValueError:
            log.warning("%s is damaged (unreadable metadata); not using it", path)
            return None
    expected = metadata.pop("content_sha256", None)
    if expected is not None and tensors_checksum(tensors) != expected:
        log.warning("%s is damaged (its contents do not match their checksum); not using it", path)
        return None
    return tensors, metadata
