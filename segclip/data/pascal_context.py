"""PASCAL Context (59 and 60 classes) in mmsegmentation's layout, class names, and plain image folders.

The layout is what mmsegmentation's converter (``tools/dataset_converters/pascal_context.py``, which needs the
Detail API) writes::

    root/VOCdevkit/VOC2010/JPEGImages/<id>.jpg
    root/VOCdevkit/VOC2010/SegmentationClassContext/<id>.png     0 = background, 1..59 = classes
    root/VOCdevkit/VOC2010/ImageSets/SegmentationContext/val.txt  one id per line (5,104 for val)

``root`` may also point at ``VOCdevkit`` or at ``VOC2010`` itself. Context-59 maps background to ignore (255) and
class ``c`` to ``c - 1``; Context-60 keeps background as class 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from segclip.data.images import read_image, read_label
from segclip.errors import ConfigError, DataError, ImageError

PREPARE_HINT = (
    "Prepare PASCAL Context with mmsegmentation's converter: install the Detail API "
    "(https://github.com/zhanghang1989/detail-api), download VOC2010 trainval and trainval_merged.json, then run "
    "`python tools/dataset_converters/pascal_context.py data/VOCdevkit data/VOCdevkit/VOC2010/trainval_merged.json` "
    "and pass --data-root pointing at the folder that holds VOCdevkit (or at VOCdevkit or VOC2010 itself)."
)
_LAYOUT = ("JPEGImages", "SegmentationClassContext", "ImageSets/SegmentationContext")


def class_names(dataset: str = "pascal_context", num_classes: int = 59, names: str = "raw") -> list[str]:
    """Class names of a dataset, in label order.

    Args:
        dataset: dataset name; only ``"pascal_context"``.
        num_classes: 59 (no background) or 60 (``"background"`` first).
        names: ``"raw"`` (the dataset's names: aeroplane, pottedplant, tvmonitor) or ``"text"`` (the authors' text
            names: airplane, potted plant, tv monitor; the rest are equal).

    Returns:
        ``num_classes`` class names.

    Raises:
        ConfigError: unknown dataset, class count or name set.

    Example:
        >>> class_names(num_classes=60, names="text")[:2]
        ['background', 'airplane']
    """
    if dataset != "pascal_context" or num_classes not in (59, 60) or names not in ("raw", "text"):
        raise ConfigError(
            f"no class names for dataset={dataset!r}, num_classes={num_classes}, names={names!r}; "
            "expected dataset='pascal_context', num_classes 59 or 60, names 'raw' or 'text'"
        )
    file = f"{dataset}_{num_classes}{'_text' if names == 'text' else ''}.txt"
    text = resources.files("segclip.data").joinpath("classnames", file).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _find_voc2010(root: Path) -> Path:
    """Return the ``VOC2010`` folder under ``root``, ``root/VOC2010`` or ``root/VOCdevkit/VOC2010``."""
    if not root.is_dir():
        raise DataError(f"PASCAL Context root {root} does not exist. {PREPARE_HINT}")
    for candidate in (root / "VOCdevkit" / "VOC2010", root / "VOC2010", root):
        if any((candidate / part).is_dir() for part in _LAYOUT):
            return candidate
    raise DataError(
        f"{root} does not hold PASCAL Context: none of VOCdevkit/VOC2010, VOC2010 or {root} contains "
        f"{', '.join(_LAYOUT)}. {PREPARE_HINT}"
    )


def _missing_error(kind: str, missing: Sequence[Path], total: int, split_file: Path) -> DataError:
    """The error naming the first missing files of a split, how many are missing, and how to prepare the data."""
    shown = ", ".join(str(p) for p in missing[:5]) + (", ..." if len(missing) > 5 else "")
    return DataError(
        f"{len(missing)} of {total} {kind} listed in {split_file} are missing (first: {shown}). {PREPARE_HINT}"
    )


class PascalContext(Dataset):
    """PASCAL Context in mmsegmentation's layout, validated when constructed (before any model work).

    Args:
        root: folder holding ``VOCdevkit`` (or ``VOCdevkit``, or ``VOC2010``).
        split: split name; reads ``ImageSets/SegmentationContext/<split>.txt``.
        num_classes: 59 (background ignored, labels shifted down by one) or 60 (background is class 0).
        limit: keep only the first ``limit`` ids of the split (only those are validated).

    Raises:
        ConfigError: ``num_classes`` not 59 or 60, or ``limit`` below 1.
        DataError: a folder, the split file, or images / labels it lists are missing; the split file is empty.

    Example:
        >>> sample = PascalContext("data", limit=4)[0]  # doctest: +SKIP
        >>> sample["image"].shape, sample["label"].shape  # doctest: +SKIP
        ((375, 500, 3), (375, 500))
    """

    ignore_index = 255

    def __init__(self, root: str | Path, split: str = "val", num_classes: int = 59, limit: int | None = None):
        if num_classes not in (59, 60):
            raise ConfigError(f"PASCAL Context has 59 or 60 classes, got num_classes={num_classes}")
        if limit is not None and limit < 1:
            raise ConfigError(f"limit must be at least 1, got {limit}")
        self.num_classes, self.split = num_classes, split
        self.reduce_zero_label = num_classes == 59
        self.voc2010 = _find_voc2010(Path(root))
        self.image_dir = self.voc2010 / "JPEGImages"
        self.label_dir = self.voc2010 / "SegmentationClassContext"
        split_file = self.voc2010 / "ImageSets" / "SegmentationContext" / f"{split}.txt"
        for required in (self.image_dir, self.label_dir, split_file):
            if not required.exists():
                raise DataError(f"PASCAL Context is incomplete: {required} does not exist. {PREPARE_HINT}")
        ids = [line.strip() for line in split_file.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
        if not ids:
            raise DataError(f"split file {split_file} lists no image ids. {PREPARE_HINT}")
        self.ids = ids[:limit] if limit is not None else ids
        for kind, paths in (("images", self.image_paths), ("label maps", self.label_paths)):
            missing = [p for p in paths if not p.is_file()]
            if missing:
                raise _missing_error(kind, missing, len(paths), split_file)

    @property
    def image_paths(self) -> list[Path]:
        """JPEG paths, in split order."""
        return [self.image_dir / f"{i}.jpg" for i in self.ids]

    @property
    def label_paths(self) -> list[Path]:
        """Label PNG paths, in split order."""
        return [self.label_dir / f"{i}.png" for i in self.ids]

    def class_names(self, names: str = "raw") -> list[str]:
        """Class names in label order (``"raw"`` or ``"text"``, see :func:`class_names`)."""
        return class_names("pascal_context", self.num_classes, names)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Return ``{"id": str, "image": (H, W, 3) uint8 RGB, "label": (H, W) uint8}`` (255 = ignore).

        Raises:
            ImageError: the image cannot be read.
            DataError: the label cannot be read, is out of range, or its size differs from the image's.
        """
        image_id = self.ids[index]
        image = read_image(self.image_dir / f"{image_id}.jpg")
        label_path = self.label_dir / f"{image_id}.png"
        label = read_label(label_path, self.num_classes, self.reduce_zero_label)
        if label.shape != image.shape[:2]:
            raise DataError(
                f"label map {label_path} is {label.shape[1]}x{label.shape[0]} (WxH) but its image is "
                f"{image.shape[1]}x{image.shape[0]}; regenerate the labels with mmsegmentation's converter"
            )
        return {"id": image_id, "image": image, "label": label}


