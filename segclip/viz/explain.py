"""The ``explain`` figure: the image with the point, the class scores, the top units' maps, and the segmentation
before and after removing them."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from segclip.viz.overlay import overlay, shorten  # noqa: E402
from segclip.viz.plots import _save  # noqa: E402


def unit_title(score, limit: int = 28) -> str:
    """``pair 12:3 +0.0041 (cos 0.69)`` and the unit's words on a second line when known."""
    title = f"{score.unit.key} {score.contribution:+.4f} (cos {score.cosine:.2f})"
    return title + (f"\n{shorten(score.words, limit)}" if score.words else "")


def explain_figure(path: Path, image: np.ndarray, attribution, names: Sequence[str], before: np.ndarray,
                   after: np.ndarray | None, removed: int, region: np.ndarray | None = None,
                   columns: int = 4) -> Path:
    """Write the figure as a PNG.

    Args:
        path: output file.
        image: ``(H, W, 3)`` uint8 RGB.
        attribution: the :class:`~segclip.explain.attribution.Attribution` (its ``top`` with maps).
        names: class names.
        before, after: ``(H, W)`` labels before and after removing the top units (``after`` None: not shown).
        removed: how many units were removed.
        region: the explained region mask, or None for a pixel.
        columns: unit maps per row.

    Returns:
        ``path``.
    """
    units = [u for u in attribution.top if u.map is not None][:2 * columns]
    unit_rows = max(1, -(-len(units) // columns))
    figure = plt.figure(figsize=(3.2 * columns, 3.0 * (2 + unit_rows)), dpi=90)
    grid = figure.add_gridspec(2 + unit_rows, columns)
    ax = figure.add_subplot(grid[0, :2])
    ax.imshow(image)
    if region is None:
        x, y = attribution.where["pixel"]
        ax.plot([x], [y], marker="+", color="red", markersize=18, markeredgewidth=3)
    else:
        ax.contour(region.astype(float), levels=[0.5], colors="red", linewidths=2)
    ax.set_title(f"{attribution.method}: '{names[attribution.target]}' (margin {attribution.margin:+.4f} over "
                 f"'{names[attribution.runner_up]}')", fontsize=9)
    ax.axis("off")
    ax = figure.add_subplot(grid[0, 2:])
    order = np.argsort(attribution.scores)
    colours = ["tab:red" if c == attribution.target else "tab:gray" for c in order]
    ax.barh([shorten(names[c], 18) for c in order], attribution.scores[order], color=colours)
    ax.set_title("class logits there", fontsize=9)
    ax.tick_params(labelsize=8)
    for i, score in enumerate(units):
        ax = figure.add_subplot(grid[1 + i // columns, i % columns])
        limit = float(np.abs(score.map).max()) or 1.0
        ax.imshow(score.map, cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_title(unit_title(score), fontsize=8)
        ax.axis("off")
    for j, (labels, title) in enumerate([(before, "segmentation"),
                                         (after, f"after removing the top {removed} units")]):
        if labels is None:
            continue
        ax = figure.add_subplot(grid[1 + unit_rows, 2 * j:2 * j + 2])
        ax.imshow(np.asarray(overlay(image, labels, names)))
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    _save(figure, path)
    return Path(path)
