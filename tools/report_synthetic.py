"""Measure the bundled tiny model and regenerate the README's report section (between the report markers).

Zero-shot accuracy on held-out single-class images, mIoU of every segmentation method on the synthetic benchmark
(one `segclip compare` run), a sweep of k for neuron-head, and one overlay picture (docs/synthetic_overlay.png):

    python tools/report_synthetic.py [--limit N] [--readme README.md]
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from segclip.cli import main as segclip
from segclip.data.images import normalise
from segclip.data.synthetic import classification_set
from segclip.models import load_model
from segclip.models.text import encode_classes
from segclip.paths import example_image_path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- report:start -->", "<!-- report:end -->"
ZERO_SHOT_SEED = 2026  # not the training script's evaluation seed: images no run has looked at


def zero_shot(model, n: int) -> dict[str, float]:
    """Accuracy (percent) of the bundled model on ``n`` held-out single-class images, per template set."""
    images, labels = classification_set(n, ZERO_SHOT_SEED, model.info.image_size)
    with torch.inference_mode():
        embeddings = torch.cat([model.clip.encode_image(normalise(images[i:i + 100])) for i in range(0, n, 100)])
    scores = {}
    for templates in ("single", "openai"):
        texts = encode_classes(model, list(model.info.classes), templates)
        predictions = (embeddings @ texts.T).argmax(dim=1).numpy()
        scores[templates] = float((predictions == labels).mean() * 100)
    return scores


def run(args: list[str]) -> None:
    if segclip(args) != 0:
        raise SystemExit(f"segclip {' '.join(args)} failed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None, help="benchmark images (default: all 200)")
    parser.add_argument("--zero-shot-images", type=int, default=600)
    parser.add_argument("--ks", default="100,300,1000,4096", help="k values of the neuron-head sweep")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = parser.parse_args()
    model = load_model()
    limit = ["--limit", str(args.limit)] if args.limit else []
    accuracy = zero_shot(model, args.zero_shot_images)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run(["compare", "--dataset", "synthetic", "--out", f"{tmp}/compare", *limit])
        compare_seconds = time.perf_counter() - start
        envelope = json.loads(Path(f"{tmp}/compare/results.json").read_text())
        results, protocol = envelope["results"]["scores"], envelope["provenance"]
        sweep = {}
        for k in args.ks.split(","):
            run(["eval", "--dataset", "synthetic", "--method", "neuron-head", "--k", k, "--out", f"{tmp}/k{k}", *limit])
            sweep[k] = json.loads(Path(f"{tmp}/k{k}/results.json").read_text())["results"]["scores"][0]["miou"]
        run(["segment", str(example_image_path()), "--classes", ",".join(model.info.classes), "--out", f"{tmp}/seg"])
        (ROOT / "docs").mkdir(exist_ok=True)
        shutil.copy(f"{tmp}/seg/{example_image_path().stem}_overlay.png", ROOT / "docs" / "synthetic_overlay.png")

    first = results[0]
    window = protocol["window"]
    info = protocol["model"]
    lines = [
        START,
        f"Measured by `python tools/report_synthetic.py` (git {protocol.get('git_revision', 'unknown')[:10]}, "
        f"torch {protocol['package_versions']['torch']}, CPU).",
        "",
        f"**Model**: `segclip-tiny`, open_clip's `ModifiedResNet` (N = {info['neurons']} neurons, H = {info['heads']} "
        f"heads, {info['grid']}x{info['grid']} grid, d = {info['embed_dim']}), trained by `tools/train_tiny_clip.py`.",
        f"Zero-shot accuracy on {args.zero_shot_images} held-out single-class images: "
        f"**{accuracy['openai']:.1f}%** (80 OpenAI templates), {accuracy['single']:.1f}% (\"a photo of a {{}}.\").",
        "",
        f"**Segmentation**, synthetic benchmark ({first['images']} images, {len(first['per_class_iou'])} classes; "
        f"short side {window['short_side']}, crop {window['crop']}, stride {window['stride']}; "
        f"`segclip compare --dataset synthetic`, {compare_seconds:.0f} s here):",
        "",
        "| method | mIoU | pixel accuracy | parameters |",
        "|---|---|---|---|",
    ]
    for entry in results:
        params = entry["params"]
        shown = ", ".join(f"{key}={params[key]}" for key in ("k", "signs", "registers") if key in params)
        lines.append(f"| {entry['method']} | {entry['miou']:.1f} | {entry['pixel_accuracy']:.1f} | {shown} |")
    lines += ["", "neuron-head mIoU against k (pairs kept per class, of "
              f"{info['neurons'] * info['heads']:,}): " + ", ".join(f"k={k}: {v:.1f}" for k, v in sweep.items()) + ".",
              "", "![overlay of the bundled example scene](docs/synthetic_overlay.png)", END]
    text = args.readme.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise SystemExit(f"{args.readme} has no report markers {START} ... {END}")
    before, rest = text.split(START, 1)
    after = rest.split(END, 1)[1]
    args.readme.write_text(before + "\n".join(lines) + after, encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