class ImageFolderDataset(Dataset):
    """Unlabelled images given by path, for ``segment``; ids are file stems.

    Args:
        paths: image files.

    Raises:
        ImageError: a path is not an existing file.
        DataError: no paths, or two paths share a stem (their outputs would collide).
    """

    def __init__(self, paths: Sequence[str | Path]):
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise DataError("no images given")
        folders = [p for p in self.paths if p.is_dir()]
        if folders:
            raise ImageError(f"{folders[0]} is a folder, not an image file; pass the image files inside it (e.g. "
                             f"{folders[0]}/*.jpg)")
        missing = [p for p in self.paths if not p.is_file()]
        if missing:
            raise ImageError(f"{len(missing)} image file(s) do not exist: {', '.join(map(str, missing[:5]))}")
        seen: dict[str, Path] = {}
        for path in self.paths:
            if path.stem in seen:
                raise DataError(f"{seen[path.stem]} and {path} have the same name stem; their outputs would collide")
            seen[path.stem] = path
        self.ids = list(seen)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Return ``{"id": str, "image": (H, W, 3) uint8 RGB}``.

        Raises:
            ImageError: the image cannot be read.
        """
        return {"id": self.ids[index], "image": read_image(self.paths[index])}


def collate_samples(samples: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """Collate dataset samples into lists per key (images of different sizes are not stacked).

    Args:
        samples: dicts with the same keys (``id``, ``image``, optionally ``label``).

    Returns:
        ``{key: [value of each sample]}``.

    Example:
        >>> collate_samples([{"id": "a"}, {"id": "b"}])
        {'id': ['a', 'b']}
    """
    return {key: [sample[key] for sample in samples] for key in samples[0]}

