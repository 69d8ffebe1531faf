"""The table of commands: each is a config, a library function and how its result reaches files and stdout."""
from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segclip.analysis.calibration import CalibrateConfig, run_calibrate
from segclip.analysis.decompose import DecomposeConfig, run_decompose
from segclip.analysis.label import LabelConfig, run_label
from segclip.analysis.reconstruct import (
    AblateConfig,
    ReconstructConfig,
    run_ablate,
    run_reconstruct,
)
from segclip.analysis.shift import ShiftConfig, run_shift
from segclip.analysis.sink import SinkConfig, run_sink
from segclip.analysis.subconcepts import SubconceptsConfig, run_subconcepts
from segclip.analysis.top_images import TopImagesConfig, run_top_images
from segclip.errors import OutputError
from segclip.io import read_result, to_jsonable
from segclip.process import is_primary
from segclip.data.prepare import (
    CheckConfig,
    PrepareCityscapesConfig,
    PrepareCocoConfig,
    PreparePascalContextConfig,
    PrepareAde847Config,
    PreparePc459Config,
    run_prepare_ade847,
    run_prepare_pc459,
    run_check,
    run_prepare_cityscapes,
    run_prepare_coco_object,
    run_prepare_coco_stuff,
    run_prepare_pascal_context,
)
from segclip.data.demo import DemoDataConfig, run_demo_data
from segclip.explain.command import ExplainConfig, run_explain
from segclip.explain.demo import DemoConfig, run_demo, serve_demo
from segclip.explore.site import ExploreConfig, run_explore
from segclip.segment.benchmark import BenchmarkConfig, run_benchmark
from segclip.segment.predict import SegmentConfig, run_segment
from segclip.segment.run import CompareConfig, EvalConfig, run_compare, run_eval


def emit(result: Any, config: Any, as_json: bool = False) -> int:
    """The one way a command's result reaches the user: its files written (``result.write(out)`` when the command
    has an output folder), a short human summary on stdout (markdown tables where tabular) and the files on
    stderr; with ``--json`` the result's JSON on stdout instead. Processes of a DDP run other than the first say
    nothing (rank 0 reports)."""
    if result is None or not is_primary():
        return 0
    out = getattr(config, "out", None)
    if isinstance(result, StoredResult):
        written = result.files
    else:
        written = result.write(out) if out is not None and hasattr(result, "write") else []
    if as_json:
        payload = result.to_dict() if hasattr(result, "to_dict") else to_jsonable(result)
        sys.stdout.write(json.dumps(to_jsonable(payload), indent=1) + "\n")
    else:
        summary = result.summary(per_class=True) if getattr(config, "per_class", None) is True else result.summary()
        sys.stdout.write(summary if summary.endswith("\n") or not summary else summary + "\n")
    skipped = getattr(result, "skipped", None)
    for name, why in (skipped.items() if isinstance(skipped, dict) else ()):
        print(f"skipped {name} ({why['state']}): {why['reason']}", file=sys.stderr)
    if written:
        print(f"results: {', '.join(str(p) for p in written)}", file=sys.stderr)
    return 0


RUN_ONLY = ("overwrite", "progress", "devices", "num_nodes", "num_workers", "batch_size", "checkpoint_every")


@dataclass
class StoredResult:
    """A finished analysis found in its output folder: what it printed, and its files."""

    files: list[Path]
    text: str

    def summary(self) -> str:
        return self.text + "(read back from the finished output folder; --overwrite recomputes it)\n"


def finished_analysis(config: Any, model_config: Any, result_file: str | None) -> StoredResult | None:
    """The stored result of an analysis (or ``segment``) run with the same model and options (a finished command
    re-run prints it and exits 0); None when there is none, it differs, or ``--overwrite`` asks to recompute. An older
    layout or a different run is left to the command itself, which refuses to replace it."""
    if result_file is None or getattr(config, "overwrite", True) or getattr(config, "out", None) is None:
        return None
    path = Path(config.out) / result_file
    if not path.is_file():
        return None
    try:
        envelope = read_result(path)
    except OutputError:
        return None
    stored, model = envelope["provenance"].get("config") or {}, envelope["provenance"].get("model") or {}
    current = to_jsonable(config)
    same_model = model_config is None or (
        model.get("name") == model_config.model
        and (model_config.pretrained is None or str(model_config.pretrained) == model.get("pretrained")))
    same = same_model and {k: v for k, v in stored.items() if k not in RUN_ONLY} == \
        {k: v for k, v in current.items() if k not in RUN_ONLY}
    if not same or "summary" not in envelope:
        return None
    files = [p for p in (path, path.with_suffix(".csv"), path.with_suffix(".png")) if p.is_file()]
    return StoredResult(files, envelope["summary"])


