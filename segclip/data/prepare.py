"""Preparing the benchmarks without mmcv or the Detail API build: the files mmsegmentation's converters write.

Each converter is a config -> run -> result triple; every label PNG is encoded by Pillow with its defaults (as the
reference converters save them), written atomically, and never over an existing file without ``overwrite``.

- PASCAL Context (:func:`run_prepare_pascal_context`): what ``tools/dataset_converters/pascal_context.py`` writes
  with the Detail API (``zhanghang1989/detail-api``, ``PythonAPI/detail``) from ``trainval_merged.json``. The Detail
  API keys images by ``image_id`` and annotations by ``id`` (a repeated key keeps its first position and its last
  value); an image's class mask starts at 0 and paints each of its annotations' RLE masks (pycocotools) with the
  category id, in that order, later ones over earlier ones; ``Detail(json, phase)`` keeps the images whose
  ``phase`` is exactly ``train`` (or ``val``), with all their annotations, annotated or not. The converter maps
  the 60 category ids it knows (0 and the 59 classes) to their rank among them (``np.digitize`` on the sorted
  ids: 0 -> 0, 2 (aeroplane) -> 1, ..., 458 (wood) -> 59), fails on any other id (here: a DataError naming the
  image), saves ``<file_name with 'jpg' replaced by 'png'>`` as an L-mode PNG, and writes the sorted ids of each
  phase to ``ImageSets/SegmentationContext/{train,val}.txt`` (train first, so a file of both phases ends as val).
  On the real file: 4,996 train and 5,104 val ids.
- COCO-Stuff 164k (:func:`run_prepare_coco_stuff`): ``coco_stuff164k.py``: stuffthingmap value ``v`` (0..181, 255)
  -> labelTrainIds (the 171 used ids to 0..170 in order, 255 kept), ``<stem>_labelTrainIds.png``.
- COCO-Object (:func:`run_prepare_coco_object`): SCLIP's / NACLIP's ``datasets/cvt_coco_object.py`` (from
  GroupViT): thing ids (0..90) to their train id + 1 (1..80), stuff ids (91..181) and 255 to 0,
  ``<stem>_instanceTrainIds.png``.
  In both COCO converters a value outside the table (the 11 unused ids, 182..254; absent from the real maps)
  is left unchanged, as the reference's copy-then-assign leaves it (a warning names the file).
- Cityscapes (:func:`run_prepare_cityscapes`): ``*_gtFine_labelTrainIds.png`` next to each ``*_gtFine_labelIds.png``
  by cityscapesscripts' ``labels.py`` id -> trainId table (255 for the ignored ids). mmseg's converter draws the
  polygons with ``json2labelImg(..., 'trainIds')``; the labelIds PNGs were drawn from the same polygons by the
  same code, so mapping them gives the same pixels.

:func:`run_check` reports which of the eight benchmarks are present and valid under a data root.
"""
from __future__ import annotations

import io
import json
import logging
import os
import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from segclip.config import Config, option
from segclip.data.benchmarks import BENCHMARKS, DatasetStatus, find_datasets
from segclip.errors import ConfigError, DataError, OutputError
from segclip.io import atomic_write_bytes, atomic_write_text

logger = logging.getLogger(__name__)

# The 60 Detail category ids PASCAL Context keeps (0 = background), sorted: a label is the rank of its id here.
CONTEXT_CATEGORY_IDS = np.array(sorted((
    0, 2, 259, 260, 415, 324, 9, 258, 144, 18, 19, 22, 23, 397, 25, 284, 158, 159, 416, 33, 162, 420, 454, 295, 296,
    427, 44, 45, 46, 308, 59, 440, 445, 31, 232, 65, 354, 424, 68, 326, 72, 458, 34, 207, 80, 355, 85, 347, 220, 349,
    360, 98, 187, 104, 105, 366, 189, 368, 113, 115)))
# COCO-Stuff ids (0-based COCO category ids of the stuffthingmaps) that no category uses.
COCO_UNUSED_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
COCO_USED_IDS = tuple(i for i in range(182) if i not in COCO_UNUSED_IDS)  # 80 things (< 91), then 91 stuff
# cityscapesscripts labels.py: id -> trainId of the 19 evaluated classes; every other id (0..33) -> 255.
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                        26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
CITYSCAPES_MAX_ID = 33


