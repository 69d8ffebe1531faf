"""``segclip explore``: a static, offline site of neuron-head pairs, neurons and heads (OpenAI Microscope-like).

The site opens by double-click from disk: plain HTML, JS and CSS (package data in ``segclip/explore/assets``), no
server, no CDN, no network. Browsers refuse ``fetch()`` over ``file://``, so every data file is a script that calls
``segclipExplorer.register(name, data)``; the page adds a ``<script>`` element when it needs a shard. Layout:

    SITE/index.html, assets/{app.js,style.css}
    SITE/data/site.js            model, about, landing lists, every head (small: H units)
    SITE/data/neurons/<b>.js     one shard per block of ``neurons_per_shard`` neurons: the neurons and their kept pairs
    SITE/data/search.js          per search word, the units ranked by cosine with its text embedding (precomputed)
    SITE/thumbs/<i>.jpg          one thumbnail per image index, written once and shared by every unit showing it

Links are stable hashes: ``#/pair/624/21``, ``#/neuron/624``, ``#/head/21``, ``#/search/butterfly``, ``#/about``.

What a page shows, and where it comes from:

- **spatial maps**, recomputed by tracing each top image once: for a pair (n, h) the per-token share
  a^h_i z'_i[n] of its scalar alpha[n, h] = sum_i a^h_i z'_i[n] over the spatial tokens i = 1..K (the class token's
  share is given as a number); for a neuron its layer4 map x[n]; for a head its class-token attention a^h_i. Maps are
  stored per image as K signed bytes with one scale (at most 1/254 of the map's largest |value| off) and drawn over
  the thumbnail, which is the same centre crop the model saw.
- **histogram of a pair's scalar**: the statistics keep no full distribution, only the exact top-k deviations
  |alpha - mean| over all images (k = ``top_k`` of ``segclip calibrate``), the mean and the variance. The page shows
  the histogram of those k tail values (``histogram_bins`` fixed bins), with the mean and the standard deviation
  over all images marked: the tail that decides the pair's sign and top images, not the bulk.
- **contribution** of a unit: the mean of its top ``norm_k`` contribution norms (the ranking of ``analyze ablate``).
  Pairs below the ``keep_pairs`` quantile of it get no page (sub-concept pairs excepted); the threshold is shown on
  the about page and next to every omitted sibling.
- **words**: the OMP words with coefficients of ``segclip analyze label`` (``label.csv``), TextSpan words with their
  variance shares for heads when labelled so; **search**: for a bounded vocabulary (the label words, or a file),
  kept pairs ranked by s cos(w[n, h], t), neurons and heads by the cosine of their first principal component.
"""
from __future__ import annotations

import base64
import csv
import dataclasses
import json
import logging
import math
import re
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from segclip.config import Config, ShortRepr, check_positive, option
from segclip.errors import ConfigError, DataError, OutputError
from segclip.io import (
    atomic_write_bytes,
    atomic_write_text,
    git_revision,
    package_versions,
    read_lines,
    read_result,
    to_jsonable,
)
from segclip.models.loading import ModelSource, resolve_model

log = logging.getLogger(__name__)

SITE_VERSION = 1
ASSETS = ("index.html", "app.js", "style.css")
_WORD = re.compile(r"\s*(.+?)\(([+-]?[0-9.]+(?:e[+-]?[0-9]+)?)(%?)\)")


@dataclass(frozen=True)
class ExploreConfig(Config):
    """Options of ``segclip explore``.

    Raises:
        ConfigError: an option out of range (the message names it).
    """

    statistics: Path = option(help="statistics file of `segclip calibrate` (*.statistics.safetensors).", metavar="S")
    images: Path = option(help="the image folder the statistics were computed on (its names are in S).",
                          metavar="DIR")
    out: Path = option(help="folder of the site (index.html opens from disk).", metavar="SITE")
    labels: Path | None = option(None, help="output folder (or label.csv) of `segclip analyze label`: words per unit.",
                                 metavar="L")
    subconcepts: Path | None = option(None, help="subconcepts.json of `segclip analyze subconcepts`, shown on "
                                                 "neuron pages.")
    keep_pairs: float = option(0.5, help="fraction of all pairs given a page: those with the largest contributions "
                                         "(mean of their top norms); the threshold is shown (default: 0.5).")
    images_per_unit: int = option(8, help="top images (with spatial maps) shown per unit (default: 8).")
    thumbnail_size: int = option(96, help="thumbnail side in pixels (default: 96).")
    neurons_per_shard: int = option(8, help="neurons per data shard (default: 8).")
    landing_units: int = option(20, help="units of each kind listed on the landing page (default: 20).")
    search_words: int = option(2000, help="at most this many search words, label words first (default: 2000).")
    vocabulary: Path | None = option(None, help="extra search words, one per line (default: the words of --labels, "
                                                "else the model's class names).")
    search_results: int = option(20, help="units of each kind listed per search word (default: 20).")
    histogram_bins: int = option(12, help="bins of each pair's scalar histogram (default: 12).")
    show_registers: int = option(32, aliases=("--registers",),
                                 help="register neurons flagged (top by sink change; default: 32).")
    batch_size: int = option(16, help="images per forward pass when tracing the top images (default: 16).")
    overwrite: bool = option(False, help="replace an existing site in --out.")

    def __post_init__(self) -> None:
        super().__post_init__()  # field types (segclip.config.Config)
        if not 0 < self.keep_pairs <= 1:
            raise ConfigError(f"--keep-pairs must be in (0, 1] (a fraction of all pairs), got {self.keep_pairs}.")
        check_positive(self, "images_per_unit", "thumbnail_size", "neurons_per_shard", "landing_units",
                       "search_words", "search_results", "histogram_bins", "batch_size")
        check_positive(self, "show_registers", allow_zero=True)


