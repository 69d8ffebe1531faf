"""Result files: per-image partial results (resume), predictions, and ``results.json`` / ``results.csv``.

An output folder holds::

    results.json, results.csv            written last, atomically (:mod:`segclip.segment.evaluate`)
    partial/run.json                     the run's fingerprint (model, methods, protocol, classes, dataset)
    partial/<image id>.npy               the image's nonzero confusion cells of the M methods, (nnz, 3) int64 rows
                                         (method, flattened cell, count): bytes, not the (M, C, C) matrix
                                         (removed once results.json is written)
    predictions/<method>/<image id>.png  uint8 labels (0-based, class-list order), with --save-predictions

Every per-image file is written atomically, so an interrupted run resumes from the images whose file exists and
ends with the same numbers (integer confusion matrices summed in any order are equal).
"""
from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from segclip.errors import CacheError, OutputError
from segclip.io import atomic_write_bytes
from segclip.viz.palette import label_png

RESULT_FILES = ("results.json", "results.csv")


def png_bytes(labels: np.ndarray, values: int | None = None) -> bytes:
    """``(H, W)`` labels -> PNG bytes: 8-bit grayscale, or (``values``, the number of label values, above 256)
    16-bit, so that class 256 + k is never saved as k."""
    if values is not None and values > 256:
        return label_png(labels, values=values)
    buffer = io.BytesIO()
    Image.fromarray(labels.astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def check_writable(out: Path) -> None:
    """Create ``out`` and prove it writable before any model work.

    Raises:
        OutputError: it is a file, or cannot be created or written.
    """
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file; pass a folder.")
    probe = out / f".write-test{os.getpid()}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise OutputError(f"Cannot write to the output folder {out} ({err.strerror}); choose a writable --out.") \
            from err


def check_outputs(out: Path, overwrite: bool) -> None:
    """Prove ``out`` writable and refuse to replace a finished run's results unless ``overwrite``.

    Raises:
        OutputError: the folder is not writable, or holds results and ``overwrite`` is False.
    """
    check_writable(out)
    existing = [name for name in RESULT_FILES if (out / name).exists()]
    if existing and not overwrite:
        raise OutputError(f"{out} already holds {', '.join(existing)} of a finished run; pass --overwrite to replace "
                          "them, or choose another --out.")


class ResultStore:
    """Per-image partial results and predictions in an output folder, for resuming.

    Args:
        out: the output folder.
        fingerprint: what defines the run (JSON-able); a folder holding another run's partial results is refused.
        methods: method names, in the order of the confusion stacks.
        num_classes: C.
        save_predictions: also write label PNGs.
        overwrite: delete earlier results, partial results and predictions first.
        primary: whether this process owns the folder (global rank 0): only it deletes or writes the fingerprint.

    Raises:
        OutputError: results already exist (without ``overwrite``), or the folder is not writable.
        CacheError: the folder holds partial results of a different run.
    """

    def __init__(self, out: Path, fingerprint: dict[str, Any], methods: Sequence[str], num_classes: int, *,
                 save_predictions: bool = False, overwrite: bool = False, primary: bool = True):
        self.out, self.methods, self.num_classes = Path(out), list(methods), num_classes
        self.save_predictions = save_predictions
        self.partial = self.out / "partial"
        if primary:
            check_outputs(self.out, overwrite)
            if overwrite:
                for name in RESULT_FILES:
                    (self.out / name).unlink(missing_ok=True)
                for folder in (self.partial, self.out / "predictions"):
                    shutil.rmtree(folder, ignore_errors=True)
        run_file = self.partial / "run.json"
        fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
        if run_file.is_file():
            try:
                earlier = json.loads(run_file.read_text(encoding="utf-8"))
            except ValueError:
                earlier = None
            if earlier != fingerprint:
                raise CacheError(
                    f"{self.partial} holds partial results of a different run (other model, methods, protocol, "
                    "classes or options); pass --overwrite to discard them, or choose another --out.")
        elif primary:
            atomic_write_bytes(run_file, json.dumps(fingerprint, indent=1, sort_keys=True).encode())

    def _partial_file(self, image_id: str) -> Path:
        return self.partial / f"{image_id}.npy"

    def done(self, ids: Iterable[str]) -> set[str]:
        """The ids among ``ids`` whose partial result exists."""
        return {i for i in ids if self._partial_file(i).is_file()}

    def write(self, image_id: str, confusions: torch.Tensor, labels: Sequence[torch.Tensor] | None = None) -> None:
        """Store one image: predictions first, then its ``(M, C, C)`` confusion stack (which marks it done)."""
        if self.save_predictions and labels is not None:
            for method, label in zip(self.methods, labels):
                atomic_write_bytes(self.out / "predictions" / method / f"{image_id}.png",
                                   png_bytes(label.cpu().numpy(), self.num_classes))
        dense = confusions.cpu().numpy().astype(np.int64)  # (M, C, C): one image touches a few cells
        method, flat = np.nonzero(dense.reshape(len(dense), -1))
        buffer = io.BytesIO()
        np.save(buffer, np.stack([method, flat, dense.reshape(len(dense), -1)[method, flat]], axis=1))  # (nnz, 3)
        atomic_write_bytes(self._partial_file(image_id), buffer.getvalue())

    def load(self, ids: Iterable[str]) -> torch.Tensor:
        """Sum of the stored ``(M, C, C)`` confusion stacks of ``ids``.

        Raises:
            CacheError: a file is unreadable or shaped for another run.
        """
        total = torch.zeros(len(self.methods), self.num_classes, self.num_classes, dtype=torch.long)
        for image_id in ids:
            path = self._partial_file(image_id)
            try:
                cells = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as err:
                raise CacheError(f"Partial result {path} is unreadable ({err}); delete it to recompute it.") from err
            size = total[0].numel()
            if cells.ndim != 2 or cells.shape[1] != 3 or (len(cells) and (
                    cells[:, 0].max() >= len(self.methods) or cells[:, 1].max() >= size or cells.min() < 0)):
                raise CacheError(f"Partial result {path} does not hold this run's (method, cell, count) rows; pass "
                                 "--overwrite.")
            flat = total.view(len(self.methods), -1)
            flat.index_put_((torch.from_numpy(cells[:, 0]), torch.from_numpy(cells[:, 1])),
                            torch.from_numpy(cells[:, 2]), accumulate=True)
        return total
