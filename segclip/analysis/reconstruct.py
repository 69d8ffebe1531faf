"""``segclip analyze reconstruct`` (paper Table 1) and ``segclip analyze ablate`` (paper Figure 1).

Reconstruct: zero-shot accuracy when every pair contribution is replaced by its rank-one reconstruction (an exact
identity), or every neuron contribution by its first principal components. Ablate: accuracy keeping the top
fraction of units (ranked by the mean of their top norms) and mean-ablating the rest.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from segclip.analysis.common import (
    AnalysisResult,
    LabelledConfig,
    Timer,
    analysis_provenance,
    check_out,
    evaluate,
    labelled_set,
    parse_units,
    pc_source,
    read_labelled,
    statistics_for,
)
from segclip.analysis.components import PC_SAMPLES
from segclip.analysis.evaluation import (
    ablation_condition,
    neuron_pca_condition,
    rank_one_condition,
)
from segclip.config import option
from segclip.errors import ConfigError
from segclip.models.loading import ModelSource, resolve_model
from segclip.viz.plots import line_plot

ABLATION_UNITS = ("pairs", "neurons", "activations")


@dataclass(frozen=True, kw_only=True)
class ReconstructConfig(LabelledConfig):
    """Options of ``segclip analyze reconstruct``."""

    components: int = option(4, help="neuron principal components up to (default: 4).")
    pc_samples: str = option("top", choices=PC_SAMPLES,
                             help="neuron PCs as the paper's Table 1 computes them (top: paper A.2, the authors' "
                                  "procedure: the SVD of each neuron's k = --top-k contributions farthest from its "
                                  "mean over all images, not re-centred, majority-vote orientation), or from the "
                                  "covariance over all images (all) (default: top, the paper's).")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.components < 1:
            raise ConfigError(f"--components must be at least 1, got {self.components}.")


@dataclass
class ReconstructResult(AnalysisResult):
    """Zero-shot accuracy (%) per condition (``baseline``, ``pairs rank-1``, ``neurons p PC``)."""

    accuracy: dict[str, float] | None = None
    title: str = ""

    def plot(self, path: Path) -> bool:
        pcs = [int(key.split()[1]) for key in self.accuracy if key.startswith("neurons ")]
        line_plot(path, {"neurons": (pcs, [self.accuracy[f"neurons {p} PC"] for p in pcs]),
                         "pairs (rank 1)": ([1], [self.accuracy["pairs rank-1"]])},
                  xlabel="principal components", ylabel="zero-shot accuracy (%)",
                  baseline=self.accuracy["baseline"], title=self.title)
        return True

    def summary(self) -> str:
        return "".join(f"{k}: {v:.2f}%\n" for k, v in self.accuracy.items())


def run_reconstruct(config: ReconstructConfig, model: ModelSource) -> ReconstructResult:
    """Zero-shot accuracy with rank-one pairs and with 1..``components`` neuron principal components.

    Args:
        config: the options (:class:`ReconstructConfig`).
        model: the loaded model, or a loader called once the inputs are checked.

    Returns:
        The :class:`ReconstructResult` (write it with ``.write(config.out)``).

    Raises:
        DataError: a missing or malformed labelled folder.
        ConfigError: bad options, or statistics of another model.
        OutputError: ``out`` holds an earlier result (without ``overwrite``) or cannot be written.

    Example:
        >>> import tempfile
        >>> from segclip.data.synthetic import write_labelled_folder
        >>> from segclip.models import load_model
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = write_labelled_folder(folder / "labelled", per_class=1, seed=3)
        >>> config = ReconstructConfig(images=folder / "labelled", out=folder / "out", components=2, progress=False)
        >>> result = run_reconstruct(config, load_model())
        >>> sorted(result.accuracy)
        ['baseline', 'neurons 1 PC', 'neurons 2 PC', 'pairs rank-1']
        >>> result.accuracy["pairs rank-1"] == result.accuracy["baseline"]  # rank one is an identity
        True
    """
    timer = Timer()
    check_out(config.out, "reconstruct", config.overwrite)
    read = read_labelled(config)
    model = resolve_model(model)
    if config.components > model.info.heads:
        raise ConfigError(f"--components must be at most H = {model.info.heads}, got {config.components}.")
    labelled = labelled_set(config, model, read)
    stats = statistics_for(config, model, labelled.calibration)
    conditions = {"baseline": lambda trace: trace.output, "pairs rank-1": rank_one_condition(model.pool, stats)}
    for p in range(1, config.components + 1):
        conditions[f"neurons {p} PC"] = neuron_pca_condition(model.pool, stats, p, config.pc_samples)
    accuracy = evaluate(config, model, "reconstruct", conditions, labelled)
    results = {"accuracy": accuracy, "images": len(labelled.paths), "statistics_images": stats.count,
               "neuron_pcs_from": pc_source(config.pc_samples, stats), "pc_samples": config.pc_samples,
               "paper_procedure": config.pc_samples == "top", "dataset": labelled.description}
    return ReconstructResult("reconstruct", results, [{"condition": k, "accuracy": v} for k, v in accuracy.items()],
                             analysis_provenance(model, config, timer(), "reconstruct"), accuracy=accuracy,
                             title=f"Reconstruction ({model.info.name}, {len(labelled.paths)} images)")


@dataclass(frozen=True, kw_only=True)
class AblateConfig(LabelledConfig):
    """Options of ``segclip analyze ablate``."""

    units: tuple[str, ...] = option(ABLATION_UNITS, help="comma-separated unit kinds (default: "
                                                         "pairs,neurons,activations).")
    fractions: tuple[float, ...] = option((0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
                                          help="kept fractions, comma-separated (default: 10% steps).")

    def __post_init__(self) -> None:
        super().__post_init__()
        parse_units(self.units, ABLATION_UNITS)
        if not self.fractions or not all(0 <= f <= 1 for f in self.fractions):
            raise ConfigError("--fractions must be comma-separated numbers in [0, 1].")


@dataclass
class AblateResult(AnalysisResult):
    """Zero-shot accuracy (%) per unit kind and kept fraction (``"pairs 0.2"``), and the baseline."""

    accuracy: dict[str, float] | None = None
    units: list[str] | None = None
    fractions: list[float] | None = None
    title: str = ""

    def plot(self, path: Path) -> bool:
        percent = [100 * f for f in self.fractions]
        line_plot(path, {u: (percent, [self.accuracy[f"{u} {f:g}"] for f in self.fractions]) for u in self.units},
                  xlabel="top % kept (rest mean-ablated)", ylabel="zero-shot accuracy (%)",
                  baseline=self.accuracy["baseline"], title=self.title)
        return True

    def summary(self) -> str:
        return "".join(f"{k}: {v:.2f}%\n" for k, v in self.accuracy.items())


def run_ablate(config: AblateConfig, model: ModelSource) -> AblateResult:
    """Mean-ablation curves of pairs, neuron contributions and activations.

    Args:
        config: the options (:class:`AblateConfig`).
        model: the loaded model, or a loader called once the inputs are checked.

    Returns:
        The :class:`AblateResult`.

    Raises:
        DataError, ConfigError, OutputError: as :func:`run_reconstruct`.

    Example:
        >>> import tempfile
        >>> from segclip.data.synthetic import write_labelled_folder
        >>> from segclip.models import load_model
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = write_labelled_folder(folder / "labelled", per_class=1, seed=3)
        >>> config = AblateConfig(images=folder / "labelled", out=folder / "out", fractions=(0.5, 1.0),
        ...                       units=("pairs",), progress=False)
        >>> result = run_ablate(config, load_model())
        >>> result.accuracy["pairs 1"] == result.accuracy["baseline"]  # nothing ablated
        True
    """
    timer = Timer()
    check_out(config.out, "ablate", config.overwrite)
    units = parse_units(config.units, ABLATION_UNITS)
    read = read_labelled(config)
    model = resolve_model(model)
    fractions = list(config.fractions)
    labelled = labelled_set(config, model, read)
    stats = statistics_for(config, model, labelled.calibration)
    conditions = {"baseline": lambda trace: trace.output}
    for unit in units:
        for fraction in fractions:
            conditions[f"{unit} {fraction:g}"] = ablation_condition(model.pool, stats, unit, fraction)
    accuracy = evaluate(config, model, "ablate", conditions, labelled)
    rows = [{"unit": u, "kept_fraction": f, "accuracy": accuracy[f"{u} {f:g}"]} for u in units for f in fractions]
    results = {"accuracy": accuracy, "images": len(labelled.paths), "ranking": f"mean of the top {stats.norm_k} norms",
               "dataset": labelled.description}
    return AblateResult("ablate", results, rows, analysis_provenance(model, config, timer(), "ablate"),
                        accuracy=accuracy, units=units, fractions=fractions,
                        title=f"Mean-ablation ({model.info.name})")