def png_bytes(label: np.ndarray) -> bytes:
    """An ``(H, W)`` uint8 array as the bytes of an L-mode PNG, encoded by Pillow with its default settings.

    These are the bytes ``Image.fromarray(label).save(path)`` writes (the reference converters' writer).

    Example:
        >>> png_bytes(np.zeros((2, 3), np.uint8))[:8]
        b'\\x89PNG\\r\\n\\x1a\\n'
    """
    if label.dtype != np.uint8 or label.ndim != 2:
        raise ValueError(f"expected an (H, W) uint8 label, got {label.dtype} {label.shape}")
    buffer = io.BytesIO()
    Image.fromarray(label).save(buffer, format="PNG")
    return buffer.getvalue()


def _refuse_existing(paths: Iterable[Path], overwrite: bool, what: str) -> None:
    if overwrite:
        return
    existing = [p for p in dict.fromkeys(paths) if p.exists()]
    if existing:
        shown = ", ".join(str(p) for p in existing[:3]) + (", ..." if len(existing) > 3 else "")
        raise OutputError(f"{len(existing)} {what} already exist (first: {shown}); pass --overwrite to replace them.")


# ---------------------------------------------------------------------------------------------- PASCAL Context

@dataclass(frozen=True)
class PreparePascalContextConfig(Config):
    """Options of ``segclip prepare pascal_context``."""

    devkit: Path = option(help="the VOCdevkit folder (from VOCtrainval_03-May-2010.tar), holding VOC2010")
    json: Path = option(help="trainval_merged.json (PASCAL in Detail's PASCAL Context annotations)")
    out: Path | None = option(None, help="write SegmentationClassContext/ and ImageSets/SegmentationContext/ here "
                                         "instead of DEVKIT/VOC2010 (to read them there, put JPEGImages/ beside)")
    overwrite: bool = option(False, help="replace label PNGs and split files that already exist")

    def __post_init__(self) -> None:
        super().__post_init__()  # field types (segclip.config.Config)
        if not Path(self.json).is_file():
            raise ConfigError(f"--json {self.json} is not a file; download trainval_merged.json (PASCAL in Detail) "
                              "and pass its path.")
        if self.out is None and not (Path(self.devkit) / "VOC2010").is_dir():
            raise ConfigError(f"--devkit {self.devkit} has no VOC2010 folder; extract VOCtrainval_03-May-2010.tar "
                              "and pass the VOCdevkit folder it creates (or --out for another destination).")


@dataclass(frozen=True)
class PreparePascalContextResult:
    """What :func:`run_prepare_pascal_context` wrote.

    Attributes:
        label_dir: the ``SegmentationClassContext`` folder.
        split_files: ``{"train": path, "val": path}``.
        ids: ``{"train": n, "val": n}`` ids listed per split.
        labels_written: label PNGs written (fewer than the ids when file names repeat).
        all_background: images whose label is all background (no annotation, or only category 0).
        duplicate_annotation_ids: annotations replaced by a later one with the same ``id`` (the Detail API keeps
            the last).
    """

    label_dir: Path
    split_files: dict[str, Path]
    ids: dict[str, int]
    labels_written: int
    all_background: int
    duplicate_annotation_ids: int


def _load_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"Cannot read {path} as JSON ({err}); download trainval_merged.json again.") from None
    missing = [k for k in ("images", "annos_segmentation", "categories") if not isinstance(data, dict) or k not in data]
    if missing:
        raise DataError(f"{path} has no {', '.join(missing)}; it is not PASCAL in Detail's trainval_merged.json.")
    return data


