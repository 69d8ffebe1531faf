"""``segclip analyze shift`` (paper section 5.2): per-image concept scores from each concept's top pairs, by group.

A concept's score on an image is |sum of r over its top pairs| / |embedding|; with 0/1 ground-truth columns, the
point-biserial correlation of score and truth says whether the pairs track the concept.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from segclip.analysis.common import (
    AnalysisConfig,
    AnalysisResult,
    Timer,
    analysis_protocol,
    check_out,
)
from segclip.analysis.stream import run_pass
from segclip.analysis.units import (
    ConceptScores,
    concept_pairs,
    point_biserial,
    read_groups,
)
from segclip.config import option
from segclip.errors import ConfigError
from segclip.models.loading import ModelSource, resolve_model
from segclip.models.text import encode_classes
from segclip.viz.plots import twin_plot


@dataclass(frozen=True, kw_only=True)
class ShiftConfig(AnalysisConfig):
    """Options of ``segclip analyze shift``."""

    images: Path = option(help="image folder.")
    groups: Path = option(help="CSV with columns image, group and optional 0/1 columns named after concepts.")
    concepts: tuple[str, ...] = option(help="comma-separated concept words.")
    pairs: int = option(5, help="top pairs per concept (default: 5).")
    templates: str = option("openai", choices=("openai", "maskclip", "single"),
                            help="templates of the concept texts (default: openai).")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not [c for c in self.concepts if c.strip()]:
            raise ConfigError("--concepts needs at least one word.")
        if self.pairs < 1:
            raise ConfigError(f"--pairs must be at least 1, got {self.pairs}.")


@dataclass
class ShiftResult(AnalysisResult):
    """Mean score per concept and group, ground-truth proportions, and point-biserial correlations."""

    groups: list[str] | None = None
    scores_by_group: dict[str, list[float]] | None = None
    truth_by_group: dict[str, list[float]] | None = None
    title: str = ""

    def plot(self, path: Path) -> bool:
        twin_plot(path, self.groups, self.scores_by_group, self.truth_by_group, xlabel="group", title=self.title)
        return True

    def summary(self) -> str:
        return f"point-biserial: {json.dumps(self.results['point_biserial'])}\n"


def run_shift(config: ShiftConfig, model: ModelSource) -> ShiftResult:
    """Concept scores of every image, aggregated by group, correlated with ground truth where given.

    Args:
        config: the options (:class:`ShiftConfig`).
        model: the loaded model, or a loader called once the inputs are checked.

    Returns:
        The :class:`ShiftResult`.

    Raises:
        DataError: a malformed groups CSV or a missing image.
        OutputError: an earlier result in ``out``.

    Example:
        >>> import tempfile
        >>> from segclip.data.synthetic import write_scene_folder
        >>> from segclip.models import load_model
        >>> folder = Path(tempfile.mkdtemp())
        >>> paths = write_scene_folder(folder / "scenes", 4, seed=4)
        >>> _ = (folder / "groups.csv").write_text("image,group\\n" + "".join(f"{p.name},{i % 2}\\n"
        ...                                                                   for i, p in enumerate(paths)))
        >>> config = ShiftConfig(images=folder / "scenes", groups=folder / "groups.csv", concepts=("snow",),
        ...                      out=folder / "out", progress=False)
        >>> run_shift(config, load_model()).groups
        ['0', '1']
    """
    timer = Timer()
    check_out(config.out, "shift", config.overwrite)
    concepts = [c.strip() for c in config.concepts if c.strip()]
    paths, groups, labels = read_groups(config.groups, config.images, concepts)
    model = resolve_model(model)
    if config.limit is not None:
        paths, groups = paths[:config.limit], groups[:config.limit]
        labels = {k: v[:config.limit] for k, v in labels.items()}
    texts = encode_classes(model, concepts, config.templates).to(model.device, model.dtype)
    pairs = concept_pairs(model.pool, texts, config.pairs)
    scores = ConceptScores(model.pool, pairs, len(paths))
    checkpoint = config.out / "shift.partial.safetensors"
    run_pass(model, paths, scores, key={"kind": "shift", "concepts": concepts, "pairs": config.pairs},
             checkpoint=checkpoint, batch_size=config.batch_size, chunk_size=config.chunk_size,
             description="shift", progress=config.progress)
    names = sorted(set(groups))
    member = np.array(groups)
    by_group = {c: [scores.scores[member == g, i].mean().item() for g in names] for i, c in enumerate(concepts)}
    truth = {c: [float(np.mean(np.array(labels[c])[member == g])) for g in names] for c in labels}
    correlation = {c: point_biserial(scores.scores[:, concepts.index(c)], torch.tensor(labels[c])) for c in labels}
    rows = [{"group": g, **{f"{c}_score": by_group[c][i] for c in concepts},
             **{f"{c}_proportion": truth[c][i] for c in truth}} for i, g in enumerate(names)]
    results = {"concept_pairs": {c: pairs[i].tolist() for i, c in enumerate(concepts)},
               "point_biserial": correlation, "scores_by_group": by_group, "proportion_by_group": truth,
               "images": len(paths)}
    checkpoint.unlink(missing_ok=True)
    return ShiftResult("shift", results, rows, analysis_protocol(model, config, timer(), "shift"), groups=names,
                       scores_by_group=by_group, truth_by_group=truth,
                       title=f"Concept scores by group ({model.info.name})")
