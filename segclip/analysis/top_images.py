"""``segclip analyze top-images`` (paper Figures 3-4): each unit's top images, as montages, and their inertia."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segclip.analysis.common import (
    AnalysisConfig,
    AnalysisResult,
    DatasetOptions,
    Timer,
    analysis_provenance,
    check_out,
    read_image_set,
    run_accumulator,
    statistics_for,
)
from segclip.analysis.units import Embeddings, inertia
from segclip.config import option
from segclip.data.images import read_image
from segclip.data.preprocess import centre_crop
from segclip.errors import ConfigError
from segclip.models.loading import ModelSource, resolve_model
from segclip.viz.plots import histograms, montage

THUMBNAIL = 96


@dataclass(frozen=True, kw_only=True)
class TopImagesConfig(DatasetOptions, AnalysisConfig):
    """Options of ``segclip analyze top-images``."""

    images: Path | None = option(None, help="image folder (or --dataset with --data-root).")
    top: int = option(3, aliases=("--units",), help="top units of each kind shown (default: 3).")
    images_per_unit: int = option(10, aliases=("--count",), help="top images shown per unit (default: 10).")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dataset_config() is None:
            raise ConfigError("Give --images (an image folder) or --dataset with --data-root.")
        if self.top < 1 or self.images_per_unit < 1:
            raise ConfigError("--top and --images-per-unit must be at least 1.")


@dataclass
class TopImagesResult(AnalysisResult):
    """Mean inertia per unit kind; per shown unit its top images (``units``: kind, index, image paths, inertia)."""

    units: list[tuple[str, Any, list[Path], float]] | None = None
    inertia: dict[str, Any] | None = None
    count: int = 0

    def plot(self, path: Path) -> bool:
        histograms(path, {"neurons": self.inertia["neurons"], "pairs": self.inertia["pairs"]},
                   xlabel=f"inertia of the top-{self.count} normalised image embeddings", title="Polysemanticity")
        return True

    def write(self, out: str | Path) -> list[Path]:
        written = super().write(out)
        rows = {f"{kind} {index}": [centre_crop(read_image(p), THUMBNAIL) for p in images]
                for kind, index, images, _ in self.units}
        path = montage(Path(out) / f"{self.name}-montage.png", rows, tile=THUMBNAIL)
        return written + [path]

    def summary(self) -> str:
        import json

        return json.dumps(self.results["mean_inertia"]) + "\n"


def run_top_images(config: TopImagesConfig, model: ModelSource) -> TopImagesResult:
    """Top images of the units with the largest contributions, and the inertia of every unit's top images.

    Args:
        config: the options (:class:`TopImagesConfig`).
        model: the loaded model, or a loader called once the inputs are checked.

    Returns:
        The :class:`TopImagesResult` (its ``write`` also draws ``top-images-montage.png``).

    Raises:
        ConfigError: ``--statistics`` computed on another image list.
        DataError, OutputError: a missing folder; an earlier result in ``out``.

    Example:
        >>> import tempfile
        >>> from segclip.data.synthetic import write_scene_folder
        >>> from segclip.models import load_model
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = write_scene_folder(folder / "scenes", 6, seed=2)
        >>> config = TopImagesConfig(images=folder / "scenes", out=folder / "out", images_per_unit=3, progress=False)
        >>> result = run_top_images(config, load_model())
        >>> sorted(result.results["mean_inertia"])
        ['heads', 'neurons', 'pairs']
    """
    timer = Timer()
    check_out(config.out, "top-images", config.overwrite)
    paths = read_image_set(config).paths[:config.limit]
    model = resolve_model(model)
    stats = statistics_for(config, model, paths)
    if stats.metadata.get("images") != [p.name for p in paths]:
        raise ConfigError(f"--statistics {config.statistics} was computed on other images than "
                          f"{config.images or config.data_root}; "
                          "top images are indices into that image list: pass the same folder (and --limit), or "
                          "leave out --statistics.")
    embeddings = run_accumulator(config, model, paths, lambda m: Embeddings(len(paths), m.info.embed_dim),
                                 key={"kind": "embeddings"}, checkpoint=config.out / "embeddings.partial.safetensors",
                                 description="embeddings")
    count = min(config.images_per_unit, stats.pair_top_images.shape[0])
    pair_inertia = inertia(embeddings.values, stats.pair_top_images[:count])
    neuron_inertia = inertia(embeddings.values, stats.neuron_top_images[:count])
    head_inertia = inertia(embeddings.values, stats.head_top_images[:count])
    info = model.info
    units = [("neuron", n, stats.neuron_top_images[:count, n], neuron_inertia[n])
             for n in stats.neuron_top_norm.topk(min(config.top, info.neurons)).indices.tolist()]
    units += [("head", h, stats.head_top_images[:count, h], head_inertia[h])
              for h in stats.head_top_norm.topk(min(config.top, info.heads)).indices.tolist()]
    for flat in stats.pair_top_norm.flatten().topk(config.top).indices.tolist():
        n, h = divmod(flat, info.heads)
        units.append(("pair", f"{n}:{h}", stats.pair_top_images[:count, n, h], pair_inertia[n, h]))
    shown = [(kind, index, [paths[i] for i in images.tolist()], value.item()) for kind, index, images, value in units]
    rows = [{"unit": kind, "index": index, "inertia": value, "images": " ".join(p.name for p in images)}
            for kind, index, images, value in shown]
    results = {"mean_inertia": {"neurons": neuron_inertia.mean().item(), "pairs": pair_inertia.mean().item(),
                                "heads": head_inertia.mean().item()}, "images_per_unit": count, "images": len(paths)}
    return TopImagesResult("top-images", results, rows, analysis_provenance(model, config, timer(), "top-images"),
                           units=shown, inertia={"neurons": neuron_inertia.numpy(),
                                                 "pairs": pair_inertia.flatten().numpy()}, count=count)
