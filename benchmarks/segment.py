"""Seconds per image of segmentation methods on RN50x16 (random weights) on the CPU, measured in one run.

Two 512 x 683 images (PASCAL Context's typical 375 x 500 after the paper's resize): 2 x 3 windows of 384 each, all
12 crops through the backbone in batches. Timed: ``segment_images`` end to end (windows, backbone, method maps,
stitching, labels) for ``maskclip`` alone, ``neuron-head`` alone, and ``compare`` (all five methods from one
pass), and per crop the backbone and each method's maps on one computed trace (the stable part of the ratio on a
busy machine). Text embeddings are random unit vectors for 59 classes (text encoding happens once per class list and is
cached, so it is not part of the per-image cost). Runs are interleaved, in alternating order, and the best of
``--repeats`` is kept, in wall seconds and in this process's CPU seconds (less sensitive to other processes on a
shared machine).

Usage: python benchmarks/segment.py [--repeats 3] [--batch-size 12] [--threads N]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from segclip.models import load_model
from segclip.segment.methods import METHODS, MaskCLIP, PairMethod, SelfSelf
from segclip.segment.pipeline import protocol_for, segment_images
from segclip.segment.windows import prepare_windows


def build(model, name: str, names: list[str], texts: torch.Tensor):
    if name == "maskclip":
        return MaskCLIP(model, names, texts=texts)
    if name == "self-self":
        return SelfSelf(model, names, texts=texts)
    return PairMethod(model, names, name, texts=texts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=12, help="crops per backbone pass")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model("RN50x16", "none")
    protocol = protocol_for(model, short_side=512, stride=192)
    names = [f"class{i}" for i in range(59)]
    texts = torch.nn.functional.normalize(torch.randn(59, model.info.embed_dim, generator=torch.Generator()
                                                      .manual_seed(0)), dim=-1)
    start = time.perf_counter()
    methods = {name: build(model, name, names, texts) for name in METHODS}
    setup = time.perf_counter() - start
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (512, 683, 3), dtype=np.uint8) for _ in range(2)]
    runs = {"maskclip": [methods["maskclip"]], "neuron-head": [methods["neuron-head"]],
            "compare (5 methods)": list(methods.values())}
    segment_images(model, images[:1], runs["compare (5 methods)"], protocol, args.batch_size)  # warm-up
    best = {name: float("inf") for name in runs}
    cpu = {name: float("inf") for name in runs}
    for round_ in range(args.repeats):
        order = list(runs) if round_ % 2 == 0 else list(reversed(runs))  # no method always runs first
        for name in order:
            start, start_cpu = time.perf_counter(), time.process_time()
            segment_images(model, images, runs[name], protocol, args.batch_size)
            best[name] = min(best[name], (time.perf_counter() - start) / len(images))
            cpu[name] = min(cpu[name], (time.process_time() - start_cpu) / len(images))
    crops = prepare_windows(images, protocol).crops
    start = time.perf_counter()
    trace = model.trace(crops[:args.batch_size])
    backbone = (time.perf_counter() - start) / len(trace)
    maps = {}
    for name, method in methods.items():
        method(trace)
        start = time.perf_counter()
        for _ in range(3):
            method(trace)
        maps[name] = (time.perf_counter() - start) / 3 / len(trace)
    print(f"RN50x16 random init, CPU ({torch.get_num_threads()} threads), 2 images 512x683, 6 windows each, "
          f"batch {args.batch_size} crops, best of {args.repeats}; method setup (59 classes, k=20000): {setup:.2f} s")
    print("| run | s / image | vs maskclip | CPU s / image | vs maskclip |")
    print("|---|---|---|---|---|")
    for name, seconds in best.items():
        print(f"| {name} | {seconds:.3f} | {seconds / best['maskclip']:.3f} | {cpu[name]:.3f} | "
              f"{cpu[name] / cpu['maskclip']:.3f} |")
    print("| per crop, on a computed trace | ms |")
    print("|---|---|")
    print(f"| backbone + attention-pool trace | {backbone * 1e3:.1f} |")
    for name, seconds in maps.items():
        print(f"| {name} maps | {seconds * 1e3:.1f} |")
    print(f"neuron-head over maskclip from the per-crop parts: "
          f"{(backbone + maps['neuron-head']) / (backbone + maps['maskclip']):.3f}")
    print(f"neuronhead_over_maskclip: {best['neuron-head'] / best['maskclip']:.3f} (goal: <= 1.10)")


if __name__ == "__main__":
    main()
