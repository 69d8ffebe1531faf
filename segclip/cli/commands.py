"""The table of commands: each is a config, a library function and how its result reaches files and stdout."""
from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from segclip.analysis.calibration import CalibrateConfig, run_calibrate
from segclip.analysis.common import AnalysisResult
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
from segclip.analysis.subconcepts import (
    SubconceptsConfig,
    SubconceptsResult,
    run_subconcepts,
)
from segclip.analysis.top_images import TopImagesConfig, run_top_images
from segclip.data.prepare import (
    CheckConfig,
    CheckResult,
    PrepareCityscapesConfig,
    PrepareCocoConfig,
    PrepareLabelsResult,
    PreparePascalContextConfig,
    PreparePascalContextResult,
    format_check,
    run_check,
    run_prepare_cityscapes,
    run_prepare_coco_object,
    run_prepare_coco_stuff,
    run_prepare_pascal_context,
)
from segclip.explain.command import ExplainConfig, run_explain, write_explanation
from segclip.explain.demo import DemoConfig, run_demo, serve_demo
from segclip.explore.site import ExploreConfig, ExploreResult, run_explore
from segclip.segment.benchmark import BenchmarkConfig, BenchmarkResult, run_benchmark
from segclip.segment.lightning import is_primary
from segclip.segment.predict import SegmentConfig, SegmentResult, run_segment
from segclip.segment.run import CompareConfig, EvalConfig, EvalResult, run_compare, run_eval


def print_summary(result: Any, config: Any) -> int:
    sys.stdout.write(result.summary())
    return 0


def print_primary(result: Any, config: Any) -> int:
    return print_summary(result, config) if is_primary() else 0  # DDP: rank 0 reports


def write_analysis(result: AnalysisResult, config: Any) -> int:
    if not is_primary():  # a DDP process other than the first: rank 0 writes the results
        return 0
    written = result.write(config.out)
    sys.stderr.write(f"results: {', '.join(str(p) for p in written)}\n")
    sys.stdout.write(result.summary())
    return 0


def write_scores(result: EvalResult, config: Any) -> int:
    if not result.scores:  # a DDP process other than the first
        return 0
    sys.stdout.write(result.table())
    if config.out is not None:
        written = result.write(config.out)
        print(f"wrote {' and '.join(str(p) for p in written)}", file=sys.stderr)
    return 0


def write_benchmark(result: BenchmarkResult, config: BenchmarkConfig) -> int:
    if not result.datasets:  # a DDP process other than the first
        return 0
    sys.stdout.write(result.table())
    written = result.write(config.out)
    for name, why in result.skipped.items():
        print(f"skipped {name} ({why['state']}): {why['reason']}", file=sys.stderr)
    print(f"wrote {' and '.join(str(p) for p in written)} (and one folder per dataset)", file=sys.stderr)
    return 0


def write_pascal_context(result: PreparePascalContextResult, config: PreparePascalContextConfig) -> int:
    print(f"PASCAL Context: {result.ids['train']} train and {result.ids['val']} val ids, {result.labels_written} "
          f"label maps in {result.label_dir} ({result.all_background} all background); split files "
          f"{result.split_files['train']} and {result.split_files['val']}")
    if result.duplicate_annotation_ids:
        print(f"{result.duplicate_annotation_ids} annotations repeated an earlier id; the later one was kept, as "
              "the Detail API does", file=sys.stderr)
    return 0


def write_labels(result: PrepareLabelsResult, config: Any) -> int:
    for split, count in result.written.items():
        print(f"{split}: {count} label maps written in {result.out_dirs[split]}")
    for path, values in result.unmapped.items():
        print(f"{path}: values {values} outside the table were left unchanged", file=sys.stderr)
    return 0


def print_check(result: CheckResult, config: CheckConfig) -> int:
    print(format_check(result))
    print(f"{len(result.valid)} of {len(result.statuses)} ready: {', '.join(result.valid) or 'none'}")
    return 0


def write_segmentation(result: SegmentResult, config: SegmentConfig) -> int:
    result.write(config.out)
    print(f"segmented {len(result.files)} image(s) into {config.out}")
    return 0


