"""Statistics pass over 200 and 1000 images: peak memory ratio and stored bytes per image.

Model: the bundled ``segclip-tiny`` if its weights are present, else RN50 with random weights. By default the
layer4 activations are random (ReLU of a normal) and go through the model's real attention pool and the full
statistics code (the backbone's memory does not depend on the number of images, and on a shared 2-core CPU
RN50's backbone costs about a second per image); ``--images`` runs real files through the whole model instead.
Each size runs in its own process so that peak RSS is measured per run.

    python benchmarks/analysis.py            # last line: storage_vs_reference: <ratio> (goal: <= 0.0015)
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def load():
    from segclip.models import load_model
    from segclip.paths import bundled_dir

    if (bundled_dir() / "weights.safetensors").is_file():
        return load_model("segclip-tiny"), "segclip-tiny (bundled weights)"
    return load_model("RN50", "none"), "RN50 (random init)"


def child(count: int, batch: int, images: Path | None) -> dict:
    from segclip.analysis.statistics import RunningStatistics, collect_statistics
    from segclip.core import trace_pool
    from segclip.data.images import list_images

    torch.set_num_threads(2)
    model, name = load()
    info = model.info
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        checkpoint = Path(tmp) / "partial.safetensors"
        if images is not None:
            paths = list_images(images)[:count]
            stats = collect_statistics(model, paths, batch_size=batch, checkpoint=checkpoint, progress=False)
        else:
            running = RunningStatistics(model.pool)
            generator = torch.Generator().manual_seed(0)
            for first in range(0, count, batch):
                x = torch.randn(min(batch, count - first), info.neurons, info.grid, info.grid,
                                generator=generator).relu()
                running.update(trace_pool(model.pool, x), first)
            running_bytes = sum(v.numel() * v.element_size() for v in running.state_dict().values())
            stats = running.finalise()
        seconds = time.perf_counter() - start
        artifact = Path(tmp) / "statistics.safetensors"
        stats.save(artifact)
        stored = artifact.stat().st_size
    return {"model": name, "count": count, "seconds": seconds,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "stored": stored,
            "running_state": running_bytes if images is None else None,
            "reference_per_image": info.neurons * info.heads * info.embed_dim * 4}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=None, help="real image folder (>= 1000 images).")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.batch_size, args.images)))
        return
    runs = {}
    for count in (200, 1000):
        command = [sys.executable, __file__, "--child", str(count), "--batch-size", str(args.batch_size)]
        if args.images is not None:
            command += ["--images", str(args.images)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        runs[count] = json.loads(done.stdout.splitlines()[-1])
    small, large = runs[200], runs[1000]
    reference = large["reference_per_image"]
    print(f"model: {large['model']}; layer4 input: {'images through the backbone' if args.images else 'random'}")
    print(f"{'images':>7} {'seconds':>8} {'img/s':>7} {'peak RSS MB':>12} {'stored MB':>10} {'bytes/image':>12}")
    for run in (small, large):
        print(f"{run['count']:>7} {run['seconds']:>8.1f} {run['count'] / run['seconds']:>7.1f} "
              f"{run['peak_rss'] / 2**20:>12.1f} {run['stored'] / 2**20:>10.2f} {run['stored'] / run['count']:>12.0f}")
    if large["running_state"] is not None:
        print(f"running state (checkpoint) size: {large['running_state'] / 2**20:.1f} MB")
    print(f"authors' storage per image (N*H*d*4): {reference:,} bytes")
    print(f"peak_memory_1000_vs_200: {large['peak_rss'] / small['peak_rss']:.3f} (goal: <= 1.05)")
    print(f"storage_vs_reference: {large['stored'] / large['count'] / reference:.6f} (goal: <= 0.0015)")


if __name__ == "__main__":
    main()