def detail_class_masks(data: Mapping[str, Any], phase: str) -> Iterable[tuple[dict[str, Any], np.ndarray]]:
    """The Detail API's class masks of one phase: ``(image record, (H, W) float64 category-id mask)`` per image.

    Images are keyed by ``image_id`` and annotations by ``id`` (first position, last value, as the Detail API's
    dicts); an image is kept if its ``phase`` equals ``phase``; its annotations paint their decoded RLE masks with
    their ``category_id`` in annotation order.

    Raises:
        DataError: an annotation names an unknown image or category, its RLE cannot be decoded (uncompressed RLE
            lists included, which the Detail API cannot decode either), or it reaches outside its image.
    """
    from pycocotools import mask as mask_utils

    images = {img["image_id"]: img for img in data["images"]}
    annotations = {ann["id"]: ann for ann in data["annos_segmentation"]}
    categories = {cat["category_id"] for cat in data["categories"]}
    by_image: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for ann in annotations.values():
        if ann["image_id"] not in images or ann["category_id"] not in categories:
            unknown = "image_id" if ann["image_id"] not in images else "category_id"
            raise DataError(f"Annotation {ann['id']} names {unknown} {ann[unknown]}, which the file does not define; "
                            "the annotation file is corrupt (download trainval_merged.json again).")
        by_image[ann["image_id"]].append(ann)
    for image_id, img in images.items():
        if img["phase"] != phase:
            continue
        height, width = int(img["height"]), int(img["width"])
        mask = np.zeros((height, width))
        for ann in by_image.get(image_id, []):
            rle = ann["segmentation"]
            if not isinstance(rle, dict) or not isinstance(rle.get("counts"), (str, bytes)):
                raise DataError(f"Annotation {ann['id']} (image {img['file_name']}) is not a compressed RLE "
                                "({'size': [h, w], 'counts': str}); the Detail API cannot read it either.")
            try:
                with warnings.catch_warnings():  # pycocotools 2.0.x under numpy 2: a copy-keyword deprecation
                    warnings.simplefilter("ignore", DeprecationWarning)
                    decoded = mask_utils.decode({"size": list(rle["size"]), "counts": rle["counts"]})
            except (TypeError, ValueError) as err:
                raise DataError(f"Cannot decode the RLE of annotation {ann['id']} (image {img['file_name']}): "
                                f"{err}.") from None
            rows, cols = np.nonzero(decoded)
            if rows.size and (rows.max() >= height or cols.max() >= width):
                raise DataError(f"Annotation {ann['id']} reaches outside its image {img['file_name']} "
                                f"({width}x{height}); the annotation file is corrupt.")
            mask[rows, cols] = ann["category_id"]
        yield img, mask


def context_labels(mask: np.ndarray, file_name: str = "image") -> np.ndarray:
    """A Detail category-id mask to PASCAL Context labels 0..59 (the rank of the id among the 60 kept).

    Raises:
        DataError: the mask holds an id outside the 60 (the reference converter's assertion).

    Example:
        >>> context_labels(np.array([[0.0, 2.0], [458.0, 9.0]]))
        array([[ 0,  1],
               [59,  2]], dtype=uint8)
    """
    values = np.unique(mask)
    unknown = values[~np.isin(values, CONTEXT_CATEGORY_IDS)]
    if unknown.size:
        raise DataError(f"The mask of {file_name} holds category ids {unknown[:10].astype(int).tolist()} outside "
                        "PASCAL Context's 60; this is not the 59-class trainval_merged.json.")
    return np.searchsorted(CONTEXT_CATEGORY_IDS, mask).astype(np.uint8)


def run_prepare_pascal_context(config: PreparePascalContextConfig) -> PreparePascalContextResult:
    """Write PASCAL Context's label PNGs and split files from ``trainval_merged.json`` (module docstring).

    Args:
        config: the devkit, the JSON, the destination and ``overwrite``.

    Returns:
        What was written.

    Raises:
        DataError: the JSON is unreadable or inconsistent, or holds category ids outside the 60.
        OutputError: outputs exist without ``overwrite``, or cannot be written.

    Example:
        >>> import json, tempfile
        >>> from pycocotools import mask as mask_utils
        >>> folder = Path(tempfile.mkdtemp())
        >>> rle = mask_utils.encode(np.asfortranarray(np.ones((2, 3), np.uint8)))
        >>> data = {"images": [{"file_name": "2008_000002.jpg", "image_id": 2008000002, "height": 2, "width": 3,
        ...                     "phase": "val"}], "categories": [{"category_id": 2, "name": "aeroplane"}],
        ...         "annos_segmentation": [{"id": 1, "image_id": 2008000002, "category_id": 2,
        ...                                 "segmentation": {"size": [2, 3], "counts": rle["counts"].decode()}}]}
        >>> _ = (folder / "trainval_merged.json").write_text(json.dumps(data))
        >>> config = PreparePascalContextConfig(devkit=folder, json=folder / "trainval_merged.json", out=folder)
        >>> run_prepare_pascal_context(config).ids
        {'train': 0, 'val': 1}
        >>> (folder / "ImageSets/SegmentationContext/val.txt").read_text()
        '2008_000002\\n'
    """
    base = Path(config.out) if config.out is not None else Path(config.devkit) / "VOC2010"
    label_dir = base / "SegmentationClassContext"
    split_dir = base / "ImageSets" / "SegmentationContext"
    data = _load_json(Path(config.json))
    duplicates = len(data["annos_segmentation"]) - len({ann["id"] for ann in data["annos_segmentation"]})
    phases = ("train", "val")
    targets = [label_dir / str(img["file_name"]).replace("jpg", "png") for img in
               {img["image_id"]: img for img in data["images"]}.values() if img["phase"] in phases]
    split_files = {phase: split_dir / f"{phase}.txt" for phase in phases}
    _refuse_existing([*targets, *split_files.values()], config.overwrite, "PASCAL Context outputs")
    if Path(config.json).resolve() in {p.resolve() for p in targets}:
        raise OutputError(f"The output {config.json} would replace the input JSON; choose another --out.")
    counts, written, empty = {}, set(), 0
    for phase in phases:
        ids = []
        for img, mask in detail_class_masks(data, phase):
            file_name = str(img["file_name"])
            empty += int(not mask.any())
            target = label_dir / file_name.replace("jpg", "png")
            atomic_write_bytes(target, png_bytes(context_labels(mask, file_name)))
            written.add(target)
            ids.append(os.path.splitext(os.path.basename(file_name))[0])
        atomic_write_text(split_files[phase], "".join(f"{i}\n" for i in sorted(ids)))
        counts[phase] = len(ids)
        logger.info("PASCAL Context %s: %d label maps written to %s", phase, len(ids), label_dir)
    return PreparePascalContextResult(label_dir, split_files, counts, len(written), empty, duplicates)


