"""``segclip eval`` and ``compare`` as library calls (config -> run -> result -> write): one dataset of the table
(:data:`segclip.data.benchmarks.SPECS`: the synthetic benchmark, PASCAL Context, or any suite dataset) under one
protocol of :mod:`segclip.data.protocols` (default: the paper's, scaled to the model's crop), through the one
evaluation path (:func:`segclip.segment.evaluate.evaluate_dataset`) that ``benchmark`` uses too.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from segclip.config import check_positive, option
from segclip.data.benchmarks import SPECS, BenchmarkDataset, canonical_name, dataset_root
from segclip.data.protocols import PROTOCOL_NAMES, benchmark_protocol, protocols_of
from segclip.errors import ConfigError
from segclip.models.loading import ModelSource, resolve_model
from segclip.process import is_primary, make_trainer, quiet_lightning
from segclip.segment.evaluate import DatasetRun, DatasetScores, evaluate_dataset, finished_result
from segclip.segment.methods import METHODS
from segclip.segment.options import RunOptions, check_method_list
from segclip.segment.results import check_writable

EVAL_DATASETS = ("synthetic", "pascal_context", *(n for n in SPECS if n != "synthetic"))


@dataclass(frozen=True, kw_only=True)
class DatasetOptions(RunOptions):
    """Dataset options shared by ``eval`` and ``compare``."""

    dataset: str = option("synthetic", choices=EVAL_DATASETS,
                          help="synthetic (generated into the cache on first use; default), pascal_context (59 or 60 "
                               "classes, --num-classes), or any dataset of `segclip benchmark` (docs: README, "
                               "Benchmark suite).")
    data_root: Path | None = option(None, help="data root laid out as mmsegmentation's data/ (PASCAL Context: the "
                                               "folder holding VOCdevkit, or VOCdevkit or VOC2010 itself; "
                                               "synthetic: where to generate it).")
    protocol: str | None = option(None, choices=PROTOCOL_NAMES,
                                  help="the dataset's protocol (segclip/data/protocols.py): paper (short side 512, "
                                       "crop 384, stride 192, logit scale 40 for RN50x16, scaled by crop / 384 for "
                                       "other models; the default for synthetic and PASCAL Context) or sclip (the "
                                       "field's suite protocol; the default for the other datasets).")
    num_classes: int = option(59, help="PASCAL Context 59 (background ignored; default) or 60.")
    class_set: str = option("raw", choices=("raw", "text"), aliases=("--class-names",),
                            help="PASCAL Context class names: raw (aeroplane, pottedplant, tvmonitor; default) or the "
                                 "authors' text names (airplane, potted plant, tv monitor).")
    per_class: bool = option(False, help="print per-class IoU columns.")
    limit: int | None = option(None, help="evaluate the first N images only.")
    out: Path | None = option(None, help="write results.json and results.csv here; per-image partial results make an "
                                         "interrupted run resumable (run the same command again).")
    save_predictions: bool = option(False, help="write predicted labels to OUT/predictions/<method>/<id>.png "
                                                "(0-based class indices).")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, "limit")
        benchmark_protocol(self.dataset_name, self.protocol_name)  # a dataset without that protocol fails here
        if self.num_classes not in (59, 60):
            raise ConfigError(f"--num-classes must be 59 or 60, got {self.num_classes}.")
        if self.save_predictions and self.out is None:
            raise ConfigError("--save-predictions needs --out (the predictions go to OUT/predictions/).")

    @property
    def dataset_name(self) -> str:
        """The dataset table's row: ``pascal_context`` is ``context59`` or ``context60``."""
        if self.dataset == "pascal_context":
            return f"context{self.num_classes}"
        return canonical_name(self.dataset)

    @property
    def protocol_name(self) -> str:
        """The protocol asked for, or the dataset's default (paper where it exists, else sclip)."""
        return self.protocol or ("paper" if "paper" in protocols_of(self.dataset_name) else "sclip")

    @property
    def method_list(self) -> list[str]:
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class EvalConfig(DatasetOptions):
    """Options of ``segclip eval``: one method."""

    method: str = option("neuron-head", choices=METHODS, help="segmentation method (default: neuron-head).")

    @property
    def method_list(self) -> list[str]:
        return [self.method]


