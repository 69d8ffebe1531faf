"""End-to-end seconds per image of segmentation against a backbone-only pass on the same windows, in one run.

Variants, each on the same images (PASCAL Context's typical 375 x 500 resized to 512 x 683: 2 x 3 windows of the
model's crop): ``backbone`` (windows cut, every crop through open_clip's image tower, nothing else: the floor),
``maskclip``, ``neuron-head`` and ``compare`` (all five methods from one trace), each ``segment_images`` end to end
(windows, trace, maps, stitching, labels at the original size). Text embeddings are random unit vectors for 59
classes (text encoding happens once per class list and is cached, so it is not a per-image cost). Every round runs
every variant, the order rotated each round so none always runs first or last; per variant the minimum over rounds
is the statistic (noise on a shared machine only ever adds time) and the spread (median / minimum - 1) is printed
with it, and the same in this process's CPU seconds (all threads; less sensitive to other processes on a shared
machine). The last lines are ratios of wall-clock minima; the medians over rounds of the per-round ratio of CPU
seconds are printed before them (on this project's 2-core machine they were not steadier: in six runs the minima
kept every goal, the paired CPU medians once exceeded one). On CUDA (when present) the same is done in fp32 and
bf16 autocast, in wall seconds, and images per second are printed.

    python benchmarks/segment.py [--model RN50x16] [--rounds 5] [--images 2]
    # last line: neuronhead_over_maskclip: <ratio> (goal: <= 1.05)
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

import numpy as np
import torch

from segclip.models import load_model
from segclip.runtime import keep_freed_memory
from segclip.segment.methods import METHODS, MaskCLIP, PairMethod, SelfSelf
from segclip.segment.pipeline import protocol_for, segment_images
from segclip.segment.windows import prepare_windows


def build(model, name: str, names: list[str], texts: torch.Tensor):
    if name == "maskclip":
        return MaskCLIP(model, names, texts=texts)
    if name == "self-self":
        return SelfSelf(model, names, texts=texts)
    return PairMethod(model, names, name, texts=texts)


def backbone_only(model, images, protocol, batch_size: int) -> None:
    """The floor: the same windows through the image tower, no decomposition, no maps, no stitching."""
    crops = prepare_windows(images, protocol).crops
    with torch.inference_mode():
        for chunk in crops.split(batch_size):
            model.visual(chunk.to(model.device, model.dtype))


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(model, images, methods, protocol, args, precision: str) -> dict[str, list[float]]:
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext())
    runs = {"backbone": None, "maskclip": [methods["maskclip"]], "neuron-head": [methods["neuron-head"]],
            "compare": list(methods.values())}

    def run(name: str) -> None:
        with autocast:
            if runs[name] is None:
                backbone_only(model, images, protocol, args.batch_size)
            else:
                segment_images(model, images, runs[name], protocol, args.batch_size)

    for name in runs:  # warm-up: allocator, kernels, caches
        run(name)
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for round_ in range(args.rounds):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            synchronise(model.device)
            start, start_cpu = time.perf_counter(), time.process_time()
            run(name)
            synchronise(model.device)
            seconds[name].append((time.perf_counter() - start) / len(images))
            cpu[name].append((time.process_time() - start_cpu) / len(images))
    return seconds, cpu


def paired(values: dict[str, list[float]], top: str, bottom: str) -> float:
    """Median over rounds of ``top / bottom`` within each round."""
    return statistics.median(a / b for a, b in zip(values[top], values[bottom]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="RN50x16", help="open_clip RN model (random weights).")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of every variant (default: 5).")
    parser.add_argument("--images", type=int, default=2, help="images per call (default: 2).")
    parser.add_argument("--batch-size", type=int, default=12, help="crops per backbone pass.")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--devices", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: the CPU, and CUDA when present (default); cpu or cuda: only those rows.")
    parser.add_argument("--allocator", choices=("segclip", "default"), default="segclip",
                        help="segclip: glibc keeps freed memory, as the segclip command line sets it "
                             "(segclip.runtime); default: glibc's own settings.")
    args = parser.parse_args()
    kept = keep_freed_memory() if args.allocator == "segclip" else False
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    cuda = [("cuda", "fp32"), ("cuda", "bf16")]
    if args.devices == "cuda" and not torch.cuda.is_available():
        parser.error("--devices cuda: no CUDA device here")
    settings = ([("cpu", "fp32")] if args.devices != "cuda" else []) + (
        cuda if args.devices != "cpu" and torch.cuda.is_available() else [])
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (375, 500, 3), dtype=np.uint8) for _ in range(args.images)]
    names = [f"class{i}" for i in range(59)]
    cpu_ratios = {}
    for device, precision in settings:
        model = load_model(args.model, "none", device=device)
        protocol = protocol_for(model)
        texts = torch.nn.functional.normalize(
            torch.randn(59, model.info.embed_dim, generator=torch.Generator().manual_seed(0)), dim=-1).to(device)
        methods = {name: build(model, name, names, texts) for name in METHODS}
        seconds, cpu = measure(model, images, methods, protocol, args, precision)
        best = {name: min(values) for name, values in seconds.items()}
        print(f"\n{args.model} random init, {device} {precision}, {args.images} images 375x500 -> "
              f"{len(prepare_windows(images[:1], protocol).crops)} windows each, batch {args.batch_size} crops, "
              f"{args.rounds} rounds, torch threads {torch.get_num_threads()}, "
              f"allocator {'keeps freed memory' if kept else 'glibc default'}")
        print("| variant | s / image (min) | median | spread | CPU s / image (min) | spread | images / s "
              "| vs backbone | vs maskclip |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name, values in seconds.items():
            median, cpu_min = statistics.median(values), min(cpu[name])
            print(f"| {name} | {best[name]:.3f} | {median:.3f} | {median / best[name] - 1:.1%} | {cpu_min:.3f} | "
                  f"{statistics.median(cpu[name]) / cpu_min - 1:.1%} | {1 / best[name]:.2f} | "
                  f"{best[name] / best['backbone']:.3f} | {best[name] / best['maskclip']:.3f} |")
        clock = cpu if device == "cpu" else seconds
        pairs = {"maskclip_over_backbone": ("maskclip", "backbone"), "compare_over_maskclip": ("compare", "maskclip"),
                 "neuronhead_over_maskclip": ("neuron-head", "maskclip")}
        ratios = {name: (paired(clock, *pair), best[pair[0]] / best[pair[1]]) for name, pair in pairs.items()}
        if device == "cpu":
            cpu_ratios = ratios
        del model, methods
    print(f"\nload average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after, {os.cpu_count()} CPUs "
          "(above the CPU count, other processes shared the machine).")
    print("medians over rounds of the per-round ratio of CPU seconds: "
          + ", ".join(f"{name} {paired_cpu:.3f}" for name, (paired_cpu, _) in cpu_ratios.items()))
    print("CPU ratios of wall-clock minima:")
    goals = {"maskclip_over_backbone": 1.05, "compare_over_maskclip": 1.25, "neuronhead_over_maskclip": 1.05}
    for name, (_, wall) in cpu_ratios.items():
        print(f"{name}: {wall:.3f} (goal: <= {goals[name]})")


if __name__ == "__main__":
    main()
