"""``segclip eval`` and ``compare`` as library calls (config -> run -> result -> write), and the method and
protocol options every segmentation command shares (``segment``: :mod:`segclip.segment.predict`; ``benchmark``:
:mod:`segclip.segment.benchmark`).

``run_eval`` scores one or several methods (several: one backbone pass per window feeds all) on PASCAL Context
(59/60) or the synthetic benchmark, resumably when given an output folder. Protocol defaults: crop = the model's
input size, stride = half a crop, short side 512 for PASCAL Context (the paper; 384 is the authors' released
config) and 4/3 of a crop otherwise (512 / 384 scaled).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

from segclip.config import Config, check_positive, option
from segclip.core.calibration import Calibration, calibration_note, load_calibration
from segclip.core.trace import RegisterIntervention
from segclip.errors import ConfigError
from segclip.io import provenance
from segclip.models.loading import CLIPResNet, ModelSource, resolve_model
from segclip.segment.datasets import open_dataset
from segclip.segment.lightning import (
    SegmentationData,
    SegmentationTask,
    is_primary,
    make_trainer,
    quiet_lightning,
    run_loop,
)
from segclip.segment.methods import (
    CENTRING_CHOICES,
    DEFAULT_K,
    METHODS,
    SegmentationMethod,
    build_methods,
)
from segclip.segment.metric import segmentation_scores
from segclip.segment.pipeline import AUTOCAST, check_autocast, protocol_for
from segclip.segment.results import (
    ResultStore,
    check_outputs,
    write_results,
)
from segclip.segment.windows import SlidingWindowProtocol

log = logging.getLogger(__name__)

PAPER_SHORT_SIDE = 512
RUN_ONLY = ("out", "overwrite", "batch_size", "devices", "num_nodes", "num_workers", "progress")  # not in fingerprints


@dataclass(frozen=True, kw_only=True)
class MethodOptions(Config):
    """Method and protocol options shared by ``eval``, ``compare`` and ``segment``."""

    k: int | None = option(None, help=f"neuron-head pairs kept per class, clamped to N*H (default: the paper's "
                                      f"{DEFAULT_K} of RN50x16's 147,456 pairs, the same 13.6% share for other "
                                      "models).")
    short_side: int | None = option(None, help="short side after resizing (default: 512 for PASCAL Context as in "
                                               "the paper, 384 is the authors' config; 4/3 of the model's crop "
                                               "otherwise).")
    stride: int | None = option(None, help="sliding-window stride (default: half a crop).")
    registers: int = option(0, help="register neurons zeroed by the intervention (method.md section 6; the authors "
                                    "use 32; needs a calibration; default: 0 = off). Applies to neuron-head and "
                                    "head-only.")
    register_variant: str = option("activations", choices=RegisterIntervention.VARIANTS,
                                   help="where register neurons are zeroed: activations (their activation z_n "
                                        "before the positional embedding, as the paper and the authors' code; "
                                        "default) or tokens (z_n + P_n, segclip 0.1).")
    calibration: Path | None = option(None, help="calibration artifact (pair signs, register neurons) from `segclip "
                                                 "calibrate` (default: the cached one for this model; without one "
                                                 "the signs are assumed +1).")
    templates: str | None = option(None, choices=("openai", "maskclip", "single"),
                                   help="override every method's prompt templates (default: openai 80 for the pair "
                                        "methods and self-self, MaskCLIP's 85 for maskclip).")
    centring: str | None = option(None, choices=CENTRING_CHOICES,
                                  help="override text centring (default: auto for the pair methods = over the class "
                                       "set with 10+ classes, else against a reference vocabulary; none for "
                                       "maskclip and self-self).")
    batch_size: int = option(8, help="sliding-window crops per backbone pass (default: 8).")
    autocast: str = option("off", choices=tuple(AUTOCAST),
                           help="run the convolutional backbone under autocast: off (default, exact), bf16, or fp16 "
                                "(GPU only); the attention pool, its decomposition, the maps and the labels stay in "
                                "the model's precision (unlike --precision, which casts the whole model).")
    progress: bool = option(True, help="show a progress bar (on stderr).")

    def __post_init__(self) -> None:
        super().__post_init__()  # field types (segclip.config.Config)
        check_positive(self, "k", "short_side", "stride", "batch_size")
        check_positive(self, "registers", allow_zero=True)


@dataclass(frozen=True, kw_only=True)
class RunOptions(MethodOptions):
    """Process options of the commands that score datasets (``eval``, ``compare``, ``benchmark``)."""

    overwrite: bool = option(False, help="replace existing results in --out.")
    devices: int = option(1, help="processes (devices) with Lightning DDP (default: 1).")
    num_nodes: int = option(1, help="machines (nodes) for Lightning DDP (default: 1).")
    num_workers: int = option(0, help="DataLoader workers decoding images (default: 0).")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, "devices", "num_nodes")
        check_positive(self, "num_workers", allow_zero=True)


def check_method_list(methods: tuple[str, ...]) -> None:
    """Raise :class:`ConfigError` for an empty list, unknown names or repeats."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ConfigError(f"Unknown methods {unknown}; choose from {', '.join(METHODS)}.")
    if len(set(methods)) != len(methods):
        raise ConfigError(f"Methods are listed more than once: {list(methods)}.")


