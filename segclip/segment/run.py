"""``segclip eval``, ``compare`` and ``segment`` as library calls: config -> run -> result -> write.

``run_eval`` scores one or several methods (several: one backbone pass per window feeds all) on PASCAL Context
(59/60) or the synthetic benchmark, resumably when given an output folder; ``run_segment`` segments image files
from a class list and writes label maps, overlays and heatmaps. Protocol defaults: crop = the model's input size,
stride = half a crop, short side 512 for PASCAL Context (the paper; 384 is the authors' released config) and 4/3
of a crop otherwise (512 / 384 scaled).
"""
from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

from segclip.config import check_positive, option
from segclip.core.calibration import Calibration, load_calibration
from segclip.core.trace import RegisterIntervention
from segclip.data.images import check_image
from segclip.data.pascal_context import ImageFolderDataset
from segclip.errors import ConfigError, OutputError
from segclip.io import atomic_write_bytes, atomic_write_json, provenance, read_lines
from segclip.models.loading import CLIPResNet, ModelSource, resolve_model
from segclip.models.text import check_class_names
from segclip.segment.datasets import open_dataset
from segclip.segment.lightning import SegmentationData, SegmentationTask, make_trainer
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
    check_writable,
    png_bytes,
    write_results,
)
from segclip.segment.windows import SlidingWindowProtocol
from segclip.viz.overlay import heatmap, overlay

log = logging.getLogger(__name__)

PAPER_SHORT_SIDE = 512
RUN_ONLY = ("out", "overwrite", "batch_size", "devices", "num_nodes", "num_workers", "progress")  # not in fingerprints


@dataclass(frozen=True, kw_only=True)
class MethodOptions:
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
        check_positive(self, "k", "short_side", "stride", "batch_size")
        check_positive(self, "registers", allow_zero=True)


@dataclass(frozen=True, kw_only=True)
class DatasetOptions(MethodOptions):
    """Dataset and run options shared by ``eval`` and ``compare``."""

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
    overwrite: bool = option(False, help="replace existing results in --out.")
    devices: int = option(1, help="processes (devices) with Lightning DDP (default: 1).")
    num_nodes: int = option(1, help="machines (nodes) for Lightning DDP (default: 1).")
    num_workers: int = option(0, help="DataLoader workers decoding images (default: 0).")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, "limit", "devices", "num_nodes")
        check_positive(self, "num_workers", allow_zero=True)
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
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ConfigError(f"Unknown methods {unknown}; choose from {', '.join(METHODS)}.")
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"Methods are listed more than once: {list(self.methods)}.")

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
        return "\n".join(lines) + "\n"

    def entries(self) -> list[dict[str, Any]]:
        """One dict per method: its scores and the protocol (the records of ``results.json``)."""
        return [{**vars(s), "per_class_iou": list(s.per_class_iou.values()), "protocol": self.protocol}
                for s in self.scores]

    def write(self, out: str | Path) -> list[Path]:
        """Write ``results.json`` and ``results.csv`` into ``out``, atomically."""
        write_results(Path(out), self.entries())
        return [Path(out) / "results.json", Path(out) / "results.csv"]


def _quiet_lightning(verbose: bool) -> None:
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


