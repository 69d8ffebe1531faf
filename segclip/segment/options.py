"""Method and protocol options every segmentation command shares, and the methods built from them.

``eval``, ``compare`` and ``benchmark`` (:mod:`segclip.segment.evaluate`) and ``segment``
(:mod:`segclip.segment.predict`) take :class:`MethodOptions`; the dataset commands add the process options
(:class:`RunOptions`). :func:`prepare_methods` turns options and a class list into built methods, the register
intervention and the calibration they use; :func:`segmentation_provenance` records all of it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segclip.config import Config, check_positive, option
from segclip.core.calibration import Calibration, load_calibration
from segclip.core.trace import RegisterIntervention
from segclip.errors import ConfigError
from segclip.io import provenance
from segclip.models.loading import CLIPResNet
from segclip.models.text import TEMPLATE_SETS
from segclip.process import ProcessOptions
from segclip.segment.methods import CENTRING_CHOICES, DEFAULT_K, METHODS, SegmentationMethod, build_methods
from segclip.segment.pipeline import AUTOCAST, check_autocast, protocol_for
from segclip.segment.refine import REFINE_CHOICES, refine_config
from segclip.segment.windows import SlidingWindowProtocol

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class MethodOptions(Config):
    """Method and protocol options shared by ``eval``, ``compare`` and ``segment``."""

    k: int | None = option(None, help=f"neuron-head pairs kept per class, clamped to N*H (default: the paper's "
                                      f"{DEFAULT_K} of RN50x16's 147,456 pairs, the same 13.6% share for other "
                                      "models).")
    short_side: int | None = option(None, help="short side after resizing (default: 512 for PASCAL Context as in "
                                               "the paper, 384 is the authors' config; 4/3 of the model's crop "
                                               "otherwise).")
    stride: int | None = option(None, help="sliding-window stride (default: half a crop).")
    zero_registers: int = option(0, aliases=("--registers",),
                                 help="register neurons zeroed by the intervention (docs/method.md §6.2; the "
                                      "authors use 32; needs a calibration; default: 0 = off). Applies to neuron-head and "
                                    "head-only.")
    register_variant: str = option("activations", choices=RegisterIntervention.VARIANTS,
                                   help="where register neurons are zeroed: activations (their activation z_n "
                                        "before the positional embedding, as the paper and the authors' code; "
                                        "default) or tokens (z_n + P_n, segclip 0.1).")
    calibration: Path | None = option(None, help="calibration artifact (pair signs, register neurons) from `segclip "
                                                 "calibrate` (default: the cached one for this model; without one "
                                                 "the signs are assumed +1).")
    templates: str | None = option(None, choices=tuple(TEMPLATE_SETS),
                                   help="override every method's prompt templates (default: openai 80 for the pair "
                                        "methods and self-self, MaskCLIP's 85 for maskclip).")
    centring: str | None = option(None, choices=CENTRING_CHOICES,
                                  help="override text centring (default: auto for the pair methods = over the class "
                                       "set with 10+ classes, else against a reference vocabulary; none for "
                                       "maskclip and self-self).")
    batch_size: int = option(8, help="sliding-window crops per backbone pass (default: 8).")
    autocast: str = option("off", choices=tuple(AUTOCAST),
                           help="run the convolutional backbone under autocast: off (default, exact), bf16, or fp16 "
                                "(GPU only); the attention pool, its decomposition, the maps and the labels stay in "
                                "the model's precision (unlike --precision, which casts the whole model).")
    progress: bool = option(True, help="show a progress bar (on stderr).")
    refine: str = option("none", choices=REFINE_CHOICES,
                         help="refine every method's logits before the labels: none (default) or pamr (pixel-adaptive "
                              "mask refinement at the original image size, as SCLIP and NACLIP apply it).")
    pamr_iterations: int = option(10, help="PAMR iterations (default: 10, as SCLIP and NACLIP).")
    pamr_dilations: tuple[int, ...] = option((8, 16), help="PAMR neighbour distances in pixels, comma-separated "
                                                           "(default: 8,16, as SCLIP and NACLIP).")

    def __post_init__(self) -> None:
        super().__post_init__()  # field types (segclip.config.Config)
        check_positive(self, "k", "short_side", "stride", "batch_size")
        check_positive(self, "zero_registers", allow_zero=True)


@dataclass(frozen=True, kw_only=True)
class RunOptions(MethodOptions, ProcessOptions):
    """Options of the commands that score datasets (``eval``, ``compare``, ``benchmark``): methods, protocol and
    processes."""

    overwrite: bool = option(False, help="recompute and replace existing results in --out.")

    def __post_init__(self) -> None:
        super().__post_init__()  # cooperative: MethodOptions, then ProcessOptions, then Config's type checks


def check_method_list(methods: tuple[str, ...]) -> None:
    """Raise :class:`ConfigError` for an empty list, unknown names or repeats."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ConfigError(f"Unknown methods {unknown}; choose from {', '.join(METHODS)}.")
    if len(set(methods)) != len(methods):
        raise ConfigError(f"Methods are listed more than once: {list(methods)}.")


