"""``segclip analyze shift`` (paper section 5.2): per-image concept scores from each concept's top pairs, by group,
and their drift against a reference group.

A concept's score on an image is |sum of r over its top pairs| / |embedding|; with 0/1 ground-truth columns (a
groups CSV's, or a dataset's concept labels such as Stanford Cars' body types), the point-biserial correlation of
score and truth says whether the pairs track the concept. Per concept, :mod:`segclip.analysis.drift` adds the
mean score per group with its interval, KS (scores) and MMD / domain-classifier (the pairs' summed contribution
vectors) tests of every group against the reference group, and ``drift_detected`` with method and threshold.
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
    DatasetOptions,
    Timer,
    analysis_provenance,
    check_out,
    read_image_set,
    run_accumulator,
)
from segclip.analysis.drift import (
    METHODS,
    DriftConfig,
    DriftReport,
    drift_report,
    group_means,
)
from segclip.analysis.stream import Mergeable
from segclip.analysis.units import (
    ConceptScores,
    ConceptVectors,
    concept_pairs,
    point_biserial,
    read_groups,
)
from segclip.config import option
from segclip.core.trace import Trace
from segclip.errors import ConfigError, DataError
from segclip.models.loading import ModelSource, resolve_model
from segclip.models.text import TEMPLATE_SETS, encode_classes
from segclip.viz.drift import drift_plot
from segclip.viz.plots import twin_plot


@dataclass(frozen=True, kw_only=True)
class ShiftConfig(DatasetOptions, AnalysisConfig):
    """Options of ``segclip analyze shift``."""

    images: Path | None = option(None, help="image folder (--dataset folder, with --groups).")
    groups: Path | None = option(None, help="with --images: CSV with columns image, group and optional 0/1 columns "
                                            "named after concepts.")
    group: str | None = option(None, help="with --dataset: the grouping key (year or body for stanford_cars; "
                                          "colour with --colours; class).")
    concepts: tuple[str, ...] = option(help="comma-separated concept words (a dataset's 0/1 concept labels of the "
                                            "same name, e.g. convertible, are their ground truth).")
    top: int = option(5, aliases=("--pairs",), help="top pairs per concept (default: 5).")
    templates: str = option("openai", choices=tuple(TEMPLATE_SETS),
                            help="templates of the concept texts (default: openai).")
    reference_group: str | None = option(None, help="reference group of the drift tests (default: the first group "
                                                    "in sorted order, e.g. the earliest model year).")
    drift_methods: tuple[str, ...] = option(METHODS, help="two-sample tests against the reference group: ks "
                                                          "(scores), mmd and classifier (pair-contribution vectors) "
                                                          "(default: all three).")
    drift_threshold: float = option(0.05, help="significance level of every drift test (drift_detected = p_value "
                                               "< threshold) (default: 0.05).")
    confidence: float = option(0.95, help="coverage of the per-group mean intervals (default: 0.95).")
    permutations: int = option(100, help="permutations of the MMD test (default: 100).")
    seed: int = option(0, help="seed of the MMD permutations and the classifier's folds (default: 0).")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not [c for c in self.concepts if c.strip()]:
            raise ConfigError("--concepts needs at least one word.")
        if self.top < 1:
            raise ConfigError(f"--top must be at least 1, got {self.top}.")
        self.drift()
        if self.dataset == "folder" and self.data_root is None:
            if self.images is None or self.groups is None:
                raise ConfigError("Give --images and --groups (a CSV: image, group), or --dataset with --data-root "
                                  "and --group.")
            if self.group is not None:
                raise ConfigError("--group names a dataset's grouping key; with --images the groups come from "
                                  "--groups.")
        else:
            self.dataset_config()
            if self.group is None or self.groups is not None:
                raise ConfigError(f"--dataset {self.dataset} takes --group KEY (e.g. year or body), not a --groups "
                                  "CSV.")

    def drift(self) -> DriftConfig:
        """The drift options (:class:`~segclip.analysis.drift.DriftConfig`, which validates them)."""
        return DriftConfig(reference=self.reference_group, drift_methods=self.drift_methods,
                           drift_threshold=self.drift_threshold, confidence=self.confidence,
                           permutations=self.permutations, seed=self.seed)


class ShiftAccumulator:
    """Concept scores and, for the MMD / classifier drift tests, the concept vectors, in one pass (mergeable)."""

    def __init__(self, scores: ConceptScores, vectors: ConceptVectors | None):
        self.scores, self.vectors = scores, vectors

    def parts(self) -> dict[str, Mergeable]:
        return {"scores": self.scores, **({"vectors": self.vectors} if self.vectors is not None else {})}

    def update(self, trace: Trace, first: int) -> None:
        for part in self.parts().values():
            part.update(trace, first)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{name}.{k}": v for name, part in self.parts().items() for k, v in part.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, part in self.parts().items():
            part.load_state_dict({k.removeprefix(f"{name}."): v for k, v in state.items() if k.startswith(f"{name}.")})

    def merge(self, other: ShiftAccumulator) -> None:
        for name, part in self.parts().items():
            part.merge(other.parts()[name])


@dataclass
class ShiftResult(AnalysisResult):
    """Mean score per concept and group, ground-truth proportions, point-biserial correlations, drift reports."""

    groups: list[str] | None = None
    scores_by_group: dict[str, list[float]] | None = None
    truth_by_group: dict[str, list[float]] | None = None
    drift: dict[str, DriftReport] | None = None
    drift_method: str = "ks"
    xlabel: str = "group"
    title: str = ""

    def plot(self, path: Path) -> bool:
        twin_plot(path, self.groups, self.scores_by_group, self.truth_by_group, xlabel=self.xlabel, title=self.title)
        return True

    def write(self, out: str | Path) -> list[Path]:
        """``shift.json`` (with the drift report), ``.csv``, ``.png`` and the drift plot ``shift-drift.png``."""
        written = super().write(out)
        reference = next(iter(self.drift.values())).reference
        path = drift_plot(Path(out) / f"{self.name}-drift.png", self.drift, method=self.drift_method,
                          xlabel=self.xlabel, title=f"{self.title}: drift vs {reference}")
        return written + [path]

    def summary(self) -> str:
        detected = {c: [t["group"] for t in r["tests"] if t["drift_detected"] and t["method"] == self.drift_method]
                    for c, r in self.results["drift"].items()}
        return (f"point-biserial: {json.dumps(self.results['point_biserial'])}\n"
                f"drift_detected ({self.drift_method}, vs {self.results['reference_group']}): {json.dumps(detected)}\n")


def _read(config: ShiftConfig, concepts: list[str]) -> tuple[list[Path], list[str], dict[str, list[float]], dict]:
    """(paths, group per image, {concept: 0/1 truth}, dataset description), validated before model work."""
    if config.dataset == "folder" and config.data_root is None:
        paths, groups, labels = read_groups(config.groups, config.images, concepts)
        return paths, groups, labels, {"dataset": "folder", "root": str(config.images), "groups": str(config.groups)}
    data = read_image_set(config)
    groups = data.groups(config.group)
    labels = {c: data.concepts[c].tolist() for c in concepts if c in data.concepts}
    unknown = [c for c in concepts if c not in data.concepts]
    if unknown and data.concepts:
        data.description["concepts_without_truth"] = unknown
    if not data.paths:
        raise DataError(f"{config.data_root} holds no images")
    return data.paths, groups, labels, {**data.description, "group": config.group}


def run_shift(config: ShiftConfig, model: ModelSource) -> ShiftResult:
    """Concept scores of every image, aggregated by group, correlated with ground truth where given, and tested
    for drift against the reference group.

    Args:
        config: the options (:class:`ShiftConfig`).
        model: the loaded model, or a loader called once the inputs are checked.

    Returns:
        The :class:`ShiftResult` (``results['drift']``: per concept the report of
        :func:`~segclip.analysis.drift.drift_report`).

    Raises:
        DataError: a malformed groups CSV, a missing image, a dataset without the ``--group`` key.
        ConfigError: a reference group that does not occur.
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
        ...                      out=folder / "out", drift_methods=("ks",), progress=False)
        >>> result = run_shift(config, load_model())
        >>> result.groups, result.results["drift"]["snow"]["tests"][0]["method"]
        (['0', '1'], 'ks')
    """
    timer = Timer()
    check_out(config.out, "shift", config.overwrite)
    concepts = [c.strip() for c in config.concepts if c.strip()]
    paths, groups, labels, description = _read(config, concepts)
    if config.limit is not None:
        paths, groups = paths[:config.limit], groups[:config.limit]
        labels = {k: v[:config.limit] for k, v in labels.items()}
    names = sorted(set(groups))
    drift = config.drift()
    if drift.reference is not None and drift.reference not in names:
        raise ConfigError(f"--reference-group '{drift.reference}' does not occur; groups are {names}.")
    model = resolve_model(model)
    texts = encode_classes(model, concepts, config.templates).to(model.device, model.dtype)
    pairs = concept_pairs(model.pool, texts, config.top)
    with_vectors = bool({"mmd", "classifier"} & set(drift.drift_methods))
    count = len(paths)
    accumulator = run_accumulator(
        config, model, paths,
        lambda m: ShiftAccumulator(ConceptScores(m.pool, pairs, count),
                                   ConceptVectors(m.pool, pairs, count) if with_vectors else None),
        key={"kind": "shift", "concepts": concepts, "pairs": config.top, "vectors": with_vectors},
        checkpoint=config.out / "shift.partial.safetensors", description="shift")
    scores = accumulator.scores.scores
    member = np.array(groups)
    by_group = {c: [scores[member == g, i].mean().item() for g in names] for i, c in enumerate(concepts)}
    truth = {c: [float(np.mean(np.array(labels[c])[member == g])) for g in names] for c in labels}
    correlation = {c: point_biserial(scores[:, concepts.index(c)], torch.tensor(labels[c])) for c in labels}
    tested = np.isin(member, [g for g in names if (member == g).sum() >= 2])  # two-sample tests need 2 per side
    reference = drift.reference or (names[0] if tested.any() else None)
    if reference is None or not tested[member == reference].all():
        raise DataError(f"the drift tests need at least 2 images in the reference group '{reference or names[0]}'"
                        f"; choose another --reference-group (groups: {names}).")
    reports = {}
    for i, c in enumerate(concepts):
        features = accumulator.vectors.vectors_per_image[:, i].double().numpy() if with_vectors else None
        tests = drift_report(scores[tested, i].numpy(), list(member[tested]), reference,
                             features=None if features is None else features[tested], methods=drift.drift_methods,
                             threshold=drift.drift_threshold, confidence=drift.confidence,
                             n_permutations=drift.permutations, seed=drift.seed).tests
        reports[c] = DriftReport(reference, group_means(scores[:, i].numpy(), groups, drift.confidence), tests)
    rows = [{"group": g, **{f"{c}_score": by_group[c][i] for c in concepts},
             **{f"{c}_proportion": truth[c][i] for c in truth}} for i, g in enumerate(names)]
    method = drift.drift_methods[0]
    results = {"concept_pairs": {c: pairs[i].tolist() for i, c in enumerate(concepts)},
               "point_biserial": correlation, "scores_by_group": by_group, "proportion_by_group": truth,
               "images": len(paths), "dataset": description,
               "reference_group": reference,
               "untested_groups": [g for g in names if (member == g).sum() < 2],
               "drift": {c: r.to_dict() for c, r in reports.items()},
               "drift_options": {"methods": list(drift.drift_methods), "threshold": drift.drift_threshold,
                                 "confidence": drift.confidence, "permutations": drift.permutations,
                                 "seed": drift.seed, "features": "summed contribution vector of each concept's "
                                                                 "pairs (mmd, classifier); the score (ks)"}}
    return ShiftResult("shift", results, rows, analysis_provenance(model, config, timer(), "shift"), groups=names,
                       scores_by_group=by_group, truth_by_group=truth, drift=reports, drift_method=method,
                       xlabel=config.group or "group", title=f"Concept scores by group ({model.info.name})")