# ---------------------------------------------------------------------------------------------- COCO

def coco_stuff_lut() -> np.ndarray:
    """The stuffthingmap -> labelTrainIds table (256 entries; values outside the table map to themselves).

    Example:
        >>> lut = coco_stuff_lut()
        >>> int(lut[0]), int(lut[12]), int(lut[91]), int(lut[181]), int(lut[255]), int(lut[11])
        (0, 11, 80, 170, 255, 11)
    """
    lut = np.arange(256, dtype=np.uint8)
    lut[list(COCO_USED_IDS)] = np.arange(len(COCO_USED_IDS), dtype=np.uint8)
    return lut


def coco_object_lut() -> np.ndarray:
    """The stuffthingmap -> instanceTrainIds table: things to 1..80, stuff and 255 to 0, unused ids to themselves.

    Example:
        >>> lut = coco_object_lut()
        >>> int(lut[0]), int(lut[89]), int(lut[91]), int(lut[255]), int(lut[25])
        (1, 80, 0, 0, 25)
    """
    lut = np.arange(256, dtype=np.uint8)
    for train_id, coco_id in enumerate(COCO_USED_IDS):
        lut[coco_id] = train_id + 1 if coco_id <= 90 else 0
    lut[255] = 0
    return lut


@dataclass(frozen=True)
class PrepareCocoConfig(Config):
    """Options of ``segclip prepare coco_stuff`` and ``segclip prepare coco_object``."""

    root: Path = option(help="the coco_stuff164k folder, holding annotations/<split>/*.png (the stuffthingmaps)")
    splits: tuple[str, ...] = option(("val2017",), help="annotation folders to convert (add train2017 for training)")
    overwrite: bool = option(False, help="replace label PNGs that already exist")

    def __post_init__(self) -> None:
        super().__post_init__()  # field types (segclip.config.Config)
        if not self.splits:
            raise ConfigError("--splits needs at least one annotation folder (e.g. val2017).")
        missing = [s for s in self.splits if not (Path(self.root) / "annotations" / s).is_dir()]
        if missing:
            raise ConfigError(f"{Path(self.root) / 'annotations' / missing[0]} does not exist; extract "
                              "stuffthingmaps_trainval2017.zip into ROOT/annotations (it creates train2017 and "
                              "val2017) or choose --splits that exist.")


@dataclass(frozen=True)
class PrepareLabelsResult:
    """What a label-map converter wrote.

    Attributes:
        written: ``{split: number of label PNGs}``.
        out_dirs: ``{split: folder}``.
        unmapped: files holding values outside the table (left unchanged), with those values.
    """

    written: dict[str, int]
    out_dirs: dict[str, Path]
    unmapped: dict[str, list[int]] = field(default_factory=dict)


_COCO_SIZES = {"val2017": 5000, "train2017": 118287}


