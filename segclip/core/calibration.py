"""The calibration artifact: the method's data-decided inputs (pair signs, register neurons), cached and found again.

A calibration is computed by ``segclip calibrate`` (:func:`segclip.analysis.calibration.run_calibrate`) from the
statistics of an image set, and read here by segmentation. It is a versioned safetensors file keyed by model name
and weights hash in ``<segclip cache>/calibration/`` (or anywhere given), next to the full statistics
(``*.statistics.safetensors``); :func:`load_calibration` finds it again and refuses stale ones.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from segclip.core.info import ModelInfo
from segclip.io import atomic_save_tensors, read_tensors
from segclip.paths import bundled_dir, cache_dir

log = logging.getLogger(__name__)

CALIBRATION_VERSION = 1
MIN_DEFAULT_IMAGES = 256
"""Fewest images a calibration needs to become the cached default without ``--set-default``: below a few hundred
images most pair signs are a coin flip (``thin_sign_share``), and a throwaway calibration must not silently change
every later result."""


@dataclass
class Calibration:
    """What segmentation reads from a calibration run.

    Attributes:
        signs: (N, H) float +-1, s[n, h] (majority sign of the top deviations, ties +1).
        registers: (R,) long, register neurons, most important first.
        mean_scalars: (N, H) float, mean alpha over the calibration images.
        register_scores: (N,) mean |change| of the sink attention when each neuron is zeroed.
        sink_attention: (H,) mean attention of the class token to the last token.
        register_decrease: (N,) mean decrease of the sink attention when each neuron is zeroed (signed), or None
            (artifacts written before segclip 0.2).
        metadata: model, weights_hash, image_folder, count, top_k, version; ``register_search`` (where neurons were
            zeroed and how they were ranked; absent in artifacts before 0.2, which zeroed z + P and ranked by
            mean |change|); ``thin_sign_share`` (pairs whose sign majority is not significant).
        path, sha256: the file it was read from or saved to, and the SHA-256 of that file (None in memory only).
    """

    signs: torch.Tensor
    registers: torch.Tensor
    mean_scalars: torch.Tensor
    register_scores: torch.Tensor
    sink_attention: torch.Tensor
    metadata: dict[str, Any] = field(default_factory=dict)
    register_decrease: torch.Tensor | None = None
    path: Path | None = None
    sha256: str | None = None

    @property
    def register_search(self) -> dict[str, str]:
        """Where the register search zeroed neurons (``variant``) and how it ranked them (``ranking``)."""
        return self.metadata.get("register_search") or {"variant": "tokens", "ranking": "absolute"}

    def to_dict(self) -> dict[str, Any]:
        """Metadata and summary numbers (JSON-able): image folder, count, model, weights hash, version, registers."""
        return {**self.metadata, "registers": self.registers.tolist(),
                "positive_signs": float((self.signs > 0).float().mean()),
                "shape": list(self.signs.shape), "path": None if self.path is None else str(self.path),
                "sha256": self.sha256}

    def save(self, path: str | Path) -> None:
        """Write the artifact atomically (safetensors, metadata as JSON).

        Raises:
            OutputError: the file cannot be written.
        """
        tensors = {"signs": self.signs.float(), "registers": self.registers.long(),
                   "mean_scalars": self.mean_scalars.float(), "register_scores": self.register_scores.float(),
                   "sink_attention": self.sink_attention.float()}
        if self.register_decrease is not None:
            tensors["register_decrease"] = self.register_decrease.float()
        atomic_save_tensors(Path(path), tensors, {"metadata": json.dumps(self.metadata, sort_keys=True)})
        self.path, self.sha256 = Path(path), file_sha256(path)


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def calibration_note(calibration: Calibration | dict[str, Any] | None) -> str:
    """The one line printed under every table: which calibration a command used (file, hash, image count).

    Args:
        calibration: the :class:`Calibration` used, its ``to_dict()`` record (as in a result's provenance), or None
            (no calibration: pair signs assumed +1).

    Returns:
        ``"calibration: PATH (sha256 0123456789ab, N images)"``, or ``"calibration: none (...)"``.

    Example:
        >>> calibration_note(None)
        'calibration: none (pair signs assumed +1, no register neurons)'
        >>> calibration_note({"path": "/c/x.safetensors", "sha256": "0123456789abcdef", "count": 16})
        'calibration: /c/x.safetensors (sha256 0123456789ab, 16 images)'
    """
    if calibration is None:
        return "calibration: none (pair signs assumed +1, no register neurons)"
    record = calibration.to_dict() if isinstance(calibration, Calibration) else calibration
    count = record.get("count")
    source = f"{count} images" if count else f"from {record.get('image_folder') or 'an unknown source'}"
    sha = record.get("sha256")
    return f"calibration: {record.get('path') or 'in memory'} ({'sha256 ' + sha[:12] if sha else 'unsaved'}, {source})"


def calibration_path(info: ModelInfo) -> Path:
    """Default artifact path: ``<cache>/calibration/<model>-<sha of weights hash>.safetensors``."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", info.name)
    digest = hashlib.sha256(info.weights_hash.encode()).hexdigest()[:16]
    return cache_dir() / "calibration" / f"{name}-{digest}.safetensors"


