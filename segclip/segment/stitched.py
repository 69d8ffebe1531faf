"""Stitched logits kept factorised: the sliding window's stitching and the resize, as two small matrices.

Upsampling a window's g x g logits to the crop (bilinear, ``align_corners=False``), adding the valid part into a
canvas, dividing by the overlap count and resizing the canvas bilinearly to the original image (docs/method.md
§5.2) are all linear and separable, and the windows form a grid (every row start times every column start),
so the overlap count is a row count times a column count. Per class c the original-size logits are therefore

    logits_c = rows @ grid_c @ cols^T,

with ``grid_c`` (n_y g, n_x g) the windows' grids laid out as blocks, ``rows`` (H, n_y g) = resize_y @ [place_i
upsample] / count_y and ``cols`` likewise. Labels come out of one small GEMM per band of rows followed by an arg-max
over the contiguous class axis: no crop-sized upsample per window, no canvas, no full-resolution (C, H, W) tensor,
nothing per class at full resolution unless asked for (:meth:`StitchedLogits.probability_maps`). Memory is bounded
by ``band_elements`` whatever the image size; the result equals the reference path
(:func:`~segclip.segment.windows.stitch` then :func:`~segclip.segment.windows.logits_to_labels`) to float32
round-off (tested against it, labels included).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Box = tuple[int, int, int, int]
BAND_ELEMENTS = 1 << 24  # floats per band of rows (64 MB in float32)


def interpolation_matrix(size_in: int, size_out: int, *, device: torch.device | None = None) -> torch.Tensor:
    """The (size_out, size_in) matrix of 1-D bilinear resizing exactly as ``F.interpolate(mode="bilinear",
    align_corners=False)`` weighs it: its response to each unit impulse, so the taps and their float32 weights
    are torch's own (two taps, the border repeated, no antialiasing, also when shrinking); returned in float64.

    Example:
        >>> interpolation_matrix(2, 4)
        tensor([[1.0000, 0.0000],
                [0.7500, 0.2500],
                [0.2500, 0.7500],
                [0.0000, 1.0000]], dtype=torch.float64)
    """
    impulses = torch.eye(size_in, device=device)[:, None, None, :]  # (in, 1, 1, in): one impulse per row
    response = F.interpolate(impulses, size=(1, size_out), mode="bilinear", align_corners=False)
    return response[:, 0, 0, :].T.double()  # (out, in)


def stitch_matrix(spans: Sequence[tuple[int, int]], length: int, crop: int, grid: int,
                  device: torch.device | None = None) -> torch.Tensor:
    """One axis of the stitching: (length, windows x grid), float64.

    Window i covers ``spans[i] = (a, b)`` of the resized axis with the first ``b - a`` of its ``crop`` upsampled
    pixels (shorter at a padded border); each row is divided by the number of windows covering it.
    """
    upsample = interpolation_matrix(grid, crop, device=device)  # (crop, g)
    out = torch.zeros(length, len(spans) * grid, dtype=torch.float64, device=device)
    count = torch.zeros(length, 1, dtype=torch.float64, device=device)
    for i, (a, b) in enumerate(spans):
        out[a:b, i * grid:(i + 1) * grid] = upsample[:b - a]
        count[a:b] += 1
    if bool((count == 0).any()):
        raise ValueError("the windows do not cover the image")
    return out / count


def axis_spans(boxes: Sequence[Box]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The row spans and column spans of a window grid (``boxes`` row-major, every row start x every column start).

    Raises:
        ValueError: the boxes are not such a grid.
    """
    rows = list(dict.fromkeys((y1, y2) for y1, y2, _, _ in boxes))
    cols = list(dict.fromkeys((x1, x2) for _, _, x1, x2 in boxes))
    if list(boxes) != [(y1, y2, x1, x2) for y1, y2 in rows for x1, x2 in cols]:
        raise ValueError("the windows do not form a row-major grid of row spans x column spans")
    return rows, cols


