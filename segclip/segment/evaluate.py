"""The one evaluation path of ``eval``, ``compare`` and ``benchmark``: a dataset of the table
(:data:`segclip.data.benchmarks.SPECS`), methods, its protocol (:mod:`segclip.data.protocols`) and label rule, an
output folder -> per-method scores.

:func:`evaluate_dataset` builds the methods on the dataset's distinct query names, runs one backbone pass per window
for all of them (:class:`~segclip.segment.lightning.SegmentationTask`), labels pixels with the protocol's rule
(:class:`~segclip.segment.pipeline.QueryLabelRule`: logit scale, thresholds, synonyms) and scores them with one
confusion matrix per method. With an output folder it resumes per image (:class:`~segclip.segment.results.
ResultStore`) and a finished folder is read back instead of recomputed. The folder holds::

    results.json                the envelope {"schema", "provenance", "results": {"dataset", "scores"}}
    results.csv                 method, mIoU, pixel accuracy, images/s, per-class IoU
    partial/                    per-image confusion stacks while the run is unfinished (removed at the end)
    predictions/<method>/<id>.png   with ``save_predictions``: class indices (palette PNG)
"""
from __future__ import annotations

import dataclasses
import io
import csv
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

from segclip.config import ShortRepr
from segclip.core.calibration import calibration_note
from segclip.data.benchmarks import BenchmarkDataset
from segclip.data.protocols import BenchmarkProtocol
from segclip.errors import OutputError
from segclip.io import atomic_write_bytes, read_result, to_jsonable, write_result
from segclip.models.loading import CLIPResNet
from segclip.process import all_reduce_sum, is_primary, run_loop
from segclip.segment.lightning import SegmentationData, SegmentationTask
from segclip.segment.metric import segmentation_scores
from segclip.segment.options import PreparedMethods, RunOptions, prepare_methods, segmentation_provenance
from segclip.segment.pipeline import QueryLabelRule, distinct_queries
from segclip.segment.results import ResultStore
from segclip.segment.windows import SlidingWindowProtocol

log = logging.getLogger(__name__)

# Config fields that never change a dataset's numbers (left out of the fingerprint a resumed run must match); the
# dataset's folder and class file are recorded in its description instead.
NOT_IN_FINGERPRINT = ("out", "overwrite", "batch_size", "devices", "num_nodes", "num_workers", "progress", "json",
                      "per_class", "datasets", "dataset", "roots", "class_files", "data_root", "methods", "method",
                      "limit", "save_predictions", "num_classes", "class_names")


def window_protocol(protocol: BenchmarkProtocol, crop: int, short_side: int | None = None,
                    stride: int | None = None) -> SlidingWindowProtocol:
    """A dataset protocol's sliding window at a model's crop (its lengths scaled, its logit scale as temperature),
    with ``short_side`` / ``stride`` overriding the scaled values when given.

    Example:
        >>> from segclip.data.protocols import benchmark_protocol
        >>> window_protocol(benchmark_protocol("context59", "paper"), 384)
        SlidingWindowProtocol(short_side=512, long_side=2048, crop=384, stride=192, temperature=40.0)
        >>> window_protocol(benchmark_protocol("context59", "paper"), 224).short_side  # RN50: scaled by 224 / 384
        299
    """
    values = protocol.for_crop(crop)
    window = SlidingWindowProtocol(**{k: values[k] for k in ("short_side", "long_side", "crop", "stride",
                                                             "temperature")})
    return dataclasses.replace(window, short_side=short_side or window.short_side, stride=stride or window.stride)


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


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