@dataclass(frozen=True)
class ExploreResult(ShortRepr):
    """What :func:`run_explore` built.

    Attributes:
        out: the site folder; index: its ``index.html``.
        pairs_kept, pairs_total: pairs with a page, of N H.
        threshold: the smallest contribution of a kept pair.
        images_traced: distinct top images traced (and thumbnailed) once each.
        shards: neuron shards written; search_words: words with precomputed search results.
        bytes: total size of the site; seconds: build time.
        command: the command line that builds the same site.
    """

    out: Path
    index: Path
    pairs_kept: int
    pairs_total: int
    threshold: float
    images_traced: int
    shards: int
    search_words: int
    bytes: int
    seconds: float
    command: str

    def summary(self) -> str:
        return (f"wrote the explorer to {self.index} ({self.pairs_kept:,} of {self.pairs_total:,} pairs with a page, "
                f"contribution >= {self.threshold:.4g}; {self.images_traced} images traced; {self.bytes / 1e6:.1f} "
                f"MB in {self.seconds:.0f} s); open it in a browser\n")


def encode_maps(maps: torch.Tensor) -> list[dict[str, Any]]:
    """Signed maps as bytes: (P, K) -> per row ``{"s": scale, "m": base64 of K int8 q}`` with value ~ q * s / 127.

    Example:
        >>> encoded = encode_maps(torch.tensor([[0.5, -1.0, 0.0]]))
        >>> encoded[0]["s"], decode_map(encoded[0]).tolist()
        (1.0, [0.5039370059967041, -1.0, 0.0])
        >>> [decode_map(m).tolist() for m in encode_maps(torch.tensor([[1.0, -1.0], [0.0, 0.5]]))]
        [[1.0, -1.0], [0.0, 0.5]]
    """
    maps = maps.detach().float().cpu()
    scale = maps.abs().amax(dim=1).clamp_min(1e-30)
    quantised = (maps / scale[:, None] * 127).round().clamp(-127, 127).to(torch.int8).numpy()
    width = maps.shape[1]
    if width % 3 == 0:  # every 3 bytes are 4 characters: one encoding of the block, cut per row
        text = base64.b64encode(quantised.tobytes()).decode("ascii")
        step = width // 3 * 4
        rows = [text[i * step:(i + 1) * step] for i in range(len(quantised))]
    else:
        rows = [base64.b64encode(row.tobytes()).decode("ascii") for row in quantised]
    return [{"s": s, "m": row} for s, row in zip(scale.tolist(), rows)]


def decode_map(encoded: dict[str, Any]) -> torch.Tensor:
    """Inverse of :func:`encode_maps` for one map: (K,) float32."""
    raw = np.frombuffer(base64.b64decode(encoded["m"]), dtype=np.int8).astype(np.float32)
    return torch.from_numpy(raw * np.float32(encoded["s"]) / np.float32(127))


