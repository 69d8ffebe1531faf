"""The drift plot of ``shift``: per concept its mean score per group with confidence intervals, groups whose
tests detect drift against the reference group marked."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from segclip.viz.plots import _save, plt, wrap


def drift_plot(path: Path, reports: Mapping[str, Any], *, method: str = "ks", xlabel: str = "group",
               title: str = "concept score by group") -> Path:
    """Mean score per group with its interval, one line per concept; a filled marker where ``method`` detects
    drift against the reference group (hollow: no drift; a square: the reference).

    Args:
        path: the figure to write (atomically; its suffix follows :func:`~segclip.viz.plots.figure_options`).
        reports: concept -> its :class:`~segclip.analysis.drift.DriftReport` (read through its ``reference``,
            ``means`` and ``tests``; viz sits below analysis and does not import it).
        method: which test's ``drift_detected`` marks the groups (``ks``, ``mmd`` or ``classifier``).
        xlabel, title: axis label and title.

    Raises:
        ValueError: no reports.
    """
    if not reports:
        raise ValueError("no drift reports to plot")
    figure, axis = plt.subplots(figsize=(7, 4))
    for i, (concept, report) in enumerate(reports.items()):
        colour = f"C{i}"
        groups = [m.group for m in report.means]
        means = [m.mean for m in report.means]
        errors = [[m.mean - m.ci_low for m in report.means], [m.ci_high - m.mean for m in report.means]]
        axis.errorbar(groups, means, yerr=errors, color=colour, capsize=3, label=concept)
        detected = {t.group: t.drift_detected for t in report.tests if t.method == method}
        for x, m in enumerate(report.means):
            if m.group == report.reference:
                axis.plot(x, m.mean, "s", color=colour)
            else:
                axis.plot(x, m.mean, "o", color=colour, fillstyle="full" if detected.get(m.group) else "none")
    confidence = next(iter(reports.values())).means[0].confidence
    axis.set(xlabel=xlabel, ylabel=f"mean concept score ({confidence:.0%} interval)",
             title=wrap(f"{title} (filled: {method} drift vs reference)", 64))
    axis.tick_params(axis="x", rotation=45)
    axis.legend(fontsize=7)
    axis.grid(alpha=0.3)
    return _save(figure, path)
