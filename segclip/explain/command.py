"""``segclip explain`` as a library call: an image, a class list and a pixel or region -> the figure (the point,
the class scores, the top units with their words and maps, the segmentation before and after removing them) and
the numbers as JSON; config -> run -> result -> write."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from segclip.config import option
from segclip.data.images import read_image, read_label
from segclip.errors import ConfigError, DataError, OutputError
from segclip.explain.attribution import Attribution, ImageExplainer, unit_words
from segclip.explain.intervention import Comparison, UnitIntervention
from segclip.explore.site import read_labels
from segclip.io import read_lines, write_result
from segclip.models.loading import ModelSource, resolve_model
from segclip.models.text import check_class_names
from segclip.segment.methods import METHODS
from segclip.segment.results import check_writable
from segclip.segment.options import MethodOptions, prepare_methods, segmentation_provenance
from segclip.viz.explain import explain_figure


@dataclass(frozen=True, kw_only=True)
class ExplainConfig(MethodOptions):
    """Options of ``segclip explain``."""

    image: tuple[Path, ...] = option(positional=True, help="the image file (one).")
    out: Path = option(help="output folder (explain.png and explain.json).")
    classes: tuple[str, ...] | None = option(None, help='comma-separated class names, e.g. "cat,dog,grass" (default: '
                                                        "the bundled model's classes).")
    classes_file: Path | None = option(None, help="UTF-8 file with one class name a line.")
    at: tuple[int, ...] | None = option(None, metavar="X,Y", help="the pixel to explain, x (column) and y (row) of "
                                                                  "the original image.")
    region: Path | None = option(None, metavar="MASK.png", help="explain the mean over a region: a mask image of the "
                                                                "image's size, non-zero inside.")
    method: str = option("neuron-head", choices=METHODS, help="method (default: neuron-head).")
    target: str | None = option(None, help="the class to explain (default: the top class there).")
    top: int = option(8, help="top units shown with their maps (default: 8).")
    remove: int = option(8, help="top units removed for the after-segmentation (default: 8; 0: none).")
    truth: Path | None = option(None, help="ground-truth label PNG (values = indices into the class list, 255 "
                                           "ignored) for the mIoU change.")
    labels: Path | None = option(None, help="the --out folder (or label.csv) of `segclip analyze label`: the units' "
                                            "OMP words.")
    overwrite: bool = option(False, help="replace existing outputs.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.image, (str, Path)):
            object.__setattr__(self, "image", (Path(self.image),))
        if len(self.image) != 1:
            raise ConfigError(f"Explain one image at a time; got {len(self.image)}.")
        if (self.at is None) == (self.region is None):
            raise ConfigError("Give the pixel to explain (--at X,Y) or a region (--region MASK.png), one of them.")
        if self.at is not None and len(self.at) != 2:
            raise ConfigError(f"--at takes two numbers X,Y; got {','.join(map(str, self.at))}.")
        if self.classes is not None and self.classes_file is not None:
            raise ConfigError("Pass either --classes or --classes-file, not both.")
        if self.top < 1:
            raise ConfigError(f"--top must be at least 1, got {self.top}.")
        if self.remove < 0:
            raise ConfigError(f"--remove must be 0 or more, got {self.remove}.")


@dataclass
class ExplainResult:
    """The attribution, the intervention and its comparison, and the figure to write.

    Attributes:
        attribution: the :class:`~segclip.explain.attribution.Attribution`.
        intervention: the units removed (None with ``remove=0``).
        comparison: before/after (None with ``remove=0``).
        provenance: the run's provenance record.
    """

    attribution: Attribution
    intervention: UnitIntervention | None
    comparison: Comparison | None
    provenance: dict[str, Any]
    image: np.ndarray
    region: np.ndarray | None
    before: np.ndarray

    def results(self) -> dict[str, Any]:
        return {"attribution": self.attribution.to_dict(),
                "removed": None if self.intervention is None else self.intervention.to_dict(),
                "comparison": None if self.comparison is None else self.comparison.to_dict()}

    def write(self, out: str | Path) -> list[Path]:
        """Write ``explain.png`` (the figure) and ``explain.json`` (``{"provenance", "results"}``)."""
        out = Path(out)
        after = None if self.comparison is None else self.comparison.after
        removed = 0 if self.intervention is None else len(self.intervention.heads) + len(self.intervention.pairs)
        figure = explain_figure(out / "explain.png", self.image, self.attribution, self.attribution.names,
                                self.before, after, removed, self.region)
        data = write_result(out / "explain.json", self.provenance, self.results(), self.summary())
        return [figure, data]

    def summary(self) -> str:
        a = self.attribution
        lines = [f"{a.method} at {a.where}: '{a.names[a.target]}' logit {a.logit:.4f} = sum of {len(a.units)} "
                 f"units ({a.contributions.sum():.4f}); margin {a.margin:+.4f} over '{a.names[a.runner_up]}'"]
        lines += [f"  {u.unit.key:>14}  {u.contribution:+.5f}  margin {u.margin:+.5f}  cos {u.cosine:+.3f}"
                  + (f"  {u.words}" if u.words else "") for u in a.top]
        if self.comparison is not None:
            c = self.comparison
            lines.append(f"removing the top {len(self.intervention.heads) + len(self.intervention.pairs)} units "
                         f"changes {100 * c.changed:.2f}% of the pixels"
                         + (f"; mIoU {c.miou[0]:.4f} -> {c.miou[1]:.4f}" if c.miou else ""))
        return "\n".join(lines) + "\n"


def read_mask(path: Path) -> np.ndarray:
    """A region mask: non-zero pixels of a (grey or colour) image, as ``(H, W)`` bool.

    Raises:
        DataError: the file cannot be read as an image.
    """
    try:
        with Image.open(path) as opened:
            return np.asarray(opened.convert("L")) > 0
    except (OSError, ValueError) as error:
        raise DataError(f"Cannot read the region mask {path}: {error}. Give a PNG of the image's size.") from None


def run_explain(config: ExplainConfig, model: ModelSource) -> ExplainResult:
    """Explain a segmentation at a pixel or region and remove its top units.

    Args:
        config: the options (:class:`ExplainConfig`).
        model: the loaded model, or a loader called once the inputs are checked.

    Returns:
        The :class:`ExplainResult` (``result.write(config.out)`` writes the figure and the JSON).

    Raises:
        ImageError, DataError: unreadable image, mask or ground truth.
        ConfigError: bad options, a point outside the image, an unknown target class.
        OutputError: outputs exist (without ``overwrite``).

    Example:
        >>> import tempfile
        >>> from segclip.models import load_model
        >>> from segclip.paths import example_image_path
        >>> config = ExplainConfig(image=example_image_path(), out=Path(tempfile.mkdtemp()), at=(40, 30),
        ...                        method="maskclip", templates="single", remove=2)
        >>> result = run_explain(config, load_model())
        >>> bool(abs(result.attribution.contributions.sum() - result.attribution.logit) < 1e-4)
        True
    """
    image = read_image(config.image[0])
    region = None if config.region is None else read_mask(config.region)
    check_writable(config.out)
    existing = [p for p in (config.out / "explain.png", config.out / "explain.json") if p.exists()]
    if existing and not config.overwrite:
        raise OutputError(f"{existing[0]} exists; pass --overwrite or choose another --out.")
    if config.classes_file is not None:
        names: list[str] | None = check_class_names(read_lines(config.classes_file, "class file", skip_blank=True))
    else:
        names = None if config.classes is None else check_class_names(list(config.classes))
    model = resolve_model(model)
    names = names or list(model.info.classes)
    if not names:
        raise ConfigError('Name the classes: --classes "cat,dog,grass" or --classes-file FILE.')
    target = None
    if config.target is not None:
        lowered = [n.lower() for n in names]
        if config.target.lower() not in lowered:
            raise ConfigError(f"--target '{config.target}' is not among the classes ({', '.join(names)}).")
        target = lowered.index(config.target.lower())
    truth = None
    if config.truth is not None:
        truth = read_label(config.truth, len(names), reduce_zero_label=False)
    words = None if config.labels is None else unit_words(read_labels(config.labels))
    prepared = prepare_methods(model, names, [config.method], config, None)
    hooks = None if prepared.intervention is None else prepared.intervention.hooks()
    explainer = ImageExplainer(model, image, prepared.methods[0], prepared.protocol, hooks, config.batch_size)
    at = None if config.at is None else (config.at[0], config.at[1])
    attribution = explainer.attribute(at, region, target, top=config.top, words=words)
    intervention = comparison = None
    if config.remove:
        chosen = attribution.top_units(config.remove)
        intervention = UnitIntervention(heads={u.head: 0.0 for u in chosen if u.kind == "head"},
                                        pairs={(u.neuron, u.head): 0.0 for u in chosen if u.kind == "pair"})
        _, comparison = explainer.intervene(intervention, truth)
    record = segmentation_provenance(model, config, prepared, names, "given" if config.short_side else
                                   "4/3 of the crop (512 / 384 scaled)",
                                   method_params=prepared.params()[config.method])
    return ExplainResult(attribution, intervention, comparison, record, image, region, explainer.labels)
