"""``segclip benchmark``: the field's eight datasets, every method, one table (config -> run -> result -> write).

Every requested dataset (:data:`~segclip.data.benchmarks.BENCHMARKS`) is checked under the data root before any
model work; missing or invalid ones are skipped and reported (with the reason). Each present dataset runs with
its protocol (:mod:`segclip.data.protocols`, scaled to the model's crop) and its class file's queries: the methods
are built on the distinct query names (the pair methods select their top-k pairs per query), one backbone pass per
window feeds every method, and labels come from the query rule (:class:`~segclip.segment.pipeline.QueryLabelRule`)
with the protocol's logit scale and thresholds. An output folder holds::

    results.json, results.csv          the table: per dataset mIoU per method, and the average over datasets
    <dataset>/partial/                 per-image confusion stacks (resume), as ``segclip eval`` writes them
    <dataset>/results.json, .csv       per dataset, ``eval``'s files (per-class IoU, the full protocol)
    <dataset>/predictions/<method>/<image id>.png   with ``save_predictions``: 0-based class indices (16-bit
                                                    PNGs for PC-459 and ADE-847)

An interrupted run resumes per dataset and per image when run again with the same options.
"""
from __future__ import annotations

import dataclasses
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

from segclip.config import check_positive, option
from segclip.data.benchmarks import BENCHMARKS, SPECS, BenchmarkDataset, canonical_name
from segclip.data.protocols import BenchmarkProtocol, benchmark_protocol
from segclip.data.queries import read_query_file
from segclip.errors import ConfigError, DataError, SegclipError
from segclip.io import atomic_write_bytes, atomic_write_json, provenance
from segclip.models.loading import CLIPResNet, ModelSource, resolve_model
from segclip.segment.lightning import (
    SegmentationData,
    SegmentationTask,
    is_primary,
    make_trainer,
    quiet_lightning,
    run_loop,
)
from segclip.segment.methods import METHODS
from segclip.segment.pipeline import QueryLabelRule, distinct_queries
from segclip.segment.results import ResultStore, check_outputs
from segclip.segment.run import (
    RUN_ONLY,
    EvalResult,
    RunOptions,
    check_method_list,
    method_scores,
    prepare_methods,
    segmentation_protocol,
)
from segclip.segment.windows import SlidingWindowProtocol

log = logging.getLogger(__name__)

PROTOCOLS = ("sclip", "paper")
# Config fields the per-dataset fingerprint leaves out: what does not change a dataset's numbers, and what the
# dataset description records in effect (its root and class file).
NOT_IN_FINGERPRINT = (*RUN_ONLY, "datasets", "roots", "class_files", "data_root")


def window_protocol(protocol: BenchmarkProtocol, crop: int) -> SlidingWindowProtocol:
    """A dataset protocol's sliding window at a model's crop (its lengths scaled, its logit scale as temperature).

    Example:
        >>> window_protocol(benchmark_protocol("context59", "paper"), 384)
        SlidingWindowProtocol(short_side=512, long_side=2048, crop=384, stride=192, temperature=40.0)
    """
    values = protocol.for_crop(crop)
    return SlidingWindowProtocol(**{k: values[k] for k in ("short_side", "long_side", "crop", "stride",
                                                           "temperature")})


def _pairs(values: tuple[str, ...], what: str) -> dict[str, Path]:
    """``("name=path", ...)`` -> ``{canonical name: path}``."""
    parsed: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ConfigError(f"--{what} takes NAME=PATH entries, got {value!r}.")
        parsed[canonical_name(name.strip())] = Path(path.strip()).expanduser()
    return parsed


