"""``segclip benchmark``: the field's eight datasets, every method, one table (config -> run -> result -> write).

Every requested dataset (:data:`~segclip.data.benchmarks.BENCHMARKS`) is checked under the data root before any
model work; missing or invalid ones are skipped and reported (with the reason). Each present dataset runs with
its protocol (:mod:`segclip.data.protocols`, scaled to the model's crop) and its class file's queries: the methods
are built on the distinct query names (the pair methods select their top-k pairs per query), one backbone pass per
window feeds every method, and labels come from the query rule (:class:`~segclip.segment.pipeline.QueryLabelRule`)
with the protocol's logit scale and thresholds. An output folder holds::

    results.json, results.csv          the table: per dataset mIoU per method, and the average over datasets
    <dataset>/...                      per dataset, exactly what ``segclip eval --out`` writes (the same code:
                                       :func:`segclip.segment.evaluate.evaluate_dataset`): results.json / .csv
                                       (per-class IoU, confusion matrices, the full protocol), partial/ while it runs,
                                       predictions/<method>/<image id>.png with ``save_predictions`` (16-bit PNGs
                                       for PC-459 and ADE-847)

An interrupted run resumes per dataset and per image when run again with the same options; a finished dataset is
read back, not recomputed.
"""
from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segclip.config import ShortRepr, check_positive, option
from segclip.core.calibration import calibration_note
from segclip.data.benchmarks import BENCHMARKS, SPECS, BenchmarkDataset, canonical_name, dataset_root
from segclip.data.protocols import PROTOCOL_NAMES, benchmark_protocol
from segclip.data.queries import read_query_file
from segclip.errors import ConfigError, DataError, SegclipError
from segclip.io import atomic_write_bytes, provenance, write_result
from segclip.models.loading import ModelSource, resolve_model
from segclip.process import is_primary, make_trainer, quiet_lightning
from segclip.segment.evaluate import DatasetRun, DatasetScores, evaluate_dataset
from segclip.segment.methods import METHODS
from segclip.segment.options import RunOptions, check_method_list
from segclip.segment.results import check_outputs

log = logging.getLogger(__name__)

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
    protocol: str = option("sclip", choices=PROTOCOL_NAMES,
                           help="sclip (every dataset: SCLIP's sizes, logit scales and thresholds scaled to the "
                                "model's crop; default) or paper (the paper's PASCAL Context protocol, the default "
                                "of `segclip eval`; context59 and context60 only).")
    roots: tuple[str, ...] = option((), help="per-dataset folders overriding the data root, NAME=PATH "
                                             "comma-separated (e.g. voc21=/data/VOC2012).")
    class_files: tuple[str, ...] = option((), help="your own class files in the SCLIP format (one line per class, "
                                                   "synonyms separated by ', '), NAME=FILE comma-separated.")
    short_side: int | None = option(None, help="override every dataset's protocol short side (default: the "
                                               "protocol's).")
    stride: int | None = option(None, help="override every dataset's protocol stride (default: the protocol's).")
    limit: int | None = option(None, help="evaluate the first N images of each dataset only.")
    save_predictions: bool = option(False, help="write OUT/<dataset>/predictions/<method>/<id>.png (0-based class "
                                                "indices).")
    per_class: bool = option(False, help="also print each dataset's per-class IoU table.")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, "limit")
        check_method_list(self.methods)
        if self.protocol not in PROTOCOL_NAMES:
            raise ConfigError(f"Unknown protocol {self.protocol!r}; choose from {', '.join(PROTOCOL_NAMES)}.")
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
class BenchmarkResult(ShortRepr):
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
        """The ``results`` of ``results.json`` (its ``provenance`` is :attr:`provenance`)."""
        return {"table": {row["method"]: {k: v for k, v in row.items() if k != "method"} for row in self.rows()},
                "datasets": {d.name: {"images": d.scores[0].images, "provenance": d.provenance,
                                      "scores": [{k: v for k, v in vars(s).items() if k != "confusion_matrix"}
                                                 for s in d.scores],
                                      "files": f"{d.name}/results.json (confusion matrices), {d.name}/results.csv"}
                             for d in self.datasets},
                "skipped": self.skipped, "column_order": [d.name for d in self.datasets],
                "average_over": [d.name for d in self.datasets]}

    def summary(self, per_class: bool = False) -> str:
        """The table and the calibration used, and with ``per_class`` each dataset's per-class IoU."""
        first = self.datasets[0].provenance.get("calibration") if self.datasets else None
        text = self.table() + "\n" + calibration_note(first) + "\n"
        if per_class:
            for d in self.datasets:
                text += f"\n{d.name}\n\n" + d.table(per_class=True)
        return text

    def write(self, out: str | Path) -> list[Path]:
        """Write ``results.json`` / ``results.csv`` into ``out`` (each dataset's own pair is in ``out/<dataset>/``,
        written when it finished), atomically."""

        out = Path(out)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        names = [d.name for d in self.datasets]
        writer.writerow(["method", *names, "average"])
        for row in self.rows():
            writer.writerow([row["method"], *(row[n] for n in names), row["average"]])
        atomic_write_bytes(out / "results.csv", buffer.getvalue().encode())
        write_result(out / "results.json", self.provenance, self.to_dict())
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
        folder = roots.get(name) or dataset_root(name, config.data_root)
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
    if is_primary():
        check_outputs(Path(config.out), True)  # writable, before any model work; finished datasets are read back
    model = resolve_model(model)
    trainer = make_trainer(model.device, config, progress=config.progress)
    results = [evaluate_dataset(model, DatasetRun(data, benchmark_protocol(data.name, config.protocol)),
                                list(config.methods), config, trainer, out=Path(config.out) / data.name,
                                save_predictions=config.save_predictions)
               for data in datasets.values()]
    record = provenance(model.info, config, protocol=config.protocol, datasets_run=list(datasets),
                        skipped=skipped, device=str(model.device), dtype=str(model.dtype).removeprefix("torch."))
    if not is_primary():
        return BenchmarkResult([], skipped, list(config.methods), record)
    return BenchmarkResult([r for r in results if r is not None], skipped, list(config.methods), record)