@dataclass
class DatasetScores(ShortRepr):
    """Every method's scores on one dataset, with the provenance they ran under.

    Attributes:
        name: the dataset (a row of the dataset table).
        scores: one :class:`MethodScores` per method, in the order asked.
        provenance: model, weights, config, dataset, protocol, calibration, versions.
        resumed_from_files: True when a finished output folder was read back instead of recomputed.
    """

    name: str
    scores: list[MethodScores]
    provenance: dict[str, Any] = field(default_factory=dict)
    resumed_from_files: bool = False

    def __repr__(self) -> str:
        return (f"DatasetScores({self.name!r}, " + ", ".join(f"{s.method}={s.miou:.2f}" for s in self.scores)
                + f", images={self.scores[0].images if self.scores else 0})")

    @property
    def miou(self) -> dict[str, float]:
        return {s.method: s.miou for s in self.scores}

    def table(self, per_class: bool = False) -> str:
        """The markdown table ``eval`` and ``compare`` print (with ``per_class``: one IoU column per class)."""
        shared = " (one shared backbone pass)" if len(self.scores) > 1 else ""
        names = list(self.scores[0].per_class_iou) if per_class and self.scores else []
        lines = ["| method | mIoU | pixel accuracy | images/s |" + "".join(f" {n} |" for n in names),
                 "|---|---|---|---|" + "---|" * len(names)]
        for s in self.scores:
            speed = "resumed" if s.images_per_second is None else f"{s.images_per_second:.2f}{shared}"
            lines.append(f"| {s.method} | {s.miou:.2f} | {s.pixel_accuracy:.2f} | {speed} |"
                         + "".join(f" {_fmt(s.per_class_iou[n])} |" for n in names))
        return "\n".join(lines) + "\n"

    def summary(self, per_class: bool = False) -> str:
        """What ``eval`` / ``compare`` print: the table, then the dataset and protocol, and the calibration."""
        record = self.provenance
        window = record.get("window") or {}
        note = (f"{self.name}, {self.scores[0].images if self.scores else 0} images; protocol "
                f"{(record.get('protocol') or {}).get('name', '?')} (short side {window.get('short_side')}, crop "
                f"{window.get('crop')}, stride {window.get('stride')})"
                + (" (read back from the finished output folder)" if self.resumed_from_files else ""))
        return self.table(per_class) + "\n" + note + "\n" + calibration_note(record.get("calibration")) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """The ``results`` of ``results.json``."""
        return to_jsonable({"dataset": self.name, "scores": [vars(s) for s in self.scores]})

    @classmethod
    def from_file(cls, path: Path) -> DatasetScores:
        """Read a ``results.json`` written by :meth:`write`.

        Raises:
            OutputError: unreadable, or an older layout (:func:`segclip.io.read_result`).
        """
        envelope = read_result(path)
        results = envelope["results"]
        try:
            scores = [MethodScores(**s) for s in results["scores"]]
            return cls(results["dataset"], scores, envelope["provenance"], resumed_from_files=True)
        except (KeyError, TypeError) as err:
            raise OutputError(f"{path} is not a segmentation result ({err}); pass --overwrite to recompute it.") \
                from None

    def write(self, out: str | Path) -> list[Path]:
        """Write ``results.json`` (the envelope) and ``results.csv`` into ``out``, atomically."""
        out = Path(out)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        names = list(self.scores[0].per_class_iou) if self.scores else []
        writer.writerow(["method", "miou", "pixel_accuracy", "images_per_second"] + [f"iou_{n}" for n in names])
        for s in self.scores:
            writer.writerow([s.method, s.miou, s.pixel_accuracy, s.images_per_second]
                            + ["" if v is None else v for v in s.per_class_iou.values()])
        atomic_write_bytes(out / "results.csv", buffer.getvalue().encode())
        write_result(out / "results.json", self.provenance, self.to_dict())
        return [out / "results.json", out / "results.csv"]


@dataclass
class DatasetRun:
    """One dataset to evaluate: the opened data and the protocol it runs under.

    Attributes:
        data: the dataset (samples ``{"id", "image", "label"}``, class names, queries).
        protocol: its protocol row.
    """

    data: BenchmarkDataset
    protocol: BenchmarkProtocol


