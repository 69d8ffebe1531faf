import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segclip.data.images import normalise
from segclip.errors import ConfigError
from segclip.segment.windows import (
    SlidingWindowProtocol,
    extract_crops,
    logits_to_labels,
    prepare_windows,
    rescale_size,
    resize_image,
    stitch,
    window_boxes,
)


def mmseg_slide(window_fn, image: torch.Tensor, crop: int, stride: int) -> torch.Tensor:
    """mmseg ``slide_inference``, written out as there (window_fn maps a crop to same-size logits)."""
    _, h_img, w_img = image.shape
    h_grids = max(h_img - crop + stride - 1, 0) // stride + 1
    w_grids = max(w_img - crop + stride - 1, 0) // stride + 1
    preds, count = None, torch.zeros(1, h_img, w_img)
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1, x1 = h_idx * stride, w_idx * stride
            y2, x2 = min(y1 + crop, h_img), min(x1 + crop, w_img)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            logits = window_fn(image[:, y1:y2, x1:x2])
            padded = F.pad(logits, (x1, w_img - x2, y1, h_img - y2))
            preds = padded if preds is None else preds + padded
            count[:, y1:y2, x1:x2] += 1
    return preds / count


@pytest.mark.parametrize(
    ("height", "width", "short", "expected"),
    [
        (375, 500, 512, (512, 683)),
        (500, 375, 512, (683, 512)),
        (375, 500, 384, (384, 512)),
        (333, 500, 512, (512, 769)),  # 500 * 512 / 333 = 768.77
        (100, 5000, 512, (41, 2048)),  # long side binds: scale 2048 / 5000
        (10, 20, 512, (512, 1024)),
        (512, 512, 512, (512, 512)),
        (1, 10000, 512, (1, 2048)),  # 0.2048 rounds to 0: kept at 1
    ],
)
def test_rescale_size(height: int, width: int, short: int, expected: tuple[int, int]) -> None:
    assert rescale_size(height, width, short) == expected


def test_resize_image_is_cv2_bilinear() -> None:
    image = np.random.default_rng(0).integers(0, 256, size=(15, 20, 3), dtype=np.uint8)
    out = resize_image(image, (21, 28))
    assert out.shape == (21, 28, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, cv2.resize(image, (28, 21), interpolation=cv2.INTER_LINEAR))


@pytest.mark.parametrize(
    ("length", "expected"),
    [
        (384, [(0, 384)]),
        (385, [(0, 384), (1, 385)]),
        (576, [(0, 384), (192, 576)]),
        (577, [(0, 384), (192, 576), (193, 577)]),
        (683, [(0, 384), (192, 576), (299, 683)]),
        (100, [(0, 100)]),
    ],
)
def test_window_boxes_per_axis(length: int, expected: list[tuple[int, int]]) -> None:
    assert [(y1, y2) for y1, y2, _, _ in window_boxes(length, 10, 384, 192)] == expected
    assert [(x1, x2) for _, _, x1, x2 in window_boxes(10, length, 384, 192)] == expected