@dataclass
class PreparedMethods:
    """Methods built for a class list, with the protocol, intervention and calibration they use."""

    methods: list[SegmentationMethod]
    protocol: SlidingWindowProtocol
    intervention: RegisterIntervention | None
    calibration: Calibration | None

    def params(self) -> dict[str, dict[str, Any]]:
        registers = {} if self.intervention is None else self.intervention.to_dict()
        return {m.name: {**m.params, **({"registers": len(registers.get("registers", []))} if m.uses_registers
                                         else {}),
                         **({"register_variant": registers["variant"]} if m.uses_registers and registers else {})}
                for m in self.methods}


def prepare_methods(model: CLIPResNet, names: list[str], methods: list[str], options: MethodOptions,
                    default_short_side: int | None) -> PreparedMethods:
    """Calibration, register intervention, protocol and built methods for a class list.

    Raises:
        ConfigError: a calibration that is missing or stale when asked for, registers without one or above N.
    """
    check_autocast(options.autocast, model.device)
    calibration = load_calibration(model.info, options.calibration)
    if options.calibration is not None and calibration is None:
        raise ConfigError(f"--calibration {options.calibration} is missing, stale or not for {model.info.name}; run "
                          "`segclip calibrate` for this model.")
    intervention = None
    if options.zero_registers:
        if options.zero_registers > model.info.neurons:
            raise ConfigError(f"--zero-registers {options.zero_registers} is more than the model's {model.info.neurons} "
                              "neurons.")
        if calibration is None:
            raise ConfigError("--zero-registers needs a calibration artifact (the register neurons are found there); run "
                              f"`segclip calibrate --model {model.info.name} --images DIR` first.")
        if options.zero_registers > len(calibration.registers):
            raise ConfigError(f"--zero-registers {options.zero_registers} is more than the {len(calibration.registers)} "
                              "register neurons the calibration holds; calibrate with a larger --keep-registers.")
        intervention = RegisterIntervention(calibration.registers[:options.zero_registers].tolist(),
                                            options.register_variant)
    protocol = protocol_for(model, options.short_side or default_short_side, options.stride)
    built = build_methods(model, names, methods, k=options.k,
                          signs=None if calibration is None else calibration.signs,
                          sign_source=None if calibration is None else "calibration",
                          templates=options.templates, centring=options.centring, refine=refine_config(options))
    return PreparedMethods(built, protocol, intervention, calibration)


def segmentation_provenance(model: CLIPResNet, config: Any, prepared: PreparedMethods, names: list[str],
                            short_side_source: str, **extra: Any) -> dict[str, Any]:
    """The provenance of a segmentation result (one schema with the analyses', :func:`segclip.io.provenance`)."""
    return provenance(
        model.info, config, class_names=names,
        window={**prepared.protocol.to_dict(), "short_side_source": short_side_source,
                "padding": "windows shorter than the crop are zero-padded (CLIP mean colour) at the bottom/right; "
                           "only their valid part is stitched"},
        calibration=None if prepared.calibration is None else prepared.calibration.to_dict(),
        register_intervention=None if prepared.intervention is None else prepared.intervention.to_dict(),
        device=str(model.device), dtype=str(model.dtype).removeprefix("torch."), **extra)
