"""What every analysis shares: its options, its statistics, its labelled images, and how its results are written.

Each analysis is ``XConfig -> run_x(config, model) -> XResult -> result.write(out)``. A result writes
``<name>.json`` (the envelope ``{"schema", "provenance", "results"}``), ``<name>.csv`` (its rows) and ``<name>.png``
(its plot) into the output folder, atomically; the folder also holds the run's checkpoints, so an interrupted
analysis resumes when run again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from segclip.analysis.datasets import DATASETS, DatasetConfig, read_folder
from segclip.analysis.distributed import (
    ProcessConfig,
    remove_checkpoints,
    run_distributed_pass,
)
from segclip.analysis.evaluation import Condition, ConditionAccuracy
from segclip.analysis.statistics import (
    RunningStatistics,
    Statistics,
    collect_statistics,
    pass_key,
)
from segclip.analysis.stream import Mergeable, run_pass
from segclip.config import (
    Config,
    ShortRepr,
    check_figure_options,
    check_positive,
    dpi_option,
    figure_format_option,
    option,
    progress_enabled,
)
from segclip.core.trace import HookSpec
from segclip.data.classification import ImageSet, duplicate_names
from segclip.data.images import list_images
from segclip.errors import ConfigError, OutputError
from segclip.io import atomic_write_csv, provenance, to_jsonable, write_result
from segclip.models.loading import CLIPResNet
from segclip.models.text import TEMPLATE_SETS
from segclip.models.zero_shot import TIE_RULE, encode_classification_names
from segclip.process import ProcessOptions, broadcast_from_primary, is_primary
from segclip.viz.plots import figure_path

log = logging.getLogger(__name__)

UNITS = ("pairs", "neurons", "heads")


@dataclass(frozen=True, kw_only=True)
class AnalysisConfig(ProcessConfig):
    """Options every analysis shares."""

    out: Path = option(help="output folder (numbers, plot, checkpoints).")
    limit: int | None = option(None, help="use the first N images of each folder (sorted by name), as --limit does "
                                          "everywhere.")
    sample: int | None = option(None, help="use a random subset of N labelled images instead (seeded by --seed), "
                                           "so that a small run still sees every class.")
    seed: int = option(0, help="seed of random choices: the --sample subset (and, where a command has them, "
                               "permutations and folds) (default: 0).")
    statistics: Path | None = option(None, help="statistics artifact to reuse (e.g. from `segclip calibrate`); "
                                                "default: computed (resumably) into OUT/statistics.safetensors.")
    top_k: int = option(50, help="length of the statistics' top lists (default: 50).")
    batch_size: int = option(8, help="images per backbone pass (default: 8).")
    overwrite: bool = option(False, help="replace the results of an earlier run in --out.")
    progress: bool = option(True, help="show progress bars.")
    figure_format: str = figure_format_option()
    dpi: int = dpi_option()

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, "limit", "sample", "top_k", "batch_size")
        check_figure_options(self)


@dataclass(frozen=True, kw_only=True)
class DatasetOptions(Config):
    """The ``--dataset`` / ``--data-root`` / ``--split`` / ``--colours`` flags of a command that reads an image set.

    ``--dataset folder`` (the default) reads ``--images`` (or ``--data-root``) as today; ``imagenet`` and
    ``stanford_cars`` read ``--data-root`` (:mod:`segclip.analysis.datasets`).
    """

    dataset: str = option("folder", choices=DATASETS,
                          help="dataset layout: folder (--images: class subfolders or plain images; default), "
                               "imagenet (--data-root holding val/<wnid>/ or the flat ILSVRC2012 files + devkit), "
                               "stanford_cars (--data-root in torchvision's layout: devkit/, cars_train/).")
    data_root: Path | None = option(None, help="the dataset folder of --dataset imagenet or stanford_cars.")
    split: str = option("train", choices=("train", "test"),
                        help="Stanford Cars split (default: train, as the paper).")
    colours: Path | None = option(None, help="Stanford Cars colour labels: a CSV with columns image, colour "
                                             "(adds the 'colour' group and one 0/1 concept per colour).")

    def dataset_config(self) -> DatasetConfig | None:
        """The dataset to read (None: a plain folder without --images or --data-root).

        Raises:
            ConfigError: ``--images`` with another dataset than folder, both ``--images`` and ``--data-root``,
                a dataset without ``--data-root``, ``--colours`` without Stanford Cars.
        """
        images = getattr(self, "images", None)
        if self.dataset != "folder" and images is not None:
            raise ConfigError(f"--dataset {self.dataset} reads --data-root; --images is for --dataset folder.")
        if images is not None and self.data_root is not None:
            raise ConfigError("Give --images or --data-root for --dataset folder, not both.")
        root = self.data_root if self.data_root is not None else images
        if root is None and self.dataset == "folder":
            if self.colours is not None:
                raise ConfigError("--colours applies to --dataset stanford_cars only.")
            return None
        return DatasetConfig(dataset=self.dataset, data_root=root, split=self.split, colours=self.colours,
                             class_names=getattr(self, "class_names", None))


def read_image_set(config: DatasetOptions, labelled: bool = False, what: str = "images") -> ImageSet:
    """The image set of a command, validated before any model work: a plain folder as today (``labelled``: class
    subfolders, :func:`~segclip.analysis.evaluation.read_labelled_folder`; else the folder's images,
    :func:`~segclip.data.images.list_images`), or the dataset of ``--dataset`` on ``--data-root``.

    Raises:
        ConfigError: no image set given. DataError: the reader's errors (missing folders, devkit files, images).
    """
    dataset = config.dataset_config()
    if dataset is None:
        raise ConfigError(f"Give --images (a folder of {what}) or --dataset with --data-root.")
    if dataset.dataset == "folder":
        return read_folder(dataset.data_root, dataset.class_names, labelled=labelled)
    data = dataset.read()
    if labelled and data.labels is None:
        raise ConfigError(f"--dataset {dataset.dataset} has no class labels for zero-shot accuracy.")
    return data


def subset(data: ImageSet, keep: torch.Tensor) -> ImageSet:
    """The images ``keep`` ((k,) long, sorted) of an image set, with their labels, attributes and concepts."""
    index = keep.tolist()
    return ImageSet([data.paths[i] for i in index], None if data.labels is None else data.labels[keep],
                    data.class_names, {k: [v[i] for i in index] for k, v in data.attributes.items()},
                    {k: v[keep] for k, v in data.concepts.items()}, {**data.description, "used_images": len(index)})


@dataclass(frozen=True, kw_only=True)
class LabelledConfig(DatasetOptions, AnalysisConfig):
    """Options of the analyses that measure zero-shot accuracy on a labelled image set."""

    images: Path | None = option(None, help="labelled folder: one subfolder per class (--dataset folder).")
    class_names: Path | None = option(None, help="file: one line per class, 'folder' or 'folder<TAB>text name'.")
    calibration_images: Path | None = option(None, help="folder for the statistics (default: the labelled images).")
    templates: str = option("openai", choices=tuple(TEMPLATE_SETS),
                            help="text templates of the class names (default: openai).")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dataset_config() is None:
            raise ConfigError("Give --images (a labelled folder: one subfolder per class) or --dataset with "
                              "--data-root.")


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


def distributed(config: Any) -> bool:
    """Whether the passes of ``config`` run on Lightning (several processes or DataLoader workers); otherwise
    they take the one-process :func:`~segclip.analysis.stream.run_pass` path."""
    options = ProcessOptions(devices=config.devices, num_nodes=config.num_nodes, num_workers=config.num_workers)
    return options.world_size > 1 or options.num_workers > 0


def run_accumulator(config: Any, model: CLIPResNet, paths: list[Path], make: Callable[[CLIPResNet], Mergeable], *,
                    key: dict[str, Any], checkpoint: Path, description: str, hooks: HookSpec | None = None
                    ) -> Mergeable:
    """Feed every image of ``paths`` to an accumulator, resumably: :func:`~segclip.analysis.stream.run_pass` in
    one process without workers (today's path, bit for bit), else
    :func:`~segclip.analysis.distributed.run_distributed_pass` on ``--devices x --num-nodes`` processes with
    ``--num-workers`` workers; its per-process checkpoints are removed at the end.

    Returns:
        The accumulator over all images; under DDP rank 0's merged state, sent to every process (so that every
        process computes the same results; only rank 0 writes them).
    """
    if not distributed(config):
        accumulator = make(model)
        run_pass(model, paths, accumulator, key=key, checkpoint=checkpoint, batch_size=config.batch_size,
                 checkpoint_every=config.checkpoint_every, hooks=hooks, description=description,
                 progress=config.progress)
        checkpoint.unlink(missing_ok=True)
        return accumulator
    result = run_distributed_pass(model, paths, make, key=key, devices=config.devices,
                                  num_nodes=config.num_nodes, num_workers=config.num_workers,
                                  batch_size=config.batch_size, checkpoint_every=config.checkpoint_every,
                                  checkpoint=checkpoint, hooks=hooks, progress=config.progress and progress_enabled())
    state = broadcast_from_primary({k: v.detach().cpu() for k, v in result.accumulator.state_dict().items()}
                         if result.is_primary else None)
    if not result.is_primary:
        result.accumulator.load_state_dict(state)
    remove_checkpoints(checkpoint, result.world_size)
    return result.accumulator


def collect_statistics_for(config: Any, model: CLIPResNet, paths: list[Path], checkpoint: Path, *,
                           register_variant: str = "activations") -> Statistics:
    """The statistics of ``paths`` over one pass (:func:`run_accumulator`): equal to
    :func:`~segclip.analysis.statistics.collect_statistics` (one process: the same call, whose ``checkpoint`` the
    caller removes once the result is saved; several: image lists and signs exactly, float64 sums to round-off)."""
    if not distributed(config):
        stats = collect_statistics(model, paths, top_k=config.top_k, register_variant=register_variant,
                                   batch_size=config.batch_size, checkpoint_every=config.checkpoint_every,
                                   checkpoint=checkpoint, progress=config.progress)
        return stats
    running = run_accumulator(
        config, model, paths,
        lambda m: RunningStatistics(m.pool, top_k=config.top_k, register_variant=register_variant),
        key=pass_key(config.top_k, True, register_variant), checkpoint=checkpoint, description="statistics")
    stats = running.finalise()
    from segclip.analysis.statistics import RunningTopDeviations, a2_checkpoint_path, a2_key, add_a2  # issue 20

    mean = stats.mean_scalars  # the same on every process (run_accumulator sends rank 0's state)
    add_a2(stats, run_accumulator(config, model, paths,
                                  lambda m: RunningTopDeviations(m.pool, mean, top_k=config.top_k),
                                  key=a2_key(config.top_k, mean), checkpoint=a2_checkpoint_path(checkpoint),
                                  description="statistics (A.2 pass)"))
    stats.metadata = {"model": model.info.name, "weights_hash": model.info.weights_hash,
                      "image_folder": str(Path(paths[0]).parent.resolve()) if paths else "",
                      "images": [Path(p).name for p in paths], "register_variant": register_variant}
    return stats


def statistics_for(config: AnalysisConfig, model: CLIPResNet, paths: list[Path]) -> Statistics:
    """The statistics of ``paths``: reused from ``config.statistics`` or ``OUT/statistics.safetensors``, else
    computed resumably into the latter (on ``--devices`` processes; rank 0 writes the file).

    Raises:
        ConfigError: ``config.statistics`` belongs to another model.
    """
    path = Path(config.statistics) if config.statistics else config.out / "statistics.safetensors"
    if path.is_file() and (config.statistics or not config.overwrite):  # --overwrite recomputes our own
        stats = Statistics.load(path)
        same_model = (stats.metadata.get("model"), stats.metadata.get("weights_hash")) == \
            (model.info.name, model.info.weights_hash)
        if config.statistics or (same_model and stats.metadata.get("images") == [p.name for p in paths]):
            if not same_model:
                raise ConfigError(f"--statistics {path} was computed for another model "
                                  f"({stats.metadata.get('model')}); compute it for {model.info.name}.")
            return stats
    checkpoint = config.out / "statistics.partial.safetensors"
    stats = collect_statistics_for(config, model, paths, checkpoint)
    if is_primary():
        stats.save(path)
    checkpoint.unlink(missing_ok=True)
    return stats


@dataclass
class LabelledSet:
    """Labelled images for zero-shot accuracy.

    Attributes:
        paths: image files; labels: (I,) class indices; names: the classes' text names (may repeat: identical
            texts, an exact tie goes to the lowest class index).
        calibration: images for the statistics; texts: (C, d) float64 class embeddings on the model's device.
        description: what was read (dataset, root, counts, duplicate text names, tie rule), for result files.
    """

    paths: list[Path]
    labels: torch.Tensor
    names: list[str]
    calibration: list[Path]
    texts: torch.Tensor
    description: dict[str, Any] = field(default_factory=dict)


def read_labelled(config: LabelledConfig) -> tuple[ImageSet, list[Path]]:
    """The labelled images (the first ``limit``, or a random subset of ``sample`` seeded by ``seed``) and the
    statistics' images, read and validated before any model work."""
    data = read_image_set(config, labelled=True, what="labelled images")
    if config.limit is not None:
        data = subset(data, torch.arange(min(config.limit, len(data.paths))))
    if config.sample is not None:
        keep = torch.randperm(len(data.paths), generator=torch.Generator().manual_seed(config.seed))[:config.sample]
        data = subset(data, keep.sort().values)
    calibration = list_images(config.calibration_images)[:config.limit] if config.calibration_images else data.paths
    return data, calibration


