"""Reading the one-entry-a-line text files users pass (class names, vocabularies)."""
from __future__ import annotations

from pathlib import Path

from segclip.errors import DataError


def read_lines(path: str | Path, what: str) -> list[str]:
    """The lines of a UTF-8 file, refusing unreadable files and empty lines.

    Args:
        path: the file.
        what: what the file is, for messages (e.g. ``"vocabulary file"``).

    Returns:
        The lines, without line endings.

    Raises:
        DataError: the file cannot be read as UTF-8, or has empty lines (their 1-based numbers are named).
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {what} {path}: {err}") from None
    empty = [i + 1 for i, line in enumerate(lines) if not line.strip()]
    if empty:
        raise DataError(f"{what} {path} has empty lines {empty[:10]}; remove them")
    return lines