def tail_histograms(values: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-bin histograms of many samples at once, as ``numpy.histogram(values[:, p], bins)`` per column p.

    Args:
        values: (k, P) k samples of P units.
        bins: bins per unit, equal widths between the unit's smallest and largest sample (+-0.5 when they are equal).

    Returns:
        (edges (P, bins + 1), counts (P, bins) int64).

    Example:
        >>> edges, counts = tail_histograms(np.array([[0.0, 1.0], [1.0, 1.0], [3.0, 1.0]]), 3)
        >>> edges[0].tolist(), counts.tolist()
        ([0.0, 1.0, 2.0, 3.0], [[1, 1, 1], [0, 3, 0]])
    """
    low, high = values.min(0).astype(np.float64), values.max(0).astype(np.float64)
    flat = high <= low
    low, high = np.where(flat, low - 0.5, low), np.where(flat, high + 0.5, high)
    edges = low[:, None] + (high - low)[:, None] * np.arange(bins + 1)[None] / bins
    index = np.floor((values - low) / (high - low) * bins).astype(np.int64).clip(0, bins - 1)  # (k, P)
    counts = np.zeros((values.shape[1], bins), dtype=np.int64)
    np.add.at(counts, (np.broadcast_to(np.arange(values.shape[1]), index.shape), index), 1)
    return edges, counts


def _check_source_model(path: Path, provenance: Any, info: Any, what: str) -> None:
    """Refuse a result file whose provenance names another model (other weights) than the one explored."""
    if info is None:
        return
    if not isinstance(provenance, dict):
        raise DataError(f"{path} holds no provenance (the model it was computed for); pass the {what} of `segclip "
                        f"analyze {what.split('.')[0]}` run on {info.name}.")
    model = provenance.get("model") if isinstance(provenance.get("model"), dict) else {}
    found = (model.get("name"), provenance.get("weights_hash", model.get("weights_hash")))
    if found != (info.name, info.weights_hash):
        raise ConfigError(f"{path} was computed for {found[0]} (weights {found[1]}), not the explored {info.name} "
                          f"(weights {info.weights_hash}); pass the {what} of this model, or --model/--pretrained "
                          "of that one.")


def _unit_index(value: Any, size: int | None, csv_path: Path, line: int, column: str) -> int:
    try:
        index = int(str(value).strip())
    except (TypeError, ValueError):
        raise DataError(f"{csv_path} line {line}: column {column} is {value!r}, not an integer; pass the label.csv "
                        "`segclip analyze label` wrote, unedited.") from None
    if index < 0:
        raise DataError(f"{csv_path} line {line}: {column} {index} is negative; pass the label.csv `segclip analyze "
                        "label` wrote, unedited.")
    if size is not None and index >= size:
        raise ConfigError(f"{csv_path} line {line}: {column} {index} is outside the explored model's 0..{size - 1} "
                          "(a label.csv of another model?); pass the label output of this model.")
    return index


def read_labels(path: Path, info: Any = None) -> dict[str, Any]:
    """Words per unit from ``segclip analyze label`` (a folder holding ``label.csv``, or that file).

    Args:
        path: the label folder, or its ``label.csv``.
        info: the explored model's :class:`~segclip.core.info.ModelInfo`, or None: then the units must be in its
            range, and a ``label.json`` next to the CSV must name the same model and weights.

    Returns:
        ``{"pairs": {(n, h): [[word, coefficient], ...]}, "neurons": {n: ...}, "heads": {h: ...},
        "head_kind": "textspan" | "pcs"}``; coefficients of TextSpan heads are variance shares in percent.

    Raises:
        DataError: missing or malformed file (the message names the file, the line and the fix).
        ConfigError: labels of another model.
    """
    path = Path(path)
    csv_path = path / "label.csv" if path.is_dir() else path
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows = [(reader.line_num, row) for row in reader]
            header = reader.fieldnames
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"Cannot read the labels {csv_path} ({err}); pass the --out folder of `segclip analyze "
                        "label`.") from None
    columns = {"unit", "neuron", "head", "component", "words"}
    if not header or not columns <= set(header):
        raise DataError(f"{csv_path} is not a label.csv of `segclip analyze label` (columns unit, neuron, head, "
                        "component, words).")
    sidecar = csv_path.with_suffix(".json")
    if info is not None and sidecar.is_file():
        try:
            provenance = read_result(sidecar).get("provenance")
        except OutputError as err:
            raise DataError(f"Cannot read {sidecar} ({err}); pass the --out folder of `segclip analyze label`, "
                            "unedited.") from None
        _check_source_model(sidecar, provenance, info, "label.json")
    neurons, heads = (None, None) if info is None else (info.neurons, info.heads)
    labels: dict[str, Any] = {"pairs": {}, "neurons": {}, "heads": {}, "head_kind": "pcs"}
    for line, row in rows:
        if any(row.get(c) is None for c in columns) or None in row:
            given = sum(value is not None for key, value in row.items() if key is not None) + len(row.get(None, []))
            raise DataError(f"{csv_path} line {line} has {given} values for the {len(row) - (None in row)} columns "
                            "of the header (unit, neuron, head, component, words); pass the label.csv `segclip "
                            "analyze label` wrote, unedited.")
        try:
            words = [[word.strip(), float(value)] for word, value, _ in _WORD.findall(row["words"])]
        except ValueError:
            raise DataError(f"{csv_path} line {line}: words {row['words'][:60]!r} hold a coefficient that is not a "
                            "number; words are written as word(+0.123).") from None
        if any(not math.isfinite(c) for _, c in words):
            raise DataError(f"{csv_path} line {line}: a word's coefficient is not finite; pass the label.csv "
                            "`segclip analyze label` wrote.")
        unit = row["unit"]
        if unit == "pair":
            labels["pairs"][(_unit_index(row["neuron"], neurons, csv_path, line, "neuron"),
                             _unit_index(row["head"], heads, csv_path, line, "head"))] = words
        elif unit == "neuron" and row["component"] in ("", "1"):
            labels["neurons"][_unit_index(row["neuron"], neurons, csv_path, line, "neuron")] = words
        elif unit == "head" and row["component"] in ("", "1", "textspan"):
            labels["heads"][_unit_index(row["head"], heads, csv_path, line, "head")] = words
            if row["component"] == "textspan":
                labels["head_kind"] = "textspan"
        elif unit not in ("pair", "neuron", "head"):
            raise DataError(f"{csv_path} line {line}: unit {unit!r} is not pair, neuron or head; pass the label.csv "
                            "`segclip analyze label` wrote.")
    return labels


class _MapCollector:
    """Accumulator for :func:`segclip.analysis.stream.run_pass`: the spatial maps each traced image is shown with.

    Args:
        requests: per traced image (position in the pass), ``(pair neurons, pair heads, neurons, heads)``.
    """

    def __init__(self, requests: list[tuple[list[int], list[int], list[int], list[int]]]):
        self.requests = requests
        self.pairs: dict[tuple[int, int, int], dict[str, Any]] = {}
        self.neurons: dict[tuple[int, int], dict[str, Any]] = {}
        self.heads: dict[tuple[int, int], dict[str, Any]] = {}

    def update(self, trace, first: int) -> None:
        for b in range(len(trace)):
            position = first + b
            pair_n, pair_h, neurons, heads = (torch.tensor(r, dtype=torch.long) for r in self.requests[position])
            attention, tokens = trace.attention[b].float().cpu(), trace.tokens[b].float().cpu()  # (H, K+1), (K+1, N)
            if len(pair_n):
                shares = attention[pair_h] * tokens[:, pair_n].T  # (P, K+1): a^h_i z'_i[n]
                alpha = trace.pair_scalars[b].float().cpu()[pair_n, pair_h]
                for n, h, encoded, cls, value in zip(pair_n.tolist(), pair_h.tolist(), encode_maps(shares[:, 1:]),
                                                     shares[:, 0].tolist(), alpha.tolist()):
                    self.pairs[position, n, h] = {**encoded, "c": cls, "a": value}
            if len(neurons):
                maps = trace.neurons[b].float().cpu().flatten(1)[neurons]  # (P, K) layer4 maps
                for n, encoded in zip(neurons.tolist(), encode_maps(maps)):
                    self.neurons[position, n] = encoded
            if len(heads):
                for h, encoded in zip(heads.tolist(), encode_maps(attention[heads, 1:])):
                    self.heads[position, h] = {**encoded, "c": float(attention[h, 0])}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Nothing to restore: this pass runs without checkpoints (it traces only the top images)."""


SITE_ENTRIES = ("index.html", "assets", "data", "thumbs")  # what a build writes (and a rebuild replaces)
BUILD_KEY = ".segclip-build.json"  # in a staging folder: what it is being built from (removed before the swap)


def staging_folder(out: Path) -> Path:
    """The folder a site is built in, next to ``out`` (same file system: the swap is a rename)."""
    out = Path(out).resolve()
    return out.parent / f".{out.name}.explore-build"


def _old_folder(out: Path) -> Path:
    out = Path(out).resolve()
    return out.parent / f".{out.name}.explore-old"


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where the system has none."""
    import ctypes
    import os

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    return False  # e.g. a file system without RENAME_EXCHANGE: fall back to two renames


def _move_extras(source: Path, target: Path) -> None:
    """Move what a user kept in an old site folder (anything a build does not write) into the new one."""
    for entry in source.iterdir():
        if entry.name not in SITE_ENTRIES and not (target / entry.name).exists():
            entry.rename(target / entry.name)


def _recover(out: Path) -> None:
    """Finish a swap that was killed halfway: the old site back at ``out`` if the new one never arrived; a leftover
    old site (the new one is in place) removed, keeping the user's own files."""
    old = _old_folder(out)
    if not old.is_dir():
        return
    if not out.exists():
        old.rename(out)  # killed between the two renames of the fallback: the old site is the site
        log.warning("restored the previous site %s from an interrupted swap", out)
        return
    _move_extras(old, out)
    shutil.rmtree(old)


def _prepare_out(out: Path, overwrite: bool, key: dict[str, Any]) -> Path:
    """Check ``out`` and make the staging folder the site is built in; the old site stays untouched until the swap.

    A staging folder left by a killed build of the same inputs and options (``key``) is resumed (its thumbnails
    are kept); one of other inputs or options is cleared; anything else there is cleared only with ``overwrite``.

    Returns:
        The staging folder.

    Raises:
        OutputError: ``out`` is a file, is not empty without ``overwrite``, or holds no site; the staging path is
            taken by something that is not a segclip build.
    """
    out = out.resolve()
    if out == Path.cwd().resolve() or out in Path.cwd().resolve().parents:
        raise OutputError(f"--out {out} is the current folder (or holds it); the build replaces the whole folder: "
                          "choose a folder of its own, e.g. --out site.")
    _recover(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file; choose a folder for the site.")
    if out.is_dir() and any(out.iterdir()):
        is_site = (out / "data" / "site.js").is_file()
        if not overwrite:
            raise OutputError(f"--out {out} is not empty" + (" (an existing site)" if is_site else "")
                              + "; pass --overwrite to replace a site, or choose an empty folder.")
        if not is_site:
            raise OutputError(f"--out {out} is not empty and holds no segclip site (no data/site.js); --overwrite "
                              "replaces sites only: choose an empty folder.")
    staging = staging_folder(out)
    if staging.exists():
        try:
            found = json.loads((staging / BUILD_KEY).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            found = None
        if found is None and not overwrite:
            raise OutputError(f"{staging} exists and is not a segclip build in progress; move it away, or pass "
                              "--overwrite to clear it.")
        if found == key:  # the same inputs and options (the same command, with or without --overwrite)
            log.warning("resuming the interrupted build in %s", staging)
        else:
            shutil.rmtree(staging) if staging.is_dir() else staging.unlink()
    try:
        staging.mkdir(parents=True, exist_ok=True)
        atomic_write_text(staging / BUILD_KEY, json.dumps(key, sort_keys=True))
    except OSError as err:
        raise OutputError(f"Cannot create {staging} next to --out ({err.strerror}); choose a writable --out.") \
            from None
    return staging


def _swap_in(staging: Path, out: Path) -> None:
    """Replace ``out`` by the finished build in ``staging`` atomically; the old site (if any) is removed after,
    keeping files a user added to its folder."""
    (staging / BUILD_KEY).unlink(missing_ok=True)
    out = out.resolve()
    old = _old_folder(out)
    if out.is_dir() and any(out.iterdir()):
        if old.exists():
            shutil.rmtree(old)
        if _exchange(staging, out):  # out is the new site, staging the old one: one step
            staging.rename(old)
        else:
            out.rename(old)  # a kill from here to the next line is repaired by _recover on the next run
            staging.rename(out)
        _move_extras(old, out)
        shutil.rmtree(old)
    else:
        if out.is_dir():
            out.rmdir()
        staging.rename(out)


def _build_key(config: ExploreConfig, info: Any) -> dict[str, Any]:
    """What a staging folder's content depends on: the model, the inputs (by size and modification time) and
    every option but ``overwrite``."""
    def stamp(path: Path | None) -> Any:
        if path is None:
            return None
        try:
            found = Path(path).stat()
        except OSError:
            return str(path)
        return [str(Path(path).resolve()), found.st_size, found.st_mtime_ns]

    options = {f.name: str(getattr(config, f.name)) for f in dataclasses.fields(config) if f.name != "overwrite"}
    return {"model": info.name, "weights_hash": info.weights_hash, "options": options,
            "statistics": stamp(config.statistics), "images": stamp(config.images), "labels": stamp(config.labels),
            "subconcepts": stamp(config.subconcepts), "vocabulary": stamp(config.vocabulary)}


def _register(name: str, data: Any) -> str:
    """A data script: ``segclipExplorer.register(name, data);`` (``data`` of plain JSON values)."""
    return f"segclipExplorer.register({json.dumps(name)},{json.dumps(data, separators=(',', ':'))});\n"


def command_line(config: ExploreConfig, model_name: str, pretrained: str) -> str:
    """The ``segclip explore`` command that builds the same site (options left at their defaults are omitted)."""
    parts = ["segclip", "explore", "--model", model_name, "--pretrained", pretrained]
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.default is not dataclasses.MISSING and value == f.default:
            continue
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        parts += [flag] if value is True else [flag, str(value)]
    return " ".join(parts)


def _words(entries: list[list[Any]] | None, count: int | None = None) -> list[list[Any]]:
    return [[w, round(c, 4)] for w, c in (entries or [])[:count]]


def _search_vocabulary(config: ExploreConfig, labels: dict[str, Any] | None, classes: tuple[str, ...]) -> list[str]:
    words: list[str] = []
    if labels is not None:
        for kind in ("pairs", "neurons", "heads"):
            for entries in labels[kind].values():
                words += [w for w, _ in entries]
    if config.vocabulary is not None:
        words += [line.strip() for line in read_lines(config.vocabulary, "vocabulary file")]
    if not words:
        words = list(classes)
    unique = list({w.lower(): w for w in reversed(words)}.values())[::-1]  # first spelling, first position
    return unique[:config.search_words]


@torch.no_grad()
def _search_index(model, stats, words: list[str], kept: torch.Tensor, results: int) -> dict[str, Any]:
    """Per word, kept pairs by s cos(w, t), neurons and heads by the cosine of their first PC."""
    from segclip.analysis.components import component_directions, principal_components
    from segclip.core.pairs import PairDirections
    from segclip.models.text import encode_classes

    if not words:
        return {"words": [], "results": []}
    texts = encode_classes(model, words, "single").double().cpu()
    pool = model.pool
    directions = PairDirections(pool)
    signs = stats.signs.double().cpu()
    units = {unit: torch.nn.functional.normalize(
        component_directions(pool, principal_components(pool, stats, unit, 1))[:, 0].double().cpu(), dim=-1)
        for unit in ("neurons", "heads")}
    out = []
    heads = pool.num_heads
    for start in range(0, len(words), 256):
        chunk = texts[start:start + 256]
        pair_cos = directions.cosines(chunk.to(directions.output_weight)).double().cpu() * signs  # (C, N, H)
        pair_cos = pair_cos.masked_fill(~kept, -2).flatten(1)
        top_pairs = pair_cos.topk(min(results, int(kept.sum())), dim=1)
        neuron_cos, head_cos = chunk @ units["neurons"].T, chunk @ units["heads"].T
        top_neurons = neuron_cos.topk(min(results, neuron_cos.shape[1]), dim=1)
        top_heads = head_cos.topk(min(results, head_cos.shape[1]), dim=1)
        for c in range(len(chunk)):
            out.append({
                "pairs": [[i // heads, i % heads, round(v, 4)]
                          for i, v in zip(top_pairs.indices[c].tolist(), top_pairs.values[c].tolist())],
                "neurons": [[i, round(v, 4)] for i, v in zip(top_neurons.indices[c].tolist(),
                                                             top_neurons.values[c].tolist())],
                "heads": [[i, round(v, 4)] for i, v in zip(top_heads.indices[c].tolist(),
                                                           top_heads.values[c].tolist())]})
    return {"words": words, "results": out}


def _thumbnail(path: Path, size: int) -> bytes:
    from segclip.data.images import read_image
    from segclip.data.preprocess import centre_crop

    buffer = BytesIO()
    Image.fromarray(centre_crop(read_image(path), size)).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def _read_subconcepts(path: Path | None, info: Any = None) -> dict[int, list[dict[str, Any]]]:
    """Sub-concept hits per neuron from ``subconcepts.json``; refuses a malformed file or one of another model.

    Raises:
        DataError: unreadable or malformed (the message names the file, the hit and the fix).
        ConfigError: computed for another model or weights (``info``: the explored model's), or units out of range.
    """
    if path is None:
        return {}
    fix = "pass the subconcepts.json `segclip analyze subconcepts` wrote, unedited"
    try:
        envelope = read_result(path)
    except OutputError as err:
        raise DataError(f"Cannot read sub-concepts {path} ({err}); {fix}.") from None
    data = envelope.get("results")
    if not isinstance(data, dict) or not isinstance(data.get("hits"), list):
        raise DataError(f"{path} holds no list of hits (results: {{\"hits\": [...]}}); {fix}.")
    _check_source_model(Path(path), envelope.get("provenance"), info, "subconcepts.json")
    by_neuron: dict[int, list[dict[str, Any]]] = {}
    for number, hit in enumerate(data["hits"]):
        where = f"{path} hit {number}"
        if not isinstance(hit, dict):
            raise DataError(f"{where} is {type(hit).__name__}, not an object; {fix}.")
        units = []
        for key, size in (("neuron", None if info is None else info.neurons),
                          ("head", None if info is None else info.heads)):
            value = hit.get(key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise DataError(f"{where}: '{key}' is {value!r}, not an integer; {fix}.")
            if value < 0 or size is not None and value >= size:
                raise ConfigError(f"{where}: {key} {value} is outside the explored model's 0.."
                                  f"{'?' if size is None else size - 1} (sub-concepts of another model?); {fix} "
                                  "for this model.")
            units.append(value)
        for key in ("rank", "score", "overlap", "response", "spread", "neuron_spread", "distance"):
            value = hit.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value)):
                raise DataError(f"{where}: '{key}' is {value!r}, not a finite number; {fix}.")
        words = hit.get("words", [])
        if not isinstance(words, list) or not all(
                isinstance(w, list) and len(w) == 2 and isinstance(w[0], str) and isinstance(w[1], (int, float))
                and not isinstance(w[1], bool) and math.isfinite(w[1]) for w in words):
            raise DataError(f"{where}: 'words' must be a list of [word, coefficient] pairs; {fix}.")
        by_neuron.setdefault(units[0], []).append(
            {"head": units[1], **{key: hit.get(key) for key in (
                "rank", "score", "overlap", "response", "spread", "neuron_spread", "distance", "words")}})
    return by_neuron


def run_explore(config: ExploreConfig, model: ModelSource) -> ExploreResult:
    """Build the static explorer site of a model's statistics.

    Args:
        config: the options (:class:`ExploreConfig`).
        model: the :class:`~segclip.models.loading.CLIPResNet` the statistics were computed with, or a loader
            called once the inputs are checked.

    Returns:
        The :class:`ExploreResult` (``result.index`` opens in a browser from disk).

    Raises:
        ConfigError: statistics of another model.
        CacheError: unreadable statistics.
        DataError: images named in the statistics missing from ``config.images``; unreadable labels.
        ImageError: an unreadable image.
        OutputError: ``config.out`` is not empty and not replaced (``overwrite``), or cannot be written.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> import numpy as np
        >>> from PIL import Image
        >>> from segclip.analysis.statistics import collect_statistics
        >>> from segclip.models import load_model
        >>> model, root = load_model(), Path(tempfile.mkdtemp())
        >>> for i in range(4):
        ...     _ = (root / "images").mkdir(exist_ok=True)
        ...     Image.fromarray(np.full((64, 64, 3), 60 * i, np.uint8)).save(root / "images" / f"{i}.png")
        >>> stats = collect_statistics(model, sorted((root / "images").iterdir()), top_k=4, progress=False)
        >>> stats.save(root / "s.safetensors")
        >>> result = run_explore(ExploreConfig(statistics=root / "s.safetensors", images=root / "images",
        ...                                    out=root / "site"), model)
        >>> result.index.name, result.pairs_kept, result.images_traced
        ('index.html', 2048, 4)
    """
    from segclip.analysis.statistics import Statistics, check_model_statistics
    from segclip.analysis.stream import run_pass
    from segclip.core.pairs import PairDirections
    from segclip.core.registers import rank_registers

    start = time.perf_counter()
    out = Path(config.out)
    stats = Statistics.load(config.statistics)
    model = resolve_model(model)
    names = check_model_statistics(stats, model, config.statistics)
    folder = Path(config.images)
    labels = read_labels(config.labels, model.info) if config.labels is not None else None
    subconcepts = _read_subconcepts(config.subconcepts, model.info)
    build = _prepare_out(out, config.overwrite, _build_key(config, model.info))  # the site is built here

    n_neurons, n_heads = stats.mean_scalars.shape
    grid = model.info.grid
    t = min(config.images_per_unit, stats.pair_top_images.shape[0])
    contribution = stats.pair_top_norm.float().cpu()
    keep = max(1, round(config.keep_pairs * contribution.numel()))
    threshold = float(contribution.flatten().topk(keep).values[-1])
    order = contribution.flatten().argsort(descending=True, stable=True)
    kept = torch.zeros(contribution.numel(), dtype=torch.bool)
    kept[order[:keep]] = True
    kept = kept.view(n_neurons, n_heads)
    for n, hits in subconcepts.items():  # a sub-concept always gets its page, whatever its contribution
        for hit in hits:
            if 0 <= n < n_neurons and 0 <= hit["head"] < n_heads:
                kept[n, hit["head"]] = True
    keep = int(kept.sum())
    pair_images = stats.pair_top_images[:t].cpu()
    neuron_images = stats.neuron_top_images[:min(t, stats.neuron_top_images.shape[0])].cpu()
    head_images = stats.head_top_images[:min(t, stats.head_top_images.shape[0])].cpu()

    requests: dict[int, tuple[list[int], list[int], list[int], list[int]]] = {}

    def ask(image: int) -> tuple[list[int], list[int], list[int], list[int]]:
        return requests.setdefault(image, ([], [], [], []))

    for n, h in kept.nonzero().tolist():
        for image in pair_images[:, n, h].tolist():
            entry = ask(image)
            entry[0].append(n)
            entry[1].append(h)
    for n in range(n_neurons):
        for image in neuron_images[:, n].tolist():
            ask(image)[2].append(n)
    for h in range(n_heads):
        for image in head_images[:, h].tolist():
            ask(image)[3].append(h)
    traced = sorted(requests)
    paths = [folder / names[i] for i in traced]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"--images {folder} lacks {len(missing)} images named in the statistics ({missing[:5]}); "
                        "pass the folder `segclip calibrate` read.")
    collector = _MapCollector([requests[i] for i in traced])
    run_pass(model, paths, collector, key={"kind": "explore-maps"}, batch_size=config.batch_size,
             description="explore maps")
    position = {image: p for p, image in enumerate(traced)}
    for image, path in zip(traced, paths):
        thumbnail = build / "thumbs" / f"{image}.jpg"
        if not thumbnail.is_file():  # kept from an interrupted build of the same inputs (written atomically)
            atomic_write_bytes(thumbnail, _thumbnail(path, config.thumbnail_size))

    # numpy copies: the loops below index single values, which costs microseconds per torch scalar
    norms_of = contribution.numpy()
    pair_norms = PairDirections(model.pool).norms().detach().float().cpu().numpy()
    std = torch.diagonal(stats.neuron_covariance, dim1=1, dim2=2).clamp_min(0).sqrt().float().cpu().numpy()
    mean = stats.mean_scalars.float().cpu().numpy()
    deviations = stats.deviations.float().cpu().numpy()  # (k, N, H)
    signs = stats.signs.cpu().numpy()
    kept_of = kept.numpy()
    tops = pair_images.numpy()
    registers = set(rank_registers(stats.register_scores.cpu(), config.show_registers).tolist()) if config.show_registers \
        else set()
    register_scores = stats.register_scores.float().cpu().numpy()
    neuron_norms = stats.neuron_top_norm.float().cpu().numpy()
    label_of = labels or {"pairs": {}, "neurons": {}, "heads": {}, "head_kind": "pcs"}

    kept_pairs = kept.nonzero().numpy()
    edges_of, counts_of = tail_histograms(mean[kept_pairs[:, 0], kept_pairs[:, 1]]
                                          + deviations[:, kept_pairs[:, 0], kept_pairs[:, 1]], config.histogram_bins)
    histogram_of = {(n, h): p for p, (n, h) in enumerate(kept_pairs.tolist())}

    def pair_page(n: int, h: int) -> dict[str, Any]:
        tail = deviations[:, n, h]
        edges, counts = edges_of[histogram_of[n, h]], counts_of[histogram_of[n, h]]
        return {
            "norm": float(norms_of[n, h]), "w_norm": float(pair_norms[n, h]), "sign": int(signs[n, h]),
            "mean": float(mean[n, h]), "std": float(std[n, h]), "positive": float((tail > 0).mean()),
            "tail": len(tail), "histogram": {"edges": [round(float(e), 6) for e in edges], "counts": counts.tolist()},
            "words": _words(label_of["pairs"].get((n, h))),
            "top": [{"i": image, **collector.pairs[position[image], n, h]} for image in tops[:, n, h].tolist()]}

    shards = 0
    for first in range(0, n_neurons, config.neurons_per_shard):
        neurons = {}
        for n in range(first, min(first + config.neurons_per_shard, n_neurons)):
            ranked = np.argsort(-norms_of[n], kind="stable").tolist()
            neurons[n] = {
                "norm": float(neuron_norms[n]), "register": n in registers,
                "register_score": float(register_scores[n]), "words": _words(label_of["neurons"].get(n)),
                "heads": [[h, float(norms_of[n, h]), bool(kept_of[n, h])] for h in ranked],
                "top": [{"i": image, **collector.neurons[position[image], n]}
                        for image in neuron_images[:, n].tolist()],
                "pairs": {h: pair_page(n, h) for h in ranked if kept_of[n, h]},
                "subconcepts": subconcepts.get(n, [])}
        atomic_write_text(build / "data" / "neurons" / f"{first // config.neurons_per_shard}.js",
                          _register(f"neurons/{first // config.neurons_per_shard}", {"neurons": neurons}))
        shards += 1

    vocabulary = _search_vocabulary(config, labels, model.info.classes)
    atomic_write_text(build / "data" / "search.js",
                      _register("search", _search_index(model, stats, vocabulary, kept, config.search_results)))

    landing = min(config.landing_units, keep)
    order = order[kept.flatten()[order]]
    top_pairs = [divmod(i, n_heads) for i in order[:landing].tolist()]
    top_neurons = stats.neuron_top_norm.float().cpu().argsort(descending=True)[:config.landing_units].tolist()
    command = command_line(config, model.info.name, model.info.pretrained)
    site = {
        "version": SITE_VERSION, "neurons": n_neurons, "heads": n_heads, "grid": grid,
        "neurons_per_shard": config.neurons_per_shard, "threshold": threshold, "pairs_kept": keep,
        "keep_pairs": config.keep_pairs, "registers": sorted(registers, key=lambda r: -register_scores[r]),
        "head_kind": label_of["head_kind"],
        "labelled": labels is not None, "uniform_attention": 1 / (grid * grid + 1),
        "landing": {
            "pairs": [[n, h, float(contribution[n, h]), _words(label_of["pairs"].get((n, h)), 3)]
                      for n, h in top_pairs],
            "neurons": [[n, float(stats.neuron_top_norm[n]), _words(label_of["neurons"].get(n), 3)]
                        for n in top_neurons]},
        "head_pages": [{"norm": float(stats.head_top_norm[h]), "sink": float(stats.sink_attention[h]),
                        "words": _words(label_of["heads"].get(h)),
                        "top": [{"i": image, **collector.heads[position[image], h]}
                                for image in head_images[:, h].tolist()],
                        "pairs": [[n, float(contribution[n, h])] for n in
                                  contribution[:, h].masked_fill(~kept[:, h], -1).argsort(descending=True)
                                  [:min(config.landing_units, int(kept[:, h].sum()))].tolist()]}
                       for h in range(n_heads)],
        "about": {"model": to_jsonable(model.info), "statistics": str(config.statistics),
                  "images": str(folder), "image_count": stats.count, "top_k": stats.top_k, "norm_k": stats.norm_k,
                  "labels": None if config.labels is None else str(config.labels),
                  "subconcepts": None if config.subconcepts is None else str(config.subconcepts),
                  "command": command, "built": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                  "git_revision": git_revision(), "versions": package_versions(),
                  "images_traced": len(traced), "search_words": len(vocabulary)}}
    atomic_write_text(build / "data" / "site.js", _register("site", site))
    assets = resources.files("segclip.explore") / "assets"
    atomic_write_bytes(build / "index.html", (assets / "index.html").read_bytes())
    for name in ASSETS[1:]:
        atomic_write_bytes(build / "assets" / name, (assets / name).read_bytes())
    size = sum(p.stat().st_size for p in build.rglob("*") if p.is_file() and p.name != BUILD_KEY)
    _swap_in(build, out)
    seconds = time.perf_counter() - start
    log.info("explorer: %d of %d pairs, %d images, %.1f MB in %.1f s", keep, contribution.numel(), len(traced),
             size / 1e6, seconds)
    return ExploreResult(out=out, index=out / "index.html", pairs_kept=keep, pairs_total=contribution.numel(),
                         threshold=threshold, images_traced=len(traced), shards=shards, search_words=len(vocabulary),
                         bytes=size, seconds=round(seconds, 3), command=command)