@dataclass(frozen=True, kw_only=True)
class DatasetOptions(RunOptions):
    """Dataset options shared by ``eval`` and ``compare``."""

    dataset: str = option("synthetic", choices=("synthetic", "pascal_context"),
                          help="synthetic (generated into the cache on first use; default) or pascal_context.")
    data_root: Path | None = option(None, help="dataset folder (PASCAL Context: the folder holding VOCdevkit; "
                                               "synthetic: where to generate it).")
    num_classes: int = option(59, help="PASCAL Context 59 (background ignored; default) or 60.")
    class_names: str = option("raw", choices=("raw", "text"),
                              help="PASCAL Context names: raw (aeroplane, pottedplant, tvmonitor; default) or the "
                                   "authors' text names (airplane, potted plant, tv monitor).")
    limit: int | None = option(None, help="evaluate the first N images only.")
    out: Path | None = option(None, help="write results.json and results.csv here; per-image partial results make an "
                                         "interrupted run resumable (run the same command again).")
    save_predictions: bool = option(False, help="write predicted labels to OUT/predictions/<method>/<id>.png "
                                                "(uint8, 0-based).")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, "limit")
        if self.num_classes not in (59, 60):
            raise ConfigError(f"--num-classes must be 59 or 60, got {self.num_classes}.")
        if self.save_predictions and self.out is None:
            raise ConfigError("--save-predictions needs --out (the predictions go to OUT/predictions/).")

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


@dataclass
class MethodScores:
    """One method's scores on a dataset.

    Attributes:
        method: its name; miou, pixel_accuracy: percentages; per_class_iou: ``{class: IoU % or None}``;
        images: images scored; images_this_run: of them, computed now (the rest resumed);
        images_per_second: this run's speed (None when everything was resumed); params: what the method did;
        confusion_matrix: (C, C) counts, rows = target.
    """

    method: str
    miou: float
    pixel_accuracy: float
    per_class_iou: dict[str, float | None]
    images: int
    images_this_run: int
    images_per_second: float | None
    params: dict[str, Any]
    confusion_matrix: list[list[int]]


@dataclass
class EvalResult:
    """Scores of every method, with the protocol they ran under."""

    scores: list[MethodScores]
    protocol: dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        """The markdown table ``compare`` prints."""
        note = " (one shared backbone pass)" if len(self.scores) > 1 else ""
        lines = ["| method | mIoU | pixel accuracy | images/s |", "|---|---|---|---|"]
        for s in self.scores:
            speed = "resumed" if s.images_per_second is None else f"{s.images_per_second:.2f}{note}"
            lines.append(f"| {s.method} | {s.miou:.2f} | {s.pixel_accuracy:.2f} | {speed} |")
        if "calibration" in self.protocol:  # which calibration decided the signs and registers (issue 21)
            lines += ["", calibration_note(self.protocol["calibration"])]
        return "\n".join(lines) + "\n"

    def entries(self) -> list[dict[str, Any]]:
        """One dict per method: its scores and the protocol (the records of ``results.json``)."""
        return [{**vars(s), "per_class_iou": list(s.per_class_iou.values()), "protocol": self.protocol}
                for s in self.scores]

    def write(self, out: str | Path) -> list[Path]:
        """Write ``results.json`` and ``results.csv`` into ``out``, atomically."""
        write_results(Path(out), self.entries())
        return [Path(out) / "results.json", Path(out) / "results.csv"]


