"""The eight benchmarks of training-free semantic segmentation, in the layouts mmsegmentation's converters write.

All are found under one data root laid out as mmsegmentation's ``data/`` folder; each can also be given its own
folder (the one named in the second column)::

    name         folder under the data root   images / labels (val)                                      val
    voc21        VOCdevkit/VOC2012            JPEGImages/<id>.jpg, SegmentationClass/<id>.png           1449
    voc20        VOCdevkit/VOC2012            same, ids from ImageSets/Segmentation/val.txt             1449
    context60    VOCdevkit/VOC2010            JPEGImages/<id>.jpg, SegmentationClassContext/<id>.png    5104
    context59    VOCdevkit/VOC2010            same, ids from ImageSets/SegmentationContext/val.txt      5104
    coco_object  coco_stuff164k               images/val2017/<id>.jpg,
                                              annotations/val2017/<id>_instanceTrainIds.png              5000
    coco_stuff   coco_stuff164k               images/val2017/<id>.jpg,
                                              annotations/val2017/<id>_labelTrainIds.png                 5000
    cityscapes   cityscapes                   leftImg8bit/val/<city>/<id>_leftImg8bit.png,
                                              gtFine/val/<city>/<id>_gtFine_labelTrainIds.png           500
    ade20k       ade/ADEChallengeData2016     images/validation/<id>.jpg, annotations/validation/<id>.png  2000
    pc459        VOCdevkit/VOC2010            JPEGImages/<id>.jpg,
                                              annotations_detectron2/pc459_val/<id>.tif                 5104
    ade847       ADE20K_2021_17_01            images_detectron2/validation/<id>.jpg,
                                              annotations_detectron2/validation/<id>.tif                2000

Label encodings are mmsegmentation's (255 is always ignored): voc21 keeps the palette indices (0 background is a
class, 255 the boundary); voc20, context59 and ade20k reduce the zero label (0 -> 255, c -> c - 1); context60 keeps
0 as background; coco_object holds 0 background and 1..80 (``instanceTrainIds``), coco_stuff 0..170
(``labelTrainIds``), cityscapes 0..18 (``labelTrainIds``). Datasets without a split file list their image folder
recursively, sorted by path, as mmsegmentation does. :data:`BENCHMARKS` is in the column order of the field's
tables (SCLIP, ClearCLIP): with background first, then without; then the two wide benchmarks.

PASCAL Context 459 and ADE20K-847 are in the layouts CAT-Seg's converters write (cvlab-kaist/CAT-Seg
``datasets/prepare_pascal_context_459.py``, ``datasets/prepare_ade20k_full.py``; read as its detectron2
registration ``cat_seg/data/datasets/register_pascal_context.py`` / ``register_ade20k_847.py`` reads them, with
``load_sem_seg``: the label folder is listed and matched to the images by name). Labels are 16-bit TIFFs
(Pillow mode ``I;16``): PC-459 holds ``LabelMap - 1`` (0..458; CAT-Seg's ignore value is 459, and an unlabelled
raw 0 wraps to 65535, ignored too), ADE-847 holds the train ids 0..846 and 65535 for every other pixel (its
ignore value). Their labels come back as uint16 with 65535 for ignore (:attr:`BenchmarkDataset.ignore_index`).

COCO-Stuff in another label order is refused by name: a ``labelTrainIds`` map holding values 171..181 is the
stuffthingmap's 182-id order (COCO category id - 1, ids 0..181 with 11 unused), not mmsegmentation's 0..170.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from segclip.data.images import IGNORE_INDEX, WIDE_IGNORE_INDEX, read_image, read_label
from segclip.data.queries import benchmark_class_file, read_query_file
from segclip.data.synthetic import SYNTHETIC_CLASSES, SYNTHETIC_VAL, generate_benchmark
from segclip.errors import ConfigError, DataError, SegclipError
from segclip.paths import cache_dir

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchmarkSpec:
    """Where a benchmark's files are and how its labels are encoded.

    Attributes:
        name: the benchmark's name.
        folder: its folder under the data root (mmsegmentation's ``data/`` layout).
        image_dir: image folder inside ``folder``; ``{split}`` is replaced by the split's folder name.
        label_dir: label folder, likewise.
        image_suffix: what every image file name ends with.
        label_suffix: what replaces ``image_suffix`` in the label file name.
        split_file: the id list inside ``folder`` (``{split}`` replaced by the split), or None to list ``image_dir``.
        split_dirs: ``(split, folder name)`` pairs for ``{split}``; other splits are used as written.
        class_file: the class file inside ``folder`` (the synthetic benchmark's ``classnames.txt``), or None for
            the shipped ``segclip/data/classnames/<name>.txt``.
        suite: one of the field's benchmarks (``segclip benchmark --datasets all``); the synthetic benchmark is not.
        num_classes: classes after the label mapping.
        reduce_zero_label: raw 0 -> 255 and ``c`` -> ``c - 1`` (mmsegmentation's ``reduce_zero_label``).
        val_size: the standard number of validation images.
        label_mapping: the encoding in words, for result files.
        prepare: how to make the files, for messages.
        raw_ignore: raw label values that mean ignore (255; PC-459: 459 and 65535; ADE-847: 65535).
        list_labels: without a split file, list the label folder (CAT-Seg's ``load_sem_seg`` pairs each label
            with its image) instead of the image folder.
    """

    name: str
    folder: str
    image_dir: str
    label_dir: str
    image_suffix: str
    label_suffix: str
    split_file: str | None
    num_classes: int
    reduce_zero_label: bool
    val_size: int
    label_mapping: str
    prepare: str
    split_dirs: tuple[tuple[str, str], ...] = field(default=())
    class_file: str | None = None
    suite: bool = True
    raw_ignore: tuple[int, ...] = (IGNORE_INDEX,)
    list_labels: bool = False

    @property
    def ignore_index(self) -> int:
        """The value of ignored pixels in the labels read: 255, or 65535 for more than 255 classes."""
        return IGNORE_INDEX if self.num_classes <= 255 else WIDE_IGNORE_INDEX

    def split_dir(self, split: str) -> str:
        """The folder name standing for ``split`` in ``image_dir`` / ``label_dir``."""
        return dict(self.split_dirs).get(split, split)


_VOC12 = ("Download VOCtrainval_11-May-2012.tar from the PASCAL VOC site and extract it into the data root so that "
          "VOCdevkit/VOC2012 holds JPEGImages, SegmentationClass and ImageSets/Segmentation (no conversion needed).")
_CONTEXT = ("Download VOCtrainval_03-May-2010.tar (extract it into the data root: VOCdevkit/VOC2010) and "
            "trainval_merged.json, then run `segclip prepare pascal_context --devkit DATA_ROOT/VOCdevkit --json "
            "trainval_merged.json`.")
_COCO = ("Download COCO val2017 images into coco_stuff164k/images/val2017 and stuffthingmaps_trainval2017.zip into "
         "coco_stuff164k/annotations, then run `segclip prepare {} --root DATA_ROOT/coco_stuff164k`.")
_CITY = ("Download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip into the data root's cityscapes folder, "
         "then run `segclip prepare cityscapes --root DATA_ROOT/cityscapes`.")
_PC459 = ("Download VOCtrainval_03-May-2010.tar (extract it into the data root: VOCdevkit/VOC2010) and the 459-class "
          "trainval.tar.gz of PASCAL Context (extract it into VOCdevkit/VOC2010: trainval/*.mat and labels.txt), then "
          "run `segclip prepare pc459 --root DATA_ROOT/VOCdevkit/VOC2010` (CAT-Seg's prepare_pascal_context_459.py).")
_ADE847 = ("Download ADE20K_2021_17_01 (the full ADE20K, with index_ade20k.pkl) and extract it into the data root, "
           "then run `segclip prepare ade847 --root DATA_ROOT/ADE20K_2021_17_01` (CAT-Seg's prepare_ade20k_full.py).")

_ADE = ("Download ADEChallengeData2016.zip and extract it into the data root's ade folder so that "
        "ade/ADEChallengeData2016 holds images and annotations (no conversion needed).")

SPECS: dict[str, BenchmarkSpec] = {s.name: s for s in (
    BenchmarkSpec("voc21", "VOCdevkit/VOC2012", "JPEGImages", "SegmentationClass", ".jpg", ".png",
                  "ImageSets/Segmentation/{split}.txt", 21, False, 1449,
                  "palette indices 0..20 (0 = background, a class), 255 = boundary (ignored)", _VOC12),
    BenchmarkSpec("context60", "VOCdevkit/VOC2010", "JPEGImages", "SegmentationClassContext", ".jpg", ".png",
                  "ImageSets/SegmentationContext/{split}.txt", 60, False, 5104,
                  "0..59 as written by the converter (0 = background, a class)", _CONTEXT),
    BenchmarkSpec("coco_object", "coco_stuff164k", "images/{split}", "annotations/{split}", ".jpg",
                  "_instanceTrainIds.png", None, 81, False, 5000,
                  "instanceTrainIds: 0 = background (stuff and unlabelled), 1..80 = things",
                  _COCO.format("coco_object"),
                  (("val", "val2017"), ("train", "train2017"))),
    BenchmarkSpec("voc20", "VOCdevkit/VOC2012", "JPEGImages", "SegmentationClass", ".jpg", ".png",
                  "ImageSets/Segmentation/{split}.txt", 20, True, 1449,
                  "reduce_zero_label: background 0 -> 255, c -> c - 1; 255 = boundary (ignored)", _VOC12),
    BenchmarkSpec("context59", "VOCdevkit/VOC2010", "JPEGImages", "SegmentationClassContext", ".jpg", ".png",
                  "ImageSets/SegmentationContext/{split}.txt", 59, True, 5104,
                  "reduce_zero_label: background 0 -> 255, c -> c - 1", _CONTEXT),
    BenchmarkSpec("coco_stuff", "coco_stuff164k", "images/{split}", "annotations/{split}", ".jpg",
                  "_labelTrainIds.png", None, 171, False, 5000,
                  "labelTrainIds 0..170 (things then stuff), 255 = unlabelled (ignored)", _COCO.format("coco_stuff"),
                  (("val", "val2017"), ("train", "train2017"))),
    BenchmarkSpec("cityscapes", "cityscapes", "leftImg8bit/{split}", "gtFine/{split}", "_leftImg8bit.png",
                  "_gtFine_labelTrainIds.png", None, 19, False, 500,
                  "labelTrainIds 0..18, 255 = void (ignored)", _CITY),
    BenchmarkSpec("ade20k", "ade/ADEChallengeData2016", "images/{split}", "annotations/{split}", ".jpg", ".png",
                  None, 150, True, 2000, "reduce_zero_label: 0 (other) -> 255, c -> c - 1", _ADE,
                  (("val", "validation"), ("train", "training"))),
    BenchmarkSpec("pc459", "VOCdevkit/VOC2010", "JPEGImages", "annotations_detectron2/pc459_{split}", ".jpg", ".tif",
                  None, 459, False, 5104, "16-bit TIFF: LabelMap - 1 = 0..458; 459 (CAT-Seg's ignore_label) and 65535 "
                  "(raw 0 wrapped) are ignored", _PC459, raw_ignore=(459, WIDE_IGNORE_INDEX), list_labels=True),
    BenchmarkSpec("ade847", "ADE20K_2021_17_01", "images_detectron2/{split}", "annotations_detectron2/{split}", ".jpg",
                  ".tif", None, 847, False, 2000, "16-bit TIFF: train ids 0..846, 65535 = every other object (ignored)",
                  _ADE847, (("val", "validation"), ("train", "training")), raw_ignore=(WIDE_IGNORE_INDEX,),
                  list_labels=True),
    BenchmarkSpec("synthetic", ".", "VOCdevkit/VOC2010/JPEGImages", "VOCdevkit/VOC2010/SegmentationClassContext",
                  ".jpg", ".png", "VOCdevkit/VOC2010/ImageSets/SegmentationContext/{split}.txt", len(SYNTHETIC_CLASSES),
                  True, SYNTHETIC_VAL, "raw c + 1 -> class c, raw 0 ignored (PASCAL Context 59's encoding)",
                  "It is generated on first use (segclip.data.synthetic.generate_benchmark); delete the folder to "
                  "regenerate it.", class_file="classnames.txt", suite=False),
)}
BENCHMARKS: tuple[str, ...] = tuple(name for name, spec in SPECS.items() if spec.suite)  # the field's column order
ALIASES = {"coco_stuff164k": "coco_stuff", "city_scapes": "cityscapes", "ade": "ade20k", "context459": "pc459",
           "pascal_context_459": "pc459", "ade20k_847": "ade847", "ade20k_full": "ade847"}
SYNTHETIC_SEED = 0
# labelTrainIds values that only the stuffthingmap's 182-id order (0..181) holds.
COCO_RAW_ORDER_VALUES = range(171, 182)
COCO_ORDER_SAMPLES = 16  # label maps :meth:`BenchmarkDataset.validate` scans for them


def canonical_name(name: str) -> str:
    """The benchmark name for ``name`` or one of its aliases (``coco_stuff164k``, ``city_scapes``, ``ade``).

    Raises:
        ConfigError: unknown name (the message lists the known ones).

    Example:
        >>> canonical_name("coco_stuff164k")
        'coco_stuff'
    """
    name = ALIASES.get(name, name)
    if name not in SPECS:
        raise ConfigError(f"Unknown dataset {name!r}; choose from {', '.join(SPECS)}.")
    return name


def label_names(name: str) -> list[str]:
    """The dataset's own class names in label order (mmsegmentation's names), for tables.

    Example:
        >>> label_names("voc21")[:2], len(label_names("coco_stuff"))
        (['background', 'aeroplane'], 171)
    """
    name = canonical_name(name)
    if name == "synthetic":
        return list(SYNTHETIC_CLASSES)
    text = resources.files("segclip.data").joinpath("classnames", f"{name}_labels.txt")
    return text.read_text(encoding="utf-8").splitlines()


def _list_images(folder: Path, suffix: str) -> list[str]:
    """Paths relative to ``folder`` of the files whose name ends with ``suffix``, recursively, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        rel = Path(dirpath).relative_to(folder)
        found.extend((rel / name).as_posix() for name in filenames if name.endswith(suffix))
    return sorted(found)


class BenchmarkDataset(Dataset):
    """One benchmark in mmsegmentation's layout, checked when constructed (before any model work).

    Files are checked to exist for every listed id; the image count is compared with the standard validation size
    (a warning through ``logging`` when it differs); label values are checked when a label is read (every
    ``__getitem__``; :meth:`validate` reads a few up front).

    Args:
        name: a benchmark name (:data:`BENCHMARKS`) or alias.
        data_root: folder laid out as mmsegmentation's ``data/`` (holding ``VOCdevkit``, ``coco_stuff164k``, ...).
        root: this dataset's own folder (e.g. ``.../VOCdevkit/VOC2012``); overrides ``data_root``.
        split: ``"val"`` (default) or another split of the layout.
        limit: keep only the first ``limit`` images (only those are checked).
        class_file: a class file in the SCLIP format (:func:`~segclip.data.queries.read_query_file`) to use
            instead of the shipped one; it must have one line per class.

    Attributes:
        ids: image ids in order (file names without the image suffix).
        class_names: per class, its query line (names joined by ``", "``).
        queries: every query name, and ``query_to_class`` the class of each.
        label_names: the dataset's own class names.
        num_classes: classes after the label mapping; labels use 255 for ignore.
        description: a dict for result files (name, root, split, images, label mapping, class file, ...).

    Raises:
        ConfigError: unknown name, neither root given, or ``limit`` below 1.
        DataError: the folder, a sub-folder, the split file or listed files are missing (the message names the
            file and how to prepare it), no images, duplicate ids, or a class file with the wrong number of lines.

    Example:
        >>> data = BenchmarkDataset("voc21", data_root="data")  # doctest: +SKIP
        >>> sample = data[0]  # doctest: +SKIP
        >>> sample["image"].shape, sample["label"].dtype  # doctest: +SKIP
        ((366, 500, 3), dtype('uint8'))
    """

    def __init__(self, name: str, data_root: str | Path | None = None, root: str | Path | None = None,
                 split: str = "val", limit: int | None = None, class_file: str | Path | None = None):
        self.spec = spec = SPECS[canonical_name(name)]
        self.name, self.split, self.num_classes = spec.name, split, spec.num_classes
        self.ignore_index = spec.ignore_index
        if limit is not None and limit < 1:
            raise ConfigError(f"limit must be at least 1, got {limit}")
        if root is None and data_root is None:
            raise ConfigError(f"{spec.name} needs a data root (holding {spec.folder}) or its own root folder.")
        self.root = Path(root) if root is not None else Path(data_root) / spec.folder
        if not self.root.is_dir():
            raise DataError(f"{spec.name}: {self.root} does not exist. {spec.prepare}")
        sub = spec.split_dir(split)
        self.image_dir = self.root / spec.image_dir.format(split=sub)
        self.label_dir = self.root / spec.label_dir.format(split=sub)
        for required in (self.image_dir, self.label_dir):
            if not required.is_dir():
                raise DataError(f"{spec.name} is incomplete: {required} does not exist. {spec.prepare}")
        if spec.split_file is not None:
            self.source = self.root / spec.split_file.format(split=split)
            if not self.source.is_file():
                raise DataError(f"{spec.name} is incomplete: the split file {self.source} does not exist. "
                                f"{spec.prepare}")
            try:
                lines = self.source.read_text(encoding="utf-8-sig").splitlines()  # a byte-order mark dropped
            except (OSError, UnicodeDecodeError) as err:
                raise DataError(f"{spec.name}: cannot read the split file {self.source} ({err}). {spec.prepare}") \
                    from None
            relative = [line.strip() + spec.image_suffix for line in lines if line.strip()]
        elif spec.list_labels:
            self.source = self.label_dir
            relative = [r[: -len(spec.label_suffix)] + spec.image_suffix
                        for r in _list_images(self.label_dir, spec.label_suffix)]
        else:
            self.source = self.image_dir
            relative = _list_images(self.image_dir, spec.image_suffix)
        if not relative:
            looked = spec.label_suffix if spec.list_labels and spec.split_file is None else spec.image_suffix
            raise DataError(f"{spec.name}: {self.source} lists no images (looked for *{looked}). "
                            f"{spec.prepare}")
        self.total = len(relative)
        if split == "val" and self.total != spec.val_size:
            logger.warning("%s: %s lists %d images; the standard val set has %d", spec.name, self.source,
                           self.total, spec.val_size)
        relative = relative[:limit] if limit is not None else relative
        self._relative = relative
        self.ids = [Path(r).name[: -len(spec.image_suffix)] for r in relative]
        if len(set(self.ids)) != len(self.ids):
            seen: set[str] = set()
            duplicate = next(i for i in self.ids if i in seen or seen.add(i))
            raise DataError(f"{spec.name}: image id {duplicate!r} occurs twice in {self.source}; ids must be unique.")
        for kind, paths in (("images", self.image_paths), ("label maps", self.label_paths)):
            missing = [p for p in paths if not p.is_file()]
            if missing:
                shown = ", ".join(str(p) for p in missing[:3]) + (", ..." if len(missing) > 3 else "")
                raise DataError(f"{spec.name}: {len(missing)} of {len(paths)} {kind} listed in {self.source} are "
                                f"missing (first: {shown}). {spec.prepare}")
        if class_file is not None:
            self.class_file = Path(class_file)
        elif spec.class_file is not None:
            self.class_file = self.root / spec.class_file
            if not self.class_file.is_file():
                raise DataError(f"{spec.name} is incomplete: the class file {self.class_file} does not exist. "
                                f"{spec.prepare}")
        else:
            self.class_file = benchmark_class_file(spec.name)
        self.queries, self.query_to_class, self.class_names = read_query_file(
            self.class_file, allow_duplicates=class_file is None)  # the shipped COCO-Object file repeats 'bed'
        if len(self.class_names) != spec.num_classes:
            raise DataError(f"The class file {self.class_file} has {len(self.class_names)} lines but {spec.name} "
                            f"has {spec.num_classes} classes; write one line per class, in label order.")
        self.label_names = label_names(spec.name)

    @property
    def image_paths(self) -> list[Path]:
        """Image files, in order."""
        return [self.image_dir / r for r in self._relative]

    @property
    def label_paths(self) -> list[Path]:
        """Label files, in order."""
        suffix = len(self.spec.image_suffix)
        return [self.label_dir / (r[:-suffix] + self.spec.label_suffix) for r in self._relative]

    @property
    def description(self) -> dict[str, Any]:
        """What a result file records about the data."""
        spec = self.spec
        return {"name": spec.name, "root": str(self.root), "split": self.split, "images": len(self.ids),
                "images_listed": self.total, "standard_val_images": spec.val_size, "source": str(self.source),
                "image_dir": str(self.image_dir), "label_dir": str(self.label_dir),
                "label_suffix": spec.label_suffix, "num_classes": spec.num_classes, "ignore_index": self.ignore_index,
                "reduce_zero_label": spec.reduce_zero_label, "label_mapping": spec.label_mapping,
                "class_file": str(self.class_file), "class_names": list(self.class_names),
                "label_names": list(self.label_names)}

    def __len__(self) -> int:
        return len(self.ids)

    def read_label(self, index: int) -> Any:
        """The ``(H, W)`` label of image ``index`` in the dataset's train-id encoding: uint8 with 255 = ignore, or
        uint16 with 65535 = ignore for PC-459 and ADE-847 (:attr:`ignore_index`).

        Raises:
            DataError: unreadable, several channels, values outside the dataset's range (the message names the
                file and the values), or a COCO-Stuff map in the stuffthingmap's 182-id order.
        """
        path = self.label_paths[index]
        spec = self.spec
        try:
            return read_label(path, self.num_classes, spec.reduce_zero_label, ignore_values=spec.raw_ignore,
                              ignore_index=self.ignore_index)
        except DataError as error:
            if spec.name == "coco_stuff":
                check_coco_stuff_order(path)
            raise DataError(f"{self.name}: {error}. {spec.prepare}") from None

    def __getitem__(self, index: int) -> dict[str, Any]:
        """``{"id": str, "image": (H, W, 3) uint8 RGB, "label": (H, W) uint8}``.

        Raises:
            ImageError: the image cannot be read.
            DataError: the label cannot be read, is out of range, or its size differs from the image's.
        """
        image = read_image(self.image_paths[index])
        label = self.read_label(index)
        if label.shape != image.shape[:2]:
            raise DataError(f"{self.name}: label map {self.label_paths[index]} is {label.shape[1]}x{label.shape[0]} "
                            f"(WxH) but its image is {image.shape[1]}x{image.shape[0]}. {self.spec.prepare}")
        return {"id": self.ids[index], "image": image, "label": label}

    def validate(self, samples: int = 2) -> None:
        """Read the first ``samples`` images and labels (values in range, sizes equal), failing early; for
        COCO-Stuff, also the label order of the first 16 maps (:func:`check_coco_stuff_order`).

        Raises:
            ImageError, DataError: as :meth:`__getitem__`.
        """
        for index in range(min(samples, len(self))):
            self[index]
        if self.name == "coco_stuff":  # the label order, from more maps than the samples (a value histogram each)
            for path in self.label_paths[:COCO_ORDER_SAMPLES]:
                check_coco_stuff_order(path)


def check_coco_stuff_order(path: str | Path) -> None:
    """Refuse a COCO-Stuff ``labelTrainIds`` map written in the stuffthingmap's 182-id order.

    Two 0-based orders circulate: mmsegmentation's ``labelTrainIds`` (the 171 used COCO-Stuff ids renumbered
    0..170: 80 things, then 91 stuff) and the raw ``stuffthingmaps_trainval2017`` values (COCO category id - 1:
    0..181 with 11 unused ids; what a copy of the stuffthingmaps under the ``_labelTrainIds`` name holds). Mixed,
    every class after the first unused id is shifted and scores fall to about 1 %. The raw order's telltale is a
    value in 171..181 (the last eleven stuff classes, e.g. ``wall-other``, ``wood``, ``window-other``), which the
    0..170 order cannot hold.

    Raises:
        DataError: the map holds a value in 171..181 (the message names the order and the fix).

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> path = Path(tempfile.mkdtemp()) / "000000000139_labelTrainIds.png"
        >>> Image.fromarray(np.array([[0, 180]], np.uint8)).save(path)
        >>> check_coco_stuff_order(path)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        segclip.errors.DataError: ... the stuffthingmap's 182-id order ...
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            values = np.unique(np.asarray(image))
    except OSError:
        return
    raw = sorted(int(v) for v in values if int(v) in COCO_RAW_ORDER_VALUES)
    if raw:
        raise DataError(
            f"coco_stuff: {path} holds values {raw[:5]} (171..181): it is in the stuffthingmap's 182-id order "
            "(COCO category id - 1, 0..181), not mmsegmentation's labelTrainIds order (0..170); convert the raw "
            "stuffthingmaps with `segclip prepare coco_stuff --root DATA_ROOT/coco_stuff164k --overwrite`.")


def benchmark_dataset(name: str, data_root: str | Path | None = None,
                      roots: Mapping[str, str | Path] | None = None, **kwargs: Any) -> BenchmarkDataset:
    """A benchmark from a data root, with ``roots[name]`` (any alias) overriding its folder.

    Args:
        name: benchmark name or alias.
        data_root: the mmsegmentation-style ``data/`` folder.
        roots: per-dataset folders, ``{name: folder}``.
        kwargs: ``split``, ``limit``, ``class_file`` (see :class:`BenchmarkDataset`).

    Returns:
        The dataset.

    Raises:
        ConfigError, DataError: as :class:`BenchmarkDataset`.
    """
    name = canonical_name(name)
    overrides = {canonical_name(k): v for k, v in (roots or {}).items()}
    return BenchmarkDataset(name, data_root=data_root, root=overrides.get(name), **kwargs)


def dataset_root(name: str, data_root: str | Path | None) -> Path:
    """The folder of dataset ``name``: ``data_root/<its folder>``, or ``data_root`` itself when that already is
    the dataset's folder (e.g. ``VOCdevkit`` or ``VOC2010`` given for PASCAL Context); the synthetic benchmark's
    default is ``<segclip cache>/synthetic/seed0-n200``, generated on first use.

    Raises:
        ConfigError: no ``data_root`` for a dataset that needs one.
    """
    spec = SPECS[canonical_name(name)]
    if spec.name == "synthetic":
        root = Path(data_root) if data_root is not None else \
            cache_dir() / "synthetic" / f"seed{SYNTHETIC_SEED}-n{SYNTHETIC_VAL}"
        generate_benchmark(root, n_val=SYNTHETIC_VAL, seed=SYNTHETIC_SEED)
        return root
    if data_root is None:
        raise ConfigError(f"{spec.name} needs --data-root: the folder laid out as mmsegmentation's data/ (holding "
                          f"{spec.folder}).")
    data_root = Path(data_root)
    parts = Path(spec.folder).parts
    for depth in range(len(parts)):  # data/ given, then e.g. VOCdevkit given for VOCdevkit/VOC2010
        candidate = data_root.joinpath(*parts[depth:])
        if candidate.is_dir():
            return candidate
    if data_root.name == parts[-1] and data_root.is_dir():  # the dataset's own folder given
        return data_root
    return data_root / spec.folder


@dataclass(frozen=True)
class DatasetStatus:
    """Whether a benchmark is present and readable.

    Attributes:
        name: the benchmark.
        root: the folder looked at.
        present: the folder exists.
        valid: the layout is complete and the first labels read within range.
        images: images listed (None when not valid).
        expected: the standard validation size.
        message: what is wrong and how to fix it, or a note (count differing from the standard).
    """

    name: str
    root: str
    present: bool
    valid: bool
    images: int | None
    expected: int
    message: str


def find_datasets(data_root: str | Path | None, roots: Mapping[str, str | Path] | None = None,
                  names: Sequence[str] = BENCHMARKS, split: str = "val", samples: int = 1) -> dict[str, DatasetStatus]:
    """Which benchmarks are present under a data root and valid (used by ``prepare --check`` and ``benchmark``).

    Args:
        data_root: the mmsegmentation-style ``data/`` folder (None: only ``roots``).
        roots: per-dataset folders overriding ``data_root``.
        names: benchmarks to look for, in order.
        split: the split to check.
        samples: labels read per dataset to check their values.

    Returns:
        ``{name: DatasetStatus}`` in the order of ``names``.

    Example:
        >>> status = find_datasets("/nonexistent")["voc21"]
        >>> status.present, status.valid
        (False, False)
    """
    statuses = {}
    overrides = {canonical_name(k): v for k, v in (roots or {}).items()}
    for name in (canonical_name(n) for n in names):
        spec = SPECS[name]
        root = overrides.get(name)
        folder = Path(root) if root is not None else (Path(data_root) / spec.folder if data_root is not None else None)
        if folder is None or not folder.is_dir():
            where = "no data root given" if folder is None else f"{folder} does not exist"
            statuses[name] = DatasetStatus(name, str(folder or ""), False, False, None, spec.val_size,
                                           f"{where}. {spec.prepare}")
            continue
        try:
            dataset = BenchmarkDataset(name, root=folder, split=split)
            dataset.validate(samples)
        except SegclipError as error:
            statuses[name] = DatasetStatus(name, str(folder), True, False, None, spec.val_size, str(error))
            continue
        note = "" if dataset.total == spec.val_size or split != "val" else (
            f"{dataset.total} images listed; the standard val set has {spec.val_size}")
        statuses[name] = DatasetStatus(name, str(folder), True, True, dataset.total, spec.val_size, note)
    return statuses