def _read_index_png(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            if image.mode not in ("L", "P"):
                raise DataError(f"{path} has mode {image.mode}; expected an 8-bit single-channel label PNG.")
            return np.array(image)
    except OSError as err:
        raise DataError(f"Cannot read the label map {path} ({err}).") from None


def _convert_coco(config: PrepareCocoConfig, lut: np.ndarray, suffix: str) -> PrepareLabelsResult:
    root = Path(config.root)
    jobs = []
    for split in config.splits:
        sources = sorted(p for p in (root / "annotations" / split).glob("*.png") if "TrainIds" not in p.name)
        if not sources:
            raise DataError(f"{root / 'annotations' / split} holds no stuffthingmaps (*.png); extract "
                            "stuffthingmaps_trainval2017.zip there.")
        if split in _COCO_SIZES and len(sources) != _COCO_SIZES[split]:
            logger.warning("%s: %d stuffthingmaps; the full split has %d", root / "annotations" / split,
                           len(sources), _COCO_SIZES[split])
        jobs += [(split, src, src.with_name(src.name.split(".")[0] + suffix)) for src in sources]
    _refuse_existing([target for _, _, target in jobs], config.overwrite, f"*{suffix} files")
    written: dict[str, int] = defaultdict(int)
    unmapped = {}
    used = np.zeros(256, bool)
    used[list(COCO_USED_IDS) + [255]] = True
    for split, source, target in jobs:
        raw = _read_index_png(source)
        outside = np.unique(raw[~used[raw]])
        if outside.size:
            unmapped[str(source)] = outside.tolist()
            logger.warning("%s holds values %s outside the COCO-Stuff ids; left unchanged, as the reference "
                           "converter does", source, outside.tolist())
        atomic_write_bytes(target, png_bytes(lut[raw]))
        written[split] += 1
    return PrepareLabelsResult(dict(written), {s: root / "annotations" / s for s in config.splits}, unmapped)


def run_prepare_coco_stuff(config: PrepareCocoConfig) -> PrepareLabelsResult:
    """Write ``<stem>_labelTrainIds.png`` (0..170, 255) for every stuffthingmap of the chosen splits.

    Args:
        config: the coco_stuff164k root, splits and ``overwrite``; the PNGs go next to the stuffthingmaps.

    Returns:
        What was written.

    Raises:
        DataError: no stuffthingmaps, or an unreadable / multi-channel one.
        OutputError: outputs exist without ``overwrite``, or cannot be written.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> (root / "annotations" / "val2017").mkdir(parents=True)
        >>> Image.fromarray(np.array([[0, 12, 255]], np.uint8)).save(root / "annotations/val2017/000000000139.png")
        >>> run_prepare_coco_stuff(PrepareCocoConfig(root=root)).written
        {'val2017': 1}
        >>> np.array(Image.open(root / "annotations/val2017/000000000139_labelTrainIds.png")).tolist()
        [[0, 11, 255]]
    """
    return _convert_coco(config, coco_stuff_lut(), "_labelTrainIds.png")


def run_prepare_coco_object(config: PrepareCocoConfig) -> PrepareLabelsResult:
    """Write ``<stem>_instanceTrainIds.png`` (0 background, 1..80 things) for every stuffthingmap.

    Args:
        config: as :func:`run_prepare_coco_stuff`.

    Returns:
        What was written.

    Raises:
        DataError, OutputError: as :func:`run_prepare_coco_stuff`.
    """
    return _convert_coco(config, coco_object_lut(), "_instanceTrainIds.png")


# ---------------------------------------------------------------------------------------------- Cityscapes

def cityscapes_lut() -> np.ndarray:
    """The labelIds -> labelTrainIds table (ids 0..33; other entries 255, rejected by the converter).

    Example:
        >>> lut = cityscapes_lut()
        >>> int(lut[7]), int(lut[26]), int(lut[0]), int(lut[33])
        (0, 13, 255, 18)
    """
    lut = np.full(256, 255, np.uint8)
    for label_id, train_id in CITYSCAPES_TRAIN_IDS.items():
        lut[label_id] = train_id
    return lut


@dataclass(frozen=True)
class PrepareCityscapesConfig(Config):
    """Options of ``segclip prepare cityscapes``."""

    root: Path = option(help="the cityscapes folder, holding gtFine/<split>/<city>/*_gtFine_labelIds.png")
    splits: tuple[str, ...] = option(("train", "val"), help="gtFine splits to convert")
    overwrite: bool = option(False, help="replace *_gtFine_labelTrainIds.png files that already exist")

    def __post_init__(self) -> None:
        super().__post_init__()  # field types (segclip.config.Config)
        if not self.splits:
            raise ConfigError("--splits needs at least one gtFine split (e.g. val).")
        missing = [s for s in self.splits if not (Path(self.root) / "gtFine" / s).is_dir()]
        if missing:
            raise ConfigError(f"{Path(self.root) / 'gtFine' / missing[0]} does not exist; extract "
                              "gtFine_trainvaltest.zip into ROOT or choose --splits that exist.")


def run_prepare_cityscapes(config: PrepareCityscapesConfig) -> PrepareLabelsResult:
    """Write ``*_gtFine_labelTrainIds.png`` next to every ``*_gtFine_labelIds.png`` of the chosen splits.

    Args:
        config: the cityscapes root, splits and ``overwrite``.

    Returns:
        What was written.

    Raises:
        DataError: no labelIds files, an unreadable one, or ids above 33.
        OutputError: outputs exist without ``overwrite``, or cannot be written.
    """
    root = Path(config.root)
    jobs = []
    for split in config.splits:
        sources = sorted((root / "gtFine" / split).glob("*/*_gtFine_labelIds.png"))
        if not sources:
            raise DataError(f"{root / 'gtFine' / split} holds no <city>/*_gtFine_labelIds.png; extract "
                            "gtFine_trainvaltest.zip into the cityscapes folder.")
        jobs += [(split, s, s.with_name(s.name[: -len("_labelIds.png")] + "_labelTrainIds.png")) for s in sources]
    _refuse_existing([target for _, _, target in jobs], config.overwrite, "*_gtFine_labelTrainIds.png files")
    lut = cityscapes_lut()
    written: dict[str, int] = defaultdict(int)
    for split, source, target in jobs:
        raw = _read_index_png(source)
        if raw.max(initial=0) > CITYSCAPES_MAX_ID:
            raise DataError(f"{source} holds ids above {CITYSCAPES_MAX_ID} "
                            f"({np.unique(raw[raw > CITYSCAPES_MAX_ID])[:10].tolist()}); it is not a Cityscapes "
                            "labelIds map.")
        atomic_write_bytes(target, png_bytes(lut[raw]))
        written[split] += 1
    return PrepareLabelsResult(dict(written), {s: root / "gtFine" / s for s in config.splits})


# ---------------------------------------------------------------------------------------------- check

@dataclass(frozen=True)
class CheckConfig(Config):
    """Options of ``segclip prepare --check``."""

    data_root: Path = option(help="the data root, laid out as mmsegmentation's data/ folder")
    datasets: tuple[str, ...] = option(BENCHMARKS, help="benchmarks to check")
    samples: int = option(1, help="labels read per dataset to check their values")

    def __post_init__(self) -> None:
        super().__post_init__()  # field types (segclip.config.Config)
        if self.samples < 0:
            raise ConfigError(f"--samples must be at least 0, got {self.samples}.")


@dataclass(frozen=True)
class CheckResult:
    """Per benchmark, whether it is present and valid (:class:`~segclip.data.benchmarks.DatasetStatus`)."""

    statuses: dict[str, DatasetStatus]

    @property
    def valid(self) -> list[str]:
        """The benchmarks ready to run."""
        return [name for name, status in self.statuses.items() if status.valid]


def run_check(config: CheckConfig, roots: Mapping[str, Path] | None = None) -> CheckResult:
    """Which benchmarks are present and valid under ``config.data_root`` (``roots`` override single folders).

    Example:
        >>> run_check(CheckConfig(data_root=Path("/nonexistent"))).valid
        []
    """
    return CheckResult(find_datasets(config.data_root, roots, config.datasets, samples=config.samples))


def check(data_root: str | Path, roots: Mapping[str, Path] | None = None) -> CheckResult:
    """:func:`run_check` of all eight benchmarks under ``data_root`` with the default options."""
    return run_check(CheckConfig(data_root=Path(data_root)), roots)


def format_check(result: CheckResult) -> str:
    """A markdown table of a check: dataset, state, images / standard, and what to do.

    Example:
        >>> print(format_check(run_check(CheckConfig(data_root=Path("/x"), datasets=("voc21",)))).splitlines()[2])
        ... # doctest: +ELLIPSIS
        | voc21 | missing | - / 1449 | /x/VOCdevkit/VOC2012 does not exist. ...
    """
    lines = ["| dataset | state | images / standard | note |", "|---|---|---|---|"]
    for name, status in result.statuses.items():
        state = "ok" if status.valid else ("invalid" if status.present else "missing")
        images = "-" if status.images is None else str(status.images)
        note = status.message.replace("|", "/").replace("\n", " ")
        lines.append(f"| {name} | {state} | {images} / {status.expected} | {note} |")
    return "\n".join(lines)