@dataclass
class PreparedMethods:
    """Methods built for a class list, with the protocol, intervention and calibration they use."""

    methods: list[SegmentationMethod]
    protocol: SlidingWindowProtocol
    intervention: RegisterIntervention | None
    calibration: Calibration | None

    def params(self) -> dict[str, dict[str, Any]]:
        registers = {} if self.intervention is None else self.intervention.to_dict()
        return {m.name: {**m.params, **({"registers": len(registers.get("registers", []))} if m.uses_registers
                                         else {}),
                         **({"register_variant": registers["variant"]} if m.uses_registers and registers else {})}
                for m in self.methods}


def prepare_methods(model: CLIPResNet, names: list[str], methods: list[str], options: MethodOptions,
                    default_short_side: int | None) -> PreparedMethods:
    """Calibration, register intervention, protocol and built methods for a class list.

    Raises:
        ConfigError: a calibration that is missing or stale when asked for, registers without one or above N.
    """
    check_autocast(options.autocast, model.device)
    calibration = load_calibration(model.info, options.calibration)
    if options.calibration is not None and calibration is None:
        raise ConfigError(f"--calibration {options.calibration} is missing, stale or not for {model.info.name}; run "
                          "`segclip calibrate` for this model.")
    intervention = None
    if options.registers:
        if options.registers > model.info.neurons:
            raise ConfigError(f"--registers {options.registers} is more than the model's {model.info.neurons} "
                              "neurons.")
        if calibration is None:
            raise ConfigError("--registers needs a calibration artifact (the register neurons are found there); run "
                              f"`segclip calibrate --model {model.info.name} --images DIR` first.")
        if options.registers > len(calibration.registers):
            raise ConfigError(f"--registers {options.registers} is more than the {len(calibration.registers)} "
                              "register neurons the calibration holds; calibrate with a larger --registers.")
        intervention = RegisterIntervention(calibration.registers[:options.registers].tolist(),
                                            options.register_variant)
    protocol = protocol_for(model, options.short_side or default_short_side, options.stride)
    built = build_methods(model, names, methods, k=options.k,
                          signs=None if calibration is None else calibration.signs,
                          sign_source=None if calibration is None else "calibration",
                          templates=options.templates, centring=options.centring)
    return PreparedMethods(built, protocol, intervention, calibration)


def segmentation_protocol(model: CLIPResNet, config: Any, prepared: PreparedMethods, names: list[str],
                          short_side_source: str, **extra: Any) -> dict[str, Any]:
    """The provenance of a segmentation result (one schema with the analyses', :func:`segclip.io.provenance`)."""
    return provenance(
        model.info, config, class_names=names,
        window={**prepared.protocol.to_dict(), "short_side_source": short_side_source,
                "padding": "windows shorter than the crop are zero-padded (CLIP mean colour) at the bottom/right; "
                           "only their valid part is stitched"},
        calibration=None if prepared.calibration is None else prepared.calibration.to_dict(),
        register_intervention=None if prepared.intervention is None else prepared.intervention.to_dict(),
        device=str(model.device), dtype=str(model.dtype).removeprefix("torch."), **extra)