@dataclass(frozen=True, kw_only=True)
class BenchmarkConfig(RunOptions):
    """Options of ``segclip benchmark``."""

    data_root: Path = option(help="the data root, laid out as mmsegmentation's data/ folder (VOCdevkit/VOC2012, "
                                  "VOCdevkit/VOC2010, coco_stuff164k, cityscapes, ade/ADEChallengeData2016)")
    out: Path = option(help="output folder: results.json, results.csv and one folder per dataset (partial results "
                            "for resuming, predictions).")
    datasets: tuple[str, ...] = option(("all",), help=f"comma-separated datasets, or all (default): "
                                                      f"{','.join(BENCHMARKS)}.")
    methods: tuple[str, ...] = option(METHODS, help=f"comma-separated methods (default: all: {','.join(METHODS)}).")
    protocol: str = option("sclip", choices=PROTOCOLS,
                           help="sclip (every dataset: SCLIP's sizes, logit scales and thresholds scaled to the "
                                "model's crop; default) or paper (the paper's PASCAL Context 59 protocol; "
                                "context59 only).")
    roots: tuple[str, ...] = option((), help="per-dataset folders overriding the data root, NAME=PATH "
                                             "comma-separated (e.g. voc21=/data/VOC2012).")
    class_files: tuple[str, ...] = option((), help="your own class files in the SCLIP format (one line per class, "
                                                   "synonyms separated by ', '), NAME=FILE comma-separated.")
    short_side: int | None = option(None, help="override every dataset's protocol short side (default: the "
                                               "protocol's).")
    stride: int | None = option(None, help="override every dataset's protocol stride (default: the protocol's).")
    limit: int | None = option(None, help="evaluate the first N images of each dataset only.")
    save_predictions: bool = option(False, help="write OUT/<dataset>/predictions/<method>/<id>.png (uint8, 0-based "
                                                "class indices).")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, "limit")
        check_method_list(self.methods)
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"Unknown protocol {self.protocol!r}; choose from {', '.join(PROTOCOLS)}.")
        names = self.dataset_names  # unknown names fail here
        if len(set(names)) != len(names):
            raise ConfigError(f"Datasets are listed more than once: {list(self.datasets)}.")
        _pairs(self.roots, "roots")
        _pairs(self.class_files, "class-files")

    @property
    def dataset_names(self) -> list[str]:
        """The requested datasets' canonical names, in the order given ("all": the peers' column order)."""
        if tuple(self.datasets) == ("all",):
            return list(BENCHMARKS)
        return [canonical_name(name) for name in self.datasets]


@dataclass
class DatasetScores:
    """One dataset's result: every method's scores (``eval``'s :class:`EvalResult`) and the images run."""

    name: str
    result: EvalResult

    @property
    def miou(self) -> dict[str, float]:
        return {s.method: s.miou for s in self.result.scores}


@dataclass
class BenchmarkResult:
    """The benchmark table: per dataset (the peers' column order) mIoU per method, and the average.

    Attributes:
        datasets: the datasets run, in :data:`BENCHMARKS` order.
        skipped: per skipped dataset ``{"state": "missing" | "invalid" | "no protocol", "reason": ...}``.
        methods: method names, in the order asked.
        provenance: model, weights, config, versions of the run (each dataset's protocol is in its entry).
    """

    datasets: list[DatasetScores]
    skipped: dict[str, dict[str, str]]
    methods: list[str]
    provenance: dict[str, Any] = field(default_factory=dict)

    def average(self, method: str) -> float | None:
        """The mean mIoU of ``method`` over the datasets run (None when none ran)."""
        values = [d.miou[method] for d in self.datasets]
        return sum(values) / len(values) if values else None

    def rows(self) -> list[dict[str, Any]]:
        """Per method ``{"method", <dataset>: mIoU..., "average"}`` (the CSV rows)."""
        return [{"method": m, **{d.name: d.miou[m] for d in self.datasets}, "average": self.average(m)}
                for m in self.methods]

    def table(self) -> str:
        """The markdown table ``segclip benchmark`` prints."""
        names = [d.name for d in self.datasets]
        lines = ["| method | " + " | ".join(names) + " | average |", "|---" * (len(names) + 2) + "|"]
        for row in self.rows():
            cells = [row["method"], *(f"{row[n]:.2f}" for n in names), f"{row['average']:.2f}"]
            lines.append("| " + " | ".join(cells) + " |")
        if self.skipped:
            lines.append("")
            lines.append("skipped: " + "; ".join(f"{n} ({s['state']})" for n, s in self.skipped.items()))
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """The contents of ``results.json``."""
        return {"table": {row["method"]: {k: v for k, v in row.items() if k != "method"} for row in self.rows()},
                "datasets": {d.name: {"images": d.result.scores[0].images, "protocol": d.result.protocol,
                                      "scores": [{k: v for k, v in vars(s).items() if k != "confusion_matrix"}
                                                 for s in d.result.scores],
                                      "files": f"{d.name}/results.json (confusion matrices), {d.name}/results.csv"}
                             for d in self.datasets},
                "skipped": self.skipped, "column_order": [d.name for d in self.datasets],
                "average_over": [d.name for d in self.datasets], "provenance": self.provenance}

    def write(self, out: str | Path) -> list[Path]:
        """Write ``results.json`` / ``results.csv`` into ``out`` and each dataset's own pair into
        ``out/<dataset>/``, atomically."""
        import csv

        out = Path(out)
        for dataset in self.datasets:
            dataset.result.write(out / dataset.name)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        names = [d.name for d in self.datasets]
        writer.writerow(["method", *names, "average"])
        for row in self.rows():
            writer.writerow([row["method"], *(row[n] for n in names), row["average"]])
        atomic_write_bytes(out / "results.csv", buffer.getvalue().encode())
        atomic_write_json(out / "results.json", self.to_dict())
        return [out / "results.json", out / "results.csv"]


