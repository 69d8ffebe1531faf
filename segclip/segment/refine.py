"""Pixel-adaptive mask refinement (PAMR, Araslanov & Roth, CVPR 2020), an optional last step of any method.

PAMR smooths class logits along the image: every pixel's logits become a weighted mean of its 8 neighbours' at
each dilation ``d`` (offsets ``(-d, -d) .. (d, d)``, the image border repeated), repeated ``iterations`` times. The
weights come from the image ``I`` (K channels) and stay fixed over the iterations: for neighbour ``p`` of pixel
``x``,

    a_p(x) = softmax_p( mean_k -|I_k(x) - I_k(x + p)| / (1e-8 + 0.1 sigma_k(x)) ),

where ``sigma_k(x)`` is the unbiased standard deviation of channel ``k`` over the 9 taps (centre and its 8
neighbours) of every dilation together (9 x len(dilations) values, the centre once per dilation), and the softmax
runs over all 8 x len(dilations) neighbours. This is the reference implementation's arithmetic
(``models/mods/pamr.py`` of visinf/1-stage-wseg, vendored by SCLIP and NACLIP), computed here without building the
(B, C, P, H, W) tensor of shifted logits: each iteration adds the P shifted views of one replicate-padded copy.

Where it runs (as SCLIP and NACLIP apply it): on the stitched logits resized to the original image size (bilinear,
``align_corners=False``, the resize the labels use), guided by the network's input image, the resized and
CLIP-normalised image, resized back bilinearly to the original size; labels are then taken from the refined
logits by the usual rule. Both repositories use 10 iterations and dilations (8, 16) when PAMR is on (NACLIP's
default; SCLIP's default is off). The weights do not change under a per-channel affine change of the image (up to
the 1e-8), so the normalisation does not matter; the resize round trip does, slightly.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from segclip.data.images import normalise
from segclip.errors import ConfigError
from segclip.segment.stitched import StitchedLogits
from segclip.segment.windows import resize_image

REFINE_CHOICES = ("none", "pamr")
OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))  # the reference's order


@dataclass(frozen=True)
class PAMRConfig:
    """PAMR's settings.

    Args:
        iterations: refinement steps (10 in SCLIP's and NACLIP's configs).
        dilations: neighbour distances in pixels of the original image (SCLIP, NACLIP: 8 and 16).

    Raises:
        ConfigError: fewer than one iteration, no dilation or a dilation below 1.

    Example:
        >>> config = PAMRConfig(iterations=2, dilations=(1,))
        >>> config(torch.rand(1, 3, 8, 8), torch.randn(1, 4, 8, 8)).shape
        torch.Size([1, 4, 8, 8])
    """

    iterations: int = 10
    dilations: tuple[int, ...] = (8, 16)

    def __post_init__(self) -> None:
        object.__setattr__(self, "dilations", tuple(int(d) for d in self.dilations))
        if self.iterations < 1:
            raise ConfigError(f"--pamr-iterations must be at least 1, got {self.iterations}.")
        if not self.dilations or min(self.dilations) < 1:
            raise ConfigError(f"--pamr-dilations must be positive pixel distances, e.g. 8,16; got "
                              f"{list(self.dilations)}.")

    def __call__(self, image: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """:func:`pamr` with these settings."""
        return pamr(image, logits, self.iterations, self.dilations)

    def to_dict(self) -> dict[str, Any]:
        """The refinement for result files (a method's params)."""
        return {"method": "pamr", "iterations": self.iterations, "dilations": list(self.dilations),
                "resolution": "the original image: stitched logits resized there (bilinear), guided by the resized "
                              "normalised input image resized back (bilinear), as SCLIP and NACLIP"}


def refine_config(options: Any) -> PAMRConfig | None:
    """The refinement an options object asks for (its ``refine``, ``pamr_iterations``, ``pamr_dilations``), or
    None for ``none`` (also when it has no ``refine`` field).

    Raises:
        ConfigError: an unknown refinement, or bad PAMR settings.

    Example:
        >>> from types import SimpleNamespace
        >>> refine_config(SimpleNamespace(refine="pamr", pamr_iterations=5, pamr_dilations=(4, 8)))
        PAMRConfig(iterations=5, dilations=(4, 8))
    """
    name = getattr(options, "refine", "none")
    if name not in REFINE_CHOICES:
        raise ConfigError(f"Unknown --refine {name!r}; use one of {', '.join(REFINE_CHOICES)}.")
    if name == "none":
        return None
    return PAMRConfig(getattr(options, "pamr_iterations", 10), tuple(getattr(options, "pamr_dilations", (8, 16))))


def _neighbours(padded: torch.Tensor, pad: int, dilations: Sequence[int], size: tuple[int, int]):
    """The shifted views ``x[y + dy, x + dx]`` (border repeated) of a ``pad``-replicate-padded tensor, in the
    reference's order (dilation-major, then :data:`OFFSETS`)."""
    height, width = size
    for d in dilations:
        for dy, dx in OFFSETS:
            yield padded[..., pad + dy * d:pad + dy * d + height, pad + dx * d:pad + dx * d + width]


def pamr_affinity(image: torch.Tensor, dilations: Sequence[int]) -> torch.Tensor:
    """PAMR's neighbour weights from a guide image.

    Args:
        image: ``(B, K, H, W)`` guide image (any scale).
        dilations: neighbour distances.

    Returns:
        ``(B, P, H, W)`` weights, P = 8 x len(dilations), summing to one over P.
    """
    batch, channels, height, width = image.shape
    pad = max(dilations)
    padded = F.pad(image, [pad] * 4, mode="replicate")  # (B, K, H + 2 pad, W + 2 pad)
    taps = len(dilations) * 9
    total = torch.zeros_like(image)  # the standard deviation over all taps, two passes
    for view in _neighbours(padded, pad, dilations, (height, width)):
        total += view
    total += image * len(dilations)
    mean = total / taps
    squares = (image - mean).square_() * len(dilations)
    for view in _neighbours(padded, pad, dilations, (height, width)):
        squares += (view - mean).square_()
    scale = 1e-8 + 0.1 * (squares / (taps - 1)).sqrt_()  # (B, K, H, W)
    weights = torch.stack([-(image - view).abs_().div_(scale).mean(1)  # (B, H, W) per neighbour
                           for view in _neighbours(padded, pad, dilations, (height, width))], dim=1)
    return weights.softmax(dim=1)  # (B, P, H, W)


def pamr(image: torch.Tensor, logits: torch.Tensor, iterations: int = 10,
         dilations: Sequence[int] = (8, 16)) -> torch.Tensor:
    """Refine class logits (or probabilities) along an image: the reference PAMR's ``forward(image, logits)``.

    Args:
        image: ``(B, K, H, W)`` guide image.
        logits: ``(B, C, h, w)``; resized bilinearly with ``align_corners=True`` to ``(H, W)`` first when the sizes
            differ (as the reference does).
        iterations: steps.
        dilations: neighbour distances in pixels.

    Returns:
        ``(B, C, H, W)`` refined logits, in the logits' dtype (float32 at least).

    Example:
        >>> flat = torch.randn(1, 2, 1, 1).expand(1, 2, 6, 6)
        >>> torch.allclose(pamr(torch.rand(1, 3, 6, 6), flat, 3, (1, 2)), flat)  # weights sum to one
        True
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    image = image.to(dtype)
    size = tuple(image.shape[-2:])
    mask = logits.to(dtype)
    if tuple(mask.shape[-2:]) != size:
        mask = F.interpolate(mask, size=size, mode="bilinear", align_corners=True)
    weights = pamr_affinity(image, dilations)  # (B, P, H, W)
    pad = max(dilations)
    for _ in range(iterations):
        padded = F.pad(mask, [pad] * 4, mode="replicate")
        out = torch.zeros_like(mask)
        for p, view in enumerate(_neighbours(padded, pad, dilations, size)):
            out.addcmul_(view, weights[:, p:p + 1])
        mask = out
    return mask


def guide_image(image: np.ndarray, resized: tuple[int, int], device: torch.device | str | None = None
                ) -> torch.Tensor:
    """PAMR's guide as SCLIP and NACLIP build it: the network's input image (resized like the windows' image,
    CLIP-normalised) resized back bilinearly (``align_corners=False``) to the original size.

    Args:
        image: ``(H, W, 3)`` uint8 RGB original.
        resized: ``(h, w)`` the sliding window's resized size.
        device: where the result goes.

    Returns:
        ``(1, 3, H, W)`` float32.
    """
    pixels = torch.from_numpy(resize_image(image, resized)).to(device or "cpu")
    guide = normalise(pixels)  # (1, 3, h, w)
    if tuple(resized) != tuple(image.shape[:2]):
        guide = F.interpolate(guide, size=tuple(image.shape[:2]), mode="bilinear", align_corners=False)
    return guide


def refine_stitched(stitched: StitchedLogits, image: np.ndarray, config: PAMRConfig,
                    guide: torch.Tensor | None = None) -> torch.Tensor:
    """One image's stitched logits at its original size, refined: ``(C, H, W)`` on the logits' device.

    Args:
        stitched: the image's stitched logits (resized size = ``stitched.size``).
        image: ``(H, W, 3)`` uint8 RGB original.
        config: the PAMR settings.
        guide: :func:`guide_image`'s result when already computed (several methods, one image).

    Returns:
        ``(C, H, W)`` float32 refined logits.
    """
    size = tuple(image.shape[:2])
    if guide is None:
        guide = guide_image(image, stitched.size, stitched.grids.device)
    return config(guide, stitched.logits(size)[None])[0]  # (C, H, W)
