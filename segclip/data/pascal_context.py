"""PASCAL Context's two class-name sets (the dataset's raw names and the authors' text names).

The data itself is a row of the one dataset table (``context59`` / ``context60`` in
:data:`segclip.data.benchmarks.SPECS`), read by :class:`~segclip.data.benchmarks.BenchmarkDataset`.
"""

from __future__ import annotations

from importlib import resources

from segclip.errors import ConfigError


def class_names(dataset: str = "pascal_context", num_classes: int = 59, names: str = "raw") -> list[str]:
    """Class names of a dataset, in label order.

    Args:
        dataset: dataset name; only ``"pascal_context"``.
        num_classes: 59 (no background) or 60 (``"background"`` first).
        names: ``"raw"`` (the dataset's names: aeroplane, pottedplant, tvmonitor) or ``"text"`` (the authors' text
            names: airplane, potted plant, tv monitor; the rest are equal).

    Returns:
        ``num_classes`` class names.

    Raises:
        ConfigError: unknown dataset, class count or name set.

    Example:
        >>> class_names(num_classes=60, names="text")[:2]
        ['background', 'airplane']
    """
    if dataset != "pascal_context" or num_classes not in (59, 60) or names not in ("raw", "text"):
        raise ConfigError(
            f"no class names for dataset={dataset!r}, num_classes={num_classes}, names={names!r}; "
            "expected dataset='pascal_context', num_classes 59 or 60, names 'raw' or 'text'"
        )
    file = f"{dataset}_{num_classes}{'_text' if names == 'text' else ''}.txt"
    text = resources.files("segclip.data").joinpath("classnames", file).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]
