"""Calibration: pair signs, mean pair scalars and register neurons from an image set; cached and found again.

The calibration is the :class:`~segclip.analysis.statistics.Statistics` of an image folder (one resumable pass,
the same code as the analyses) reduced to what segmentation needs. It is saved as a versioned safetensors file
keyed by model name and weights hash in ``<segclip cache>/calibration/`` (or at ``--out``), next to the full
statistics (``*.statistics.safetensors``), and :func:`load_calibration` finds it again.
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

from segclip.analysis.sink import rank_registers
from segclip.analysis.statistics import Statistics, collect_statistics
from segclip.analysis.stream import atomic_save, read_safetensors
from segclip.data.images import list_images
from segclip.errors import ConfigError
from segclip.models.loading import CLIPResNet, bundled_dir
from segclip.paths import cache_dir

log = logging.getLogger(__name__)

CALIBRATION_VERSION = 1


@dataclass
class Calibration:
    """What segmentation reads from a calibration run.

    Attributes:
        signs: (N, H) float +-1, s[n, h] (majority sign of the top deviations, ties +1).
        registers: (R,) long, register neurons, most important first.
        mean_scalars: (N, H) float, mean alpha over the calibration images.
        register_scores: (N,) mean |change| of the sink attention when each neuron is zeroed.
        sink_attention: (H,) mean attention of the class token to the last token.
        metadata: model, weights_hash, image_folder, count, top_k, version.
    """

    signs: torch.Tensor
    registers: torch.Tensor
    mean_scalars: torch.Tensor
    register_scores: torch.Tensor
    sink_attention: torch.Tensor
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_statistics(cls, stats: Statistics, registers: int = 32) -> Calibration:
        """Reduce statistics to a calibration with the top ``registers`` register neurons."""
        meta = {key: stats.metadata.get(key) for key in ("model", "weights_hash", "image_folder")}
        return cls(signs=stats.signs.float(), registers=rank_registers(stats.register_scores, registers),
                   mean_scalars=stats.mean_scalars.float(), register_scores=stats.register_scores.float(),
                   sink_attention=stats.sink_attention.float(),
                   metadata={**meta, "count": stats.count, "top_k": stats.top_k, "version": CALIBRATION_VERSION})

    def to_dict(self) -> dict[str, Any]:
        """Metadata and summary numbers (JSON-able): image folder, count, model, weights hash, version, registers."""
        return {**self.metadata, "registers": self.registers.tolist(),
                "positive_signs": float((self.signs > 0).float().mean()),
                "shape": list(self.signs.shape)}

    def save(self, path: str | Path) -> None:
        """Write the artifact atomically (safetensors, metadata as JSON)."""
        tensors = {"signs": self.signs.float(), "registers": self.registers.long(),
                   "mean_scalars": self.mean_scalars.float(), "register_scores": self.register_scores.float(),
                   "sink_attention": self.sink_attention.float()}
        atomic_save(tensors, Path(path), {"metadata": json.dumps(self.metadata, sort_keys=True)})


def calibration_path(model: CLIPResNet) -> Path:
    """Default artifact path: ``<cache>/calibration/<model>-<sha of weights hash>.safetensors``."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", model.info.name)
    digest = hashlib.sha256(model.info.weights_hash.encode()).hexdigest()[:16]
    return cache_dir() / "calibration" / f"{name}-{digest}.safetensors"


def statistics_path(path: Path) -> Path:
    """The full statistics saved next to a calibration artifact."""
    return path.with_name(path.name.removesuffix(".safetensors") + ".statistics.safetensors")


def load_calibration(model: CLIPResNet, path: str | Path | None = None) -> Calibration | None:
    """Find the calibration of ``model``; a missing one is None, a stale or corrupt one is None with a warning.

    Looks at ``path``, else the cache (:func:`calibration_path`), else, for the bundled model, the calibration
    shipped with it.

    Args:
        model: the loaded model (its name and weights hash must match the artifact's).
        path: an artifact file (default: :func:`calibration_path`).

    Returns:
        The :class:`Calibration`, or None.

    Example:
        >>> from segclip.models import load_model
        >>> load_calibration(load_model("RN50", "none")) is None  # nothing calibrated yet
        True
    """
    if path is None:
        path = calibration_path(model)
        shipped = bundled_dir() / "calibration.safetensors"
        if not path.is_file() and model.info.pretrained == "bundled" and shipped.is_file():
            path = shipped  # the bundled model ships its calibration (tools/calibrate_tiny.py)
    path = Path(path)
    if not path.is_file():
        return None
    saved = read_safetensors(path)
    if saved is None:
        return None
    tensors, meta = saved
    try:
        metadata = json.loads(meta["metadata"])
        calibration = Calibration(signs=tensors["signs"], registers=tensors["registers"].long(),
                                  mean_scalars=tensors["mean_scalars"], register_scores=tensors["register_scores"],
                                  sink_attention=tensors["sink_attention"], metadata=metadata)
    except (KeyError, ValueError) as err:
        log.warning("calibration %s is corrupt (%s); not using it", path, err)
        return None
    info = model.info
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


def calibrate(model: CLIPResNet, images: str | Path, *, out: str | Path | None = None, limit: int | None = None,
              registers: int = 32, top_k: int = 50, batch_size: int = 8, chunk_size: int = 64,
              progress: bool = True) -> Calibration:
    """Compute, save and return the calibration of ``model`` on an image folder; resumable.

    Args:
        model: the loaded model.
        images: folder of images (sorted by name; the first ``limit`` are used).
        out: artifact path (default: :func:`calibration_path`); the statistics go next to it, and a
            ``*.partial.safetensors`` checkpoint while running (removed at the end).
        limit: use at most this many images.
        registers: number of register neurons R.
        top_k: deviations per pair for the sign (method.md: 50).
        batch_size, chunk_size, progress: see :func:`segclip.analysis.stream.run_pass`.

    Returns:
        The :class:`Calibration`.

    Raises:
        DataError: the folder is missing or holds no images.
        ImageError: an image is unreadable (the finished chunks stay in the checkpoint).
        ConfigError: bad ``limit`` or ``registers``.
    """
    if limit is not None and limit < 1:
        raise ConfigError("--limit must be at least 1.")
    if registers < 0 or registers > model.info.neurons:
        raise ConfigError(f"--registers must be between 0 and {model.info.neurons}.")
    paths = list_images(images)[:limit]
    path = Path(out) if out is not None else calibration_path(model)
    checkpoint = path.with_name(path.name.removesuffix(".safetensors") + ".partial.safetensors")
    stats = collect_statistics(model, paths, top_k=top_k, batch_size=batch_size, chunk_size=chunk_size,
                               checkpoint=checkpoint, progress=progress)
    stats.save(statistics_path(path))
    calibration = Calibration.from_statistics(stats, registers)
    calibration.save(path)
    checkpoint.unlink(missing_ok=True)
    log.info("calibration of %s on %d images saved to %s", model.info.name, len(paths), path)
    return calibration
