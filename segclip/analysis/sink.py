"""``segclip analyze sink`` (paper A.6): the class token's attention to the last token per head, and the register
neurons whose zeroing changes it most (the math is in :mod:`segclip.core.registers`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segclip.analysis.common import (
    AnalysisConfig,
    AnalysisResult,
    DatasetOptions,
    Timer,
    analysis_provenance,
    check_out,
    read_image_set,
    statistics_for,
)
from segclip.config import option
from segclip.core.registers import rank_registers
from segclip.errors import ConfigError
from segclip.models.loading import ModelSource, resolve_model
from segclip.viz.plots import bar_plot


@dataclass(frozen=True, kw_only=True)
class SinkConfig(DatasetOptions, AnalysisConfig):
    """Options of ``segclip analyze sink``."""

    images: Path | None = option(None, help="image folder (or --dataset with --data-root).")
    show_registers: int = option(32, aliases=("--registers",), help="register neurons listed (default: 32).")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dataset_config() is None:
            raise ConfigError("Give --images (an image folder) or --dataset with --data-root.")
        if self.show_registers < 1:
            raise ConfigError(f"--show-registers must be at least 1, got {self.show_registers}.")


@dataclass
class SinkResult(AnalysisResult):
    """Per-head sink attention, the uniform level, and the register neurons with their scores."""

    attention: list[float] | None = None
    registers: list[int] | None = None
    title: str = ""

    def plot(self, path: Path) -> bool:
        bar_plot(path, [str(h) for h in range(len(self.attention))], self.attention, xlabel="head",
                 ylabel="class-token attention to the last token", title=self.title)
        return True

    def summary(self) -> str:
        return (f"mean attention to the last token {np.mean(self.attention):.3f} (uniform "
                f"{self.results['uniform_attention']:.3f}); register neurons {self.registers[:8]}\n")


def run_sink(config: SinkConfig, model: ModelSource) -> SinkResult:
    """The attention sink and the register neurons of an image set.

    Args:
        config: the options (:class:`SinkConfig`).
        model: the loaded model, or a loader called once the inputs are checked.

    Returns:
        The :class:`SinkResult`.

    Raises:
        ConfigError: ``registers`` above the number of neurons.
        DataError, OutputError: a missing folder; an earlier result in ``out``.

    Example:
        >>> import tempfile
        >>> from segclip.data.synthetic import write_scene_folder
        >>> from segclip.models import load_model
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = write_scene_folder(folder / "scenes", 3, seed=5)
        >>> result = run_sink(SinkConfig(images=folder / "scenes", out=folder / "out", show_registers=4, progress=False),
        ...                   load_model())
        >>> len(result.attention), len(result.registers)
        (8, 4)
    """
    timer = Timer()
    check_out(config.out, "sink", config.overwrite)
    paths = read_image_set(config).paths[:config.limit]
    model = resolve_model(model)
    if config.show_registers > model.info.neurons:
        raise ConfigError(f"--show-registers {config.show_registers} is more than the model's {model.info.neurons} neurons.")
    stats = statistics_for(config, model, paths)
    attention = stats.sink_attention.tolist()
    registers = rank_registers(stats.register_scores, config.show_registers)
    rows = [{"rank": r, "neuron": n, "score": stats.register_scores[n].item()}
            for r, n in enumerate(registers.tolist())]
    results = {"sink_attention": attention, "uniform_attention": 1 / (model.info.grid ** 2 + 1),
               "registers": registers.tolist(), "images": stats.count}
    return SinkResult("sink", results, rows, analysis_provenance(model, config, timer(), "sink"), attention=attention,
                      registers=registers.tolist(), title=f"Attention sink ({model.info.name})")
