"""``segclip calibrate``: pair signs, mean pair scalars and register neurons from an image set, in one resumable pass.

The calibration is the :class:`~segclip.analysis.statistics.Statistics` of an image folder (the same code as the
analyses) reduced to what segmentation needs (:class:`~segclip.core.calibration.Calibration`, which lives in the
core because it is the method's input). Both are saved: the artifact at ``out`` (default: the cache, keyed by model
and weights hash) and the full statistics next to it (``*.statistics.safetensors``).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segclip.analysis.common import (
    DatasetOptions,
    collect_statistics_for,
    read_image_set,
)
from segclip.analysis.distributed import ProcessConfig
from segclip.core.trace import RegisterIntervention
from segclip.process import is_primary
from segclip.analysis.statistics import Statistics
from segclip.config import ShortRepr, check_positive, option
from segclip.core.calibration import (
    CALIBRATION_VERSION,
    MIN_DEFAULT_IMAGES,
    Calibration,
    calibration_path,
    statistics_path,
)
from segclip.core.registers import REGISTER_RANKINGS, rank_registers
from segclip.errors import ConfigError, DataError, OutputError
from segclip.models.loading import CLIPResNet, ModelSource, resolve_model

log = logging.getLogger(__name__)


THIN_SIGNS_WARNING = 0.05  # warn when more than this share of pair signs is not decided significantly


def thin_sign_share(deviations: torch.Tensor) -> float:
    """Share of pairs whose sign majority is not significant: ``|positives - negatives| < 1.96 sqrt(k)`` among the
    top-k deviations (a fair coin would give such a split with probability >= 5 %).

    Example:
        >>> thin_sign_share(torch.tensor([[1.0, 1.0], [1.0, -1.0], [1.0, 1.0], [1.0, 1.0]]))  # 4 vs 0, 2 vs 2
        0.5
    """
    votes = torch.sign(deviations.float()).sum(0).abs()
    return float((votes < 1.96 * math.sqrt(deviations.shape[0])).float().mean())


def calibration_from_statistics(stats: Statistics, registers: int = 32, ranking: str = "absolute") -> Calibration:
    """Reduce statistics to a calibration with the top ``registers`` register neurons.

    Args:
        stats: the statistics of the calibration images.
        registers: how many register neurons to keep.
        ranking: ``absolute`` (mean |change| of the sink; the authors' ``find_registers``) or ``signed`` (mean
            decrease; their segmentor).
    """
    if ranking not in REGISTER_RANKINGS:
        raise ConfigError(f"Unknown register ranking '{ranking}'; use one of {', '.join(REGISTER_RANKINGS)}.")
    meta = {key: stats.metadata.get(key) for key in ("model", "weights_hash", "image_folder")}
    scores = stats.register_scores if ranking == "absolute" else stats.register_decrease
    search = {"variant": stats.metadata.get("register_variant", "activations"), "ranking": ranking}
    return Calibration(signs=stats.signs.float(), registers=rank_registers(scores, registers),
                       mean_scalars=stats.mean_scalars.float(), register_scores=stats.register_scores.float(),
                       sink_attention=stats.sink_attention.float(), register_decrease=stats.register_decrease.float(),
                       metadata={**meta, "count": stats.count, "top_k": stats.top_k, "version": CALIBRATION_VERSION,
                                 "register_search": search,
                                 "thin_sign_share": round(thin_sign_share(stats.deviations), 6)})


@dataclass(frozen=True, kw_only=True)
class CalibrateConfig(DatasetOptions, ProcessConfig):
    """Options of ``segclip calibrate``."""

    images: Path | None = option(None, help="folder of calibration images (required unless --from-pcs).")
    from_pcs: Path | None = option(None, help="import the pair signs from the authors' pipeline instead: their "
                                              "pcs.npy (svd_over_dataset.py --mode nh: one oriented PC per pair, "
                                              "shaped (H, N, d)); s[n, h] = sign(pc . w[n, h]).")
    sink_diffs: Path | None = option(None, help="with --from-pcs: the authors' find_registers.py output (sink "
                                                "differences, default minus zeroed, shaped (images, N)) for the "
                                                "register neurons.")
    out: Path | None = option(None, help="artifact path (default: <segclip cache>/calibration/<model>-<weights>"
                                         ".safetensors, the default every later command uses; needs at least "
                                         f"{MIN_DEFAULT_IMAGES} images or --set-default); the full statistics are "
                                         "written next to it. Use it later with --calibration.")
    set_default: bool = option(False, help="make this calibration the cached default every later command uses, "
                                           f"even on fewer than {MIN_DEFAULT_IMAGES} images or with --out (then "
                                           "written to both).")
    limit: int | None = option(None, help="use at most N images (sorted by name).")
    keep_registers: int = option(32, aliases=("--registers",), help="register neurons kept in the artifact, the most "
                                 "a later --zero-registers can use (default: 32).")
    register_variant: str = option("activations", choices=RegisterIntervention.VARIANTS,
                                   help="the register search zeroes each neuron's activation before the positional "
                                        "embedding (activations: the paper's and the authors' code; default) or its "
                                        "whole token entry z + P (tokens: segclip 0.1).")
    register_ranking: str = option("absolute", choices=REGISTER_RANKINGS,
                                   help="rank register neurons by the mean |change| of the sink attention (absolute: "
                                        "the authors' find_registers; default) or by its mean decrease (signed: their "
                                        "segmentor).")
    top_k: int = option(50, help="top deviations per pair for the sign (default: 50).")
    batch_size: int = option(8, help="images per backbone pass (default: 8).")
    overwrite: bool = option(False, help="replace an existing calibration at the artifact path (every later command "
                                         "that uses the default cached calibration picks up the new one).")
    progress: bool = option(True, help="show a progress bar.")

    def __post_init__(self) -> None:
        super().__post_init__()  # ProcessConfig's checks
        check_positive(self, "limit", "top_k", "batch_size")
        check_positive(self, "keep_registers", allow_zero=True)
        if (self.dataset_config() is None) == (self.from_pcs is None):
            raise ConfigError("Give --images (a folder to calibrate on) or --dataset with --data-root, or --from-pcs "
                              "(the authors' pcs.npy), exactly one of them.")
        if self.sink_diffs is not None and self.from_pcs is None:
            raise ConfigError("--sink-diffs goes with --from-pcs.")


@dataclass
class CalibrateResult(ShortRepr):
    """A finished calibration.

    Attributes:
        calibration: the artifact (also written to ``path``).
        statistics: the full statistics (also written to ``statistics_path``); None for imported PCs.
        path, statistics_path: where they were written.
        seconds: wall time of the run.
        default: whether it is (also) the cached default every later command of the model uses.
    """

    calibration: Calibration
    statistics: Statistics | None
    path: Path
    statistics_path: Path | None
    seconds: float
    default: bool = False

    def summary(self) -> str:
        summary = self.calibration.to_dict()
        source = f"on {summary['count']} images" if summary["count"] else f"from {summary.get('image_folder')}"
        thin = summary.get("thin_sign_share")
        return (f"calibrated {summary['model']} {source} in {self.seconds:.1f}s; "
                f"{100 * summary['positive_signs']:.1f}% positive signs"
                + (f" ({100 * thin:.1f}% decided by a thin margin)" if thin is not None else "")
                + f"; register neurons {summary['registers'][:8]}...; wrote {self.path}"
                + (" (the default every later command uses)\n" if self.default else
                   f" (not the default: use it with --calibration {self.path})\n"))

    def to_dict(self) -> dict[str, Any]:
        return {**self.calibration.to_dict(), "path": str(self.path), "statistics": str(self.statistics_path),
                "seconds": round(self.seconds, 3)}


def _artifact_paths(config: CalibrateConfig, model: CLIPResNet, images: int | None) -> list[Path]:
    """Where the artifact goes (first: where it is computed; second, with ``set_default`` and ``out``: the cached
    default it is copied to); refuses to replace one without ``overwrite``, and to make a calibration of fewer than
    :data:`MIN_DEFAULT_IMAGES` images (``images``; None: imported PCs) or one given by ``--out`` the default
    without ``set_default``.

    Raises:
        ConfigError: the default would change without ``set_default``. OutputError: an artifact exists.
    """
    default = calibration_path(model.info)
    path = Path(config.out).expanduser() if config.out is not None else default
    is_default = path.resolve() == default.resolve()
    if is_default and not config.set_default:
        if config.out is not None:
            raise ConfigError(f"--out {config.out} is the cached default calibration every later command uses; pass "
                              "--set-default to replace the default on purpose, or choose another --out.")
        if images is not None and images < MIN_DEFAULT_IMAGES:
            raise ConfigError(f"A calibration on {images} images (fewer than {MIN_DEFAULT_IMAGES}) would become the "
                              f"cached default every later command of {model.info.name} uses; pass --out FILE to keep "
                              "it apart (use it with --calibration FILE), or --set-default to make it the default.")
    paths = [path] + ([default] if config.set_default and not is_default else [])
    for target in paths:
        existing = [p for p in (target, statistics_path(target)) if p.exists()]
        if existing and not config.overwrite:
            raise OutputError(f"{existing[0]} already exists (a calibration of {model.info.name}"
                              f"{', in the cache every later command uses' if target == default else ''}); pass "
                              "--overwrite to replace it, or --out for another file.")
    return paths


def _load_array(path: Path, what: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"Cannot read the {what} {path} ({err}); pass the .npy file the authors' script wrote.") \
            from err


def calibration_from_pcs(model: CLIPResNet, pcs: np.ndarray | torch.Tensor, sink_diffs: np.ndarray | None = None,
                         registers: int = 32, ranking: str = "absolute") -> Calibration:
    """A calibration from the authors' exported pair PCs (and, optionally, their register search).

    Each pair's oriented first principal component is +-w[n, h] / |w[n, h]| (rank one), so its sign against the
    pair direction is the pair's sign: ``s[n, h] = sign(pc[h, n] . w[n, h])`` (0 counts as +1).

    Args:
        model: the model the PCs were computed for.
        pcs: (H, N, d) the authors' ``pcs.npy`` (``svd_over_dataset.py --mode nh``), heads first.
        sink_diffs: (images, N) their ``find_registers.py`` output (default minus zeroed sink attention), or None
            (no register neurons).
        registers: register neurons kept.
        ranking: ``absolute`` (mean |difference|, their ``find_registers``) or ``signed`` (mean difference, their
            segmentor).

    Returns:
        The :class:`Calibration` (mean pair scalars unknown: zeros).

    Raises:
        DataError: arrays of the wrong shape.

    Example:
        >>> from segclip.models import load_model
        >>> model = load_model()
        >>> w = torch.stack([model.pairs.head_vectors(h) for h in range(8)])  # (H, N, d)
        >>> calibration_from_pcs(model, -w).signs.unique().tolist()  # every PC points against w
        [-1.0]
    """
    info = model.info
    pcs = torch.as_tensor(np.asarray(pcs), dtype=torch.float64)
    if tuple(pcs.shape) != (info.heads, info.neurons, info.embed_dim):
        raise DataError(f"The PCs are shaped {tuple(pcs.shape)}; {info.name} needs (H, N, d) = "
                        f"({info.heads}, {info.neurons}, {info.embed_dim}) (the authors' pcs.npy is heads first).")
    heads = model.pool.heads
    projected = torch.einsum("hdc,hnd->hnc", heads.w_o.double().cpu(), pcs)  # W_O^h^T pc: (H, N, hd)
    dots = torch.einsum("hnc,hcn->nh", projected, heads.w_v.double().cpu())  # pc[h, n] . w[n, h]
    signs = torch.where(dots >= 0, 1.0, -1.0)
    zeros = torch.zeros(info.neurons)
    register_scores, decrease, chosen = zeros, zeros, torch.zeros(0, dtype=torch.long)
    if sink_diffs is not None:
        diffs = torch.as_tensor(np.asarray(sink_diffs), dtype=torch.float64)
        if diffs.ndim != 2 or diffs.shape[1] != info.neurons:
            raise DataError(f"The sink differences are shaped {tuple(diffs.shape)}; expected (images, "
                            f"{info.neurons}).")
        register_scores, decrease = diffs.abs().mean(0).float(), diffs.mean(0).float()
        chosen = rank_registers(register_scores if ranking == "absolute" else decrease, registers)
    search = {"variant": "activations", "ranking": ranking, "source": "the authors' find_registers.py"} \
        if sink_diffs is not None else None
    return Calibration(signs=signs, registers=chosen, mean_scalars=torch.zeros(info.neurons, info.heads),
                       register_scores=register_scores, sink_attention=torch.zeros(info.heads),
                       register_decrease=decrease,
                       metadata={"model": info.name, "weights_hash": info.weights_hash,
                                 "image_folder": "imported from the authors' pcs.npy", "count": 0, "top_k": 0,
                                 "version": CALIBRATION_VERSION, "register_search": search, "signs_from": "pcs.npy"})


def _import_pcs(config: CalibrateConfig, model: CLIPResNet, start: float) -> CalibrateResult:
    path, *default = _artifact_paths(config, model, None)
    diffs = None if config.sink_diffs is None else _load_array(config.sink_diffs, "sink differences")
    calibration = calibration_from_pcs(model, _load_array(config.from_pcs, "PCs file"), diffs, config.keep_registers,
                                       config.register_ranking)
    for target in default:
        calibration.save(target)
        log.info("calibration also saved as the default %s", target)
    calibration.save(path)
    return CalibrateResult(calibration, None, path, None, time.perf_counter() - start,
                           bool(default) or path == calibration_path(model.info))


def run_calibrate(config: CalibrateConfig, model: ModelSource) -> CalibrateResult:
    """Compute, save and return the calibration of ``model`` on an image folder; resumable.

    Args:
        config: the options (:class:`CalibrateConfig`).
        model: the loaded model, or a loader called once the inputs are checked.

    Returns:
        The :class:`CalibrateResult`; the artifact and statistics are on disk, and a ``*.partial.safetensors``
        checkpoint was kept while running.

    Raises:
        DataError: the folder is missing or holds no images.
        ImageError: an image is unreadable (the images before it stay in the checkpoint).
        ConfigError: ``registers`` above the number of neurons; a calibration of fewer than
            :data:`~segclip.core.calibration.MIN_DEFAULT_IMAGES` images, or an ``out`` naming the cached default,
            without ``set_default``.
        OutputError: the artifact exists (without ``overwrite``) or cannot be written.

    Example:
        >>> import tempfile
        >>> from segclip.data.synthetic import write_scene_folder
        >>> from segclip.models import load_model
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = write_scene_folder(folder / "images", 4, seed=1)
        >>> config = CalibrateConfig(images=folder / "images", out=folder / "cal.safetensors", progress=False)
        >>> result = run_calibrate(config, load_model())
        >>> result.calibration.signs.shape, result.statistics_path.name
        (torch.Size([512, 8]), 'cal.statistics.safetensors')
    """
    start = time.perf_counter()
    if config.from_pcs is not None:
        return _import_pcs(config, resolve_model(model), start)
    paths = read_image_set(config, what="calibration images").paths[:config.limit]
    model = resolve_model(model)
    if config.keep_registers > model.info.neurons:
        raise ConfigError(f"--keep-registers {config.keep_registers} is more than the model's {model.info.neurons} neurons; "
                          f"use at most {model.info.neurons}.")
    path, *default = _artifact_paths(config, model, len(paths))
    checkpoint = path.with_name(path.name.removesuffix(".safetensors") + ".partial.safetensors")
    stats = collect_statistics_for(config, model, paths, checkpoint, register_variant=config.register_variant)
    calibration = calibration_from_statistics(stats, config.keep_registers, config.register_ranking)
    if not is_primary():  # DDP: rank 0 writes the artifact
        return CalibrateResult(calibration, stats, path, statistics_path(path), time.perf_counter() - start)
    stats.save(statistics_path(path))
    thin = calibration.metadata["thin_sign_share"]
    if thin > THIN_SIGNS_WARNING:
        log.warning("%.1f%% of the pair signs are decided by a thin margin (the top-%d deviations split close to "
                    "evenly) with %d calibration images; calibrate on more images (hundreds to thousands) for "
                    "stable signs.", 100 * thin, min(config.top_k, stats.count), stats.count)
    for target in default:  # --set-default with --out: the cached default too
        stats.save(statistics_path(target))
        calibration.save(target)
        log.info("calibration also saved as the default %s", target)
    calibration.save(path)
    checkpoint.unlink(missing_ok=True)
    log.info("calibration of %s on %d images saved to %s", model.info.name, len(paths), path)
    return CalibrateResult(calibration, stats, path, statistics_path(path), time.perf_counter() - start,
                           bool(default) or path == calibration_path(model.info))