def labelled_set(config: LabelledConfig, model: CLIPResNet, read: tuple[ImageSet, list[Path]] | None = None
                 ) -> LabelledSet:
    """The labelled images (:func:`read_labelled`, unless already ``read``) with their class embeddings
    (:func:`~segclip.models.zero_shot.encode_classification_names`: repeated names share one text)."""
    data, calibration = read if read is not None else read_labelled(config)
    texts = encode_classification_names(model, data.class_names, config.templates).to(model.device, torch.float64)
    duplicates = duplicate_names(data.class_names)
    description = {**data.description, "duplicate_text_names": duplicates,
                   **({"tie_rule": TIE_RULE} if duplicates else {})}
    return LabelledSet(data.paths, data.labels, data.class_names, calibration, texts, description)


CHECKPOINT_FREE = ("out", "overwrite", "progress", "devices", "num_nodes", "num_workers", "checkpoint_every",
                   "figure_format", "dpi")


def pass_inputs(config: Any, *tensors: torch.Tensor) -> str:
    """sha256 of everything besides the images that decides a pass's numbers: every option that changes them (the
    config without :data:`CHECKPOINT_FREE`), the contents of a given ``--statistics`` file, and ``tensors`` (class
    texts, labels). A checkpoint of other inputs is not resumed."""
    digest = hashlib.sha256(json.dumps({k: v for k, v in to_jsonable(config).items() if k not in CHECKPOINT_FREE},
                                       sort_keys=True, default=str).encode())
    statistics = getattr(config, "statistics", None)
    if statistics is not None and Path(statistics).is_file():
        with open(statistics, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 24), b""):
                digest.update(block)
    for tensor in tensors:
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def evaluate(config: AnalysisConfig, model: CLIPResNet, name: str, conditions: dict[str, Condition],
             labelled: LabelledSet) -> dict[str, float]:
    """Zero-shot accuracy (%) of every condition in one resumable pass over the labelled images."""
    accumulator = run_accumulator(config, model, labelled.paths,
                                  lambda m: ConditionAccuracy(conditions, labelled.texts, labelled.labels),
                                  key={"kind": name, "conditions": list(conditions),
                                       "inputs": pass_inputs(config, labelled.texts, labelled.labels)},
                                  checkpoint=config.out / f"{name}.partial.safetensors", description=name)
    return accumulator.accuracies()


