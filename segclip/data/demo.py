"""``segclip demo-data DIR``: every folder the README's analysis and explorer sections use, in seconds.

Writes, from seeded random streams (the same options give the same bytes)::

    DIR/labelled/<class>/<i>.png   held-out single-class images (zero-shot accuracy: reconstruct, ablate, label)
    DIR/noisy/<class>/<i>.png      the same images with Gaussian pixel noise (a baseline below 100%)
    DIR/scenes/<i>.png             synthetic scenes (calibrate, top-images, sink, subconcepts, explore)
    DIR/shift/images/<i>.png       scenes whose share showing ``concept`` rises over five groups
    DIR/shift/groups.csv           image, group, concept (0/1) per shift image
    DIR/classes.txt                the bundled model's 12 class names, one a line
    DIR/demo.json                  the options and the sha256 of every file (written last)

``tools/report_analysis.py`` generates its (larger) data with the same functions, so the README's report and a
user's ``demo-data`` folder come from the same streams.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from segclip.config import Config, check_positive, option
from segclip.data.synthetic import BENCHMARK_SIZE, SYNTHETIC_CLASSES, classification_set, render_scene
from segclip.errors import ConfigError, OutputError

# Streams no other run draws from: training uses SeedSequence([seed, step]), its evaluation classification_set seed
# 20240601, report_synthetic.py seed 2026, calibrate_tiny.py spawn key 0xCA1B, the benchmark 0xBE4C.
LABELLED_SEED = 2027
SCENE_STREAM, SHIFT_STREAM, NOISE_STREAM = (0xA5CE,), (0x5F17,), (0x4015E,)
NOISE = 80.0  # of 255: the noisy copy's baseline is near the paper's 70.7 on ImageNet
GROUPS = {"2019": 0.1, "2020": 0.3, "2021": 0.5, "2022": 0.7, "2023": 0.9}
ENTRIES = ("labelled", "noisy", "scenes", "shift", "classes.txt", "demo.json")
DEMO_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class DemoDataConfig(Config):
    """Options of ``segclip demo-data``."""

    out: Path = option(positional=True, metavar="DIR", help="the folder to write (created).")
    per_class: int = option(10, help="single-class images per class in labelled/ and noisy/ (default: 10).")
    scenes: int = option(100, help="synthetic scenes in scenes/ (default: 100).")
    per_group: int = option(20, help="scenes per group in shift/ (five groups; default: 20).")
    concept: str = option("snow", choices=SYNTHETIC_CLASSES, help="the class whose share rises over the shift "
                                                                   "groups (default: snow).")
    image_size: int = option(192, help="side of the single-class images (default: 192, the bundled model's crop).")
    overwrite: bool = option(False, help="replace demo data written with other options.")

    def __post_init__(self) -> None:
        super().__post_init__()  # field types (segclip.config.Config)
        object.__setattr__(self, "out", Path(self.out))
        check_positive(self, "per_class", "scenes", "per_group")
        if self.image_size < 32:
            raise ConfigError(f"--image-size must be at least 32, got {self.image_size}.")
        if self.concept not in SYNTHETIC_CLASSES:
            raise ConfigError(f"--concept must be one of {', '.join(SYNTHETIC_CLASSES)}, got {self.concept!r}.")


@dataclass
class DemoDataResult:
    """What ``demo-data`` wrote.

    Attributes:
        out: the folder.
        counts: images per folder (``labelled``, ``noisy``, ``scenes``, ``shift``).
        positives: per shift group, the images showing the concept.
        reused: True when the folder already held demo data of the same options (nothing was written).
    """

    out: Path
    counts: dict[str, int]
    positives: dict[str, int]
    reused: bool

    def __repr__(self) -> str:
        return f"DemoDataResult(out={str(self.out)!r}, counts={self.counts}, reused={self.reused})"

    def summary(self) -> str:
        """What the command line prints."""
        verb = "already holds" if self.reused else "wrote"
        return (f"{self.out} {verb} labelled/ and noisy/ ({self.counts['labelled']} images each), scenes/ "
                f"({self.counts['scenes']}), shift/ ({self.counts['shift']} images in {len(self.positives)} groups, "
                "groups.csv) and classes.txt\n")


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def labelled_images(per_class: int, size: int, noise: float = 0.0) -> list[tuple[str, np.ndarray]]:
    """``per_class`` held-out single-class images per class as ``(relative path, image)``, with Gaussian pixel noise
    of standard deviation ``noise`` (of 255) added (the same images for every ``noise``).

    Example:
        >>> [path for path, _ in labelled_images(1, 32)][:2]
        ['water/00000.png', 'triangle/00001.png']
    """
    images, labels = classification_set(per_class * len(SYNTHETIC_CLASSES), LABELLED_SEED, size)
    rng = np.random.default_rng(np.random.SeedSequence(LABELLED_SEED, spawn_key=NOISE_STREAM))
    found = []
    for i, (image, label) in enumerate(zip(images, labels)):
        noisy = np.clip(np.round(image + noise * rng.standard_normal(image.shape)), 0, 255).astype(np.uint8)
        found.append((f"{SYNTHETIC_CLASSES[label]}/{i:05d}.png", noisy))
    return found


def scene(stream: tuple[int, ...], i: int, shows: str | None = None, wanted: bool = True) -> np.ndarray:
    """Scene ``i`` of a stream (256 x 320); with ``shows``, the first scene of its generator that shows (or lacks,
    ``wanted=False``) that class."""
    rng = np.random.default_rng(np.random.SeedSequence([0, i], spawn_key=stream))
    while True:
        drawn = render_scene(rng, *BENCHMARK_SIZE)
        if shows is None or (SYNTHETIC_CLASSES.index(shows) in drawn.classes) == wanted:
            return drawn.image


def shift_rows(concept: str, per_group: int) -> list[dict[str, Any]]:
    """The rows of ``groups.csv``: per group ``round(share * per_group)`` positives first (:data:`GROUPS`)."""
    rows, i = [], 0
    for group, share in GROUPS.items():
        positives = round(share * per_group)
        for j in range(per_group):
            rows.append({"image": f"{i:05d}.png", "group": group, concept: int(j < positives)})
            i += 1
    return rows


def _write_all(tmp: Path, config: DemoDataConfig) -> dict[str, str]:
    """Every file under ``tmp``; returns the sha256 of each, by relative path."""
    files: dict[str, bytes] = {}
    for folder, noise in (("labelled", 0.0), ("noisy", NOISE)):
        for path, image in labelled_images(config.per_class, config.image_size, noise):
            files[f"{folder}/{path}"] = _png(image)
    for i in range(config.scenes):
        files[f"scenes/{i:05d}.png"] = _png(scene(SCENE_STREAM, i))
    rows = shift_rows(config.concept, config.per_group)
    for i, row in enumerate(rows):
        files[f"shift/images/{row['image']}"] = _png(scene(SHIFT_STREAM, i, config.concept, bool(row[config.concept])))
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    files["shift/groups.csv"] = text.getvalue().encode()
    files["classes.txt"] = ("\n".join(SYNTHETIC_CLASSES) + "\n").encode()
    for name, data in files.items():
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


def _meta(config: DemoDataConfig) -> dict[str, Any]:
    options = {k: v for k, v in asdict(config).items() if k not in ("out", "overwrite")}
    return {"generator": "segclip demo-data", "version": DEMO_VERSION, **options}


def _is_complete(out: Path, meta: dict[str, Any]) -> bool:
    try:
        written = json.loads((out / "demo.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if {k: v for k, v in written.items() if k != "sha256"} != meta:
        return False
    for name, digest in (written.get("sha256") or {}).items():
        try:
            if hashlib.sha256((out / name).read_bytes()).hexdigest() != digest:
                return False
        except OSError:
            return False
    return True


def run_demo_data(config: DemoDataConfig) -> DemoDataResult:
    """Write the demo data of the README's analysis and explorer sections into ``config.out``.

    Everything is rendered into a temporary folder inside ``out`` and moved into place, ``demo.json`` (options and
    checksums) last. A folder that already holds complete demo data of the same options is left untouched; one that
    holds any of the entries otherwise is refused unless ``overwrite``. Only the entries listed in the module
    docstring are ever touched.

    Args:
        config: the options (:class:`DemoDataConfig`).

    Returns:
        A :class:`DemoDataResult`.

    Raises:
        OutputError: ``out`` holds other data under those names (without ``overwrite``), or cannot be written.

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp())
        >>> result = run_demo_data(DemoDataConfig(out=out, per_class=1, scenes=2, per_group=2, image_size=32))
        >>> sorted(p.name for p in out.iterdir()), result.counts["shift"]
        (['classes.txt', 'demo.json', 'labelled', 'noisy', 'scenes', 'shift'], 10)
    """
    out = config.out
    meta = _meta(config)
    counts = {"labelled": config.per_class * len(SYNTHETIC_CLASSES), "noisy": config.per_class *
              len(SYNTHETIC_CLASSES), "scenes": config.scenes, "shift": config.per_group * len(GROUPS)}
    positives = {g: round(s * config.per_group) for g, s in GROUPS.items()}
    if _is_complete(out, meta):
        return DemoDataResult(out, counts, positives, reused=True)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} is a file; name a folder for the demo data.")
    present = [name for name in ENTRIES if (out / name).exists()]
    if present and not config.overwrite:
        raise OutputError(f"{out} already holds {', '.join(present)} (not demo data of these options); pass "
                          "--overwrite to replace them, or choose another folder.")
    try:
        out.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".demo-tmp-", dir=out))
    except OSError as err:
        raise OutputError(f"Cannot write the demo data to {out} ({err.strerror or err}); choose a writable "
                          "folder.") from err
    try:
        digests = _write_all(tmp, config)
        (out / "demo.json").unlink(missing_ok=True)  # from here until the end, out reads as incomplete
        for name in ENTRIES[:-1]:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            os.replace(tmp / name, target)
        (tmp / "demo.json").write_text(json.dumps({**meta, "sha256": digests}, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp / "demo.json", out / "demo.json")
    except OSError as err:
        raise OutputError(f"Cannot write the demo data to {out} ({err.strerror or err}); free some space or choose "
                          "another folder.") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return DemoDataResult(out, counts, positives, reused=False)
