from pathlib import Path

import numpy as np
import pytest
from fake_data import make_fake_pascal_context
from PIL import Image
from torch.utils.data import DataLoader

from segclip.data.pascal_context import (
    ImageFolderDataset,
    PascalContext,
    class_names,
    collate_samples,
)
from segclip.errors import ConfigError, DataError, ImageError


@pytest.fixture
def root(tmp_path: Path) -> Path:
    make_fake_pascal_context(tmp_path / "data", n_images=3, sizes=((20, 30), (24, 16)), seed=1)
    return tmp_path / "data"


def test_class_names() -> None:
    raw, text = class_names(), class_names(names="text")
    assert len(raw) == len(text) == 59 and len(set(raw)) == 59
    assert raw[0] == "aeroplane" and raw[-1] == "wood" and raw[36] == "person"
    assert [(a, b) for a, b in zip(raw, text) if a != b] == [
        ("aeroplane", "airplane"), ("pottedplant", "potted plant"), ("tvmonitor", "tv monitor")
    ]
    assert class_names(num_classes=60) == ["background", *raw]
    assert class_names(num_classes=60, names="text") == ["background", *text]
    for bad in ({"num_classes": 21}, {"names": "fancy"}, {"dataset": "ade20k"}):
        with pytest.raises(ConfigError):
            class_names(**bad)


def test_fake_data_layout_and_samples(root: Path) -> None:
    dataset = PascalContext(root)
    assert len(dataset) == 3 and dataset.ids == ["2008_000000", "2008_000001", "2008_000002"]
    assert dataset.class_names("text")[0] == "airplane"
    sample = dataset[1]
    assert sample["id"] == "2008_000001"
    assert sample["image"].shape == (24, 16, 3) and sample["image"].dtype == np.uint8
    raw = np.asarray(Image.open(dataset.label_paths[1])).astype(int)
    np.testing.assert_array_equal(sample["label"], np.where(raw == 0, 255, raw - 1))
    assert np.any(raw == 0) and np.any(raw > 0)
    np.testing.assert_array_equal(PascalContext(root, num_classes=60)[1]["label"], raw)


@pytest.mark.parametrize("sub", ["", "VOCdevkit", "VOCdevkit/VOC2010"])
def test_root_may_point_at_any_level(root: Path, sub: str) -> None:
    assert PascalContext(root / sub, limit=2).ids == ["2008_000000", "2008_000001"]


def test_missing_entries_are_named_with_count_and_fix(root: Path) -> None:
    split = root / "VOCdevkit/VOC2010/ImageSets/SegmentationContext/val.txt"
    split.write_text(split.read_text() + "2010_000007\n2010_000009\n")
    with pytest.raises(DataError) as info:
        PascalContext(root)
    message = str(info.value)
    assert "2 of 5 images" in message and "2010_000007.jpg" in message and "2010_000009.jpg" in message
    assert "segclip prepare pascal_context" in message and "Detail API or mmcv needed" in message
    assert len(PascalContext(root, limit=3)) == 3  # only the ids in use are checked
    (root / "VOCdevkit/VOC2010/SegmentationClassContext/2008_000002.png").unlink()
    with pytest.raises(DataError, match=r"1 of 3 label maps .*2008_000002\.png"):
        PascalContext(root, limit=3)


@pytest.mark.parametrize(
    ("remove", "match"),
    [
        ("SegmentationClassContext", "SegmentationClassContext does not exist"),
        ("ImageSets/SegmentationContext/val.txt", "val.txt does not exist"),
    ],
)
def test_missing_parts(root: Path, remove: str, match: str) -> None:
    path = root / "VOCdevkit/VOC2010" / remove
    if path.is_dir():
        for file in path.iterdir():
            file.unlink()
        path.rmdir()
    else:
        path.unlink()
    with pytest.raises(DataError, match=match):
        PascalContext(root)


def test_bad_roots_and_arguments(root: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist.*segclip prepare pascal_context"):
        PascalContext(tmp_path / "nowhere")
    (tmp_path / "other").mkdir()
    with pytest.raises(DataError, match="does not hold PASCAL Context"):
        PascalContext(tmp_path / "other")
    with pytest.raises(DataError, match="test.txt does not exist"):
        PascalContext(root, split="test")
    (root / "VOCdevkit/VOC2010/ImageSets/SegmentationContext/val.txt").write_text("\n\n")
    with pytest.raises(DataError, match="lists no image ids"):
        PascalContext(root)
    with pytest.raises(ConfigError, match="59 or 60"):
        PascalContext(root, num_classes=21)
    with pytest.raises(ConfigError, match="limit"):
        PascalContext(root, limit=0)


def test_size_mismatch_and_bad_label(root: Path) -> None:
    dataset = PascalContext(root)
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(dataset.label_paths[0])
    with pytest.raises(DataError, match=r"2008_000000\.png is 5x5 \(WxH\) but its image is 30x20"):
        dataset[0]
    Image.fromarray(np.full((24, 16), 77, np.uint8)).save(dataset.label_paths[1])
    with pytest.raises(DataError, match=r"2008_000001\.png has values \[77\]"):
        dataset[1]


def test_image_folder_and_collate(root: Path, tmp_path: Path) -> None:
    images = sorted((root / "VOCdevkit/VOC2010/JPEGImages").glob("*.jpg"))
    dataset = ImageFolderDataset(images)
    assert len(dataset) == 3 and dataset[2]["id"] == "2008_000002" and set(dataset[2]) == {"id", "image"}
    batch = next(iter(DataLoader(dataset, batch_size=2, collate_fn=collate_samples)))
    assert batch["id"] == ["2008_000000", "2008_000001"]
    assert [im.shape for im in batch["image"]] == [(20, 30, 3), (24, 16, 3)]
    labelled = collate_samples([PascalContext(root)[0], PascalContext(root)[1]])
    assert set(labelled) == {"id", "image", "label"} and len(labelled["label"]) == 2
    with pytest.raises(ImageError, match="1 image file"):
        ImageFolderDataset([images[0], tmp_path / "gone.jpg"])
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / images[0].name).write_bytes(images[0].read_bytes())
    with pytest.raises(DataError, match="same name stem"):
        ImageFolderDataset([images[0], tmp_path / "copy" / images[0].name])
    with pytest.raises(DataError, match="no images"):
        ImageFolderDataset([])
