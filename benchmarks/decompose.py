"""Cost of the full decomposition on top of the forward pass.

RN50x16 (random init) at 384x384, batch 4, CPU: the time of a forward pass that also produces every pair scalar
and every token-head contribution (``model.trace(images, token_heads=True)``) over the time of open_clip's plain
``encode_image``, both measured in this run (interleaved; the fastest of the repeats, the least disturbed by
other load), plus the peak memory of each (in fresh subprocesses: peak RSS above the RSS after loading).

    python benchmarks/decompose.py [--model RN50x16] [--batch 4] [--repeats 5] [--threads N]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


def build(model_name: str, batch: int):
    from segclip.models import load_model

    model = load_model(model_name, "none")
    size = model.info.image_size
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    return model, images


def run_once(model, images, mode: str) -> None:
    with torch.inference_mode():
        if mode == "encode_image":
            model.clip.encode_image(images)
        else:
            model.trace(images, token_heads=True)


def peak_memory(model_name: str, batch: int, mode: str) -> None:
    """Child process: print the peak RSS growth of one forward pass in ``mode``."""
    model, images = build(model_name, batch)
    run_once(model, images[:1], mode)  # allocator warm-up at batch 1
    base = rss_bytes()
    run_once(model, images, mode)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"peak": max(0, peak - base)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="RN50x16")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--memory-child", choices=["encode_image", "trace"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        peak_memory(args.model, args.batch, args.memory_child)
        return

    model, images = build(args.model, args.batch)
    for mode in ("encode_image", "trace"):
        run_once(model, images, mode)  # warm-up
    times: dict[str, list[float]] = {"encode_image": [], "trace": []}
    for _ in range(args.repeats):
        for mode in times:  # interleaved, so that load changes hit both alike
            start = time.perf_counter()
            run_once(model, images, mode)
            times[mode].append(time.perf_counter() - start)
    memory = {}
    for mode in times:
        command = [sys.executable, __file__, "--model", args.model, "--batch", str(args.batch),
                   "--memory-child", mode] + (["--threads", str(args.threads)] if args.threads else [])
        memory[mode] = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)["peak"]

    fastest = {mode: min(values) for mode, values in times.items()}
    info = model.info
    print(f"{args.model} (random init), {info.image_size}x{info.image_size}, batch {args.batch}, "
          f"{torch.get_num_threads()} threads, fastest of {args.repeats} repeats")
    print("| pass | seconds / batch | peak memory above model (MB) |")
    print("|---|---|---|")
    print(f"| open_clip encode_image | {fastest['encode_image']:.3f} | {memory['encode_image'] / 2**20:.0f} |")
    print(f"| trace: all {info.neurons * info.heads:,} pair scalars + all token-heads | {fastest['trace']:.3f} | "
          f"{memory['trace'] / 2**20:.0f} |")
    print(f"memory_ratio: {memory['trace'] / max(memory['encode_image'], 1):.3f}")
    print(f"decompose_overhead: {fastest['trace'] / fastest['encode_image']:.3f} (goal: <= 1.05)")


if __name__ == "__main__":
    main()
