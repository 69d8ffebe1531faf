"""Segmentation metrics from a dataset-level confusion matrix (docs/method.md §5.6, mmseg ``IoUMetric``).

Pixels whose target is the ignore index (255) are dropped; the confusion matrix (rows = target, columns =
prediction) is summed over the whole dataset (and over processes under DDP). Per-class IoU is
``tp / (tp + fp + fn)``, NaN for a class absent from both target and prediction; mIoU is the mean over the other
classes (mmseg's ``nanmean``); pixel accuracy is ``trace / total``.

torchmetrics' ``MulticlassJaccardIndex(ignore_index=255, average="macro")`` gives the same mIoU in the installed
release (1.9): its macro weights classes with ``tp + fp + fn == 0`` by zero. Two differences: with
``average=None`` it reports such classes as 0.0 (``zero_division``), not NaN; and older releases averaged them in
as 0 (Lightning-AI/torchmetrics#1693), lowering the mean. We compute from the confusion matrix ourselves.
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric


def iou_from_confusion(confusion: torch.Tensor) -> torch.Tensor:
    """Per-class IoU from a confusion matrix.

    Args:
        confusion: ``(C, C)`` counts, rows = target, columns = prediction.

    Returns:
        ``(C,)`` float64 IoU in ``[0, 1]``, NaN where the class is in neither target nor prediction.
    """
    confusion = confusion.double()
    tp = confusion.diagonal()
    union = confusion.sum(0) + confusion.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))


def miou_from_confusion(confusion: torch.Tensor) -> float:
    """mIoU in percent: the mean IoU over classes present in target or prediction (NaN if none is).

    Args:
        confusion: ``(C, C)`` counts, rows = target, columns = prediction.

    Returns:
        mIoU in percent.

    Example:
        >>> miou_from_confusion(torch.tensor([[2, 1, 0], [0, 1, 0], [0, 0, 0]]))
        58.33333333333333
    """
    return float(iou_from_confusion(confusion).nanmean()) * 100


def segmentation_scores(confusion: torch.Tensor) -> dict[str, Any]:
    """All scores from a confusion matrix.

    Args:
        confusion: ``(C, C)`` counts, rows = target, columns = prediction.

    Returns:
        ``{"miou": float (percent), "per_class_iou": list[float] (percent, NaN for absent classes),
        "pixel_accuracy": float (percent, NaN with no pixel), "confusion_matrix": (C, C) int64 tensor (CPU)}``.
    """
    confusion = confusion.detach().cpu().long()
    total = int(confusion.sum())
    return {
        "miou": miou_from_confusion(confusion),
        "per_class_iou": (iou_from_confusion(confusion) * 100).tolist(),
        "pixel_accuracy": float(confusion.trace()) / total * 100 if total else float("nan"),
        "confusion_matrix": confusion,
    }


class ConfusionMatrixMetric(Metric):
    """Dataset-level confusion matrix of label maps, summed across DDP processes.

    Args:
        num_classes: number of classes ``C``.
        ignore_index: target value whose pixels are dropped.
        **kwargs: passed to :class:`torchmetrics.Metric`.

    Example:
        >>> metric = ConfusionMatrixMetric(num_classes=2)
        >>> metric.update(torch.tensor([[0, 1], [1, 1]]), torch.tensor([[0, 1], [255, 0]]))
        >>> metric.compute()
        tensor([[1, 1],
                [0, 1]])
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False
    confusion: torch.Tensor

    def __init__(self, num_classes: int, ignore_index: int = 255, **kwargs: Any):
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.add_state("confusion", torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Add label maps of equal shape (any shape, e.g. ``(H, W)`` or ``(B, H, W)``) to the confusion matrix.

        Raises:
            ValueError: shapes differ, or a non-ignored target or its prediction is outside ``0..C-1``.
        """
        if preds.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(preds.shape)} differs from target shape {tuple(target.shape)}")
        keep = target != self.ignore_index
        target, preds = target[keep].long(), preds.to(target.device)[keep].long()
        for name, values in (("target", target), ("prediction", preds)):
            bad = (values < 0) | (values >= self.num_classes)
            if bool(bad.any()):
                raise ValueError(
                    f"{name} values {values[bad].unique()[:10].tolist()} outside 0..{self.num_classes - 1} "
                    f"(ignore index {self.ignore_index})"
                )
        counts = torch.bincount(target * self.num_classes + preds, minlength=self.num_classes**2)
        self.confusion += counts.view(self.num_classes, self.num_classes).to(self.confusion.device)

    def compute(self) -> torch.Tensor:
        """The ``(C, C)`` int64 confusion matrix, rows = target, columns = prediction."""
        return self.confusion


class SegmentationMetric(ConfusionMatrixMetric):
    """mIoU, per-class IoU and pixel accuracy over a dataset (mmseg ``IoUMetric`` semantics), DDP-ready.

    Example:
        >>> metric = SegmentationMetric(num_classes=3)
        >>> metric.update(torch.tensor([0, 1, 0, 1]), torch.tensor([0, 1, 0, 0]))
        >>> round(metric.compute()["miou"], 2)
        58.33
    """

    def compute(self) -> dict[str, Any]:
        """Scores of :func:`segmentation_scores` from the accumulated confusion matrix."""
        return segmentation_scores(self.confusion)