def check_benchmarks(config: BenchmarkConfig) -> tuple[dict[str, BenchmarkDataset], dict[str, dict[str, str]]]:
    """Open every requested dataset that is present and valid; say why the others are skipped.

    A dataset is missing when its folder does not exist, invalid when its layout is incomplete (a sub-folder, the
    split file or a listed image or label is missing) or its first label cannot be read or holds values out of
    range; with ``limit``, only the first ``limit`` images are looked at. A dataset without the requested protocol
    (``paper`` exists for context59 only) is skipped too.

    Returns:
        ``({name: dataset}`` in :data:`BENCHMARKS` order, ``{name: {"state", "reason"}})``.

    Raises:
        DataError: no requested dataset can run (the message gives each one's reason), or a class file given with
            ``class_files`` is unreadable or has the wrong number of lines.
    """
    roots = _pairs(config.roots, "roots")
    class_files = _pairs(config.class_files, "class-files")
    for name, path in class_files.items():  # the user's own files: an error, never a skip
        classes = read_query_file(path)[2]
        if len(classes) != SPECS[name].num_classes:
            raise DataError(f"The class file {path} has {len(classes)} lines but {name} has "
                            f"{SPECS[name].num_classes} classes; write one line per class, in label order.")
    ready: dict[str, BenchmarkDataset] = {}
    skipped: dict[str, dict[str, str]] = {}
    for name in sorted(config.dataset_names, key=BENCHMARKS.index):
        spec = SPECS[name]
        folder = roots.get(name, Path(config.data_root) / spec.folder)
        try:
            benchmark_protocol(name, config.protocol)
        except ConfigError as error:
            skipped[name] = {"state": "no protocol", "reason": str(error)}
            continue
        if not folder.is_dir():
            skipped[name] = {"state": "missing", "reason": f"{folder} does not exist. {spec.prepare}"}
            continue
        try:
            dataset = BenchmarkDataset(name, root=folder, limit=config.limit, class_file=class_files.get(name))
            dataset.validate(1)
        except SegclipError as error:
            skipped[name] = {"state": "invalid", "reason": str(error)}
            continue
        ready[name] = dataset
    for name, why in skipped.items():
        log.warning("skipping %s (%s): %s", name, why["state"], why["reason"])
    if not ready:
        reasons = "; ".join(f"{n} ({s['state']}): {s['reason']}" for n, s in skipped.items())
        raise DataError(f"None of the requested datasets can run under {config.data_root}. {reasons}")
    return ready, skipped


