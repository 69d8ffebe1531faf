"""``segclip calibrate`` and ``segclip analyze <name>``: the paper's analyses as commands.

Each analysis reads a model and image folders, shows progress, and writes ``<name>.json`` (numbers plus the full
protocol: model info with weights hash, arguments, package versions, git revision), ``<name>.csv`` and
``<name>.png`` into ``--out``, atomically. Long passes checkpoint into ``--out`` and resume when rerun.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segclip.analysis.components import PC_SAMPLES, UNITS
from segclip.errors import ConfigError
from segclip.provenance import git_revision, package_versions


def register(subparsers, common: argparse.ArgumentParser) -> None:
    calibrate = subparsers.add_parser(
        "calibrate", parents=[common], help="compute pair signs, mean pair scalars and register neurons",
        description="Stream an image folder once (resumable) and save the calibration artifact used by the "
                    "neuron-head method: pair signs, mean pair scalars, register neurons, plus the full statistics.")
    calibrate.add_argument("--images", type=Path, required=True, help="folder of calibration images.")
    calibrate.add_argument("--out", type=Path, default=None,
                           help="artifact path (default: <segclip cache>/calibration/<model>-<weights>.safetensors).")
    calibrate.add_argument("--limit", type=int, default=None, help="use at most N images (sorted by name).")
    calibrate.add_argument("--registers", type=int, default=32, help="register neurons kept (default: 32).")
    calibrate.add_argument("--top-k", type=int, default=50, help="top deviations per pair for the sign (default 50).")
    calibrate.add_argument("--chunk-size", type=int, default=64, help="images between checkpoints (default: 64).")
    calibrate.set_defaults(func=run_calibrate)

    analyze = subparsers.add_parser("analyze", help="the paper's analyses (reconstruct, ablate, label, top-images, "
                                                    "shift, sink)")
    commands = analyze.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)
    shared = argparse.ArgumentParser(add_help=False, parents=[common])
    shared.add_argument("--out", type=Path, required=True, help="output folder (numbers, plot, checkpoints).")
    shared.add_argument("--limit", type=int, default=None, help="use at most N images of each folder.")
    shared.add_argument("--statistics", type=Path, default=None,
                        help="statistics artifact to reuse (e.g. from `segclip calibrate`); default: computed "
                             "(resumably) into OUT/statistics.safetensors.")
    shared.add_argument("--top-k", type=int, default=50, help="length of the statistics' top lists (default: 50).")
    shared.add_argument("--chunk-size", type=int, default=64, help="images between checkpoints (default: 64).")
    labelled = argparse.ArgumentParser(add_help=False)
    labelled.add_argument("--images", type=Path, required=True, help="labelled folder: one subfolder per class.")
    labelled.add_argument("--class-names", type=Path, default=None,
                          help="file: one line per class, 'folder' or 'folder<TAB>text name'.")
    labelled.add_argument("--calibration-images", type=Path, default=None,
                          help="folder for the statistics (default: the labelled images).")
    labelled.add_argument("--templates", default="openai", help="text templates: openai, maskclip or single.")

    parser = commands.add_parser("reconstruct", parents=[shared, labelled],
                                 help="zero-shot accuracy with rank-one pairs and 1..4 neuron PCs (Table 1)")
    parser.add_argument("--components", type=int, default=4, help="neuron principal components up to (default 4).")
    parser.add_argument("--pc-samples", choices=PC_SAMPLES, default="all",
                        help="neuron PCs from the covariance over all images, or over each neuron's top-k images "
                             "by contribution norm (paper A.2; k = --top-k) (default: all).")
    parser.set_defaults(func=run_reconstruct)
    parser = commands.add_parser("ablate", parents=[shared, labelled],
                                 help="mean-ablation curves of pairs, neuron contributions and activations (Fig. 1)")
    parser.add_argument("--units", default="pairs,neurons,activations", help="comma-separated unit kinds.")
    parser.add_argument("--fractions", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0",
                        help="kept fractions (default: 10%% steps).")
    parser.set_defaults(func=run_ablate)
    parser = commands.add_parser("label", parents=[shared],
                                 help="sparse text decomposition of every pair, neuron PC and head PC by OMP; "
                                      "accuracy vs m (Fig. 2); top words (Table 2)")
    parser.add_argument("--units", default="pairs,neurons,heads",
                        help="comma-separated units to label: pairs (directions w), neurons and heads (their "
                             "contributions' principal components; need statistics) (default: all three).")
    parser.add_argument("--components", type=int, default=1,
                        help="principal components labelled per neuron and per head (default: 1).")
    parser.add_argument("--pc-samples", choices=PC_SAMPLES, default="all",
                        help="PCs of neurons and heads from all images or from each unit's top-k images by "
                             "contribution norm (paper A.2) (default: all).")
    parser.add_argument("--head-labels", choices=("pcs", "textspan"), default="pcs",
                        help="label heads by OMP of their principal components (pcs), or by TextSpan (Gandelsman et "
                             "al. 2024: m texts greedily spanning the head's variance, from its covariance) "
                             "(default: pcs).")
    parser.add_argument("--images", type=Path, default=None, help="labelled folder for accuracy vs m (optional).")
    parser.add_argument("--class-names", type=Path, default=None, help="as for reconstruct.")
    parser.add_argument("--calibration-images", type=Path, default=None, help="folder for the statistics.")
    parser.add_argument("--templates", default="openai", help="templates of the class texts.")
    parser.add_argument("--vocabulary", type=Path, default=None,
                        help="word file, one per line (default: the 30,000 most common English words, wordfreq).")
    parser.add_argument("--vocabulary-size", type=int, default=30000, help="words from wordfreq (default 30000).")
    parser.add_argument("--words", type=int, default=64, help="m, words per pair (default: 64).")
    parser.add_argument("--record", default="1,2,4,8,16,32,64",
                        help="sparsities j at which accuracy is evaluated, each <= --words (default: 1,2,4,...,64).")
    parser.add_argument("--table", type=int, default=5, help="top words per unit in the CSV (default: 5).")
    parser.add_argument("--table-sparsity", type=int, default=8,
                        help="the CSV's words come from the decomposition with this many words (default: 8; with m "
                             "close to d the full decomposition is ill-conditioned and its coefficients say little).")
    parser.set_defaults(func=run_label)
    parser = commands.add_parser("top-images", parents=[shared],
                                 help="top images per neuron, head and pair as montages; inertia (Figs. 3-4)")
    parser.add_argument("--images", type=Path, required=True, help="image folder.")
    parser.add_argument("--units", type=int, default=3, help="top units of each kind shown (default: 3).")
    parser.add_argument("--count", type=int, default=10, help="images per unit (default: 10).")
    parser.set_defaults(func=run_top_images)
    parser = commands.add_parser("shift", parents=[shared],
                                 help="per-image concept scores aggregated by group (section 5.2)")
    parser.add_argument("--images", type=Path, required=True, help="image folder.")
    parser.add_argument("--groups", type=Path, required=True,
                        help="CSV with columns image, group and optional 0/1 columns named after concepts.")
    parser.add_argument("--concepts", required=True, help="comma-separated concept words.")
    parser.add_argument("--pairs", type=int, default=5, help="top pairs per concept (default: 5).")
    parser.add_argument("--templates", default="openai", help="templates of the concept texts.")
    parser.set_defaults(func=run_shift)
    parser = commands.add_parser("sink", parents=[shared],
                                 help="class-token attention to the last token per head; register neurons (A.6)")
    parser.add_argument("--images", type=Path, required=True, help="image folder.")
    parser.add_argument("--registers", type=int, default=32, help="register neurons listed (default: 32).")
    parser.set_defaults(func=run_sink)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_results(out: Path, name: str, args: argparse.Namespace, model, results: dict[str, Any],
                  rows: list[dict[str, Any]], seconds: float) -> None:
    """``<name>.json`` (protocol + results) and ``<name>.csv`` (rows), atomically."""
    arguments = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "func"}
    protocol = {"analysis": name, "model": model.info.to_dict(), "arguments": arguments, "versions": package_versions(),
                "git_revision": git_revision(), "device": str(model.device), "seconds": round(seconds, 3)}
    _write_text(out / f"{name}.json", json.dumps({"protocol": protocol, "results": results}, indent=2,
                                                default=str))
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    _write_text(out / f"{name}.csv", buffer.getvalue())
    plot = ", .png" if (out / f"{name}.png").is_file() else ""
    sys.stderr.write(f"results: {out / name}.json (numbers and protocol), .csv{plot}\n")


def _setup(args: argparse.Namespace):
    from segclip import cli

    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"Cannot create output folder {out} ({err.strerror}).") from err
    if args.limit is not None and args.limit < 1:
        raise ConfigError("--limit must be at least 1.")
    return out, cli.load_from_args(args)


def _statistics(args: argparse.Namespace, model, paths: list[Path], out: Path):
    """The statistics of ``paths``: reused from --statistics or OUT/statistics.safetensors, else computed."""
    from segclip.analysis.statistics import Statistics, collect_statistics

    path = Path(args.statistics) if args.statistics else out / "statistics.safetensors"
    if path.is_file():
        stats = Statistics.load(path)
        same_model = (stats.metadata.get("model"), stats.metadata.get("weights_hash")) == \
            (model.info.name, model.info.weights_hash)
        if args.statistics or (same_model and stats.metadata.get("images") == [p.name for p in paths]):
            if not same_model:
                raise ConfigError(f"--statistics {path} was computed for another model "
                                  f"({stats.metadata.get('model')}); compute it for {model.info.name}.")
            return stats
    checkpoint = out / "statistics.partial.safetensors"
    stats = collect_statistics(model, paths, top_k=args.top_k, batch_size=args.batch_size,
                               chunk_size=args.chunk_size, checkpoint=checkpoint)
    stats.save(path)
    checkpoint.unlink(missing_ok=True)
    return stats


def _labelled(args: argparse.Namespace, model):
    from segclip.analysis.evaluation import read_labelled_folder
    from segclip.data.images import list_images
    from segclip.models.text import encode_classes

    paths, labels, names = read_labelled_folder(args.images, args.class_names)
    if args.limit is not None:
        keep = torch.randperm(len(paths), generator=torch.Generator().manual_seed(0))[:args.limit].sort().values
        paths, labels = [paths[i] for i in keep.tolist()], labels[keep]
    calibration = list_images(args.calibration_images)[:args.limit] if args.calibration_images else paths
    texts = encode_classes(model, names, args.templates).to(model.device, torch.float64)
    return paths, labels, names, calibration, texts


def _evaluate(args, model, out: Path, name: str, conditions: dict, paths, labels, texts) -> dict[str, float]:
    from segclip.analysis.evaluation import ConditionAccuracy
    from segclip.analysis.stream import run_pass

    accumulator = ConditionAccuracy(conditions, texts, labels)
    run_pass(model, paths, accumulator, key={"kind": name, "conditions": list(conditions)},
             checkpoint=out / f"{name}.partial.safetensors", batch_size=args.batch_size, chunk_size=args.chunk_size,
             description=name)
    (out / f"{name}.partial.safetensors").unlink(missing_ok=True)
    return accumulator.accuracies()


def run_calibrate(args: argparse.Namespace) -> int:
    from segclip import cli
    from segclip.analysis.calibration import calibrate

    model = cli.load_from_args(args)
    start = time.perf_counter()
    calibration = calibrate(model, args.images, out=args.out, limit=args.limit, registers=args.registers,
                            top_k=args.top_k, batch_size=args.batch_size, chunk_size=args.chunk_size)
    summary = calibration.to_dict()
    sys.stdout.write(f"calibrated {summary['model']} on {summary['count']} images in "
                     f"{time.perf_counter() - start:.1f}s; {100 * summary['positive_signs']:.1f}% positive signs; "
                     f"register neurons {summary['registers'][:8]}...\n")
    return 0


def run_reconstruct(args: argparse.Namespace) -> int:
    from segclip.analysis.evaluation import neuron_pca_condition, rank_one_condition
    from segclip.viz.plots import line_plot

    out, model = _setup(args)
    start = time.perf_counter()
    paths, labels, _, calibration, texts = _labelled(args, model)
    stats = _statistics(args, model, calibration, out)
    conditions = {"baseline": lambda trace: trace.output, "pairs rank-1": rank_one_condition(model.pool, stats)}
    for p in range(1, args.components + 1):
        conditions[f"neurons {p} PC"] = neuron_pca_condition(model.pool, stats, p, args.pc_samples)
    accuracy = _evaluate(args, model, out, "reconstruct", conditions, paths, labels, texts)
    pcs = list(range(1, args.components + 1))
    line_plot(out / "reconstruct.png", {"neurons": (pcs, [accuracy[f"neurons {p} PC"] for p in pcs]),
                                        "pairs (rank 1)": ([1], [accuracy["pairs rank-1"]])},
              xlabel="principal components", ylabel="zero-shot accuracy (%)", baseline=accuracy["baseline"],
              title=f"Reconstruction ({model.info.name}, {len(paths)} images)")
    write_results(out, "reconstruct", args, model, {"accuracy": accuracy, "images": len(paths),
                                                    "statistics_images": stats.count,
                                                    "neuron_pcs_from": _pc_source(args.pc_samples, stats)},
                  [{"condition": k, "accuracy": v} for k, v in accuracy.items()], time.perf_counter() - start)
    sys.stdout.write("".join(f"{k}: {v:.2f}%\n" for k, v in accuracy.items()))
    return 0


def run_ablate(args: argparse.Namespace) -> int:
    from segclip.analysis.evaluation import ablation_condition
    from segclip.viz.plots import line_plot

    out, model = _setup(args)
    start = time.perf_counter()
    units = parse_units(args.units, ("pairs", "neurons", "activations"))
    try:
        fractions = [float(f) for f in args.fractions.split(",")]
    except ValueError:
        raise ConfigError(f"--fractions must be comma-separated numbers, got '{args.fractions}'.") from None
    if not fractions or not all(0 <= f <= 1 for f in fractions):
        raise ConfigError("--fractions must lie in [0, 1].")
    paths, labels, _, calibration, texts = _labelled(args, model)
    stats = _statistics(args, model, calibration, out)
    conditions = {"baseline": lambda trace: trace.output}
    for unit in units:
        for fraction in fractions:
            conditions[f"{unit} {fraction:g}"] = ablation_condition(model.pool, stats, unit, fraction)
    accuracy = _evaluate(args, model, out, "ablate", conditions, paths, labels, texts)
    percent = [100 * f for f in fractions]
    line_plot(out / "ablate.png", {u: (percent, [accuracy[f"{u} {f:g}"] for f in fractions]) for u in units},
              xlabel="top % kept (rest mean-ablated)", ylabel="zero-shot accuracy (%)",
              baseline=accuracy["baseline"], title=f"Mean-ablation ({model.info.name})")
    rows = [{"unit": u, "kept_fraction": f, "accuracy": accuracy[f"{u} {f:g}"]} for u in units for f in fractions]
    write_results(out, "ablate", args, model, {"accuracy": accuracy, "images": len(paths),
                                               "ranking": f"mean of the top {stats.norm_k} norms"},
                  rows, time.perf_counter() - start)
    sys.stdout.write("".join(f"{k}: {v:.2f}%\n" for k, v in accuracy.items()))
    return 0


def parse_units(text: str, allowed: tuple[str, ...] = UNITS, option: str = "--units") -> list[str]:
    """Comma-separated unit kinds, in order, each once.

    Raises:
        ConfigError: empty, or a kind not in ``allowed``.
    """
    units = list(dict.fromkeys(u.strip() for u in text.split(",") if u.strip()))
    unknown = [u for u in units if u not in allowed]
    if unknown or not units:
        raise ConfigError(f"{option} got '{text}'" + (f" (unknown: {', '.join(unknown)})" if unknown else "")
                          + f"; use a comma-separated subset of {', '.join(allowed)}.")
    return units


def _pc_source(samples: str, stats) -> str:
    return (f"all {stats.count} images" if samples == "all" else
            f"top {min(stats.top_k, stats.count)} images by contribution norm (paper A.2)")


def _word_lists(vocabulary: list[str], index: torch.Tensor, coefficients: torch.Tensor, top: int) -> list[str]:
    """Per unit, its ``top`` words by |coefficient| as 'word(+0.123) ...': (..., >= j), (..., j) -> units in order."""
    coefficients = coefficients.cpu().flatten(0, -2)
    index = index[..., :coefficients.shape[-1]].cpu().flatten(0, -2)
    order = coefficients.abs().argsort(dim=-1, descending=True)[:, :top]
    return [" ".join(f"{vocabulary[w]}({c:+.3f})" for w, c in zip(words, weights))
            for words, weights in zip(index.gather(-1, order).tolist(), coefficients.gather(-1, order).tolist())]


def run_label(args: argparse.Namespace) -> int:
    from segclip.analysis.components import principal_components
    from segclip.analysis.omp import (
        component_text_condition,
        label_components,
        label_pairs,
        read_vocabulary,
        sparse_text_condition,
    )
    from segclip.analysis.textspan import text_span, text_span_condition
    from segclip.models.text import encode_classes
    from segclip.viz.plots import line_plot

    units = parse_units(args.units)
    if set(units) - {"pairs"} and args.images is None and args.calibration_images is None and args.statistics is None:
        raise ConfigError("--units neurons and heads are labelled from their covariances, which need statistics: "
                          "give --images, --calibration-images or --statistics (or --units pairs).")
    out, model = _setup(args)
    start = time.perf_counter()
    try:
        record = sorted({int(r) for r in args.record.split(",")})
    except ValueError:
        raise ConfigError(f"--record must be comma-separated integers, got '{args.record}'.") from None
    vocabulary = read_vocabulary(args.vocabulary, args.vocabulary_size)
    if not 1 <= args.words <= min(len(vocabulary), model.info.embed_dim):
        raise ConfigError(f"--words must be between 1 and min(vocabulary size {len(vocabulary)}, d = "
                          f"{model.info.embed_dim}).")
    if "neurons" in units and not 1 <= args.components <= model.info.heads or \
            "heads" in units and not 1 <= args.components <= model.info.head_dim:
        raise ConfigError(f"--components must be between 1 and {model.info.heads} (H, for neurons) and "
                          f"{model.info.head_dim} (head dim, for heads), got {args.components}.")
    record = [r for r in record if 1 <= r <= args.words] or [args.words]
    if args.table_sparsity < 1:
        raise ConfigError("--table-sparsity must be at least 1.")
    table_sparsity = min(args.table_sparsity, args.words)
    solved = sorted(set(record) | {table_sparsity})  # sparsities whose coefficients OMP returns
    words = encode_classes(model, vocabulary, "single").to(model.device, torch.float32)
    accuracy, stats, evaluation = {}, None, None
    if args.images is not None:
        evaluation = _labelled(args, model)
        stats = _statistics(args, model, evaluation[3], out)
    elif args.calibration_images is not None or args.statistics is not None:
        from segclip.data.images import list_images

        stats = _statistics(args, model, list_images(args.calibration_images)[:args.limit]
                            if args.calibration_images else [], out)
    labels, conditions, seconds, rows = {}, {"baseline": lambda trace: trace.output}, {}, []
    textspan = args.head_labels == "textspan"
    labelled, names = {}, {}
    pcs = f" ({args.components} PC{'s' if args.components > 1 else ''})"
    for unit in units:
        begun = time.perf_counter()
        if unit == "pairs":
            checkpoint = out / "label-pairs.partial.safetensors"
            signs = None if stats is None else hashlib.sha256(stats.signs.cpu().numpy().tobytes()).hexdigest()
            key = json.dumps({"model": model.info.name, "weights": model.info.weights_hash, "words": args.words,
                              "record": solved, "signs": signs,
                              "vocabulary": hashlib.sha256("\n".join(vocabulary).encode()).hexdigest()})
            labels[unit] = label_pairs(model.pool, stats, words, args.words, solved, checkpoint=checkpoint, key=key)
            checkpoint.unlink(missing_ok=True)
            conditions.update({f"pairs {j} words": sparse_text_condition(model.pool, stats, words, labels[unit][0],
                                                                         labels[unit][1][j]) for j in record})
            keys = [{"neuron": n, "head": h, "component": ""}
                    for n in range(model.info.neurons) for h in range(model.info.heads)]
        elif unit == "heads" and textspan:
            rounds = min(args.words, model.info.head_dim, model.info.embed_dim)
            spans = text_span(model.pool, stats, words, rounds, args.pc_samples)
            labels[unit] = spans.index
            conditions.update({f"heads {j} words": text_span_condition(model.pool, stats, spans, j)
                               for j in record if j <= rounds})
            shares = (spans.variance / spans.total_variance.clamp_min(1e-300)[:, None]).cpu()
            rows += [{"unit": "head", "neuron": "", "head": h, "component": "textspan",
                      "words": " ".join(f"{vocabulary[w]}({100 * v:.1f}%)" for w, v in zip(chosen, share))}
                     for h, (chosen, share) in enumerate(zip(spans.index[:, :args.table].tolist(),
                                                             shares[:, :args.table].tolist()))]
        else:
            components = principal_components(model.pool, stats, unit, args.components, args.pc_samples)
            labels[unit] = label_components(model.pool, components, words, args.words, solved)
            conditions.update({f"{unit} {j} words": component_text_condition(
                model.pool, stats, components, words, labels[unit][0], labels[unit][1][j]) for j in record})
            count = model.info.neurons if unit == "neurons" else model.info.heads
            keys = [{"neuron": u if unit == "neurons" else "", "head": u if unit == "heads" else "", "component": p + 1}
                    for u in range(count) for p in range(args.components)]
        labelled[unit] = model.info.heads if unit == "heads" and textspan else \
            labels[unit][0].shape[0] * labels[unit][0].shape[1]
        names[unit] = unit + ("" if unit == "pairs" else " (TextSpan)" if unit == "heads" and textspan else pcs)
        if isinstance(labels[unit], tuple):  # OMP: each unit's top words by |coefficient|
            rows += [{"unit": unit[:-1], **key, "words": text}
                     for key, text in zip(keys, _word_lists(vocabulary, labels[unit][0],
                                                            labels[unit][1][table_sparsity], args.table))]
        seconds[unit] = round(time.perf_counter() - begun, 3)
    if evaluation is not None:
        paths, labels_true, _, _, texts = evaluation
        accuracy = _evaluate(args, model, out, "label", conditions, paths, labels_true, texts)
        curves = {names[unit]: ([j for j in record if f"{unit} {j} words" in accuracy],
                                [accuracy[f"{unit} {j} words"] for j in record if f"{unit} {j} words" in accuracy])
                  for unit in units}
        line_plot(out / "label.png", curves,
                  xlabel="words per unit (m)", ylabel="zero-shot accuracy (%)", baseline=accuracy["baseline"],
                  title=f"Sparse text decomposition ({model.info.name})", logx=True)
    results = {"accuracy": accuracy, "vocabulary": len(vocabulary), "words_per_unit": args.words,
               "table_sparsity": table_sparsity,
               "labelled": labelled, "omp_seconds": seconds,
               "signs": "calibration" if stats is not None else "+1 (no statistics)"}
    if stats is not None and set(units) - {"pairs"}:
        results["principal_components"] = {"per_unit": args.components,
                                           "neurons": _pc_source(args.pc_samples, stats),
                                           "heads": ("TextSpan over the covariance of " if textspan else "")
                                           + _pc_source(args.pc_samples, stats)}
    write_results(out, "label", args, model, results, rows, time.perf_counter() - start)
    sys.stdout.write(f"labelled {', '.join(f'{v} {k}' for k, v in labelled.items())} over {len(vocabulary)} words\n"
                     + "".join(f"{k}: {v:.2f}%\n" for k, v in accuracy.items()))
    return 0


def run_top_images(args: argparse.Namespace) -> int:
    from segclip.analysis.stream import run_pass
    from segclip.analysis.units import Embeddings, inertia
    from segclip.data.images import list_images, read_image
    from segclip.data.preprocess import centre_crop
    from segclip.viz.plots import histograms, montage

    out, model = _setup(args)
    start = time.perf_counter()
    paths = list_images(args.images)[:args.limit]
    stats = _statistics(args, model, paths, out)
    if stats.metadata.get("images") != [p.name for p in paths]:
        raise ConfigError(f"--statistics {args.statistics} was computed on other images than {args.images}; top "
                          "images are indices into that image list: pass the same folder (and --limit), or leave "
                          "out --statistics.")
    embeddings = Embeddings(len(paths), model.info.embed_dim)
    run_pass(model, paths, embeddings, key={"kind": "embeddings"}, checkpoint=out / "embeddings.partial.safetensors",
             batch_size=args.batch_size, chunk_size=args.chunk_size, description="embeddings")
    count = min(args.count, stats.pair_top_images.shape[0])
    pair_inertia = inertia(embeddings.values, stats.pair_top_images[:count])
    neuron_inertia = inertia(embeddings.values, stats.neuron_top_images[:count])
    head_inertia = inertia(embeddings.values, stats.head_top_images[:count])
    histograms(out / "top-images.png", {"neurons": neuron_inertia.numpy(), "pairs": pair_inertia.flatten().numpy()},
               xlabel=f"inertia of the top-{count} normalised image embeddings", title="Polysemanticity")
    size = 96
    thumbs = lambda idx: [centre_crop(read_image(paths[i]), size) for i in idx.tolist()]  # noqa: E731
    units = [("neuron", n, stats.neuron_top_images[:count, n], neuron_inertia[n])
             for n in stats.neuron_top_norm.topk(min(args.units, model.info.neurons)).indices.tolist()]
    units += [("head", h, stats.head_top_images[:count, h], head_inertia[h])
              for h in stats.head_top_norm.topk(min(args.units, model.info.heads)).indices.tolist()]
    for flat in stats.pair_top_norm.flatten().topk(args.units).indices.tolist():
        n, h = divmod(flat, model.info.heads)
        units.append(("pair", f"{n}:{h}", stats.pair_top_images[:count, n, h], pair_inertia[n, h]))
    montage(out / "top-images-montage.png", {f"{kind} {index}": thumbs(images) for kind, index, images, _ in units},
            tile=size)
    table = [{"unit": kind, "index": index, "inertia": value.item(),
              "images": " ".join(paths[i].name for i in images.tolist())} for kind, index, images, value in units]
    (out / "embeddings.partial.safetensors").unlink(missing_ok=True)
    results = {"mean_inertia": {"neurons": neuron_inertia.mean().item(), "pairs": pair_inertia.mean().item(),
                                "heads": head_inertia.mean().item()}, "images_per_unit": count,
               "images": len(paths)}
    write_results(out, "top-images", args, model, results, table, time.perf_counter() - start)
    sys.stdout.write(json.dumps(results["mean_inertia"]) + "\n")
    return 0


def run_shift(args: argparse.Namespace) -> int:
    from segclip.analysis.stream import run_pass
    from segclip.analysis.units import (
        ConceptScores,
        concept_pairs,
        point_biserial,
        read_groups,
    )
    from segclip.models.text import encode_classes
    from segclip.viz.plots import twin_plot

    out, model = _setup(args)
    start = time.perf_counter()
    concepts = [c.strip() for c in args.concepts.split(",") if c.strip()]
    if not concepts:
        raise ConfigError("--concepts needs at least one word.")
    paths, groups, labels = read_groups(args.groups, args.images, concepts)
    if args.limit is not None:
        paths, groups = paths[:args.limit], groups[:args.limit]
        labels = {k: v[:args.limit] for k, v in labels.items()}
    texts = encode_classes(model, concepts, args.templates).to(model.device, model.dtype)
    pairs = concept_pairs(model.pool, texts, args.pairs)
    scores = ConceptScores(model.pool, pairs, len(paths))
    run_pass(model, paths, scores, key={"kind": "shift", "concepts": concepts, "pairs": args.pairs},
             checkpoint=out / "shift.partial.safetensors", batch_size=args.batch_size,
             chunk_size=args.chunk_size, description="shift")
    names = sorted(set(groups))
    member = np.array(groups)
    by_group = {c: [scores.scores[member == g, i].mean().item() for g in names] for i, c in enumerate(concepts)}
    truth = {c: [float(np.mean(np.array(labels[c])[member == g])) for g in names] for c in labels}
    correlation = {c: point_biserial(scores.scores[:, concepts.index(c)], torch.tensor(labels[c])) for c in labels}
    twin_plot(out / "shift.png", names, by_group, truth, xlabel="group",
              title=f"Concept scores by group ({model.info.name})")
    rows = [{"group": g, **{f"{c}_score": by_group[c][i] for c in concepts},
             **{f"{c}_proportion": truth[c][i] for c in truth}} for i, g in enumerate(names)]
    results = {"concept_pairs": {c: pairs[i].tolist() for i, c in enumerate(concepts)},
               "point_biserial": correlation, "scores_by_group": by_group, "proportion_by_group": truth,
               "images": len(paths)}
    write_results(out, "shift", args, model, results, rows, time.perf_counter() - start)
    (out / "shift.partial.safetensors").unlink(missing_ok=True)
    sys.stdout.write(f"point-biserial: {json.dumps(correlation)}\n")
    return 0


def run_sink(args: argparse.Namespace) -> int:
    from segclip.analysis.sink import rank_registers
    from segclip.data.images import list_images
    from segclip.viz.plots import bar_plot

    out, model = _setup(args)
    start = time.perf_counter()
    paths = list_images(args.images)[:args.limit]
    stats = _statistics(args, model, paths, out)
    attention = stats.sink_attention.tolist()
    registers = rank_registers(stats.register_scores, args.registers)
    bar_plot(out / "sink.png", [str(h) for h in range(len(attention))], attention, xlabel="head",
             ylabel="class-token attention to the last token", title=f"Attention sink ({model.info.name})")
    rows = [{"rank": r, "neuron": n, "score": stats.register_scores[n].item()}
            for r, n in enumerate(registers.tolist())]
    results = {"sink_attention": attention, "uniform_attention": 1 / (model.info.grid ** 2 + 1),
               "registers": registers.tolist(), "images": stats.count}
    write_results(out, "sink", args, model, results, rows, time.perf_counter() - start)
    sys.stdout.write(f"mean attention to the last token {np.mean(attention):.3f} (uniform "
                     f"{results['uniform_attention']:.3f}); register neurons {registers.tolist()[:8]}\n")
    return 0
