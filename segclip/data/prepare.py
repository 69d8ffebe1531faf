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

:func:`run_check` reports which of the benchmarks are present and valid under a data root.

- PASCAL Context 459 (:func:`run_prepare_pc459`): CAT-Seg's ``datasets/prepare_pascal_context_459.py``
  (cvlab-kaist/CAT-Seg): for each id of the val list, ``trainval/<id>.mat`` (the 459-class ``trainval.tar.gz``)
  is read with ``scipy.io.loadmat``, its uint16 ``LabelMap`` minus 1 (in uint16: raw 0 wraps to 65535; the
  script's ``min >= 0`` assertion can never fail on it) is saved by Pillow as a 16-bit TIFF
  ``annotations_detectron2/pc459_val/<id>.tif``; an id without a ``.mat`` is skipped silently there (counted and
  named here). CAT-Seg reads the ids from ``VOC2010/pascalcontext_val.txt`` (shipped in its ``datasets/``; the
  5,104 val ids, mmsegmentation's ``ImageSets/SegmentationContext/val.txt`` lists the same); it also parses
  ``labels.txt`` but never uses it.
- ADE20K-847 (:func:`run_prepare_ade847`): CAT-Seg's ``datasets/prepare_ade20k_full.py``: the images of
  ``index_ade20k.pkl`` whose file name's second ``_`` field is ``val`` (2,000); per image the class mask of
  ``<image>_seg.png`` is ``int32(R / 10) * 256 + G``; image and mask are resized when the short side exceeds 512
  (to 512, the long side ``round(long / short * 512)``, Python's rounding; ``cv2.resize`` bilinear for the image,
  nearest for the mask; an image whose width and height are equal or whose short side is at most 512 is kept);
  mask ids are mapped to the 847 train ids (``classnames/ade847_ids.txt``, CAT-Seg's
  ``ADE20K_SEM_SEG_FULL_CATEGORIES``), every other id to 65535; the image is saved by Pillow as JPEG (its default
  quality 75) to ``images_detectron2/validation/<file name>`` and the mask as a 16-bit TIFF to
  ``annotations_detectron2/validation/<stem>.tif``. The image is read without its EXIF orientation, as there.
  The pickle is read by an unpickler that only builds numpy arrays and Python containers.

Every path taken from a data file (a JSON ``file_name``, an id of a list, a pickle's folder and file name) is
resolved and refused when it leaves its folder. An interrupted conversion resumes: each command leaves a marker
``.segclip-prepare-<command>.json`` in its output folder while it runs; run again with the same inputs, it keeps
the files already written (each was written atomically) and writes the rest.
"""
from __future__ import annotations

import io
import json
import logging
import os
import pickle
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
from segclip.errors import ConfigError, DataError, OutputError, SegclipError
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


class PrepareJournal:
    """The marker of a conversion in progress, so that running the same command again resumes it.

    Args:
        folder: the output folder (the marker is ``folder/.segclip-prepare-<command>.json``).
        command: the ``prepare`` subcommand.
        key: what determines the outputs (input files by path, size and modification time; options); a marker
            with another key is not resumed.

    Example:
        >>> import tempfile
        >>> journal = PrepareJournal(Path(tempfile.mkdtemp()), "pc459", {"ids": "val.txt"})
        >>> journal.resuming
        False
        >>> journal.start(); PrepareJournal(journal.path.parent, "pc459", {"ids": "val.txt"}).resuming
        True
        >>> journal.finish(); journal.path.exists()
        False
    """

    def __init__(self, folder: Path, command: str, key: Mapping[str, Any]):
        self.path = Path(folder) / f".segclip-prepare-{command}.json"
        self.key = json.loads(json.dumps({"command": command, **key}, sort_keys=True, default=str))
        try:
            self.resuming = json.loads(self.path.read_text(encoding="utf-8")) == self.key
        except (OSError, ValueError):
            self.resuming = False

    def start(self) -> None:
        """Write the marker (before the first output)."""
        atomic_write_text(self.path, json.dumps(self.key, indent=1, sort_keys=True))

    def finish(self) -> None:
        """Remove the marker (after the last output)."""
        self.path.unlink(missing_ok=True)


def file_key(path: Path) -> list[Any]:
    """``[resolved path, size, mtime_ns]`` of an input file, for a :class:`PrepareJournal` key."""
    stat = Path(path).stat()
    return [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns]


def inside(folder: Path, relative: str, source: str, fix: str) -> Path:
    """``folder / relative`` resolved, refused when it leaves ``folder`` (a path taken from a data file).

    Raises:
        DataError: absolute, or ``..`` leading outside (the message names the source record and the fix).

    Example:
        >>> inside(Path("/data/out"), "2008_000002.png", "image 1", "fix it").name
        '2008_000002.png'
        >>> inside(Path("/data/out"), "../../etc/passwd", "image 1 of x.json", "fix it")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        segclip.errors.DataError: image 1 of x.json: the path '../../etc/passwd' leaves /data/out; fix it
    """
    base = Path(os.path.abspath(folder))
    target = Path(os.path.abspath(base / relative))
    if Path(relative).is_absolute() or not target.is_relative_to(base) or target == base:
        raise DataError(f"{source}: the path {relative!r} leaves {base}; {fix}")
    real = Path(os.path.realpath(target))
    if not real.is_relative_to(Path(os.path.realpath(base))):
        raise DataError(f"{source}: the path {relative!r} leads outside {base} through a link; {fix}")
    return target


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

    def summary(self) -> str:
        text = (f"PASCAL Context: {self.ids['train']} train and {self.ids['val']} val ids, {self.labels_written} "
                f"label maps in {self.label_dir} ({self.all_background} all background); split files "
                f"{self.split_files['train']} and {self.split_files['val']}\n")
        if self.duplicate_annotation_ids:
            text += (f"{self.duplicate_annotation_ids} annotations repeated an earlier id; the later one was kept, "
                     "as the Detail API does\n")
        return text


_JSON_FIX = "download trainval_merged.json again (PASCAL in Detail)"
# Per list of trainval_merged.json, the keys every record needs and which of them must be whole numbers.
_JSON_RECORDS = {"images": (("image_id", "file_name", "phase", "height", "width"), ("height", "width")),
                 "annos_segmentation": (("id", "image_id", "category_id", "segmentation"), ("category_id",)),
                 "categories": (("category_id",), ("category_id",))}


def _whole(value: Any) -> bool:
    """A JSON whole number (``2``, ``2.0``), not a bool or a string."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer()


def _load_json(path: Path) -> dict[str, Any]:
    """trainval_merged.json, every record checked (a one-line DataError naming the file, the record and the fix)."""
    try:
        with open(path, encoding="utf-8-sig") as handle:  # a byte-order mark is dropped
            data = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise DataError(f"Cannot read {path} as JSON ({err}); {_JSON_FIX}.") from None
    missing = [k for k in _JSON_RECORDS if not isinstance(data, dict) or k not in data]
    if missing:
        raise DataError(f"{path} has no {', '.join(missing)}; it is not PASCAL in Detail's trainval_merged.json.")
    for name, (required, numeric) in _JSON_RECORDS.items():
        records = data[name]
        if not isinstance(records, list):
            raise DataError(f"{path}: '{name}' is a {type(records).__name__}, not a list of records; {_JSON_FIX}.")
        for index, record in enumerate(records):
            where = f"{path}: record {index} of '{name}'"
            if not isinstance(record, dict):
                raise DataError(f"{where} is a {type(record).__name__}, not an object; {_JSON_FIX}.")
            absent = [k for k in required if k not in record]
            if absent:
                raise DataError(f"{where} ({_record_name(record)}) has no {', '.join(repr(k) for k in absent)}; "
                                f"{_JSON_FIX}.")
            bad = [k for k in numeric if not _whole(record[k]) or record[k] < 0]
            if bad:
                raise DataError(f"{where} ({_record_name(record)}) has a {bad[0]!r} that is not a whole number "
                                f"({record[bad[0]]!r}); {_JSON_FIX}.")
            if name == "images" and not isinstance(record["file_name"], str):
                raise DataError(f"{where} ({_record_name(record)}) has a 'file_name' that is not a string; "
                                f"{_JSON_FIX}.")
    return data


def _record_name(record: Mapping[str, Any]) -> str:
    for key in ("file_name", "id", "image_id", "category_id"):
        if key in record:
            return f"{key} {str(record[key])[:60]!r}"
    return "no id"


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
    fix = f"the record's file_name must name a file inside {label_dir}; {_JSON_FIX}"
    targets = [inside(label_dir, str(img["file_name"]).replace("jpg", "png"),
                      f"{config.json}: image {_record_name(img)}", fix)
               for img in {img["image_id"]: img for img in data["images"]}.values() if img["phase"] in phases]
    split_files = {phase: split_dir / f"{phase}.txt" for phase in phases}
    journal = PrepareJournal(base, "pascal_context", {"json": file_key(Path(config.json)), "out": str(base)})
    _refuse_existing([*targets, *split_files.values()], config.overwrite or journal.resuming,
                     "PASCAL Context outputs")
    if Path(config.json).resolve() in {p.resolve() for p in targets}:
        raise OutputError(f"The output {config.json} would replace the input JSON; choose another --out.")
    journal.start()
    counts, written, empty = {}, set(), 0
    for phase in phases:
        ids = []
        for img, mask in detail_class_masks(data, phase):
            file_name = str(img["file_name"])
            empty += int(not mask.any())
            target = inside(label_dir, file_name.replace("jpg", "png"), f"{config.json}: image {file_name!r}", fix)
            atomic_write_bytes(target, png_bytes(context_labels(mask, file_name)))
            written.add(target)
            ids.append(os.path.splitext(os.path.basename(file_name))[0])
        atomic_write_text(split_files[phase], "".join(f"{i}\n" for i in sorted(ids)))
        counts[phase] = len(ids)
        logger.info("PASCAL Context %s: %d label maps written to %s", phase, len(ids), label_dir)
    journal.finish()
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

    def summary(self) -> str:
        lines = [f"{split}: {count} label maps written in {self.out_dirs[split]}" for split, count in self.written.items()]
        lines += [f"{path}: values {values} outside the table were left unchanged"
                  for path, values in self.unmapped.items()]
        return "\n".join(lines) + "\n"


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
    journal = PrepareJournal(root, "coco" + suffix.split(".")[0].lower(), {"root": str(root.resolve()),
                                                                           "splits": list(config.splits)})
    _refuse_existing([target for _, _, target in jobs], config.overwrite or journal.resuming, f"*{suffix} files")
    journal.start()
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
    journal.finish()
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
    journal = PrepareJournal(root, "cityscapes", {"root": str(root.resolve()), "splits": list(config.splits)})
    _refuse_existing([target for _, _, target in jobs], config.overwrite or journal.resuming,
                     "*_gtFine_labelTrainIds.png files")
    journal.start()
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
    journal.finish()
    return PrepareLabelsResult(dict(written), {s: root / "gtFine" / s for s in config.splits})


# ---------------------------------------------------------------------------------------------- PASCAL Context 459

def tiff_bytes(label: np.ndarray) -> bytes:
    """An ``(H, W)`` uint16 array as the bytes of the 16-bit TIFF Pillow writes (``Image.fromarray(a).save(p,
    "TIFF")``, CAT-Seg's writer: mode ``I;16``, uncompressed).

    Example:
        >>> data = tiff_bytes(np.array([[0, 458, 65535]], np.uint16))
        >>> np.array(Image.open(io.BytesIO(data))).tolist()
        [[0, 458, 65535]]
    """
    if label.dtype != np.uint16 or label.ndim != 2:
        raise ValueError(f"expected an (H, W) uint16 label, got {label.dtype} {label.shape}")
    buffer = io.BytesIO()
    Image.fromarray(label).save(buffer, "TIFF")
    return buffer.getvalue()


def read_id_list(path: Path, what: str, fix: str) -> list[str]:
    """The stripped non-empty lines of an id list (UTF-8, a byte-order mark dropped).

    Raises:
        DataError: unreadable or not UTF-8 (the message names the file and ``fix``).
    """
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"Cannot read the {what} {path} ({err}); {fix}") from None
    return [line.strip() for line in lines if line.strip()]


@dataclass(frozen=True)
class PreparePc459Config(Config):
    """Options of ``segclip prepare pc459``."""

    root: Path = option(help="the VOCdevkit/VOC2010 folder holding trainval/<id>.mat (the 459-class "
                             "trainval.tar.gz of PASCAL Context)")
    ids: Path | None = option(None, help="the val id list (default: ROOT/pascalcontext_val.txt as CAT-Seg reads it, "
                                         "else ROOT/ImageSets/SegmentationContext/val.txt)")
    overwrite: bool = option(False, help="replace TIFFs that already exist")

    def __post_init__(self) -> None:
        super().__post_init__()  # field types (segclip.config.Config)
        if not (Path(self.root) / "trainval").is_dir():
            raise ConfigError(f"--root {self.root} has no trainval folder; extract the 459-class trainval.tar.gz of "
                              "PASCAL Context into VOCdevkit/VOC2010 and pass that folder.")
        if self.ids is not None and not Path(self.ids).is_file():
            raise ConfigError(f"--ids {self.ids} is not a file; pass the val id list (CAT-Seg's "
                              "datasets/pascalcontext_val.txt).")

    @property
    def id_file(self) -> Path:
        """The id list used."""
        if self.ids is not None:
            return Path(self.ids)
        for candidate in (Path(self.root) / "pascalcontext_val.txt",
                          Path(self.root) / "ImageSets" / "SegmentationContext" / "val.txt"):
            if candidate.is_file():
                return candidate
        raise ConfigError(f"{self.root} has neither pascalcontext_val.txt nor ImageSets/SegmentationContext/val.txt; "
                          "copy CAT-Seg's datasets/pascalcontext_val.txt there or pass --ids.")


@dataclass(frozen=True)
class PrepareWideResult:
    """What :func:`run_prepare_pc459` or :func:`run_prepare_ade847` wrote.

    Attributes:
        written: label TIFFs written (or kept from an interrupted run).
        label_dir: where they are.
        skipped: ids (PC-459: without a ``.mat``) or files not converted, first ones.
        skipped_count: how many.
    """

    written: int
    label_dir: Path
    skipped: list[str]
    skipped_count: int

    def summary(self) -> str:
        text = f"{self.written} label TIFFs in {self.label_dir}\n"
        if self.skipped_count:
            text += (f"{self.skipped_count} ids without a .mat were skipped (as CAT-Seg's script skips them), first: "
                     f"{', '.join(self.skipped[:5])}\n")
        return text


def _load_mat(path: Path, key: str, fix: str) -> Any:
    import scipy.io

    try:
        return scipy.io.loadmat(str(path))[key]
    except KeyError:
        raise DataError(f"{path} has no '{key}'; {fix}") from None
    except Exception as err:  # scipy raises MatReadError, ValueError, TypeError, OSError ... on a damaged file
        raise DataError(f"Cannot read {path} as a MATLAB file ({type(err).__name__}: {err}); {fix}") from None


def pc459_label(label_map: np.ndarray, source: str = "LabelMap") -> np.ndarray:
    """CAT-Seg's PASCAL Context 459 conversion: ``LabelMap - 1`` in the map's uint16 (raw 0 wraps to 65535).

    Raises:
        DataError: not a 2-D uint16 array (the 459-class ``.mat`` files hold uint16 maps).

    Example:
        >>> pc459_label(np.array([[1, 459, 0]], np.uint16)).tolist()
        [[0, 458, 65535]]
    """
    if not isinstance(label_map, np.ndarray) or label_map.ndim != 2 or label_map.dtype != np.uint16:
        shape = getattr(label_map, "shape", None)
        raise DataError(f"{source} is {getattr(label_map, 'dtype', type(label_map).__name__)} {shape}, not a 2-D "
                        "uint16 LabelMap; extract the 459-class trainval.tar.gz of PASCAL Context again.")
    return label_map - np.uint16(1)


def run_prepare_pc459(config: PreparePc459Config) -> PrepareWideResult:
    """Write ``annotations_detectron2/pc459_val/<id>.tif`` for every val id with a ``trainval/<id>.mat``.

    Args:
        config: the VOC2010 folder, the id list and ``overwrite``.

    Returns:
        What was written, and the ids without a ``.mat`` (skipped, as CAT-Seg's script skips them).

    Raises:
        DataError: an unreadable id list or ``.mat``, a ``.mat`` without a uint16 ``LabelMap``, an id leaving
            ``trainval/``, or no ``.mat`` for any id.
        OutputError: TIFFs exist without ``overwrite`` (and not from an interrupted run of the same command).

    Example:
        >>> import tempfile, scipy.io
        >>> root = Path(tempfile.mkdtemp())
        >>> (root / "trainval").mkdir()
        >>> scipy.io.savemat(root / "trainval" / "2008_000002.mat", {"LabelMap": np.array([[1, 2], [459, 0]],
        ...                                                                                np.uint16)})
        >>> _ = (root / "pascalcontext_val.txt").write_text("2008_000002\\n2008_000003")
        >>> result = run_prepare_pc459(PreparePc459Config(root=root))
        >>> result.written, result.skipped
        (1, ['2008_000003'])
        >>> np.array(Image.open(root / "annotations_detectron2/pc459_val/2008_000002.tif")).tolist()
        [[0, 1], [458, 65535]]
    """
    root = Path(config.root)
    id_file = config.id_file
    fix = f"each line of {id_file} must be an image id such as 2008_000002"
    ids = read_id_list(id_file, "id list", fix)
    out = root / "annotations_detectron2" / "pc459_val"
    jobs, skipped = [], []
    for line, image_id in enumerate(ids, 1):
        source = inside(root / "trainval", f"{image_id}.mat", f"{id_file}: line {line}", fix)
        target = inside(out, f"{image_id}.tif", f"{id_file}: line {line}", fix)
        if source.is_file():
            jobs.append((source, target))
        else:
            skipped.append(image_id)
    if not jobs:
        raise DataError(f"None of the {len(ids)} ids of {id_file} has a .mat in {root / 'trainval'}; extract the "
                        "459-class trainval.tar.gz of PASCAL Context into that folder.")
    if skipped:
        logger.warning("PASCAL Context 459: %d ids of %s have no .mat (skipped, as CAT-Seg's script does): %s",
                       len(skipped), id_file, skipped[:5])
    journal = PrepareJournal(root, "pc459", {"ids": file_key(id_file), "root": str(root.resolve())})
    _refuse_existing([t for _, t in jobs], config.overwrite or journal.resuming, "PC-459 label TIFFs")
    journal.start()
    mat_fix = "extract the 459-class trainval.tar.gz of PASCAL Context again"
    for source, target in jobs:
        if journal.resuming and not config.overwrite and target.is_file():
            continue  # written atomically by the interrupted run
        label = pc459_label(_load_mat(source, "LabelMap", mat_fix), f"LabelMap of {source}")
        atomic_write_bytes(target, tiff_bytes(label))
    journal.finish()
    return PrepareWideResult(len(jobs), out, skipped[:20], len(skipped))


# ---------------------------------------------------------------------------------------------- ADE20K-847

ADE847_MAX_SIZE = 512


def ade847_category_ids() -> list[int]:
    """The ADE20K-full object ids of the 847 classes, in train-id order (CAT-Seg's ``ADE20K_SEM_SEG_FULL_CATEGORIES``).

    Example:
        >>> ids = ade847_category_ids()
        >>> len(ids), ids[:3], len(set(ids))
        (847, [2978, 312, 2420], 847)
    """
    from importlib import resources

    text = resources.files("segclip.data").joinpath("classnames", "ade847_ids.txt").read_text(encoding="utf-8")
    return [int(v) for v in text.split()]


class _IndexUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, scalars and Python containers only (``index_ade20k.pkl``); anything else refused."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("builtins", "slice"), ("collections", "OrderedDict")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in an index file")


def read_ade_index(path: Path) -> tuple[list[str], list[str]]:
    """``(folders, file names)`` of ``index_ade20k.pkl``, read without running code from the file.

    Raises:
        DataError: unreadable, not a pickle of numpy arrays and containers, or without equal-length ``folder`` and
            ``filename`` lists of strings.
    """
    fix = "download index_ade20k.pkl of ADE20K_2021_17_01 again"
    try:
        with open(path, "rb") as handle:
            index = _IndexUnpickler(handle).load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, ImportError,
            IndexError, KeyError) as err:
        raise DataError(f"Cannot read {path} as ADE20K's index ({type(err).__name__}: {err}); {fix}.") from None
    if not isinstance(index, dict) or "folder" not in index or "filename" not in index:
        raise DataError(f"{path} has no 'folder' and 'filename' lists; {fix}.")
    folders, names = list(index["folder"]), list(index["filename"])
    if len(folders) != len(names) or not all(isinstance(v, str) for v in folders + names):
        raise DataError(f"{path}: 'folder' ({len(folders)}) and 'filename' ({len(names)}) are not equal-length lists "
                        f"of strings; {fix}.")
    return folders, names