def print_site(result: ExploreResult, config: ExploreConfig) -> int:
    print(f"wrote the explorer to {result.index} ({result.pairs_kept:,} of {result.pairs_total:,} pairs with a page, "
          f"contribution >= {result.threshold:.4g}; {result.images_traced} images traced; {result.bytes / 1e6:.1f} MB "
          f"in {result.seconds:.0f} s); open it in a browser")
    return 0


def print_subconcepts(result: SubconceptsResult, config: SubconceptsConfig) -> int:
    print(f"{result.found} sub-concept pairs of {result.pairs:,} ({len(result.hits)} kept, best first):")
    for hit in result.hits[:10]:
        print(f"  {hit.rank:3d}. pair {hit.neuron}:{hit.head} (neuron {hit.neuron}) score {hit.score:.3f}: "
              f"{hit.words}")
    sys.stderr.write(f"results: {result.json}, {result.csv}\n")
    return 0


@dataclass(frozen=True)
class Command:
    """One subcommand: ``run(config, model, verbose) -> result`` and ``emit(result, config) -> exit code``."""

    name: str
    help: str
    description: str
    config: type
    run: Callable[[Any, Any, bool], Any]
    emit: Callable[[Any, Any], int]
    needs_model: bool = True
    group: str | None = None
    group_help: str | None = None
    group_metavar: str = "COMMAND"


ANALYZE = "the paper's analyses (reconstruct, ablate, label, top-images, shift, sink)"


def _analysis(name: str, help: str, config: type, run: Callable) -> Command:
    return Command(name, help, help[0].upper() + help[1:] + ". Writes NAME.json (numbers and protocol), .csv and "
                   ".png into --out; long passes checkpoint there and resume when rerun.", config,
                   lambda c, m, v: run(c, m), write_analysis, group="analyze", group_help=ANALYZE,
                   group_metavar="ANALYSIS")


PREPARE = ("convert the benchmark datasets to the layouts mmsegmentation's converters write (no mmcv needed), or "
           "check a data root")


def _prepare(name: str, help: str, description: str, config: type, run: Callable, emit: Callable) -> Command:
    return Command(name, help, description, config, lambda c, m, v: run(c), emit, needs_model=False,
                   group="prepare", group_help=PREPARE, group_metavar="DATASET")


