"""Plots of the analyses (matplotlib, Agg backend), each written atomically as PNG, SVG or PDF.

The format and resolution of every figure written inside a :func:`figure_options` block (the command line's
``--format png|svg|pdf`` and ``--dpi``) are that block's; outside one, PNG at 150 dpi. A figure's file name keeps
its stem and takes the format's suffix (:func:`figure_path`). Text is never clipped: figures are saved with a tight
bounding box that grows to hold every title, label and legend.
"""
from __future__ import annotations

import contextlib
import os
import textwrap
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

FORMATS = ("png", "svg", "pdf")
DEFAULT_DPI = 150
_OPTIONS: list[tuple[str, int]] = [("png", DEFAULT_DPI)]
matplotlib.rcParams["svg.fonttype"] = "none"  # SVG text stays text (editable, searchable)
matplotlib.rcParams["pdf.fonttype"] = 42  # TrueType in PDFs, as journals ask


@contextlib.contextmanager
def figure_options(format: str = "png", dpi: int | None = None) -> Iterator[None]:
    """Write every figure inside the block as ``format`` (png, svg or pdf) at ``dpi`` (raster parts and PNGs).

    Raises:
        ValueError: an unknown format or a dpi below 1.

    Example:
        >>> with figure_options("pdf", 300):
        ...     figure_path(Path("runs/shift.png")).name, figure_format()
        ('shift.pdf', ('pdf', 300))
    """
    if format not in FORMATS:
        raise ValueError(f"figure format must be one of {', '.join(FORMATS)}, got {format!r}")
    dpi = DEFAULT_DPI if dpi is None else int(dpi)
    if dpi < 1:
        raise ValueError(f"dpi must be at least 1, got {dpi}")
    _OPTIONS.append((format, dpi))
    try:
        yield
    finally:
        _OPTIONS.pop()


def figure_format() -> tuple[str, int]:
    """The ``(format, dpi)`` figures are written in now (:func:`figure_options`)."""
    return _OPTIONS[-1]


def figure_path(path: str | Path) -> Path:
    """``path`` with the suffix of the current figure format (``shift.png`` -> ``shift.pdf`` under pdf)."""
    return Path(path).with_suffix("." + figure_format()[0])


def wrap(text: str, width: int = 60) -> str:
    """``text`` broken into lines of at most ``width`` characters (long titles and labels stay inside the figure).

    Example:
        >>> print(wrap("pair 117:7 wall, box, ball, star, snow", 16))
        pair 117:7 wall,
        box, ball, star,
        snow
    """
    return "\n".join(textwrap.fill(line, width) for line in text.split("\n"))


def _save(figure: plt.Figure, path: Path) -> Path:
    """Write ``figure`` to :func:`figure_path` of ``path`` atomically; returns the path written."""
    path = figure_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    format_, dpi = figure_format()
    with warnings.catch_warnings():  # a legend outside the axes makes tight_layout warn; the bbox below holds it
        warnings.simplefilter("ignore")
        figure.tight_layout()
    figure.savefig(tmp, dpi=dpi, format=format_, bbox_inches="tight", pad_inches=0.1,
                   metadata={"Date": None} if format_ == "pdf" else None)
    plt.close(figure)
    tmp.replace(path)
    return path


def line_plot(path: Path, curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, xlabel: str,
              ylabel: str, title: str, baseline: float | None = None, logx: bool = False) -> Path:
    """Curves name -> (x, y), an optional horizontal baseline."""
    figure, axis = plt.subplots(figsize=(6, 4))
    for name, (x, y) in curves.items():
        axis.plot(x, y, marker="o", label=name)
    if baseline is not None:
        axis.axhline(baseline, color="k", linestyle="--", label="baseline")
    if logx:
        axis.set_xscale("log", base=2)
    axis.set(xlabel=xlabel, ylabel=ylabel, title=wrap(title))
    axis.legend()
    axis.grid(alpha=0.3)
    return _save(figure, path)


def bar_plot(path: Path, labels: Sequence[str], values: Sequence[float], *, xlabel: str, ylabel: str,
             title: str) -> Path:
    """One bar per label."""
    figure, axis = plt.subplots(figsize=(max(6, 0.25 * len(labels)), 4))
    axis.bar(range(len(values)), values)
    axis.set_xticks(range(len(labels)), labels, rotation=90 if len(labels) > 16 else 0, fontsize=7)
    axis.set(xlabel=xlabel, ylabel=ylabel, title=wrap(title))
    return _save(figure, path)


def histograms(path: Path, samples: Mapping[str, np.ndarray], *, xlabel: str, title: str) -> Path:
    """Overlaid density histograms, one per name."""
    figure, axis = plt.subplots(figsize=(6, 4))
    for name, values in samples.items():
        axis.hist(values, bins=40, alpha=0.5, density=True, label=f"{name} (n={len(values)})")
    axis.set(xlabel=xlabel, ylabel="density", title=wrap(title))
    axis.legend()
    return _save(figure, path)


def montage(path: Path, rows: Mapping[str, Sequence[np.ndarray]], *, tile: int = 96) -> Path:
    """A grid of images: one row per unit (its name on the left), images as (H, W, 3) uint8."""
    columns = max(len(images) for images in rows.values())
    figure, axes = plt.subplots(len(rows), columns, figsize=(columns * tile / 72, len(rows) * tile / 72),
                                squeeze=False)
    for r, (name, images) in enumerate(rows.items()):
        for c in range(columns):
            axis = axes[r][c]
            axis.set_xticks([])
            axis.set_yticks([])
            if c < len(images):
                axis.imshow(images[c])
            else:
                axis.axis("off")
        axes[r][0].set_ylabel(wrap(name, 18), fontsize=7)
    return _save(figure, path)


def twin_plot(path: Path, groups: Sequence[str], scores: Mapping[str, Sequence[float]],
              truths: Mapping[str, Sequence[float]], *, xlabel: str, title: str) -> Path:
    """Per concept, its mean score per group (left axis, solid) and ground-truth proportion (right, dashed)."""
    figure, axis = plt.subplots(figsize=(7, 4))
    other = axis.twinx() if truths else None
    for i, (name, values) in enumerate(scores.items()):
        colour = f"C{i}"
        axis.plot(groups, values, marker="o", color=colour, label=f"{name} score")
        if other is not None and name in truths:
            other.plot(groups, truths[name], linestyle="--", color=colour, label=f"{name} proportion")
    axis.set(xlabel=xlabel, ylabel="concept score", title=wrap(title))
    axis.tick_params(axis="x", rotation=45)
    if other is not None:
        other.set_ylabel("ground-truth proportion")
    figure.legend(loc="upper left", bbox_to_anchor=(1.02, 1), bbox_transform=axis.transAxes, fontsize=7)
    return _save(figure, path)