@pytest.mark.parametrize(("height", "width"), [(512, 683), (384, 2048), (2048, 390), (50, 700), (30, 40)])
def test_window_boxes_cover_and_count(height: int, width: int) -> None:
    boxes = window_boxes(height, width, 384, 192)
    per_axis = [max(n - 384 + 191, 0) // 192 + 1 for n in (height, width)]
    assert len(boxes) == per_axis[0] * per_axis[1]
    covered = np.zeros((height, width), int)
    for y1, y2, x1, x2 in boxes:
        assert y2 - y1 == min(384, height) and x2 - x1 == min(384, width)
        covered[y1:y2, x1:x2] += 1
    assert covered.min() >= 1
    with pytest.raises(ValueError, match="stride <= crop"):
        window_boxes(height, width, 384, 385)


def test_extract_crops_pads_with_zero() -> None:
    image = torch.randn(3, 5, 9)
    boxes = window_boxes(5, 9, crop=6, stride=3)
    assert boxes == [(0, 5, 0, 6), (0, 5, 3, 9)]
    crops = extract_crops(image, boxes, crop=6)
    assert crops.shape == (2, 3, 6, 6)
    torch.testing.assert_close(crops[1, :, :5, :], image[:, :, 3:9])
    assert crops[:, :, 5:, :].abs().sum() == 0


@pytest.mark.parametrize(("height", "width"), [(40, 70), (20, 90), (10, 12)])
def test_stitch_constant_logits_give_the_constant(height: int, width: int) -> None:
    boxes = window_boxes(height, width, crop=32, stride=16)
    constant = torch.tensor([1.5, -2.0, 7.0]).view(3, 1, 1)
    out = stitch(constant.expand(len(boxes), 3, 4, 4), boxes, height, width, crop=32)
    torch.testing.assert_close(out, constant.expand(3, height, width))


def test_stitch_known_per_window_pattern() -> None:
    boxes = window_boxes(40, 70, crop=32, stride=16)
    window_ids = torch.arange(len(boxes), dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, 3, 3)
    expected_sum, count = torch.zeros(40, 70), torch.zeros(40, 70)
    for i, (y1, y2, x1, x2) in enumerate(boxes):
        expected_sum[y1:y2, x1:x2] += i
        count[y1:y2, x1:x2] += 1
    torch.testing.assert_close(stitch(window_ids, boxes, 40, 70, crop=32)[0], expected_sum / count)


@pytest.mark.parametrize(("height", "width"), [(40, 70), (70, 33)])
def test_stitch_matches_mmseg_slide_inference(height: int, width: int) -> None:
    image = torch.randn(3, height, width)
    weight = torch.randn(5, 3, 4, 4)

    def window_fn(crop: torch.Tensor) -> torch.Tensor:  # (3, 32, 32) -> (5, 32, 32) through an 8 x 8 grid
        grid = F.conv2d(crop[None], weight, stride=4)
        return F.interpolate(grid, size=crop.shape[-2:], mode="bilinear", align_corners=False)[0]

    boxes = window_boxes(height, width, crop=32, stride=16)
    grids = F.conv2d(extract_crops(image, boxes, 32), weight, stride=4)  # (n, 5, 8, 8)
    torch.testing.assert_close(stitch(grids, boxes, height, width, 32), mmseg_slide(window_fn, image, 32, 16))


def test_stitch_of_the_crops_returns_the_image() -> None:
    image = torch.randn(3, 50, 23)
    boxes = window_boxes(50, 23, crop=16, stride=8)
    torch.testing.assert_close(stitch(extract_crops(image, boxes, 16), boxes, 50, 23, 16), image)
    with pytest.raises(ValueError, match="window logits"):
        stitch(torch.zeros(1, 3, 16, 16), boxes, 50, 23, 16)


def test_logits_to_labels() -> None:
    logits = torch.randn(4, 6, 8)
    labels, probs = logits_to_labels(logits, (6, 8))
    assert labels.dtype == torch.int64
    torch.testing.assert_close(probs, (40 * logits).softmax(0))
    torch.testing.assert_close(labels, logits.argmax(0))
    labels, probs = logits_to_labels(logits, (12, 16), temperature=1.0, background_threshold=0.4)
    assert labels.shape == (12, 16) and probs.shape == (4, 12, 16)
    resized = F.interpolate(logits[None], size=(12, 16), mode="bilinear", align_corners=False)[0]
    expected = torch.where(resized.softmax(0).amax(0) < 0.4, 4, resized.argmax(0))
    torch.testing.assert_close(labels, expected)
    assert (labels == 4).any() and (labels < 4).any()


def test_protocol() -> None:
    protocol = SlidingWindowProtocol()
    assert protocol.to_dict() == {"short_side": 512, "long_side": 2048, "crop": 384, "stride": 192, "temperature": 40.0}
    for bad in ({"stride": 400}, {"crop": 0}, {"temperature": 0.0}):
        with pytest.raises(ConfigError):
            SlidingWindowProtocol(**bad)


def test_prepare_windows_batches_images_of_any_size() -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=s, dtype=np.uint8) for s in ((30, 40, 3), (8, 100, 3), (64, 64, 3))]
    protocol = SlidingWindowProtocol(short_side=32, long_side=128, crop=24, stride=12)
    batch = prepare_windows(images, protocol)
    assert batch.resized_sizes == [(32, 43), (10, 128), (32, 32)]
    assert batch.original_sizes == [(30, 40), (8, 100), (64, 64)]
    assert [len(b) for b in batch.boxes] == [2 * 3, 1 * 10, 2 * 2]
    assert batch.crops.shape == (20, 3, 24, 24)
    stitched = batch.stitch(batch.crops)
    for i, (image, crops) in enumerate(zip(images, batch.split(batch.crops))):
        single = prepare_windows([image], protocol)
        torch.testing.assert_close(single.crops, crops, rtol=0, atol=0)
        assert single.boxes == [batch.boxes[i]]
        torch.testing.assert_close(stitched[i], normalise(resize_image(image, batch.resized_sizes[i]))[0])
    with pytest.raises(ValueError, match="no images"):
        prepare_windows([], protocol)


def test_stitch_matches_mmseg_at_the_paper_protocol_size() -> None:
    boxes = window_boxes(512, 683, crop=384, stride=192)
    grids = torch.randn(len(boxes), 2, 12, 12)  # RN50x16: a 12 x 12 grid per 384 crop
    remaining = iter(grids)

    def window_fn(crop: torch.Tensor) -> torch.Tensor:
        return F.interpolate(next(remaining)[None], size=crop.shape[-2:], mode="bilinear", align_corners=False)[0]

    expected = mmseg_slide(window_fn, torch.zeros(3, 512, 683), 384, 192)
    torch.testing.assert_close(stitch(grids, boxes, 512, 683, 384), expected)
