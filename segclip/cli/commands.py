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
from segclip.analysis.reconstruct import AblateConfig, ReconstructConfig, run_ablate, run_reconstruct
from segclip.analysis.shift import ShiftConfig, run_shift
from segclip.analysis.sink import SinkConfig, run_sink
from segclip.analysis.subconcepts import SubconceptsConfig, SubconceptsResult, run_subconcepts
from segclip.analysis.top_images import TopImagesConfig, run_top_images
from segclip.explore.site import ExploreConfig, ExploreResult, run_explore
from segclip.segment.run import (
    CompareConfig,
    EvalConfig,
    EvalResult,
    SegmentConfig,
    SegmentResult,
    is_primary,
    run_compare,
    run_eval,
    run_segment,
)


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


ANALYZE = "the paper's analyses (reconstruct, ablate, label, top-images, shift, sink)"


def _analysis(name: str, help: str, config: type, run: Callable) -> Command:
    return Command(name, help, help[0].upper() + help[1:] + ". Writes NAME.json (numbers and protocol), .csv and "
                   ".png into --out; long passes checkpoint there and resume when rerun.", config,
                   lambda c, m, v: run(c, m), write_analysis, group="analyze", group_help=ANALYZE)


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
)

__all__ = ["COMMANDS", "Command", "is_primary"]
