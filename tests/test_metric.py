import math

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassJaccardIndex

from segclip.segment.metric import (
    ConfusionMatrixMetric,
    SegmentationMetric,
    iou_from_confusion,
    miou_from_confusion,
    segmentation_scores,
)


def mmseg_reference(preds: list[np.ndarray], targets: list[np.ndarray], num_classes: int) -> dict:
    """mmseg ``IoUMetric``: per-image intersect / union areas by histogram, summed, then nanmean."""
    areas = np.zeros((4, num_classes))
    for pred, target in zip(preds, targets):
        keep = target != 255
        pred, target = pred[keep], target[keep]
        bins = np.arange(num_classes + 1)
        intersect = np.histogram(pred[pred == target], bins=bins)[0]
        area_pred, area_label = np.histogram(pred, bins=bins)[0], np.histogram(target, bins=bins)[0]
        areas += [intersect, area_pred, area_label, area_pred + area_label - intersect]
    with np.errstate(invalid="ignore"):
        iou = areas[0] / areas[3]
    return {"iou": iou, "miou": np.nanmean(iou) * 100, "acc": areas[0].sum() / areas[2].sum() * 100}


def random_maps(seed: int, num_classes: int, absent: tuple[int, ...]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    rng = np.random.default_rng(seed)
    present = np.setdiff1d(np.arange(num_classes), absent)
    shapes = [(7, 9), (12, 5), (6, 6)]
    targets = [rng.choice(present, size=s) for s in shapes]
    preds = [np.where(rng.random(s) < 0.6, t, rng.choice(present, size=s)) for s, t in zip(shapes, targets)]
    for t in targets:
        t[rng.random(t.shape) < 0.2] = 255
    return [torch.from_numpy(p) for p in preds], [torch.from_numpy(t) for t in targets]


def test_hand_computed_confusion_matrix() -> None:
    target = torch.tensor([[0, 0, 1, 255], [1, 2, 2, 255]])
    preds = torch.tensor([[0, 1, 1, 2], [1, 2, 0, 0]])
    metric = SegmentationMetric(num_classes=4)
    metric.update(preds, target)
    scores = metric.compute()
    expected = torch.tensor([[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    torch.testing.assert_close(scores["confusion_matrix"], expected)
    # IoU: class 0 = 1 / (2 + 2 - 1), class 1 = 2 / (2 + 3 - 2), class 2 = 1 / (2 + 1 - 1), class 3 absent
    iou = [1 / 3, 2 / 3, 1 / 2]
    assert scores["per_class_iou"][:3] == pytest.approx([100 * v for v in iou])
    assert math.isnan(scores["per_class_iou"][3])
    assert scores["miou"] == pytest.approx(100 * sum(iou) / 3)
    assert scores["pixel_accuracy"] == pytest.approx(100 * 4 / 6)


@pytest.mark.parametrize(("seed", "absent"), [(0, ()), (1, (2, 5)), (2, (0, 6))])
def test_matches_mmseg_reference_on_random_maps_with_ignore(seed: int, absent: tuple[int, ...]) -> None:
    preds, targets = random_maps(seed, 7, absent)
    metric = SegmentationMetric(num_classes=7)
    for pred, target in zip(preds, targets):
        metric.update(pred, target)
    scores = metric.compute()
    reference = mmseg_reference([p.numpy() for p in preds], [t.numpy() for t in targets], 7)
    np.testing.assert_allclose(np.array(scores["per_class_iou"]), reference["iou"] * 100)
    assert scores["miou"] == pytest.approx(reference["miou"])
    assert scores["pixel_accuracy"] == pytest.approx(reference["acc"])
    assert np.isnan(reference["iou"]).sum() == len(absent)


def test_torchmetrics_macro_agrees_but_per_class_reports_absent_as_zero() -> None:
    preds, targets = random_maps(3, 7, absent=(1, 4))
    ours = SegmentationMetric(num_classes=7)
    macro = MulticlassJaccardIndex(num_classes=7, ignore_index=255, average="macro")
    per_class = MulticlassJaccardIndex(num_classes=7, ignore_index=255, average=None)
    for pred, target in zip(preds, targets):
        for metric in (ours, macro, per_class):
            metric.update(pred, target)
    scores = ours.compute()
    assert scores["miou"] == pytest.approx(100 * float(macro.compute()), abs=1e-4)
    torchmetrics_iou = per_class.compute()
    assert torchmetrics_iou[[1, 4]].tolist() == [0.0, 0.0]
    assert math.isnan(scores["per_class_iou"][1]) and math.isnan(scores["per_class_iou"][4])
    assert 100 * float(torchmetrics_iou.mean()) < scores["miou"]  # a plain mean over all classes is lower


def test_accumulation_and_merged_states_equal_one_pass() -> None:
    preds, targets = random_maps(4, 5, absent=())
    single = ConfusionMatrixMetric(num_classes=5)
    single.update(torch.cat([p.flatten() for p in preds]), torch.cat([t.flatten() for t in targets]))
    left, right = ConfusionMatrixMetric(num_classes=5), ConfusionMatrixMetric(num_classes=5)
    left.update(preds[0], targets[0])
    right.update(preds[1], targets[1])
    right.update(preds[2], targets[2])
    left.merge_state(right)  # what the DDP sum reduction of the "confusion" state does
    torch.testing.assert_close(left.compute(), single.compute())
    assert single.compute().sum() == sum(int((t != 255).sum()) for t in targets)
    single.reset()
    assert single.confusion.sum() == 0


def test_functions_and_empty_matrix() -> None:
    confusion = torch.tensor([[3, 1], [0, 0]])
    torch.testing.assert_close(iou_from_confusion(confusion), torch.tensor([0.75, 0.0], dtype=torch.float64))
    assert miou_from_confusion(confusion) == pytest.approx(37.5)
    empty = segmentation_scores(torch.zeros(3, 3, dtype=torch.long))
    assert math.isnan(empty["miou"]) and math.isnan(empty["pixel_accuracy"])


def test_bad_inputs() -> None:
    metric = ConfusionMatrixMetric(num_classes=3)
    with pytest.raises(ValueError, match="shape"):
        metric.update(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"target values \[3\]"):
        metric.update(torch.zeros(3, dtype=torch.long), torch.tensor([0, 3, 255]))
    with pytest.raises(ValueError, match=r"prediction values \[5\]"):
        metric.update(torch.tensor([0, 5, 0]), torch.tensor([0, 1, 255]))
    metric.update(torch.tensor([0, 1, 200]), torch.tensor([0, 1, 255]))  # predictions under ignore are not checked
    assert metric.compute().trace() == 2