def _fingerprint(record: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    stable = {k: v for k, v in record.items() if k not in ("package_versions", "git_revision", "device", "config",
                                                          "dataset")}
    stable["config"] = {k: v for k, v in record["config"].items() if k not in NOT_IN_FINGERPRINT}
    stable["dataset"] = {k: v for k, v in record["dataset"].items() if k not in ("root", "source", "image_dir",
                                                                                 "label_dir", "images_listed")}
    return {"protocol": stable, "methods": params}


def finished_result(out: Path | None, overwrite: bool) -> DatasetScores | None:
    """The result a finished output folder holds (None when there is none, or with ``overwrite``).

    Raises:
        OutputError: the folder holds an older layout's results (the message says to pass ``--overwrite``).
    """
    if out is None or overwrite or not (Path(out) / "results.json").is_file():
        return None
    return DatasetScores.from_file(Path(out) / "results.json")


def evaluate_dataset(model: CLIPResNet, run: DatasetRun, methods: list[str], options: RunOptions, trainer: Any, *,
                     out: Path | None = None, save_predictions: bool = False,
                     prepared: PreparedMethods | None = None) -> DatasetScores | None:
    """Score ``methods`` on one dataset under its protocol: one backbone pass per window feeds every method.

    Args:
        model: the loaded model.
        run: the dataset and its protocol.
        methods: method names (:data:`~segclip.segment.methods.METHODS`).
        options: method, protocol-override and process options (``short_side`` / ``stride`` override the
            protocol's scaled values).
        trainer: the trainer (:func:`segclip.process.make_trainer`), shared by the datasets of one command.
        out: output folder; per-image partial results make an interrupted run resumable, and a finished folder
            whose provenance matches is read back (a different one is refused without ``options.overwrite``).
        save_predictions: write ``out/predictions/<method>/<id>.png``.
        prepared: methods already built for these class names (else built here).

    Returns:
        The :class:`DatasetScores` on the first process; None on the others of a DDP run.

    Raises:
        ConfigError: bad options or calibration. DataError: a label out of range mid-run (finished images kept).
        OutputError, CacheError: ``out`` holds a different run's results or partial results, or is not writable.
    """
    data, protocol = run.data, run.protocol
    crop = model.info.image_size
    names, rows = distinct_queries(data.queries)
    if prepared is None:
        prepared = prepare_methods(model, names, methods, options, None)
    window = window_protocol(protocol, crop, options.short_side, options.stride)
    prepared = dataclasses.replace(prepared, protocol=window)
    rule = QueryLabelRule(tuple(rows), tuple(data.query_to_class), protocol.logit_scale, protocol.prob_threshold,
                          protocol.area_threshold)
    given = [f for f in ("short_side", "stride") if getattr(options, f)]
    source = f"{protocol.name} protocol scaled to crop {crop}" + (f" ({', '.join(given)} given)" if given else "")
    record = segmentation_provenance(model, options, prepared, list(data.class_names), source,
                                     dataset=data.description, protocol=protocol.to_dict(crop),
                                     queries=list(data.queries), query_to_class=list(data.query_to_class),
                                     distinct_queries=names, label_rule=rule.to_dict())
    params = prepared.params()
    fingerprint = to_jsonable(_fingerprint(record, params))
    primary = is_primary()
    store = None
    if out is not None:
        earlier = finished_result(out, options.overwrite)
        if earlier is not None:
            if to_jsonable(_fingerprint(earlier.provenance, {s.method: s.params for s in earlier.scores})) \
                    == fingerprint and [s.method for s in earlier.scores] == methods:
                log.info("%s: %s already holds this run's results; not recomputed", data.name, out)
                return earlier if primary else None
            raise OutputError(f"{out} holds results of a different run (other model, methods, protocol, classes or "
                              "options); pass --overwrite to replace them, or choose another --out.")
        store = ResultStore(out, fingerprint, methods, data.num_classes, save_predictions=save_predictions,
                            overwrite=options.overwrite, primary=primary)
    ids = list(data.ids)
    done = store.done(ids) if store else set()
    todo = [i for i, image_id in enumerate(ids) if image_id not in done]
    if done:
        log.warning("%s: resuming, %d of %d images already done in %s", data.name, len(done), len(ids), out)

    def on_image(image_id: str, result, confusions, _image) -> None:
        if store is not None:
            store.write(image_id, confusions, [result[m].labels for m in methods])

    confusion = torch.zeros(len(methods), data.num_classes, data.num_classes, dtype=torch.long)
    seconds = 0.0
    if todo:
        task = SegmentationTask(model, prepared.methods, window, data.num_classes, crops_per_pass=options.batch_size,
                                intervention=prepared.intervention, on_image=on_image, label_rule=rule,
                                autocast=options.autocast, ignore_index=data.ignore_index)
        loader = SegmentationData(Subset(data, todo), options.batch_size, options.num_workers)
        run_loop(trainer.test, task, datamodule=loader, verbose=False)
        seconds = task.seconds
        # every process reaches this sum, with or without images of its own (no collective inside Lightning's hooks)
        confusion += all_reduce_sum(task.local_confusions()).cpu()
    if not primary:
        return None
    if store is not None:
        confusion += store.load(sorted(done))
    result = DatasetScores(data.name, method_scores(methods, confusion, list(data.class_names), len(ids), len(todo),
                                                     seconds, params), record)
    if out is not None:
        result.write(out)
        shutil.rmtree(Path(out) / "partial", ignore_errors=True)  # the results hold everything the parts did
    return result
