"""``segclip decompose``: decompose images into neuron-head pairs and show the identity and the top pairs."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from segclip.errors import ConfigError


def register(subparsers, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "decompose", parents=[common],
        help="decompose images into neuron-head pairs; print the identity check and the top pairs per word",
        description="Run the model on images (default: the bundled example scene), check that the neuron-head "
                    "pairs sum exactly to the image embedding, and list the pairs that contribute most to the "
                    "image's similarity with each word.")
    parser.add_argument("images", nargs="*", type=Path, help="image files (default: the bundled example).")
    parser.add_argument("--words", default=None,
                        help="comma-separated words (default: the bundled model's classes, or 'dog,cat,car').")
    parser.add_argument("--top", type=int, default=5, help="pairs listed per word (default: 5).")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from segclip.cli import load_from_args
    from segclip.data.images import read_image
    from segclip.data.preprocess import clip_batch
    from segclip.decompose.report import decomposition_report, example_image_path
    from segclip.models.text import encode_classes

    if args.top < 1:
        raise ConfigError("--top must be at least 1.")
    model = load_from_args(args)
    paths = args.images or [example_image_path()]
    images = clip_batch([read_image(path) for path in paths], model.info.image_size)
    words = args.words.split(",") if args.words else (model.info.classes or ["dog", "cat", "car"])[:4]
    texts = encode_classes(model, words, "openai")
    with torch.inference_mode():
        lines = decomposition_report(model, images, [p.name for p in paths], words, texts, args.top)
    sys.stdout.write("\n".join(lines) + "\n")
    return 0