def _run_loop(loop: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Run ``trainer.test`` / ``trainer.predict``; Lightning turns Ctrl-C into ``sys.exit(1)`` after its teardown,
    which becomes the KeyboardInterrupt the command line reports as resumable."""
    try:
        loop(*args, **kwargs)
    except SystemExit as err:
        raise KeyboardInterrupt from err


def is_primary() -> bool:
    """Whether this is the first process of a (possibly distributed) run, before Lightning starts the others."""
    return int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0


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
    _quiet_lightning(verbose)
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
        _run_loop(trainer.test, task, datamodule=loader, verbose=False)
        seconds = task.seconds  # the test loop's wall time (all processes work in parallel)
        confusion += torch.stack([task.confusions[m].cpu() for m in methods])
    if not trainer.is_global_zero:
        return EvalResult([], record)
    if store is not None:
        confusion += store.load(sorted(done))
    scores = []
    for method, matrix in zip(methods, confusion):
        found = segmentation_scores(matrix)
        per_class = [None if v != v else v for v in found["per_class_iou"]]
        scores.append(MethodScores(method, found["miou"], found["pixel_accuracy"],
                                   dict(zip(data.class_names, per_class)), len(ids), len(todo),
                                   len(todo) / seconds if seconds else None, params[method],
                                   found["confusion_matrix"].tolist()))
    return EvalResult(scores, record)


@dataclass(frozen=True, kw_only=True)
class SegmentConfig(MethodOptions):
    """Options of ``segclip segment``."""

    images: tuple[Path, ...] = option(positional=True, help="image files.")
    out: Path = option(help="output folder.")
    classes: tuple[str, ...] | None = option(None, help='comma-separated class names, e.g. "cat,dog,grass".')
    classes_file: Path | None = option(None, help="UTF-8 file with one class name a line.")
    method: str = option("neuron-head", choices=METHODS, help="method (default: neuron-head).")
    heatmaps: bool = option(False, help="also write one heatmap per class.")
    background_threshold: float | None = option(None, help="label pixels whose top class probability is below this "
                                                           "as background.")
    overwrite: bool = option(False, help="replace existing outputs.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.images:
            raise ConfigError("Name at least one image file.")
        threshold = self.background_threshold
        if threshold is not None and not 0 < threshold < 1:
            raise ConfigError(f"--background-threshold must be between 0 and 1, got {threshold}.")
        if self.classes is not None and self.classes_file is not None:
            raise ConfigError("Pass either --classes or --classes-file, not both.")


def read_class_list(config: SegmentConfig) -> list[str] | None:
    """Class names from ``classes`` or ``classes_file`` (UTF-8, one a line), or None when neither is given.

    Raises:
        DataError: an unreadable or non-UTF-8 file.
        ConfigError: blank or duplicate names.
    """
    if config.classes_file is not None:
        return check_class_names(read_lines(config.classes_file, "class file", skip_blank=True))
    if config.classes is not None:
        return check_class_names(list(config.classes))
    return None


@dataclass
class SegmentResult:
    """What ``segment`` wrote.

    Attributes:
        files: per image id, the files written for it (label PNG, overlay, heatmaps).
        summary: the contents of ``segment.json`` (method, parameters, label values, protocol).
    """

    files: dict[str, list[Path]]
    summary: dict[str, Any]

    def write(self, out: str | Path) -> list[Path]:
        """Write ``segment.json`` (the label maps and overlays are written while segmenting)."""
        return [atomic_write_json(Path(out) / "segment.json", self.summary)]


def heatmap_file_name(index: int, name: str) -> str:
    """A file name for class ``index``'s heatmap that is safe for any class name: its index (unique), then the name
    with characters outside ``[A-Za-z0-9_-]`` replaced and cut to 40 characters.

    Example:
        >>> heatmap_file_name(3, "traffic light / signal " * 10)
        '03_traffic_light___signal_traffic_light___s.png'
    """
    safe = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "-_") else "_" for ch in name)
    return f"{index:02d}_{safe[:40]}.png"


def plan_outputs(config: SegmentConfig, dataset: ImageFolderDataset, names: list[str]) -> dict[str, list[Path]]:
    """Every file a ``segment`` run will write, per image: label map, overlay, then the heatmaps (if asked).

    Raises:
        OutputError: two outputs would have the same path (e.g. images ``a.jpg`` and ``a_overlay.jpg``), an output
            would replace one of the input images (refused even with ``overwrite``), or outputs exist already
            (without ``overwrite``).
    """
    out = config.out
    plan = {image_id: [out / f"{image_id}.png", out / f"{image_id}_overlay.png"]
            + ([out / "heatmaps" / image_id / heatmap_file_name(i, n) for i, n in enumerate(names)]
               if config.heatmaps else []) for image_id in dataset.ids}
    owner: dict[Path, str] = {}
    for image_id, paths in plan.items():
        for path in paths:
            key = path.resolve()
            if key in owner:
                raise OutputError(f"The outputs of images '{owner[key]}' and '{image_id}' would both be {path}; "
                                  "rename one of the images, or segment them into different --out folders.")
            owner[key] = image_id
    inputs = {p.resolve(): p for p in dataset.paths}
    clobbered = [inputs[k] for k in owner if k in inputs]
    if clobbered:
        raise OutputError(f"An output would replace the input image {clobbered[0]}; choose another --out (inputs are "
                          "never overwritten, not even with --overwrite).")
    existing = [p for p in [*owner, (out / "segment.json").resolve()] if p.exists()]
    if existing and not config.overwrite:
        raise OutputError(f"{len(existing)} output file(s) already exist (first: {existing[0]}); pass --overwrite "
                          "or choose another --out.")
    return plan


def _image_bytes(picture) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def run_segment(config: SegmentConfig, model: ModelSource) -> SegmentResult:
    """Segment image files by class names: per image a label PNG (class indices in list order), a colour overlay
    with a legend and, with ``heatmaps``, one probability heatmap per class.

    Args:
        config: the options (:class:`SegmentConfig`); without class names the bundled model's own classes are used.
        model: the loaded model, or a loader called once the inputs are checked.

    Returns:
        The :class:`SegmentResult` (write ``segment.json`` with ``result.write(config.out)``).

    Raises:
        ImageError: an unreadable image (checked before any model work).
        ConfigError: no class names for a model without its own, bad options.
        OutputError: outputs exist (without ``overwrite``) or cannot be written.

    Example:
        >>> import tempfile
        >>> from segclip.models import load_model
        >>> from segclip.paths import example_image_path
        >>> out = Path(tempfile.mkdtemp())
        >>> result = run_segment(SegmentConfig(images=(example_image_path(),), out=out, progress=False), load_model())
        >>> sorted(p.name for p in result.files["example"])
        ['example.png', 'example_overlay.png']
    """
    _quiet_lightning(False)
    dataset = ImageFolderDataset(list(config.images))
    for path in dataset.paths:
        check_image(path)  # a missing or unreadable file fails before any model work; decoded once, later
    check_writable(config.out)
    names = read_class_list(config)
    if names is not None:  # check the outputs before any model work
        plan_outputs(config, dataset, names)
    model = resolve_model(model)
    names = names or list(model.info.classes)
    if not names:
        raise ConfigError('Name the classes: --classes "cat,dog,grass" or --classes-file FILE.')
    plan = plan_outputs(config, dataset, names)
    prepared = prepare_methods(model, names, [config.method], config, None)
    threshold = config.background_threshold
    files: dict[str, list[Path]] = {}

    def on_image(image_id: str, result, _confusions, image) -> None:
        segmentation = result[config.method]
        labels = segmentation.labels.numpy()  # at the original size, background threshold applied
        files_for = plan[image_id]
        written = [atomic_write_bytes(files_for[0], png_bytes(labels))]
        picture = overlay(image, labels, names, background="background" if threshold is not None else None)
        written.append(atomic_write_bytes(files_for[1], _image_bytes(picture)))
        del picture
        if config.heatmaps:  # one class at full resolution at a time
            maps = segmentation.stitched.probability_maps(image.shape[:2], prepared.protocol.temperature)
            for probability, name, path in zip(maps, names, files_for[2:]):
                written.append(atomic_write_bytes(path, _image_bytes(heatmap(probability.cpu().numpy(), name))))
        files[image_id] = written

    task = SegmentationTask(model, prepared.methods, prepared.protocol, len(names), crops_per_pass=config.batch_size,
                            intervention=prepared.intervention, background_threshold=threshold, on_image=on_image,
                            autocast=config.autocast)
    trainer = make_trainer(model.device, 1, progress=False)
    _run_loop(trainer.predict, task, datamodule=SegmentationData(dataset, config.batch_size),
              return_predictions=False)
    record = segmentation_protocol(model, config, prepared, names,
                                   "given" if config.short_side else "4/3 of the crop (512 / 384 scaled)")
    summary = {"method": config.method, "params": prepared.params()[config.method],
               "background_threshold": threshold, "images": [str(p) for p in dataset.paths],
               "label_values": f"0..{len(names) - 1} in class-list order"
                               + (f", {len(names)} = background" if threshold is not None else ""),
               "protocol": record}
    return SegmentResult(files, summary)