def pc_source(samples: str, stats: Statistics) -> str:
    """Which samples principal components came from, for result files."""
    return (f"all {stats.count} images" if samples == "all" else
            f"top {min(stats.top_k, stats.count)} images by distance of the contribution from its mean over all "
            "images, not re-centred, majority-vote orientation (paper A.2, the authors' svd_over_dataset.py)")


@dataclass
class AnalysisResult(ShortRepr):
    """What every analysis returns: its numbers, its table rows and its provenance; subclasses add typed fields.

    Attributes:
        name: the analysis (``reconstruct``, ``ablate``, ...): the stem of its files.
        results: the numbers written to ``<name>.json`` (JSON-able).
        rows: the rows of ``<name>.csv``.
        provenance: :func:`segclip.io.provenance`: model, weights hash, config, versions, git revision.
    """

    name: str
    results: dict[str, Any]
    rows: list[dict[str, Any]]
    provenance: dict[str, Any] = field(default_factory=dict)

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
        written = [write_result(out / f"{self.name}.json", self.provenance, self.results, self.summary()),
                   atomic_write_csv(out / f"{self.name}.csv", self.rows)]
        if self.plot(out / f"{self.name}.png"):  # the suffix follows segclip.viz.plots.figure_options
            written.append(figure_path(out / f"{self.name}.png"))
        return written


class Timer:
    """Seconds since construction (for results' ``seconds``)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return round(time.perf_counter() - self.start, 3)


def analysis_provenance(model: CLIPResNet, config: Any, seconds: float, name: str) -> dict[str, Any]:
    """The provenance of an analysis result."""
    return provenance(model.info, config, analysis=name, device=str(model.device), seconds=seconds)