COMMANDS: tuple[Command, ...] = (
    Command("decompose", "decompose images into neuron-head pairs; print the identity check and the top pairs per word",
            "Run the model on images (default: the bundled example scene), check that the neuron-head pairs sum "
            "exactly to the image embedding, and list the pairs that contribute most to the image's similarity "
            "with each word.", DecomposeConfig, lambda c, m, v: run_decompose(c, m), print_summary),
    Command("eval", "score one segmentation method on a dataset (mIoU)",
            "Segment a dataset with the sliding-window protocol and report mIoU, pixel accuracy and per-class IoU.",
            EvalConfig, lambda c, m, v: run_eval(c, m, verbose=v), write_scores),
    Command("compare", "score several methods from one backbone pass; print a markdown table",
            "Segment a dataset with the sliding-window protocol and report mIoU, pixel accuracy and per-class IoU. "
            "Every method reads the same backbone pass.",
            CompareConfig, lambda c, m, v: run_compare(c, m, verbose=v), write_scores),
    Command("segment", "segment image files from a class list",
            "Segment images by class names: per image a label PNG (class indices in list order), a colour overlay "
            "with a legend and, with --heatmaps, one probability heatmap per class. Text embeddings of fewer than "
            "10 classes are centred against a reference vocabulary (the bundled model's classes or the 59 PASCAL "
            "Context names), not over the class list.",
            SegmentConfig, lambda c, m, v: run_segment(c, m), write_segmentation),
    Command("calibrate", "compute pair signs, mean pair scalars and register neurons",
            "Stream an image folder once (resumable) and save the calibration artifact used by the neuron-head "
            "method: pair signs, mean pair scalars, register neurons, plus the full statistics.",
            CalibrateConfig, lambda c, m, v: run_calibrate(c, m), print_primary),
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
            SubconceptsConfig, lambda c, m, v: run_subconcepts(c, m), print_subconcepts, group="analyze",
            group_help=ANALYZE),
    Command("explore", "build a static, offline explorer of pairs, neurons and heads (open index.html)",
            "Write a static site that opens by double-click from disk (no server, no network): a page per "
            "neuron-head pair (top images with the pair's spatial map, words, statistics, siblings), neuron and head, "
            "search by word, and the units with the largest contributions on the landing page.",
            ExploreConfig, lambda c, m, v: run_explore(c, m), print_site),
    Command("benchmark", "the field's eight benchmarks with every method: one table of mIoU",
            "Run every requested benchmark found under --data-root (voc21, context60, coco_object, voc20, "
            "context59, coco_stuff, cityscapes, ade20k) with every method from one backbone pass per window, each "
            "with its protocol and its class file's queries (synonyms as their own queries, the max over them). "
            "Prints a markdown table (mIoU per dataset and the average) and writes OUT/results.json and .csv; "
            "missing or invalid datasets are skipped and reported. Interrupted runs resume when run again.",
            BenchmarkConfig, lambda c, m, v: run_benchmark(c, m, verbose=v), write_benchmark),
    Command("explain", "why a pixel is a class: its logit split into the method's units, and what removing them does",
            "Segment an image, split the class logit at a pixel (--at X,Y) or over a region (--region MASK.png) "
            "exactly into the method's units (neuron-head pairs, or heads), and remove the top units to see the "
            "segmentation change. Writes OUT/explain.png (the point, the class scores, the top units with their "
            "maps, the segmentation before and after) and OUT/explain.json.",
            ExplainConfig, lambda c, m, v: run_explain(c, m), write_explanation),
    Command("demo", "a local web app: upload an image, type classes, click a pixel, toggle units (needs segclip[demo])",
            "Start a Gradio app on 127.0.0.1 (no share link, no analytics, nothing fetched from the network): "
            "upload or pick the example image, type classes, choose the model and method, see the segmentation and "
            "per-class heatmaps, click a pixel for its top units and their maps, switch units off or scale them and "
            "see the segmentation change side by side.",
            DemoConfig, lambda c, m, v: run_demo(c, m), serve_demo),
    _prepare("pascal_context", "PASCAL Context 59/60 label maps and split files from trainval_merged.json",
             "Write VOC2010/SegmentationClassContext/*.png and ImageSets/SegmentationContext/{train,val}.txt as "
             "mmsegmentation's converter writes them with the Detail API (byte-identical), from "
             "trainval_merged.json and the VOC2010 devkit.", PreparePascalContextConfig, run_prepare_pascal_context,
             write_pascal_context),
    _prepare("coco_stuff", "COCO-Stuff 164k labelTrainIds (0..170) from the stuffthingmaps",
             "Write annotations/<split>/<id>_labelTrainIds.png next to each stuffthingmap (mmsegmentation's "
             "mapping).", PrepareCocoConfig, run_prepare_coco_stuff, write_labels),
    _prepare("coco_object", "COCO-Object instanceTrainIds (0 background, 1..80) from the stuffthingmaps",
             "Write annotations/<split>/<id>_instanceTrainIds.png next to each stuffthingmap (things to 1..80, "
             "stuff and unlabelled to 0, as the SCLIP family's converter).", PrepareCocoConfig,
             run_prepare_coco_object, write_labels),
    _prepare("cityscapes", "Cityscapes gtFine labelTrainIds (0..18, 255) from the labelIds",
             "Write *_gtFine_labelTrainIds.png next to each *_gtFine_labelIds.png (cityscapesscripts' id -> "
             "trainId table).", PrepareCityscapesConfig, run_prepare_cityscapes, write_labels),
    _prepare("check", "report which of the eight benchmarks are present and valid under a data root",
             "Look for each benchmark under --data-root (mmsegmentation's data/ layout), check its files and the "
             "first labels, and print a table: state, images against the standard val size, what to do.",
             CheckConfig, run_check, print_check),
)

__all__ = ["COMMANDS", "Command", "is_primary"]
