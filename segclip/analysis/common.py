"""What every analysis shares: its options, its statistics, its labelled images, and how its results are written.

Each analysis is ``XConfig -> run_x(config, model) -> XResult -> result.write(out)``. A result writes
``<name>.json`` (``{"protocol": provenance, "results": numbers}``), ``<name>.csv`` (its rows) and ``<name>.png``
(its plot) into the output folder, atomically; the folder also holds the run's checkpoints, so an interrupted
analysis resumes when run again.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from segclip.analysis.evaluation import (
    Condition,
    ConditionAccuracy,
    read_labelled_folder,
)
from segclip.analysis.statistics import Statistics, collect_statistics
from segclip.analysis.stream import run_pass
from segclip.config import check_positive, option
from segclip.data.images import list_images
from segclip.errors import ConfigError, OutputError
from segclip.io import atomic_write_csv, atomic_write_json, provenance
from segclip.models.loading import CLIPResNet
from segclip.models.text import encode_classes

log = logging.getLogger(__name__)

UNITS = ("pairs", "neurons", "heads")


@dataclass(frozen=True, kw_only=True)
class AnalysisConfig:
    """Options every analysis shares."""

    out: Path = option(help="output folder (numbers, plot, checkpoints).")
    limit: int | None = option(None, help="use at most N images of each folder.")
    statistics: Path | None = option(None, help="statistics artifact to reuse (e.g. from `segclip calibrate`); "
                                                "default: computed (resumably) into OUT/statistics.safetensors.")
    top_k: int = option(50, help="length of the statistics' top lists (default: 50).")
    batch_size: int = option(8, help="images per backbone pass (default: 8).")
    chunk_size: int = option(64, help="images between checkpoints (default: 64).")
    overwrite: bool = option(False, help="replace the results of an earlier run in --out.")
    progress: bool = option(True, help="show progress bars.")

    def __post_init__(self) -> None:
        check_positive(self, "limit", "top_k", "batch_size", "chunk_size")


@dataclass(frozen=True, kw_only=True)
class LabelledConfig(AnalysisConfig):
    """Options of the analyses that measure zero-shot accuracy on a labelled folder."""

    images: Path = option(help="labelled folder: one subfolder per class.")
    class_names: Path | None = option(None, help="file: one line per class, 'folder' or 'folder<TAB>text name'.")
    calibration_images: Path | None = option(None, help="folder for the statistics (default: the labelled images).")
    templates: str = option("openai", choices=("openai", "maskclip", "single"),
                            help="text templates of the class names (default: openai).")


def parse_units(units: tuple[str, ...], allowed: tuple[str, ...] = UNITS, option_name: str = "--units"
                ) -> list[str]:
    """Unit kinds in order, each once.

    Raises:
        ConfigError: empty, or a kind not in ``allowed``.
    """
    kinds = list(dict.fromkeys(u.strip() for u in units if u.strip()))
    unknown = [u for u in kinds if u not in allowed]
    if unknown or not kinds:
        raise ConfigError(f"{option_name} got '{','.join(units)}'" + (f" (unknown: {', '.join(unknown)})" if unknown
                                                                      else "")
                          + f"; use a comma-separated subset of {', '.join(allowed)}.")
    return kinds


def check_out(out: Path, name: str, overwrite: bool) -> None:
    """Create ``out`` and refuse to replace an earlier run's ``<name>.json`` unless ``overwrite``.

    Raises:
        OutputError: the folder cannot be created, or holds results and ``overwrite`` is False.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"Cannot create the output folder {out} ({err.strerror}); choose a writable --out.") \
            from err
    if (out / f"{name}.json").exists() and not overwrite:
        raise OutputError(f"{out / name}.json holds the results of an earlier run; pass --overwrite to replace "
                          "them, or choose another --out.")


def statistics_for(config: AnalysisConfig, model: CLIPResNet, paths: list[Path]) -> Statistics:
    """The statistics of ``paths``: reused from ``config.statistics`` or ``OUT/statistics.safetensors``, else
    computed resumably into the latter.

    Raises:
        ConfigError: ``config.statistics`` belongs to another model.
    """
    path = Path(config.statistics) if config.statistics else config.out / "statistics.safetensors"
    if path.is_file():
        stats = Statistics.load(path)
        same_model = (stats.metadata.get("model"), stats.metadata.get("weights_hash")) == \
            (model.info.name, model.info.weights_hash)
        if config.statistics or (same_model and stats.metadata.get("images") == [p.name for p in paths]):
            if not same_model:
                raise ConfigError(f"--statistics {path} was computed for another model "
                                  f"({stats.metadata.get('model')}); compute it for {model.info.name}.")
            return stats
    checkpoint = config.out / "statistics.partial.safetensors"
    stats = collect_statistics(model, paths, top_k=config.top_k, batch_size=config.batch_size,
                               chunk_size=config.chunk_size, checkpoint=checkpoint, progress=config.progress)
    stats.save(path)
    checkpoint.unlink(missing_ok=True)
    return stats