def run_benchmark(config: BenchmarkConfig, model: ModelSource, *, verbose: bool = False) -> BenchmarkResult:
    """Run every requested dataset present under the data root with every method (module docstring).

    Args:
        config: the options (:class:`BenchmarkConfig`).
        model: the loaded model, or a loader called once the data and the output folder are checked.
        verbose: keep Lightning's device banners.

    Returns:
        The :class:`BenchmarkResult` (on processes other than the first of a DDP run: one without datasets). The
        per-image partial results are on disk; write the table with ``result.write(config.out)``.

    Raises:
        ConfigError: bad options, calibration or class files.
        DataError: no requested dataset can run, or a label out of range mid-run (finished images are kept).
        OutputError, CacheError: ``out`` holds a finished run (without ``overwrite``), another run's partial
            results, or is not writable.

    Example:
        >>> import tempfile, sys
        >>> sys.path.insert(0, "tests")
        >>> from fake_benchmarks import make_fake_benchmarks
        >>> from segclip.models import load_model
        >>> root = Path(tempfile.mkdtemp())
        >>> _ = make_fake_benchmarks(root / "data")
        >>> config = BenchmarkConfig(data_root=root / "data", out=root / "out", datasets=("voc21", "ade20k"),
        ...                          methods=("maskclip",), limit=1, templates="single", progress=False)
        >>> result = run_benchmark(config, load_model())
        >>> [d.name for d in result.datasets], result.table().splitlines()[0]
        (['voc21', 'ade20k'], '| method | voc21 | ade20k | average |')
    """
    quiet_lightning(verbose)
    datasets, skipped = check_benchmarks(config)
    primary = is_primary()
    if primary:
        check_outputs(Path(config.out), config.overwrite)  # before any model work
    model = resolve_model(model)
    trainer = make_trainer(model.device, config.devices, progress=config.progress, num_nodes=config.num_nodes)
    results = [_run_dataset(config, model, trainer, dataset, primary) for dataset in datasets.values()]
    record = provenance(model.info, config, protocol=config.protocol, datasets_run=list(datasets),
                        skipped=skipped, device=str(model.device), dtype=str(model.dtype).removeprefix("torch."))
    if not trainer.is_global_zero:
        return BenchmarkResult([], skipped, list(config.methods), record)
    return BenchmarkResult([r for r in results if r is not None], skipped, list(config.methods), record)


def _run_dataset(config: BenchmarkConfig, model: CLIPResNet, trainer: Any, data: BenchmarkDataset,
                 primary: bool) -> DatasetScores | None:
    """One dataset: methods on its queries, its protocol, resumable per image under ``out/<dataset>``."""
    methods = list(config.methods)
    protocol = benchmark_protocol(data.name, config.protocol)
    crop = model.info.image_size
    names, rows = distinct_queries(data.queries)
    prepared = prepare_methods(model, names, methods, config, None)
    window = window_protocol(protocol, crop)
    window = dataclasses.replace(window, short_side=config.short_side or window.short_side,
                                 stride=config.stride or window.stride)
    prepared = dataclasses.replace(prepared, protocol=window)
    rule = QueryLabelRule(tuple(rows), tuple(data.query_to_class), protocol.logit_scale, protocol.prob_threshold,
                          protocol.area_threshold)
    given = [f for f in ("short_side", "stride") if getattr(config, f)]
    source = f"{protocol.name} protocol scaled to crop {crop}" + (f" ({', '.join(given)} given)" if given else "")
    record = segmentation_protocol(model, config, prepared, list(data.class_names), source,
                                   dataset=data.description, benchmark_protocol=protocol.to_dict(crop),
                                   queries=list(data.queries), query_to_class=list(data.query_to_class),
                                   distinct_queries=names, label_rule=rule.to_dict())
    params = prepared.params()
    stable = {k: v for k, v in record.items() if k not in ("package_versions", "git_revision", "device", "config")}
    stable["config"] = {k: v for k, v in record["config"].items() if k not in NOT_IN_FINGERPRINT}
    store = ResultStore(Path(config.out) / data.name, {"protocol": stable, "methods": params}, methods,
                        data.num_classes, save_predictions=config.save_predictions, overwrite=config.overwrite,
                        primary=primary)
    ids = list(data.ids)
    done = store.done(ids)
    todo = [i for i, image_id in enumerate(ids) if image_id not in done]
    if done:
        log.warning("%s: resuming, %d of %d images already done", data.name, len(done), len(ids))

    def on_image(image_id: str, result, confusions, _image) -> None:
        store.write(image_id, confusions, [result[m].labels for m in methods])

    confusion = torch.zeros(len(methods), data.num_classes, data.num_classes, dtype=torch.long)
    seconds = 0.0
    if todo:
        task = SegmentationTask(model, prepared.methods, window, data.num_classes, crops_per_pass=config.batch_size,
                                intervention=prepared.intervention, on_image=on_image, label_rule=rule,
                                autocast=config.autocast, ignore_index=data.ignore_index)
        loader = SegmentationData(Subset(data, todo), config.batch_size, config.num_workers)
        run_loop(trainer.test, task, datamodule=loader, verbose=False)
        seconds = task.seconds
        confusion += torch.stack([task.confusions[m].cpu() for m in methods])
    if not trainer.is_global_zero:
        return None
    confusion += store.load(sorted(done))
    scores = method_scores(methods, confusion, data.class_names, len(ids), len(todo), seconds, params)
    return DatasetScores(data.name, EvalResult(scores, record))