@dataclass(frozen=True)
class Command:
    """One subcommand: ``run(config, model, verbose) -> result``, reported by :func:`emit`."""

    name: str
    help: str
    description: str
    config: type
    run: Callable[[Any, Any, bool], Any]
    needs_model: bool = True
    group: str | None = None
    group_help: str | None = None
    group_metavar: str = "COMMAND"
    result_file: str | None = None  # an analysis's <name>.json: a finished run re-run is read back


ANALYZE = "the paper's analyses (reconstruct, ablate, label, top-images, shift, sink)"


def _analysis(name: str, help: str, config: type, run: Callable) -> Command:
    return Command(name, help, help[0].upper() + help[1:] + ". Writes NAME.json (numbers and protocol), .csv and "
                   ".png into --out; long passes checkpoint there and resume when rerun.", config,
                   lambda c, m, v: run(c, m), group="analyze", group_help=ANALYZE,
                   group_metavar="ANALYSIS", result_file=f"{name}.json")


PREPARE = ("convert the benchmark datasets to the layouts mmsegmentation's converters write (no mmcv needed), or "
           "check a data root")


def _prepare(name: str, help: str, description: str, config: type, run: Callable) -> Command:
    return Command(name, help, description, config, lambda c, m, v: run(c), needs_model=False,
                   group="prepare", group_help=PREPARE, group_metavar="DATASET")


