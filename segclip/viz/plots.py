"""Plots of the analyses (matplotlib, Agg backend), each written atomically to a PNG."""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(figure: plt.Figure, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    figure.tight_layout()
    figure.savefig(tmp, dpi=120)
    plt.close(figure)
    tmp.replace(path)


def line_plot(path: Path, curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, xlabel: str,
              ylabel: str, title: str, baseline: float | None = None, logx: bool = False) -> None:
    """Curves name -> (x, y), an optional horizontal baseline."""
    figure, axis = plt.subplots(figsize=(6, 4))
    for name, (x, y) in curves.items():
        axis.plot(x, y, marker="o", label=name)
    if baseline is not None:
        axis.axhline(baseline, color="k", linestyle="--", label="baseline")
    if logx:
        axis.set_xscale("log", base=2)
    axis.set(xlabel=xlabel, ylabel=ylabel, title=title)
    axis.legend()
    axis.grid(alpha=0.3)
    _save(figure, path)


def bar_plot(path: Path, labels: Sequence[str], values: Sequence[float], *, xlabel: str, ylabel: str,
             title: str) -> None:
    """One bar per label."""
    figure, axis = plt.subplots(figsize=(max(6, 0.25 * len(labels)), 4))
    axis.bar(range(len(values)), values)
    axis.set_xticks(range(len(labels)), labels, rotation=90 if len(labels) > 16 else 0, fontsize=7)
    axis.set(xlabel=xlabel, ylabel=ylabel, title=title)
    _save(figure, path)


def histograms(path: Path, samples: Mapping[str, np.ndarray], *, xlabel: str, title: str) -> None:
    """Overlaid density histograms, one per name."""
    figure, axis = plt.subplots(figsize=(6, 4))
    for name, values in samples.items():
        axis.hist(values, bins=40, alpha=0.5, density=True, label=f"{name} (n={len(values)})")
    axis.set(xlabel=xlabel, ylabel="density", title=title)
    axis.legend()
    _save(figure, path)


def montage(path: Path, rows: Mapping[str, Sequence[np.ndarray]], *, tile: int = 96) -> None:
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
        axes[r][0].set_ylabel(name, fontsize=7)
    _save(figure, path)


def twin_plot(path: Path, groups: Sequence[str], scores: Mapping[str, Sequence[float]],
              truths: Mapping[str, Sequence[float]], *, xlabel: str, title: str) -> None:
    """Per concept, its mean score per group (left axis, solid) and ground-truth proportion (right, dashed)."""
    figure, axis = plt.subplots(figsize=(7, 4))
    other = axis.twinx() if truths else None
    for i, (name, values) in enumerate(scores.items()):
        colour = f"C{i}"
        axis.plot(groups, values, marker="o", color=colour, label=f"{name} score")
        if other is not None and name in truths:
            other.plot(groups, truths[name], linestyle="--", color=colour, label=f"{name} proportion")
    axis.set(xlabel=xlabel, ylabel="concept score", title=title)
    axis.tick_params(axis="x", rotation=45)
    if other is not None:
        other.set_ylabel("ground-truth proportion")
    figure.legend(loc="upper left", fontsize=7)
    _save(figure, path)