@dataclass(frozen=True, kw_only=True)
class CompareConfig(DatasetOptions):
    """Options of ``segclip compare``: several methods from one backbone pass per window."""

    methods: tuple[str, ...] = option(METHODS, help=f"comma-separated methods (default: all: {','.join(METHODS)}).")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_method_list(self.methods)

    @property
    def method_list(self) -> list[str]:
        return list(self.methods)


def run_eval(config: EvalConfig, model: ModelSource, *, verbose: bool = False) -> DatasetScores:
    """Score one method on a dataset with the sliding-window protocol (mIoU, pixel accuracy, per-class IoU).

    Args:
        config: the options (:class:`EvalConfig`).
        model: the loaded model (under DDP on GPUs: on ``cuda:<local rank>``), or a loader called once the inputs
            are checked.
        verbose: keep Lightning's device banners.

    Returns:
        The :class:`~segclip.segment.evaluate.DatasetScores` (None on processes other than the first of a DDP
        run). With ``out``, ``results.json`` / ``results.csv`` are written there (per-image partial results while
        it runs: an interrupted run resumes; a finished folder is read back).

    Raises:
        ConfigError: bad options or calibration.
        DataError: a missing or malformed dataset (the message names the file and how to prepare it).
        OutputError, CacheError: ``out`` holds another run's results (without ``overwrite``) or is not writable.

    Example:
        >>> from segclip.models import load_model
        >>> result = run_eval(EvalConfig(method="maskclip", limit=2, progress=False), load_model())
        >>> result.scores[0].method, result.scores[0].images
        ('maskclip', 2)
    """
    return _evaluate(config, model, verbose)


def run_compare(config: CompareConfig, model: ModelSource, *, verbose: bool = False) -> DatasetScores:
    """Score several methods from one backbone pass per window: every method reads the same trace.

    Args:
        config: the options (:class:`CompareConfig`).
        model: the loaded model, or a loader called once the inputs are checked.
        verbose: keep Lightning's device banners.

    Returns:
        The :class:`~segclip.segment.evaluate.DatasetScores`, one :class:`MethodScores` per method in the order asked.

    Raises:
        ConfigError, DataError, OutputError, CacheError: as :func:`run_eval`.

    Example:
        >>> from segclip.models import load_model
        >>> config = CompareConfig(methods=("maskclip", "neuron-head"), limit=2, progress=False)
        >>> [s.method for s in run_compare(config, load_model()).scores]
        ['maskclip', 'neuron-head']
    """
    return _evaluate(config, model, verbose)


def open_eval_dataset(config: DatasetOptions) -> DatasetRun:
    """The dataset and protocol of ``eval`` / ``compare`` (checked before any model work).

    Raises:
        ConfigError: a dataset without that protocol, or without ``--data-root`` when it needs one.
        DataError: missing or malformed data (the message names the file and how to prepare it).
    """
    name = config.dataset_name
    class_file = None
    if name in ("context59", "context60") and config.class_set == "text":
        class_file = resources.files("segclip.data").joinpath("classnames", f"pascal_context_{name[-2:]}_text.txt")
    data = BenchmarkDataset(name, root=dataset_root(name, config.data_root), limit=config.limit,
                            class_file=class_file)
    return DatasetRun(data, benchmark_protocol(name, config.protocol_name))


def _evaluate(config: DatasetOptions, model: ModelSource, verbose: bool) -> DatasetScores | None:
    quiet_lightning(verbose)
    run = open_eval_dataset(config)
    if config.out is not None and is_primary():  # before any model work: writable, no older layout in it
        check_writable(Path(config.out))
        finished_result(config.out, config.overwrite)
    model = resolve_model(model)
    trainer = make_trainer(model.device, config, progress=config.progress)
    return evaluate_dataset(model, run, config.method_list, config, trainer, out=config.out,
                            save_predictions=config.save_predictions)
