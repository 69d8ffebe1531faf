"""Shared fixtures data for the explorer tests (import as ``from explore_data import ...``): single-class synthetic
images, their statistics on the bundled model, a label.csv with a planted word, and the site built from them."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from segclip.analysis.statistics import collect_statistics
from segclip.data.synthetic import SYNTHETIC_CLASSES, render_single_class

PLANTED_WORD = "butterfly"


def write_images(folder: Path, per_class: int, classes: tuple[str, ...] = SYNTHETIC_CLASSES, size: int = 96,
                 seed: int = 7) -> list[Path]:
    """``per_class`` single-class images of each class, named ``<class>_<i>.png``; returns them sorted by name."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in classes:
        for i in range(per_class):
            image = render_single_class(rng, SYNTHETIC_CLASSES.index(name), size)
            Image.fromarray(image).save(folder / f"{name}_{i}.png")
    return sorted(folder.iterdir())


def statistics(model, folder: Path, path: Path, top_k: int = 8):
    """Statistics of every image in ``folder`` (as `segclip calibrate` computes them), saved at ``path``."""
    stats = collect_statistics(model, sorted(folder.iterdir()), top_k=top_k, progress=False)
    stats.save(path)
    return stats


def write_labels(folder: Path, pair: tuple[int, int]) -> Path:
    """A label.csv in the format of `segclip analyze label`: the planted word leads ``pair``'s words; a neuron and a
    TextSpan head are labelled too."""
    n, h = pair
    rows = [{"unit": "pair", "neuron": n, "head": h, "component": "",
             "words": f"{PLANTED_WORD}(+0.812) star(-0.301) sky(+0.120)"},
            {"unit": "neuron", "neuron": n, "head": "", "component": 1, "words": "ring(+0.700) sand(-0.200)"},
            {"unit": "head", "neuron": "", "head": h, "component": "textspan", "words": "snow(31.5%) grass(12.0%)"}]
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "label.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder


def read_shard(path: Path) -> tuple[str, dict]:
    """(name, data) of a data script ``segclipExplorer.register(name, data);``."""
    text = path.read_text(encoding="utf-8")
    prefix = "segclipExplorer.register("
    assert text.startswith(prefix) and text.rstrip().endswith(");")
    name, _, data = text[len(prefix):].rstrip()[:-2].partition(",")
    return json.loads(name), json.loads(data)