@dataclass
class StitchedLogits:
    """One image's window logits with the linear maps that stitch them (docs/method.md §5.2), not multiplied out.

    Attributes:
        grids: (C, n_y g, n_x g) float32: window (i, j)'s (C, g, g) logits at block (i, j).
        rows: (h, n_y g) float32: stitching along y on the resized image (upsample, place, divide by the count).
        cols: (w, n_x g) float32: the same along x.

    Every method below takes ``size``: the (H, W) of the output, the resized image's own when None; resizing to
    another size folds the bilinear resize into ``rows`` and ``cols``.
    """

    grids: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor

    @classmethod
    def from_windows(cls, window_logits: torch.Tensor, boxes: Sequence[Box], height: int, width: int,
                     crop: int) -> StitchedLogits:
        """From ``(n, C, g_y, g_x)`` window logits in the order of ``boxes`` on a ``height`` x ``width`` image."""
        if window_logits.shape[0] != len(boxes):
            raise ValueError(f"{window_logits.shape[0]} window logits for {len(boxes)} boxes")
        row_spans, col_spans = axis_spans(boxes)
        n, classes, gy, gx = window_logits.shape
        device = window_logits.device
        grids = (window_logits.float().view(len(row_spans), len(col_spans), classes, gy, gx)
                 .permute(2, 0, 3, 1, 4).reshape(classes, len(row_spans) * gy, len(col_spans) * gx))
        return cls(grids, stitch_matrix(row_spans, height, crop, gy, device).float(),
                   stitch_matrix(col_spans, width, crop, gx, device).float())

    @property
    def num_classes(self) -> int:
        return self.grids.shape[0]

    @property
    def size(self) -> tuple[int, int]:
        """(h, w) of the resized image."""
        return self.rows.shape[0], self.cols.shape[0]

    def maps(self, size: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``rows`` (H, n_y g) and ``cols`` (W, n_x g) for an output of ``size``."""
        if size is None or tuple(size) == self.size:
            return self.rows, self.cols
        device = self.rows.device
        resize_y = interpolation_matrix(self.size[0], size[0], device=device)
        resize_x = interpolation_matrix(self.size[1], size[1], device=device)
        return (resize_y @ self.rows.double()).float(), (resize_x @ self.cols.double()).float()

    def bands(self, size: tuple[int, int] | None = None, band_elements: int = BAND_ELEMENTS,
              classes: slice = slice(None)) -> Iterator[tuple[slice, torch.Tensor]]:
        """Bands of output rows with their logits: ``(rows slice, (band, W, C') float32)``, C' = ``classes``."""
        rows, cols = self.maps(size)
        grids = self.grids[classes]
        right = torch.einsum("ckl,xl->kxc", grids, cols)  # (n_y g, W, C'): the x-stitch of every class
        width, count = cols.shape[0], grids.shape[0]
        right = right.reshape(right.shape[0], width * count)
        step = max(1, band_elements // max(1, width * count))
        for start in range(0, rows.shape[0], step):
            band = slice(start, min(start + step, rows.shape[0]))
            yield band, (rows[band] @ right).view(-1, width, count)  # (band, n_y g) @ (n_y g, W C')

    def logits(self, size: tuple[int, int] | None = None) -> torch.Tensor:
        """The stitched logits materialised: (C, H, W) float32 (small images, tests; labels do not need them)."""
        rows, cols = self.maps(size)
        return torch.einsum("yk,ckl,xl->cyx", rows, self.grids, cols)

    def labels(self, size: tuple[int, int] | None = None, temperature: float = 40.0,
               background_threshold: float | None = None, band_elements: int = BAND_ELEMENTS) -> torch.Tensor:
        """Arg-max labels (H, W) int64, the first class on ties; with ``background_threshold``, pixels whose top
        probability softmax(temperature x logits) is below it get label C (no softmax is computed without one)."""
        rows, cols = self.maps(size)
        out = torch.empty(rows.shape[0], cols.shape[0], dtype=torch.long, device=self.grids.device)
        for band, logits in self.bands(size, band_elements):
            top, labels = logits.max(-1)  # (band, W)
            if background_threshold is not None:
                total = ((logits - top[..., None]) * temperature).exp_().sum(-1)  # top probability = 1 / total
                labels[total.reciprocal() < background_threshold] = self.num_classes
            out[band] = labels
        return out

    def probability_maps(self, size: tuple[int, int] | None = None, temperature: float = 40.0,
                         band_elements: int = BAND_ELEMENTS) -> Iterator[torch.Tensor]:
        """Per class, in order, its (H, W) float32 probability map softmax(temperature x logits)[c], one class at a
        time (the softmax's normaliser is computed first, in bands)."""
        rows, cols = self.maps(size)
        top = torch.empty(rows.shape[0], cols.shape[0], device=self.grids.device)
        total = torch.empty_like(top)
        for band, logits in self.bands(size, band_elements):
            top[band] = logits.amax(-1)
            total[band] = ((logits - top[band, :, None]) * temperature).exp_().sum(-1)
        for c in range(self.num_classes):
            logits = rows @ (self.grids[c] @ cols.T)  # (H, W)
            yield logits.sub_(top).mul_(temperature).exp_().div_(total)