def statistics_path(path: str | Path) -> Path:
    """The full statistics saved next to a calibration artifact."""
    path = Path(path)
    return path.with_name(path.name.removesuffix(".safetensors") + ".statistics.safetensors")


def load_calibration(info: ModelInfo, path: str | Path | None = None) -> Calibration | None:
    """Find the calibration of a model; a missing one is None, a stale or corrupt one is None with a warning.

    Looks at ``path``, else the cache (:func:`calibration_path`), else, for the bundled model, the calibration
    shipped with it.

    Args:
        info: the loaded model's :class:`ModelInfo` (its name and weights hash must match the artifact's).
        path: an artifact file (default: :func:`calibration_path`).

    Returns:
        The :class:`Calibration`, or None.

    Example:
        >>> from segclip.models import load_model
        >>> load_calibration(load_model("RN50", "none").info) is None  # nothing calibrated yet
        True
    """
    if path is None:
        path = calibration_path(info)
        shipped = bundled_dir() / "calibration.safetensors"
        if not path.is_file() and info.pretrained == "bundled" and shipped.is_file():
            path = shipped  # the bundled model ships its calibration (tools/calibrate_tiny.py)
    path = Path(path)
    if not path.is_file():
        return None
    saved = read_tensors(path)
    if saved is None:
        return None
    tensors, meta = saved
    try:
        metadata = json.loads(meta["metadata"])
        if not isinstance(metadata, dict):
            raise ValueError("its metadata is not a mapping")
        calibration = Calibration(signs=tensors["signs"], registers=tensors["registers"].long(),
                                  mean_scalars=tensors["mean_scalars"], register_scores=tensors["register_scores"],
                                  sink_attention=tensors["sink_attention"], metadata=metadata,
                                  register_decrease=tensors.get("register_decrease"))
    except (KeyError, ValueError) as err:
        log.warning("calibration %s is corrupt (%s); not using it", path, err)
        return None
    calibration.path, calibration.sha256 = path, file_sha256(path)
    problems = []
    if metadata.get("version") != CALIBRATION_VERSION:
        problems.append(f"version {metadata.get('version')} != {CALIBRATION_VERSION}")
    if (metadata.get("model"), metadata.get("weights_hash")) != (info.name, info.weights_hash):
        problems.append(f"made for {metadata.get('model')} ({metadata.get('weights_hash')}), not {info.name} "
                        f"({info.weights_hash})")
    if tuple(calibration.signs.shape) != (info.neurons, info.heads):
        problems.append(f"signs shaped {tuple(calibration.signs.shape)}")
    if not torch.isin(calibration.signs, torch.tensor([-1.0, 1.0])).all():
        problems.append("signs are not +-1")
    if problems:
        log.warning("calibration %s is stale (%s); not using it. Run `segclip calibrate` again.", path,
                    "; ".join(problems))
        return None
    return calibration
