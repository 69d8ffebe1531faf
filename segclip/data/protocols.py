"""Evaluation protocols of the benchmark suite, as data, relative to the model's native crop.

The SCLIP protocol (``configs/cfg_<dataset>.py`` of SCLIP; NACLIP and ClearCLIP keep its sizes) was written for
ViT-B/16 at a 224 crop: windows every 112 pixels, images resized (keeping aspect, mmseg
``Resize(scale=(2048, S), keep_ratio=True)``) to short side S = 336 (560 for Cityscapes, 448 for COCO-Stuff).
A CLIP-ResNet has its own native input (RN50x16: 384) whose positional embedding is not interpolated, so the crop
must be that size; to keep the geometry the same (each window covering the same part of the image), every length
of the protocol is scaled by ``crop / 224``: RN50x16 gets crop 384, stride 192, short side 576 (VOC) and long side
3511. Lengths are rounded half up. Logit scale and thresholds carry over unchanged.

The paper's PASCAL Context protocol is the other entry (``paper``, for context59, context60 and the synthetic
benchmark; the default of ``segclip eval`` and ``compare``): short side 512, crop 384, stride 192, long side 2048 for
RN50x16 (reference crop 384), logit scale 40, no thresholds; other models get it scaled by crop / 384 (RN50: short
side 299, stride 112, long side 1195). Every command reads this one table.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from segclip.errors import ConfigError


def _scaled(length: int, crop: int, reference_crop: int) -> int:
    """``round(length * crop / reference_crop)`` with halves rounded up, in exact integer arithmetic."""
    return (2 * length * crop + reference_crop) // (2 * reference_crop)


@dataclass(frozen=True)
class BenchmarkProtocol:
    """Resize, windows, logit scale and thresholds of one dataset's protocol, at a reference crop.

    Args:
        dataset: the benchmark dataset it belongs to.
        name: ``"sclip"`` or ``"paper"``.
        reference_crop: the crop the lengths below were written for (SCLIP: 224, the paper: 384).
        short_side: short side after resizing, at the reference crop.
        long_side: bound on the long side after resizing, at the reference crop.
        stride: window step, at the reference crop.
        logit_scale: scale of the logits before the softmax over queries.
        prob_threshold: pixels whose top class probability is below it become class 0 (0: none).
        area_threshold: VOC21's area rule (see :mod:`segclip.data.queries`); None: none.
        source: where the numbers come from.

    Raises:
        ConfigError: non-positive lengths, a stride above the crop, or thresholds outside [0, 1].
    """

    dataset: str
    name: str
    reference_crop: int
    short_side: int
    long_side: int
    stride: int
    logit_scale: float
    prob_threshold: float = 0.0
    area_threshold: float | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if min(self.reference_crop, self.short_side, self.long_side, self.stride) <= 0:
            raise ConfigError(f"protocol {self.dataset}/{self.name}: lengths must be positive, got {self}")
        if self.stride > self.reference_crop:
            raise ConfigError(f"protocol {self.dataset}/{self.name}: stride {self.stride} exceeds the crop "
                              f"{self.reference_crop}")
        if self.logit_scale <= 0:
            raise ConfigError(f"protocol {self.dataset}/{self.name}: logit_scale must be positive")
        if not 0.0 <= self.prob_threshold <= 1.0 or (self.area_threshold is not None
                                                     and not 0.0 <= self.area_threshold <= 1.0):
            raise ConfigError(f"protocol {self.dataset}/{self.name}: thresholds must lie in [0, 1]")

    def for_crop(self, crop: int) -> dict[str, Any]:
        """The protocol for a model whose native input is ``crop``: every length scaled by ``crop / reference``.

        Args:
            crop: the model's native input size (RN50: 224, RN50x4: 288, RN50x16: 384, RN50x64: 448).

        Returns:
            ``{"short_side", "long_side", "crop", "stride", "temperature"}`` (the fields of
            :class:`segclip.segment.windows.SlidingWindowProtocol`; :func:`segclip.segment.benchmark.window_protocol`
            builds it) plus ``"prob_threshold"`` and
            ``"area_threshold"``.

        Raises:
            ConfigError: ``crop`` is not positive.

        Example:
            >>> p = benchmark_protocol("voc21").for_crop(384)
            >>> p["short_side"], p["crop"], p["stride"], p["long_side"], p["temperature"], p["area_threshold"]
            (576, 384, 192, 3511, 65.0, 0.1)
        """
        if crop <= 0:
            raise ConfigError(f"crop must be positive, got {crop}")
        return {"short_side": _scaled(self.short_side, crop, self.reference_crop),
                "long_side": _scaled(self.long_side, crop, self.reference_crop),
                "crop": crop, "stride": _scaled(self.stride, crop, self.reference_crop),
                "temperature": float(self.logit_scale), "prob_threshold": float(self.prob_threshold),
                "area_threshold": self.area_threshold}

    def to_dict(self, crop: int | None = None) -> dict[str, Any]:
        """The protocol as a plain dict for result files; with ``crop``, also the lengths used at that crop."""
        record = asdict(self)
        if crop is not None:
            record["at_crop"] = self.for_crop(crop)
        return record


_SCLIP = "SCLIP configs/cfg_{}.py (ViT-B/16, slide_crop 224, slide_stride 112)"
# SCLIP has no PC-459 / ADE-847 config; ProxyCLIP and Trident (which add them) resize to short side 448 with logit
# scale 40 and no threshold; the windows keep SCLIP's convention (crop 224, stride 112) like every other row.
_WIDE = ("short side 448, logit scale 40, no threshold: ProxyCLIP configs/cfg_{0}.py and proxyclip_segmentor.py "
         "(mc-lan/ProxyCLIP; slide_crop 336, stride 112) and Trident configs/cfg_{0}.py (YuHengsss/Trident); "
         "windows of SCLIP's convention (crop 224, stride 112)")
_PAPER = "the paper (RN50x16, PASCAL Context 59): short side 512, crop 384, stride 192, logit scale 40"

PROTOCOLS: dict[tuple[str, str], BenchmarkProtocol] = {
    (p.dataset, p.name): p for p in (
        BenchmarkProtocol("voc21", "sclip", 224, 336, 2048, 112, 65.0, 0.1, 0.1, _SCLIP.format("voc21")),
        BenchmarkProtocol("voc20", "sclip", 224, 336, 2048, 112, 40.0, 0.0, None, _SCLIP.format("voc20")),
        BenchmarkProtocol("context60", "sclip", 224, 336, 2048, 112, 50.0, 0.1, None, _SCLIP.format("context60")),
        BenchmarkProtocol("context59", "sclip", 224, 336, 2048, 112, 40.0, 0.0, None, _SCLIP.format("context59")),
        BenchmarkProtocol("coco_object", "sclip", 224, 336, 2048, 112, 50.0, 0.1, None,
                          _SCLIP.format("coco_object")),
        BenchmarkProtocol("coco_stuff", "sclip", 224, 448, 2048, 112, 40.0, 0.0, None,
                          _SCLIP.format("coco_stuff164k")),
        BenchmarkProtocol("cityscapes", "sclip", 224, 560, 2048, 112, 40.0, 0.0, None, _SCLIP.format("city_scapes")),
        BenchmarkProtocol("ade20k", "sclip", 224, 336, 2048, 112, 40.0, 0.0, None, _SCLIP.format("ade20k")),
        BenchmarkProtocol("pc459", "sclip", 224, 448, 2048, 112, 40.0, 0.0, None, _WIDE.format("context459")),
        BenchmarkProtocol("ade847", "sclip", 224, 448, 2048, 112, 40.0, 0.0, None, _WIDE.format("ade847")),
        BenchmarkProtocol("context59", "paper", 384, 512, 2048, 192, 40.0, 0.0, None, _PAPER),
        BenchmarkProtocol("context60", "paper", 384, 512, 2048, 192, 40.0, 0.0, None, _PAPER),
        BenchmarkProtocol("synthetic", "paper", 384, 512, 2048, 192, 40.0, 0.0, None,
                          "the paper's PASCAL Context protocol; the scenes are 256 x 320, short side 4/3 of the "
                          "bundled model's 192 crop, as 512 is of 384"),
    )
}


PROTOCOL_NAMES = ("sclip", "paper")


def protocols_of(dataset: str) -> list[str]:
    """The protocol names shipped for ``dataset``.

    Example:
        >>> protocols_of("context59"), protocols_of("synthetic")
        (['sclip', 'paper'], ['paper'])
    """
    return [n for d, n in PROTOCOLS if d == dataset]


def benchmark_protocol(dataset: str, name: str = "sclip") -> BenchmarkProtocol:
    """The shipped protocol ``name`` of a benchmark dataset.

    Args:
        dataset: a benchmark name (``voc21``, ..., ``ade20k``).
        name: ``"sclip"`` (every suite dataset) or ``"paper"`` (``context59``, ``context60``, ``synthetic``).

    Returns:
        The protocol.

    Raises:
        ConfigError: no such protocol (the message lists those that exist).

    Example:
        >>> benchmark_protocol("context59", "paper").for_crop(384)["short_side"]
        512
    """
    try:
        return PROTOCOLS[(dataset, name)]
    except KeyError:
        known = ", ".join(f"{d}/{n}" for d, n in PROTOCOLS)
        raise ConfigError(f"No protocol {name!r} for dataset {dataset!r}; known: {known}.") from None