def ade_class_mask(seg: np.ndarray) -> np.ndarray:
    """ADE20K's object class mask of a ``_seg.png`` array: ``int32(R / 10) * 256 + G`` (``utils_ade20k.loadAde20K``).

    Example:
        >>> ade_class_mask(np.array([[[10, 5, 0], [255, 255, 9]]], np.uint8)).tolist()
        [[261, 6655]]
    """
    red, green = seg[:, :, 0], seg[:, :, 1]
    return (red / 10).astype(np.int32) * 256 + green.astype(np.int32)


def ade847_resized_size(height: int, width: int) -> tuple[int, int] | None:
    """CAT-Seg's resize rule: ``(h, w)`` after resizing, or None when the image is kept.

    Example:
        >>> ade847_resized_size(683, 1024), ade847_resized_size(512, 2000), ade847_resized_size(900, 900)
        ((512, 768), None, (512, 512))
    """
    if width >= height > ADE847_MAX_SIZE:
        return ADE847_MAX_SIZE, round(width / float(height) * ADE847_MAX_SIZE)
    if height >= width > ADE847_MAX_SIZE:
        return round(height / float(width) * ADE847_MAX_SIZE), ADE847_MAX_SIZE
    return None


def ade847_convert(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One ADE20K-full image and class mask -> CAT-Seg's (resized image, uint16 train-id label).

    Returns:
        ``(image (h, w[, 3]) uint8, label (h, w) uint16)``: ids outside the 847 -> 65535.
    """
    import cv2

    size = ade847_resized_size(*image.shape[:2])
    if size is not None:
        image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        mask = cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    lut = dict(zip(ade847_category_ids(), range(847)))
    label = np.full(mask.shape, 65535, np.uint16)
    for object_id in np.unique(mask):
        if int(object_id) in lut:
            label[mask == object_id] = lut[int(object_id)]
    return image, label


@dataclass(frozen=True)
class PrepareAde847Config(Config):
    """Options of ``segclip prepare ade847``."""

    root: Path = option(help="the ADE20K_2021_17_01 folder, holding index_ade20k.pkl and images/ADE/")
    overwrite: bool = option(False, help="replace images and TIFFs that already exist")

    def __post_init__(self) -> None:
        super().__post_init__()  # field types (segclip.config.Config)
        if not (Path(self.root) / "index_ade20k.pkl").is_file():
            raise ConfigError(f"--root {self.root} has no index_ade20k.pkl; extract ADE20K_2021_17_01 (the full "
                              "ADE20K) and pass that folder.")


def run_prepare_ade847(config: PrepareAde847Config) -> PrepareWideResult:
    """Write CAT-Seg's ADE20K-847 validation set: resized JPEGs and 16-bit TIFF labels (module docstring).

    Args:
        config: the ADE20K_2021_17_01 folder and ``overwrite``.

    Returns:
        What was written.

    Raises:
        DataError: an unreadable index, a path of the index leaving the dataset folder, a missing or unreadable
            image or ``_seg.png``, or no validation image in the index.
        OutputError: outputs exist without ``overwrite`` (and not from an interrupted run of the same command).
    """
    from segclip.data.images import _open

    root = Path(config.root)
    index_file = root / "index_ade20k.pkl"
    folders, names = read_ade_index(index_file)
    fix = f"the index's folders must lie inside {root} ({root.name}/images/ADE/...); download index_ade20k.pkl again"
    jobs = []
    for position, (folder, name) in enumerate(zip(folders, names)):
        parts = name.split("_")
        if len(parts) < 2:
            raise DataError(f"{index_file}: file name {position} ({name!r}) has no '_'; ADE20K names its images "
                            "ADE_val_00000001.jpg; download index_ade20k.pkl again.")
        if parts[1] != "val":
            continue
        where = f"{index_file}: entry {position} ({name!r})"
        image = inside(root.parent, f"{folder}/{name}", where, fix)
        if not image.is_relative_to(Path(os.path.abspath(root))):
            raise DataError(f"{where}: the path {folder}/{name} leaves {root}; {fix}")
        if Path(name).name != name:
            raise DataError(f"{where}: the file name holds a folder; {fix}")
        out_image = inside(root / "images_detectron2" / "validation", name, where, fix)
        out_label = inside(root / "annotations_detectron2" / "validation", name.replace(".jpg", ".tif"), where, fix)
        jobs.append((image, Path(str(image).replace(".jpg", "_seg.png")), out_image, out_label))
    if not jobs:
        raise DataError(f"{index_file} lists no validation image (ADE_val_*); it is not ADE20K_2021_17_01's index.")
    journal = PrepareJournal(root, "ade847", {"index": file_key(index_file), "root": str(root.resolve())})
    _refuse_existing([p for job in jobs for p in job[2:]], config.overwrite or journal.resuming,
                     "ADE20K-847 outputs")
    journal.start()
    for image_path, seg_path, out_image, out_label in jobs:
        if journal.resuming and not config.overwrite and out_image.is_file() and out_label.is_file():
            continue
        for path in (image_path, seg_path):
            if not path.is_file():
                raise DataError(f"{path} (listed in {index_file}) is missing; extract ADE20K_2021_17_01 completely.")
        try:
            image = np.asarray(_open(image_path, exif=False))
            seg = np.asarray(_open(seg_path, exif=False))
        except SegclipError as err:
            raise DataError(f"{err}; extract ADE20K_2021_17_01 again.") from None
        if image.dtype != np.uint8 or seg.ndim != 3 or seg.shape[2] < 2 or seg.shape[:2] != image.shape[:2]:
            raise DataError(f"{seg_path} is not an RGB class map of its image's size ({seg.shape} for "
                            f"{image.shape}); extract ADE20K_2021_17_01 again.")
        image, label = ade847_convert(image, ade_class_mask(seg))
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG")
        atomic_write_bytes(out_image, buffer.getvalue())
        atomic_write_bytes(out_label, tiff_bytes(label))
    journal.finish()
    return PrepareWideResult(len(jobs), root / "annotations_detectron2" / "validation", [], 0)


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

    def summary(self) -> str:
        return (format_check(self) + "\n"
                + f"{len(self.valid)} of {len(self.statuses)} ready: {', '.join(self.valid) or 'none'}\n")


def run_check(config: CheckConfig, roots: Mapping[str, Path] | None = None) -> CheckResult:
    """Which benchmarks are present and valid under ``config.data_root`` (``roots`` override single folders).

    Example:
        >>> run_check(CheckConfig(data_root=Path("/nonexistent"))).valid
        []
    """
    return CheckResult(find_datasets(config.data_root, roots, config.datasets, samples=config.samples))


def check(data_root: str | Path, roots: Mapping[str, Path] | None = None) -> CheckResult:
    """:func:`run_check` of every benchmark under ``data_root`` with the default options."""
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
