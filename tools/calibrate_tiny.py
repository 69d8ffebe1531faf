"""Calibrate the bundled tiny model and ship the artifact with it (``segclip/assets/tiny-rn/calibration.safetensors``).

The calibration images are synthetic scenes from a random stream of their own (disjoint from training batches,
the benchmark and the zero-shot set), like the paper's 1000 held-out ImageNet images:

    python tools/calibrate_tiny.py [--images 1000] [--seed 0]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from segclip.analysis.calibration import CalibrateConfig, run_calibrate
from segclip.data.synthetic import BENCHMARK_SIZE, render_scene
from segclip.models import load_model
from segclip.paths import bundled_dir

CALIBRATION_STREAM = (0xCA1B,)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=bundled_dir() / "calibration.safetensors")
    args = parser.parse_args()
    model = load_model()
    with tempfile.TemporaryDirectory() as folder:
        for i in range(args.images):
            rng = np.random.default_rng(np.random.SeedSequence([args.seed, i], spawn_key=CALIBRATION_STREAM))
            scene = render_scene(rng, *BENCHMARK_SIZE)
            Image.fromarray(scene.image).save(Path(folder) / f"{i:05d}.jpg", quality=95, subsampling=0)
        config = CalibrateConfig(images=Path(folder), out=args.out, overwrite=True)
        calibration = run_calibrate(config, model).calibration
    calibration.metadata["image_folder"] = (
        f"{args.images} synthetic scenes, SeedSequence([{args.seed}, i], spawn_key={CALIBRATION_STREAM})")
    calibration.save(args.out)
    args.out.with_name(args.out.name.removesuffix(".safetensors") + ".statistics.safetensors").unlink(missing_ok=True)
    summary = calibration.to_dict()
    print(f"wrote {args.out}: {summary['count']} images, {summary['positive_signs']:.1%} positive signs, "
          f"registers {summary['registers'][:8]}...")


if __name__ == "__main__":
    main()
