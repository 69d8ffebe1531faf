"""One resumable pass of a model over an image set, feeding a streaming accumulator (constant memory).

Every dataset-scale analysis (calibration statistics, reconstruction, ablation, concept scores) is an
:class:`Accumulator` fed by :func:`run_pass`: images are read in whole batches; once ``checkpoint_every`` seconds
have passed since the last checkpoint (and when an image turns out unreadable, and at the end), the accumulator's
state and the number of images done are written to one safetensors checkpoint, atomically (temp file + rename). A
rerun with the same key restarts after the last saved batch; because checkpoints fall on batch boundaries, every
batch is the same as in an uninterrupted run and the final state is identical. Checkpoints are spaced in time, not
in images: a statistics state is ~130 MB for RN50, which a checkpoint per 64 images would write every few seconds.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm import tqdm

from segclip.config import progress_enabled
from segclip.core.trace import HookSpec, Trace
from segclip.data.images import read_image
from segclip.data.preprocess import clip_batch
from segclip.errors import ImageError
from segclip.io import atomic_save_tensors, read_tensors
from segclip.models.loading import CLIPResNet

log = logging.getLogger(__name__)


class Accumulator(Protocol):
    """What :func:`run_pass` feeds: a streaming state with a savable form."""

    def update(self, trace: Trace, first: int) -> None:
        """Add a batch whose first image has index ``first`` in the image list."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """All state as tensors (saved in the checkpoint)."""

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the state saved by :meth:`state_dict`."""


class Mergeable(Accumulator, Protocol):
    """An accumulator whose states over disjoint image subsets combine into the state of their union."""

    def merge(self, other: Mergeable) -> None:
        """Add ``other``'s images (same image list, other indices) into this state, in place."""


def merge_rows(mine: torch.Tensor, other: torch.Tensor, done_mine: torch.Tensor, done_other: torch.Tensor,
               what: str) -> torch.Tensor:
    """Merge two per-image states of one image list: the rows ``other`` has done replace this state's rows.

    Args:
        mine, other: (n, ...) per-image values.
        done_mine, done_other: (n,) bool, the rows each state has computed.
        what: the accumulator's name, for the error.

    Returns:
        (n, ...) the merged rows (a new tensor; exact: values are copied, nothing is summed).

    Raises:
        ValueError: the states differ in shape, or an image was done in both (the subsets were not disjoint).

    Example:
        >>> left, right = torch.tensor([1., -1.]), torch.tensor([-1., 2.])
        >>> merge_rows(left, right, left >= 0, right >= 0, "demo")
        tensor([1., 2.])
    """
    if mine.shape != other.shape:
        raise ValueError(f"cannot merge {what} states of shapes {tuple(mine.shape)} and {tuple(other.shape)}")
    both = done_mine & done_other
    if both.any():
        raise ValueError(f"cannot merge {what} states: images {both.nonzero().flatten()[:5].tolist()} were done "
                         "in both (the image subsets must be disjoint)")
    merged = mine.clone()
    merged[done_other] = other[done_other]
    return merged


def images_digest(paths: Sequence[Path], sizes: bool = False) -> str:
    """sha256 over the image names, in order (and with ``sizes``, their file sizes): a checkpoint is only resumed
    on the same image list, and only if the images it already holds are the same files (:func:`done_digest`); a
    file repaired in place after an unreadable-image error keeps its place."""
    digest = hashlib.sha256()
    for path in paths:
        try:
            size = Path(path).stat().st_size if sizes else 0
        except OSError:
            size = -1
        digest.update(f"{Path(path).name}|{size}\n".encode())
    return digest.hexdigest()


def run_pass(model: CLIPResNet, paths: Sequence[Path], accumulator: Accumulator, *, key: dict[str, Any],
             checkpoint: Path | None = None, batch_size: int = 8, checkpoint_every: float = 300.0,
             hooks: HookSpec | None = None, progress: bool = True, description: str = "images") -> int:
    """Run the model over ``paths`` in batches and feed every trace to ``accumulator``; resumable.

    Args:
        model: the loaded model.
        paths: image files, in a fixed order (image ``i`` is ``paths[i]``).
        accumulator: the state to feed.
        key: what the pass computes (kind, parameters); with the model and the image list it decides whether a
            checkpoint may be resumed. A checkpoint with another key is stale and ignored, with a warning.
        checkpoint: safetensors file for the state (None: no checkpoints).
        batch_size: images per backbone pass.
        checkpoint_every: seconds between checkpoints (0: after every batch); one is also written at the end
            and before an unreadable image's error is raised.
        hooks: forwarded to :meth:`CLIPResNet.trace` (e.g. neuron mean-ablation).
        progress: show a tqdm bar.
        description: the bar's label.

    Returns:
        The number of images that came from an existing checkpoint (0 for a fresh run).

    Raises:
        ImageError: an image cannot be read (the state up to the batch before it is checkpointed first).
        OutputError: the checkpoint cannot be written.
    """
    full_key = json.dumps({**key, "model": model.info.name, "weights": model.info.weights_hash,
                           "images": images_digest(paths), "count": len(paths), "batch_size": batch_size},
                          sort_keys=True, default=str)
    done = 0
    if checkpoint is not None and Path(checkpoint).is_file():
        saved = read_tensors(Path(checkpoint))
        same_done = saved is not None and saved[1].get("done_images") == images_digest(
            paths[:int(saved[1].get("done", 0))], sizes=True)  # the images it holds: the same files
        if saved is not None and saved[1].get("key") == full_key and same_done:
            accumulator.load_state_dict(saved[0])
            done = int(saved[1]["done"])
            log.info("resuming %s from %s: %d of %d images done", description, checkpoint, done, len(paths))
        elif saved is not None:
            log.warning("checkpoint %s belongs to another run (model, images or options differ); starting over",
                        checkpoint)
    resumed = done
    bar = tqdm(total=len(paths), initial=done, desc=description, unit="img",
               disable=not (progress and progress_enabled()),
               leave=False)
    size = model.info.image_size
    saved_done, saved_at = done, time.monotonic()

    def save() -> None:  # the state after image ``done``, unless it is saved already
        nonlocal saved_done, saved_at
        if checkpoint is not None and done > saved_done:
            atomic_save_tensors(Path(checkpoint), accumulator.state_dict(),
                                {"key": full_key, "done": str(done), "done_images": images_digest(paths[:done], True)})
        saved_done, saved_at = done, time.monotonic()

    for start in range(done, len(paths), batch_size):
        try:
            batch = [read_image(path) for path in paths[start:start + batch_size]]
        except ImageError:
            save()  # the state is that of the images before this batch: keep it
            raise
        with torch.inference_mode():
            trace = model.trace(clip_batch(batch, size).to(model.device, model.dtype), hooks=hooks)
            accumulator.update(trace, start)
        done = start + len(batch)
        bar.update(len(batch))
        if time.monotonic() - saved_at >= checkpoint_every:
            save()
    save()
    bar.close()
    return resumed