COMMANDS: tuple[Command, ...] = (
    Command("decompose", "decompose images into neuron-head pairs; print the identity check and the top pairs per word",
            "Run the model on images (default: the bundled example scene), check that the neuron-head pairs sum "
            "exactly to the image embedding, and list the pairs that contribute most to the image's similarity "
            "with each word.", DecomposeConfig, lambda c, m, v: run_decompose(c, m)),
    Command("eval", "score one segmentation method on a dataset (mIoU)",
            "Segment a dataset with the sliding-window protocol and report mIoU, pixel accuracy and per-class IoU.",
            EvalConfig, lambda c, m, v: run_eval(c, m, verbose=v)),
    Command("compare", "score several methods from one backbone pass; print a markdown table",
            "Segment a dataset with the sliding-window protocol and report mIoU, pixel accuracy and per-class IoU. "
            "Every method reads the same backbone pass.",
            CompareConfig, lambda c, m, v: run_compare(c, m, verbose=v)),
    Command("segment", "segment image files from a class list",
            "Segment images by class names: per image a label PNG (class indices in list order), a colour overlay "
            "with a legend and, with --heatmaps, one probability heatmap per class. Text embeddings of fewer than "
            "10 classes are centred against a reference vocabulary (the bundled model's classes or the 59 PASCAL "
            "Context names), not over the class list.",
            SegmentConfig, lambda c, m, v: run_segment(c, m), result_file="segment.json"),
    Command("calibrate", "compute pair signs, mean pair scalars and register neurons",
            "Stream an image folder once (resumable) and save the calibration artifact used by the neuron-head "
            "method: pair signs, mean pair scalars, register neurons, plus the full statistics.",
            CalibrateConfig, lambda c, m, v: run_calibrate(c, m)),
    _analysis("reconstruct", "zero-shot accuracy with rank-one pairs and 1..4 neuron PCs (Table 1)",
              ReconstructConfig, run_reconstruct),
    _analysis("ablate", "mean-ablation curves of pairs, neuron contributions and activations (Fig. 1)",
              AblateConfig, run_ablate),
    _analysis("label", "sparse text decomposition of every pair, neuron PC and head PC by OMP; accuracy vs m "
              "(Fig. 2); top words (Table 2)", LabelConfig, run_label),
    _analysis("top-images", "top images per neuron, head and pair as montages; inertia (Figs. 3-4)",
              TopImagesConfig, run_top_images),
    _analysis("shift", "per-image concept scores aggregated by group (section 5.2)", ShiftConfig, run_shift),
    _analysis("sink", "class-token attention to the last token per head; register neurons (A.6)", SinkConfig,
              run_sink),
    Command("subconcepts", "pairs whose top images are a coherent part of their neuron's concept, labelled (A.3)",
            "For each neuron, find the pairs whose top images form a coherent subset of the neuron's (top-image "
            "overlap, response, spread, centroid distance), label each by a sparse decomposition of the centroid "
            "difference over a vocabulary, and write a ranked subconcepts.json / .csv with a montage per hit.",
            SubconceptsConfig, lambda c, m, v: run_subconcepts(c, m), group="analyze",
            group_help=ANALYZE),
    Command("explore", "build a static, offline explorer of pairs, neurons and heads (open index.html)",
            "Write a static site that opens by double-click from disk (no server, no network): a page per "
            "neuron-head pair (top images with the pair's spatial map, words, statistics, siblings), neuron and head, "
            "search by word, and the units with the largest contributions on the landing page.",
            ExploreConfig, lambda c, m, v: run_explore(c, m)),
    Command("benchmark", "the field's eight benchmarks with every method: one table of mIoU",
            "Run every requested benchmark found under --data-root (voc21, context60, coco_object, voc20, "
            "context59, coco_stuff, cityscapes, ade20k) with every method from one backbone pass per window, each "
            "with its protocol and its class file's queries (synonyms as their own queries, the max over them). "
            "Prints a markdown table (mIoU per dataset and the average) and writes OUT/results.json and .csv; "
            "missing or invalid datasets are skipped and reported. Interrupted runs resume when run again.",
            BenchmarkConfig, lambda c, m, v: run_benchmark(c, m, verbose=v)),
    Command("demo-data", "write the demo data the README's analysis and explorer sections use (seconds)",
            "Write, from seeded random streams, every folder the README's analysis and explorer sections use: "
            "labelled/ and noisy/ (single-class images per class), scenes/ (synthetic scenes), shift/images with "
            "shift/groups.csv, and classes.txt (the bundled model's 12 classes). The same options give the same "
            "bytes; a folder already holding them is left as it is.",
            DemoDataConfig, lambda c, m, v: run_demo_data(c), needs_model=False),
    Command("explain", "why a pixel is a class: its logit split into the method's units, and what removing them does",
            "Segment an image, split the class logit at a pixel (--at X,Y) or over a region (--region MASK.png) "
            "exactly into the method's units (neuron-head pairs, or heads), and remove the top units to see the "
            "segmentation change. Writes OUT/explain.png (the point, the class scores, the top units with their "
            "maps, the segmentation before and after) and OUT/explain.json.",
            ExplainConfig, lambda c, m, v: run_explain(c, m)),
    Command("demo", "a local web app: upload an image, type classes, click a pixel, toggle units (needs segclip[demo])",
            "Start a Gradio app on 127.0.0.1 (no share link, no analytics, nothing fetched from the network): "
            "upload or pick the example image, type classes, choose the model and method, see the segmentation and "
            "per-class heatmaps, click a pixel for its top units and their maps, switch units off or scale them and "
            "see the segmentation change side by side.",
            DemoConfig, lambda c, m, v: serve_demo(run_demo(c, m), c)),
    _prepare("pascal_context", "PASCAL Context 59/60 label maps and split files from trainval_merged.json",
             "Write VOC2010/SegmentationClassContext/*.png and ImageSets/SegmentationContext/{train,val}.txt as "
             "mmsegmentation's converter writes them with the Detail API (byte-identical), from "
             "trainval_merged.json and the VOC2010 devkit.", PreparePascalContextConfig, run_prepare_pascal_context),
    _prepare("coco_stuff", "COCO-Stuff 164k labelTrainIds (0..170) from the stuffthingmaps",
             "Write annotations/<split>/<id>_labelTrainIds.png next to each stuffthingmap (mmsegmentation's "
             "mapping).", PrepareCocoConfig, run_prepare_coco_stuff),
    _prepare("coco_object", "COCO-Object instanceTrainIds (0 background, 1..80) from the stuffthingmaps",
             "Write annotations/<split>/<id>_instanceTrainIds.png next to each stuffthingmap (things to 1..80, "
             "stuff and unlabelled to 0, as the SCLIP family's converter).", PrepareCocoConfig,
             run_prepare_coco_object),
    _prepare("cityscapes", "Cityscapes gtFine labelTrainIds (0..18, 255) from the labelIds",
             "Write *_gtFine_labelTrainIds.png next to each *_gtFine_labelIds.png (cityscapesscripts' id -> "
             "trainId table).", PrepareCityscapesConfig, run_prepare_cityscapes),
    _prepare("pc459", "PASCAL Context 459 label TIFFs from the 459-class trainval/*.mat (CAT-Seg's converter)",
             "Write VOC2010/annotations_detectron2/pc459_val/<id>.tif (16-bit, LabelMap - 1) for every val id, as "
             "CAT-Seg's datasets/prepare_pascal_context_459.py does.", PreparePc459Config, run_prepare_pc459),
    _prepare("ade847", "ADE20K-847 images and label TIFFs from ADE20K_2021_17_01 (CAT-Seg's converter)",
             "Write ADE20K_2021_17_01/images_detectron2/validation/*.jpg (short side at most 512) and "
             "annotations_detectron2/validation/*.tif (16-bit train ids 0..846, 65535 = other) from "
             "index_ade20k.pkl, as CAT-Seg's datasets/prepare_ade20k_full.py does.", PrepareAde847Config,
             run_prepare_ade847),
    _prepare("check", "report which of the ten benchmarks are present and valid under a data root",
             "Look for each benchmark under --data-root (mmsegmentation's data/ layout), check its files and the "
             "first labels, and print a table: state, images against the standard val size, what to do.",
             CheckConfig, run_check),
)

__all__ = ["COMMANDS", "Command", "emit", "finished_analysis"]