@dataclass
class LabelledSet:
    """Labelled images for zero-shot accuracy.

    Attributes:
        paths: image files; labels: (I,) class indices; names: the classes' text names.
        calibration: images for the statistics; texts: (C, d) float64 class embeddings on the model's device.
    """

    paths: list[Path]
    labels: torch.Tensor
    names: list[str]
    calibration: list[Path]
    texts: torch.Tensor


def labelled_set(config: LabelledConfig, model: CLIPResNet) -> LabelledSet:
    """Read the labelled folder (a seeded random subset of ``limit`` images) and encode its class names."""
    paths, labels, names = read_labelled_folder(config.images, config.class_names)
    if config.limit is not None:
        keep = torch.randperm(len(paths), generator=torch.Generator().manual_seed(0))[:config.limit].sort().values
        paths, labels = [paths[i] for i in keep.tolist()], labels[keep]
    calibration = list_images(config.calibration_images)[:config.limit] if config.calibration_images else paths
    texts = encode_classes(model, names, config.templates).to(model.device, torch.float64)
    return LabelledSet(paths, labels, names, calibration, texts)


def evaluate(config: AnalysisConfig, model: CLIPResNet, name: str, conditions: dict[str, Condition],
             labelled: LabelledSet) -> dict[str, float]:
    """Zero-shot accuracy (%) of every condition in one resumable pass over the labelled images."""
    accumulator = ConditionAccuracy(conditions, labelled.texts, labelled.labels)
    checkpoint = config.out / f"{name}.partial.safetensors"
    run_pass(model, labelled.paths, accumulator, key={"kind": name, "conditions": list(conditions)},
             checkpoint=checkpoint, batch_size=config.batch_size, chunk_size=config.chunk_size,
             description=name, progress=config.progress)
    checkpoint.unlink(missing_ok=True)
    return accumulator.accuracies()


def pc_source(samples: str, stats: Statistics) -> str:
    """Which samples principal components came from, for result files."""
    return (f"all {stats.count} images" if samples == "all" else
            f"top {min(stats.top_k, stats.count)} images by contribution norm (paper A.2)")


@dataclass
class AnalysisResult:
    """What every analysis returns: its numbers, its table rows and its provenance; subclasses add typed fields.

    Attributes:
        name: the analysis (``reconstruct``, ``ablate``, ...): the stem of its files.
        results: the numbers written to ``<name>.json`` (JSON-able).
        rows: the rows of ``<name>.csv``.
        protocol: provenance (:func:`segclip.io.provenance`): model, weights hash, config, versions, git revision.
    """

    name: str
    results: dict[str, Any]
    rows: list[dict[str, Any]]
    protocol: dict[str, Any] = field(default_factory=dict)

    def plot(self, path: Path) -> bool:
        """Draw the result's figure at ``path``; False when it has none."""
        return False

    def summary(self) -> str:
        """What the command line prints on stdout."""
        return ""

    def write(self, out: str | Path) -> list[Path]:
        """Write ``<name>.json``, ``<name>.csv`` and, if there is one, ``<name>.png`` into ``out``.

        Returns:
            The files written.

        Raises:
            OutputError: a file cannot be written.
        """
        out = Path(out)
        written = [atomic_write_json(out / f"{self.name}.json", {"protocol": self.protocol, "results": self.results}),
                   atomic_write_csv(out / f"{self.name}.csv", self.rows)]
        if self.plot(out / f"{self.name}.png"):
            written.append(out / f"{self.name}.png")
        return written


class Timer:
    """Seconds since construction (for results' ``seconds``)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return round(time.perf_counter() - self.start, 3)


def analysis_protocol(model: CLIPResNet, config: Any, seconds: float, name: str) -> dict[str, Any]:
    """The provenance of an analysis result."""
    return provenance(model.info, config, analysis=name, device=str(model.device), seconds=seconds)
