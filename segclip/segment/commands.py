"""``segclip eval``, ``segclip compare`` and ``segclip segment``.

``eval`` scores one method, ``compare`` several from one backbone pass per window; both on PASCAL Context (59/60,
``--data-root``) or the synthetic benchmark (generated into the cache on first use), with the bundled model by
default. ``segment`` segments image files from a class list. Protocol defaults: crop = the model's input size,
stride = half a crop, short side 512 for PASCAL Context (the paper; 384 is the authors' released config) and 4/3 of
a crop otherwise (512 / 384 scaled).
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

from segclip.errors import ConfigError
from segclip.segment.methods import CENTRING_CHOICES, DEFAULT_K, METHODS

log = logging.getLogger(__name__)

PAPER_SHORT_SIDE = 512


def _method_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("method and protocol")
    group.add_argument("--k", type=int, default=None,
                       help=f"neuron-head pairs kept per class, clamped to N*H (default: the paper's {DEFAULT_K} of "
                            "RN50x16's 147,456 pairs, the same 13.6%% share for other models).")
    group.add_argument("--short-side", type=int, default=None,
                       help="short side after resizing (default: 512 for PASCAL Context as in the paper, 384 is the "
                            "authors' config; 4/3 of the model's crop otherwise).")
    group.add_argument("--stride", type=int, default=None, help="sliding-window stride (default: half a crop).")
    group.add_argument("--registers", type=int, default=0,
                       help="register neurons zeroed by the intervention (method.md section 6; the authors use 32; "
                            "needs a calibration; default: 0 = off). Applies to neuron-head and head-only.")
    group.add_argument("--calibration", type=Path, default=None,
                       help="calibration artifact (pair signs, register neurons) from `segclip calibrate` (default: "
                            "the cached one for this model; without one the signs are assumed +1).")
    group.add_argument("--templates", default=None, choices=["openai", "maskclip", "single"],
                       help="override every method's prompt templates (default: openai 80 for the pair methods and "
                            "self-self, MaskCLIP's 85 for maskclip).")
    group.add_argument("--centring", default=None, choices=CENTRING_CHOICES,
                       help="override text centring (default: auto for the pair methods = over the class set with "
                            "10+ classes, else against a reference vocabulary; none for maskclip and self-self).")


def register(subparsers, common: argparse.ArgumentParser) -> None:
    for name in ("eval", "compare"):
        single = name == "eval"
        parser = subparsers.add_parser(
            name, parents=[common],
            help="score one segmentation method on a dataset (mIoU)" if single else
            "score several methods from one backbone pass; print a markdown table",
            description=("Segment a dataset with the sliding-window protocol and report mIoU, pixel accuracy and "
                         "per-class IoU. " + ("" if single else "Every method reads the same backbone pass.")))
        data = parser.add_argument_group("data")
        data.add_argument("--dataset", default="synthetic", choices=["synthetic", "pascal_context"],
                          help="synthetic (generated into the cache on first use; default) or pascal_context.")
        data.add_argument("--data-root", type=Path, default=None,
                          help="dataset folder (PASCAL Context: the folder holding VOCdevkit; synthetic: where to "
                               "generate it).")
        data.add_argument("--num-classes", type=int, default=59, choices=[59, 60],
                          help="PASCAL Context 59 (background ignored; default) or 60.")
        data.add_argument("--class-names", default="raw", choices=["raw", "text"],
                          help="PASCAL Context names: raw (aeroplane, pottedplant, tvmonitor; default) or the "
                               "authors' text names (airplane, potted plant, tv monitor).")
        data.add_argument("--limit", type=int, default=None, help="evaluate the first N images only.")
        if single:
            parser.add_argument("--method", default="neuron-head", choices=METHODS,
                                help="segmentation method (default: neuron-head).")
        else:
            parser.add_argument("--methods", default=",".join(METHODS),
                                help=f"comma-separated methods (default: all: {','.join(METHODS)}).")
        _method_options(parser)
        out = parser.add_argument_group("output and run")
        out.add_argument("--out", type=Path, default=None,
                         help="write results.json and results.csv here; per-image partial results make an "
                              "interrupted run resumable (run the same command again).")
        out.add_argument("--save-predictions", action="store_true",
                         help="write predicted labels to OUT/predictions/<method>/<id>.png (uint8, 0-based).")
        out.add_argument("--overwrite", action="store_true", help="replace existing results in --out.")
        out.add_argument("--devices", type=int, default=1, help="processes (devices) with Lightning DDP (default 1).")
        out.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (default 0).")
        out.add_argument("--no-progress", action="store_true", help="hide the progress bar.")
        parser.set_defaults(func=run_eval)

    parser = subparsers.add_parser(
        "segment", parents=[common], help="segment image files from a class list",
        description="Segment images by class names: per image a label PNG (class indices in list order), a colour "
                    "overlay with a legend and, with --heatmaps, one probability heatmap per class. Text embeddings "
                    "of fewer than 10 classes are centred against a reference vocabulary (the bundled model's "
                    "classes or the 59 PASCAL Context names), not over the class list.")
    parser.add_argument("images", nargs="+", type=Path, help="image files.")
    parser.add_argument("--classes", default=None, help='comma-separated class names, e.g. "cat,dog,grass".')
    parser.add_argument("--classes-file", type=Path, default=None, help="UTF-8 file with one class name a line.")
    parser.add_argument("--out", type=Path, required=True, help="output folder.")
    parser.add_argument("--method", default="neuron-head", choices=METHODS, help="method (default: neuron-head).")
    parser.add_argument("--heatmaps", action="store_true", help="also write one heatmap per class.")
    parser.add_argument("--background-threshold", type=float, default=None,
                        help="label pixels whose top class probability is below this as background.")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs.")
    _method_options(parser)
    parser.set_defaults(func=run_segment)


def _check_positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}.")
    if args.registers < 0:
        raise ConfigError(f"--registers must be 0 (off) or more, got {args.registers}.")


def _is_primary() -> bool:
    """Whether this is the first process of a (possibly distributed) run, before Lightning starts the others."""
    return int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0


def _quiet_lightning(verbose: bool) -> None:
    """Lightning logs device banners at INFO; keep them for --verbose only."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