def run_eval(config: EvalConfig, model: ModelSource, *, verbose: bool = False) -> EvalResult:
    """Score one method on a dataset with the sliding-window protocol (mIoU, pixel accuracy, per-class IoU).

    Args:
        config: the options (:class:`EvalConfig`).
        model: the loaded model (under DDP on GPUs: on ``cuda:<local rank>``), or a loader called once the inputs
            are checked.
        verbose: keep Lightning's device banners.

    Returns:
        The :class:`EvalResult` (on processes other than the first of a DDP run: an empty one). With ``out``, the
        per-image partial results are on disk (an interrupted run resumes); write the final files with
        ``result.write(config.out)``.

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


def run_compare(config: CompareConfig, model: ModelSource, *, verbose: bool = False) -> EvalResult:
    """Score several methods from one backbone pass per window: every method reads the same trace.

    Args:
        config: the options (:class:`CompareConfig`).
        model: the loaded model, or a loader called once the inputs are checked.
        verbose: keep Lightning's device banners.

    Returns:
        The :class:`EvalResult`, one :class:`MethodScores` per method in the order asked.

    Raises:
        ConfigError, DataError, OutputError, CacheError: as :func:`run_eval`.

    Example:
        >>> from segclip.models import load_model
        >>> config = CompareConfig(methods=("maskclip", "neuron-head"), limit=2, progress=False)
        >>> [s.method for s in run_compare(config, load_model()).scores]
        ['maskclip', 'neuron-head']
    """
    return _evaluate(config, model, verbose)


def _evaluate(config: DatasetOptions, model: ModelSource, verbose: bool) -> EvalResult:
    quiet_lightning(verbose)
    methods = config.method_list
    data = open_dataset(config.dataset, config.data_root, limit=config.limit, num_classes=config.num_classes,
                        names=config.class_names)
    primary = is_primary()
    if config.out is not None and primary:
        check_outputs(config.out, config.overwrite)  # before any model work
    model = resolve_model(model)
    pascal = config.dataset == "pascal_context"
    prepared = prepare_methods(model, data.class_names, methods, config, PAPER_SHORT_SIDE if pascal else None)
    short_source = ("given" if config.short_side else "paper (512)" if pascal else
                    "4/3 of the crop (512 / 384 scaled)")
    record = segmentation_protocol(model, config, prepared, data.class_names, short_source, dataset=data.description)
    params = prepared.params()
    ids = list(data.dataset.ids)
    store = None
    if config.out is not None:
        stable = {k: v for k, v in record.items() if k not in ("package_versions", "git_revision", "device", "config")}
        stable["config"] = {k: v for k, v in record["config"].items() if k not in RUN_ONLY}
        fingerprint = {"protocol": stable, "methods": params}
        store = ResultStore(config.out, fingerprint, methods, len(data.class_names),
                            save_predictions=config.save_predictions, overwrite=config.overwrite, primary=primary)
    done = store.done(ids) if store else set()
    todo = [i for i, image_id in enumerate(ids) if image_id not in done]
    if done:
        log.warning("resuming: %d of %d images already done in %s", len(done), len(ids), config.out)

    def on_image(image_id: str, result, confusions, _image) -> None:
        if store is not None:
            store.write(image_id, confusions, [result[m].labels for m in methods])

    task = SegmentationTask(model, prepared.methods, prepared.protocol, len(data.class_names),
                            crops_per_pass=config.batch_size, intervention=prepared.intervention, on_image=on_image,
                            autocast=config.autocast)
    trainer = make_trainer(model.device, config.devices, progress=config.progress, num_nodes=config.num_nodes)
    seconds = 0.0
    confusion = torch.zeros(len(methods), len(data.class_names), len(data.class_names), dtype=torch.long)
    if todo:
        loader = SegmentationData(Subset(data.dataset, todo), config.batch_size, config.num_workers)
        run_loop(trainer.test, task, datamodule=loader, verbose=False)
        seconds = task.seconds  # the test loop's wall time (all processes work in parallel)
        confusion += torch.stack([task.confusions[m].cpu() for m in methods])
    if not trainer.is_global_zero:
        return EvalResult([], record)
    if store is not None:
        confusion += store.load(sorted(done))
    return EvalResult(method_scores(methods, confusion, data.class_names, len(ids), len(todo), seconds, params),
                      record)


def method_scores(methods: list[str], confusion: torch.Tensor, class_names: list[str], images: int, computed: int,
                  seconds: float, params: dict[str, dict[str, Any]]) -> list[MethodScores]:
    """One :class:`MethodScores` per method from its ``(C, C)`` confusion matrix (``confusion``: (M, C, C))."""
    scores = []
    for method, matrix in zip(methods, confusion):
        found = segmentation_scores(matrix)
        per_class = [None if v != v else v for v in found["per_class_iou"]]
        scores.append(MethodScores(method, found["miou"], found["pixel_accuracy"], dict(zip(class_names, per_class)),
                                   images, computed, computed / seconds if seconds else None, params[method],
                                   found["confusion_matrix"].tolist()))
    return scores