def _run_loop(loop: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Run ``trainer.test`` / ``trainer.predict``; Lightning turns Ctrl-C into ``sys.exit(1)`` after its teardown,
    which becomes the KeyboardInterrupt the command line reports as resumable."""
    try:
        loop(*args, **kwargs)
    except SystemExit as err:
        raise KeyboardInterrupt from err


def _load(args: argparse.Namespace, names: list[str] | None, methods: list[str], default_short_side: int | None):
    """Model, class names (default: the bundled model's own), built methods, protocol, register neurons and
    calibration metadata from the options."""
    from segclip.analysis.calibration import load_calibration
    from segclip.cli import load_from_args, resolve_device
    from segclip.segment.methods import build_methods
    from segclip.segment.pipeline import protocol_for

    _quiet_lightning(args.verbose)
    if getattr(args, "devices", 1) > 1 and resolve_device(args.device).type == "cuda":
        args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"  # one GPU per DDP process
    model = load_from_args(args)
    names = names or list(model.info.classes)
    if not names:
        raise ConfigError('Name the classes: --classes "cat,dog,grass" or --classes-file FILE.')
    calibration = load_calibration(model, args.calibration)
    if args.calibration is not None and calibration is None:
        raise ConfigError(f"--calibration {args.calibration} is missing, stale or not for {model.info.name}; run "
                          "`segclip calibrate` for this model.")
    registers = None
    if args.registers:
        if calibration is None:
            raise ConfigError("--registers needs a calibration artifact (the register neurons are found there); run "
                              f"`segclip calibrate --model {model.info.name} --images DIR` first.")
        registers = calibration.registers[:args.registers].to(model.device)
    protocol = protocol_for(model, args.short_side or default_short_side, args.stride)
    built = build_methods(model, names, methods, k=args.k,
                          signs=None if calibration is None else calibration.signs,
                          sign_source=None if calibration is None else "calibration",
                          templates=args.templates, centring=args.centring)
    meta = {"calibration": None if calibration is None else calibration.to_dict(),
            "registers": [] if registers is None else registers.tolist()}
    return model, names, built, protocol, registers, meta


def _protocol_record(model, protocol, names: list[str], meta: dict[str, Any], args: argparse.Namespace,
                     short_side_source: str) -> dict[str, Any]:
    from segclip.provenance import git_revision, package_versions

    return {"model": model.info.to_dict(), "weights_hash": model.info.weights_hash, "class_names": names,
            "window": {**protocol.to_dict(), "short_side_source": short_side_source,
                       "padding": "windows shorter than the crop are zero-padded (CLIP mean colour) at the "
                                  "bottom/right; only their valid part is stitched"},
            "calibration": meta["calibration"], "register_neurons": meta["registers"],
            "device": str(model.device), "precision": args.precision, "batch_size": args.batch_size,
            "package_versions": package_versions(), "git_revision": git_revision()}


def run_eval(args: argparse.Namespace) -> int:
    from segclip.segment.datasets import open_dataset
    from segclip.segment.lightning import SegmentationData, SegmentationTask, make_trainer
    from segclip.segment.metric import segmentation_scores
    from segclip.segment.results import ResultStore, check_outputs, write_results

    _check_positive(args, "limit", "k", "devices", "batch_size", "short_side", "stride")
    methods = [args.method] if args.command == "eval" else [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ConfigError(f"Unknown methods {unknown}; choose from {', '.join(METHODS)}.")
    data = open_dataset(args.dataset, args.data_root, limit=args.limit, num_classes=args.num_classes,
                        names=args.class_names)
    primary = _is_primary()
    if args.out is not None and primary:
        check_outputs(args.out, args.overwrite)  # before any model work
    pascal = args.dataset == "pascal_context"
    model, _, built, protocol, registers, meta = _load(args, data.class_names, methods,
                                                    PAPER_SHORT_SIDE if pascal else None)
    short_source = ("given" if args.short_side else "paper (512)" if pascal else "4/3 of the crop (512 / 384 scaled)")
    record = _protocol_record(model, protocol, data.class_names, meta, args, short_source)
    record["dataset"] = data.description
    params = {m.name: {**m.params, **({"registers": len(meta["registers"])} if m.uses_registers else {})}
              for m in built}
    ids = list(data.dataset.ids)
    store = None
    if args.out is not None:
        fingerprint = {"protocol": {k: v for k, v in record.items()
                                    if k not in ("package_versions", "git_revision", "device", "batch_size")},
                       "methods": params, "save_predictions": args.save_predictions}
        store = ResultStore(args.out, fingerprint, methods, len(data.class_names),
                            save_predictions=args.save_predictions, overwrite=args.overwrite, primary=primary)
    done = store.done(ids) if store else set()
    todo = [i for i, image_id in enumerate(ids) if image_id not in done]
    if done:
        log.warning("resuming: %d of %d images already done in %s", len(done), len(ids), args.out)

    def on_image(image_id: str, result, confusions) -> None:
        if store is not None:
            store.write(image_id, confusions, [result[m].labels for m in methods])

    task = SegmentationTask(model, built, protocol, len(data.class_names), crops_per_pass=args.batch_size,
                            registers=registers, on_image=on_image)
    trainer = make_trainer(model.device, args.devices, progress=not args.no_progress)
    seconds = 0.0
    confusion = torch.zeros(len(methods), len(data.class_names), len(data.class_names), dtype=torch.long)
    if todo:
        loader = SegmentationData(Subset(data.dataset, todo), args.batch_size, args.num_workers)
        _run_loop(trainer.test, task, datamodule=loader, verbose=False)
        seconds = task.seconds  # the test loop's wall time (all processes work in parallel)
        confusion += torch.stack([task.confusions[m].cpu() for m in methods])
    if not trainer.is_global_zero:
        return 0
    if store is not None:
        confusion += store.load(sorted(done))
    entries = []
    for method, matrix in zip(methods, confusion):
        scores = segmentation_scores(matrix)
        entries.append({"method": method, "miou": scores["miou"], "pixel_accuracy": scores["pixel_accuracy"],
                        "per_class_iou": dict(zip(data.class_names, scores["per_class_iou"])),
                        "images": len(ids), "images_this_run": len(todo),
                        "images_per_second": len(todo) / seconds if seconds else None,
                        "params": params[method], "protocol": record,
                        "confusion_matrix": scores["confusion_matrix"].tolist()})
    _print_table(entries, shared=len(methods) > 1)
    if args.out is not None:
        write_results(args.out, [{**e, "per_class_iou": list(e["per_class_iou"].values())} for e in entries])
        print(f"wrote {args.out / 'results.json'} and {args.out / 'results.csv'}", file=sys.stderr)
    return 0


def _print_table(entries: list[dict[str, Any]], shared: bool) -> None:
    note = " (one shared backbone pass)" if shared else ""
    lines = ["| method | mIoU | pixel accuracy | images/s |", "|---|---|---|---|"]
    for e in entries:
        speed = "resumed" if e["images_per_second"] is None else f"{e['images_per_second']:.2f}{note}"
        lines.append(f"| {e['method']} | {e['miou']:.2f} | {e['pixel_accuracy']:.2f} | {speed} |")
    sys.stdout.write("\n".join(lines) + "\n")


def read_class_list(classes: str | None, classes_file: Path | None) -> list[str]:
    """Class names from ``--classes`` (comma-separated) or ``--classes-file`` (UTF-8, one a line).

    Raises:
        ConfigError: both or neither given, an unreadable or non-UTF-8 file.
    """
    if classes is not None and classes_file is not None:
        raise ConfigError("Pass either --classes or --classes-file, not both.")
    if classes_file is not None:
        try:
            text = classes_file.read_bytes().decode("utf-8")
        except OSError as err:
            raise ConfigError(f"Cannot read the class file {classes_file} ({err.strerror}).") from err
        except UnicodeDecodeError as err:
            raise ConfigError(f"The class file {classes_file} is not UTF-8 (byte {err.start}); save it as UTF-8.") \
                from err
        return [line.strip() for line in text.splitlines() if line.strip()]
    if classes is not None:
        return classes.split(",")
    raise ConfigError('Name the classes: --classes "cat,dog,grass" or --classes-file FILE.')


def run_segment(args: argparse.Namespace) -> int:
    from segclip.data.images import read_image
    from segclip.data.pascal_context import ImageFolderDataset
    from segclip.models.text import check_class_names
    from segclip.segment.lightning import SegmentationData, SegmentationTask, make_trainer
    from segclip.segment.results import atomic_write_bytes, check_writable, png_bytes
    from segclip.segment.windows import logits_to_labels
    from segclip.viz.overlay import heatmap, overlay

    _check_positive(args, "k", "batch_size", "short_side", "stride")
    threshold = args.background_threshold
    if threshold is not None and not 0 < threshold < 1:
        raise ConfigError(f"--background-threshold must be between 0 and 1, got {threshold}.")
    dataset = ImageFolderDataset(args.images)
    for path in dataset.paths:
        read_image(path)  # fail on a corrupt image before any model work
    check_writable(args.out)
    planned = [args.out / f"{i}{suffix}" for i in dataset.ids for suffix in (".png", "_overlay.png")]
    existing = [p for p in planned + [args.out / "segment.json"] if p.exists()]
    if existing and not args.overwrite:
        raise ConfigError(f"{len(existing)} output file(s) already exist (first: {existing[0]}); pass --overwrite "
                          "or choose another --out.")
    bundled = (args.model or "segclip-tiny") == "segclip-tiny"
    if args.classes is None and args.classes_file is None and not bundled:
        raise ConfigError('Name the classes: --classes "cat,dog,grass" or --classes-file FILE.')
    names = None
    if args.classes is not None or args.classes_file is not None:
        names = check_class_names(read_class_list(args.classes, args.classes_file))
    model, names, built, protocol, registers, meta = _load(args, names, [args.method], None)
    images = {i: p for i, p in zip(dataset.ids, dataset.paths)}

    def on_image(image_id: str, result, _confusions) -> None:
        segmentation = result[args.method]
        image = read_image(images[image_id])
        labels, probs = logits_to_labels(segmentation.logits, image.shape[:2], protocol.temperature, threshold)
        labels = labels.numpy()
        atomic_write_bytes(args.out / f"{image_id}.png", png_bytes(labels))
        picture = overlay(image, labels, names, background="background" if threshold is not None else None)
        atomic_write_bytes(args.out / f"{image_id}_overlay.png", _image_bytes(picture))
        if args.heatmaps:
            for index, name in enumerate(names):
                safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
                atomic_write_bytes(args.out / "heatmaps" / image_id / f"{index:02d}_{safe}.png",
                                   _image_bytes(heatmap(probs[index].numpy())))

    task = SegmentationTask(model, built, protocol, len(names), crops_per_pass=args.batch_size,
                            registers=registers, background_threshold=threshold, on_image=on_image)
    trainer = make_trainer(model.device, 1, progress=False)
    _run_loop(trainer.predict, task, datamodule=SegmentationData(dataset, args.batch_size), return_predictions=False)
    record = _protocol_record(model, protocol, names, meta, args,
                              "given" if args.short_side else "4/3 of the crop (512 / 384 scaled)")
    summary = {"method": args.method, "params": {**built[0].params, "registers": len(meta["registers"])},
               "background_threshold": threshold, "images": [str(p) for p in dataset.paths],
               "label_values": f"0..{len(names) - 1} in class-list order"
                               + (f", {len(names)} = background" if threshold is not None else ""),
               "protocol": record}
    atomic_write_bytes(args.out / "segment.json", (json.dumps(summary, indent=1, default=str) + "\n").encode())
    print(f"segmented {len(dataset)} image(s) into {args.out}")
    return 0


def _image_bytes(picture) -> bytes:
    """A PIL image as PNG bytes."""
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()
