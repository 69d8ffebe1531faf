"""Dataset converters, each against an independent implementation of its reference's semantics.

Label PNGs are compared as decoded arrays, as PNG mode and as file bytes: the reference converters save with
Pillow's defaults (``Image.fromarray(a).save(path)``, json2labelImg's ``labelImg.save(path)``), and so do we, so
with the same Pillow the bytes are identical too.
"""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fake_benchmarks import make_fake_benchmarks
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from segclip.data.benchmarks import BENCHMARKS, benchmark_dataset
from segclip.data.prepare import (
    CheckConfig,
    PrepareCityscapesConfig,
    PrepareCocoConfig,
    PreparePascalContextConfig,
    check,
    format_check,
    run_check,
    run_prepare_cityscapes,
    run_prepare_coco_object,
    run_prepare_coco_stuff,
    run_prepare_pascal_context,
)
from segclip.errors import ConfigError, DataError, OutputError


def _same_png(ours: Path, reference: Path) -> None:
    a, b = Image.open(ours), Image.open(reference)
    assert a.mode == b.mode == "L"
    np.testing.assert_array_equal(np.array(a), np.array(b))
    assert ours.read_bytes() == reference.read_bytes()


# ------------------------------------------------------------------------------------------ PASCAL Context

def _decode_rle(rle):
    """COCO compressed RLE (``counts`` string) to a binary (h, w) mask, in plain Python (maskApi.c rleFrString)."""
    height, width = rle["size"]
    text, counts, p = rle["counts"], [], 0
    while p < len(text):
        x = k = 0
        more = True
        while more:
            c = ord(text[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    flat, pos = np.zeros(height * width, np.uint8), 0
    for run, value in zip(counts, [0, 1] * len(counts)):
        flat[pos: pos + run] = value
        pos += run
    return flat.reshape(width, height).T  # column-major


class _ReferenceDetail:
    """What the converter uses of detail-api's ``Detail(json, img_dir, phase)``: __createIndex, getImgs, getMask."""

    def __init__(self, data, phase):
        data = copy.deepcopy(data)
        self.imgs, self.segmentations = {}, {}
        for img in data["images"]:
            self.imgs[img["image_id"]] = img
        for segm in data["annos_segmentation"]:
            self.segmentations[segm["id"]] = segm
        for img in data["images"]:
            img["annotations"] = []
        for segm_id, segm in self.segmentations.items():
            self.imgs[segm["image_id"]]["annotations"].append(segm_id)
        self.phases = [p for p in ("train", "val", "test") if p in phase]

    def getImgs(self):
        return [img for img in self.imgs.values() if img["phase"] in self.phases]

    def getMask(self, img):
        img_anns = np.unique(np.array([img["annotations"]]).flatten())
        anns = [ann for ann in self.segmentations.values() if ann["id"] in img_anns]
        mask = np.zeros((img["height"], img["width"]))
        for ann in anns:
            mask[np.nonzero(_decode_rle(ann["segmentation"]))] = ann["category_id"]
        return mask


_MMSEG_MAPPING = np.sort(np.array([  # mmseg's pascal_context.py _mapping (unsorted in the source)
    0, 2, 259, 260, 415, 324, 9, 258, 144, 18, 19, 22, 23, 397, 25, 284, 158, 159, 416, 33, 162, 420, 454, 295, 296,
    427, 44, 45, 46, 308, 59, 440, 445, 31, 232, 65, 354, 424, 68, 326, 72, 458, 34, 207, 80, 355, 85, 347, 220, 349,
    360, 98, 187, 104, 105, 366, 189, 368, 113, 115]))


def _reference_context(data, devkit: Path, out_dir: Path) -> None:
    """mmseg's tools/dataset_converters/pascal_context.py main() on a Detail built from ``data``."""
    key = np.array(range(len(_MMSEG_MAPPING))).astype("uint8")
    out_dir.mkdir(parents=True, exist_ok=True)
    lists = {}
    for phase in ("train", "val"):
        detail = _ReferenceDetail(data, phase)
        names = []
        for img in detail.getImgs():
            mask = detail.getMask(img)
            assert all(v in _MMSEG_MAPPING for v in np.unique(mask))
            index = np.digitize(mask.ravel(), _MMSEG_MAPPING, right=True)
            Image.fromarray(key[index].reshape(mask.shape)).save(out_dir / img["file_name"].replace("jpg", "png"))
            names.append(Path(img["file_name"]).stem)
        lists[phase] = names
    split_dir = devkit / "VOC2010" / "ImageSets" / "SegmentationContext"
    split_dir.mkdir(parents=True, exist_ok=True)
    for phase, names in lists.items():
        with open(split_dir / f"{phase}.txt", "w") as f:
            f.writelines(line + "\n" for line in sorted(names))


def _rle(binary):
    rle = mask_utils.encode(np.asfortranarray(binary.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _image(file_name, phase, height, width):
    return {"file_name": file_name, "phase": phase, "height": height, "width": width,
            "image_id": int(file_name[:4] + file_name[5:11]), "date_captured": "2010-03-01"}


def _detail_json(rng):
    """A trainval_merged.json in the real file's format, with the Detail API's edge cases in it."""
    images = [_image("2008_000002.jpg", "val", 9, 11), _image("2008_000003.jpg", "train", 8, 6),
              _image("2008_000007.jpg", "val", 5, 7),  # no annotation: an all-background label
              _image("2008_000008.jpg", "test", 6, 6),  # neither train nor val: not written
              _image("2008_000009.jpg", "train", 4, 4),
              _image("2008_000009.jpg", "val", 6, 5),  # the same image_id again: the later record wins
              _image("2010_000100.jpg", "val", 7, 8)]
    categories = [{"category_id": int(c), "name": f"class {c}", "supercategory": "object", "onlysemantic": 0,
                   "parts": []} for c in _MMSEG_MAPPING]
    anns, next_id = [], 1
    for image_id, (height, width), cats in ((2008000002, (9, 11), [2, 259, 458, 45]),
                                             (2008000003, (8, 6), [9, 0, 420]),
                                             (2008000009, (6, 5), [115, 18]),
                                             (2010000100, (7, 8), [347, 98, 2])):
        for cat in cats:  # random overlapping blobs: later annotations paint over earlier ones
            binary = np.zeros((height, width), np.uint8)
            y, x = rng.integers(0, height - 1), rng.integers(0, width - 1)
            binary[y: y + rng.integers(2, height), x: x + rng.integers(2, width)] = 1
            anns.append({"id": next_id, "image_id": image_id, "category_id": cat, "segmentation": _rle(binary),
                         "area": int(binary.sum()), "bbox": [0, 0, width, height], "iscrowd": 0, "parts": []})
            next_id += 1
    # a repeated annotation id: the Detail API keeps the later annotation, at the earlier one's position
    late = dict(anns[1], image_id=2010000100, category_id=360,
                segmentation=_rle(np.ones((7, 8), np.uint8)), id=anns[1]["id"])
    anns.append(late)
    anns.append({**anns[0], "id": next_id, "image_id": 2008000008, "category_id": 2,
                 "segmentation": _rle(np.ones((6, 6), np.uint8))})
    return {"info": {"description": "PASCAL in Detail"}, "images": images, "annos_segmentation": anns,
            "categories": categories, "parts": [], "annos_joints": [], "annos_occlusion": [], "annos_boundary": []}


def test_pascal_context_matches_detail_and_mmseg(tmp_path):
    data = _detail_json(np.random.default_rng(0))
    json_path = tmp_path / "trainval_merged.json"
    json_path.write_text(json.dumps(data))
    ours, reference = tmp_path / "ours" / "VOCdevkit", tmp_path / "reference" / "VOCdevkit"
    for devkit in (ours, reference):
        (devkit / "VOC2010" / "JPEGImages").mkdir(parents=True)
    _reference_context(data, reference, reference / "VOC2010" / "SegmentationClassContext")
    result = run_prepare_pascal_context(PreparePascalContextConfig(devkit=ours, json=json_path))

    ref_files = sorted(p.name for p in (reference / "VOC2010" / "SegmentationClassContext").iterdir())
    assert ref_files == ["2008_000002.png", "2008_000003.png", "2008_000007.png", "2008_000009.png",
                         "2010_000100.png"]
    assert sorted(p.name for p in result.label_dir.iterdir()) == ref_files
    for name in ref_files:
        _same_png(result.label_dir / name, reference / "VOC2010" / "SegmentationClassContext" / name)
    for phase in ("train", "val"):
        split = Path("VOC2010/ImageSets/SegmentationContext") / f"{phase}.txt"
        assert (ours / split).read_bytes() == (reference / split).read_bytes()
    assert (ours / "VOC2010/ImageSets/SegmentationContext/val.txt").read_text() == (
        "2008_000002\n2008_000007\n2008_000009\n2010_000100\n")
    assert result.ids == {"train": 1, "val": 4} and result.duplicate_annotation_ids == 1
    assert result.all_background == 1
    labels = np.array(Image.open(result.label_dir / "2010_000100.png"))
    assert labels.shape == (7, 8) and (labels == 47).any()  # 360 (the repeated id's later annotation) -> rank 47
    assert (np.array(Image.open(result.label_dir / "2008_000009.png")).shape == (6, 5))

    for image_id in ("2008_000002", "2008_000007", "2008_000009", "2010_000100"):
        width, height = Image.open(result.label_dir / f"{image_id}.png").size
        Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(ours / f"VOC2010/JPEGImages/{image_id}.jpg")
    data59 = benchmark_dataset("context59", ours.parent)
    assert data59.ids == ["2008_000002", "2008_000007", "2008_000009", "2010_000100"]
    assert (data59[1]["label"] == 255).all()  # no annotation: background, ignored by Context-59


def test_pascal_context_refuses_to_overwrite_and_bad_ids(tmp_path):
    data = _detail_json(np.random.default_rng(1))
    json_path = tmp_path / "trainval_merged.json"
    json_path.write_text(json.dumps(data))
    config = PreparePascalContextConfig(devkit=tmp_path, json=json_path, out=tmp_path / "out")
    run_prepare_pascal_context(config)
    with pytest.raises(OutputError, match="already exist.*--overwrite"):
        run_prepare_pascal_context(config)
    run_prepare_pascal_context(PreparePascalContextConfig(devkit=tmp_path, json=json_path, out=tmp_path / "out",
                                                          overwrite=True))
    data["categories"].append({"category_id": 1, "name": "accordion"})
    data["annos_segmentation"][0]["category_id"] = 1
    json_path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"2008_000002\.jpg holds category ids \[1\]"):
        run_prepare_pascal_context(PreparePascalContextConfig(devkit=tmp_path, json=json_path, out=tmp_path / "o2"))
    data["annos_segmentation"][0]["image_id"] = 1999000001
    json_path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="image_id 1999000001"):
        run_prepare_pascal_context(PreparePascalContextConfig(devkit=tmp_path, json=json_path, out=tmp_path / "o3"))
    with pytest.raises(ConfigError, match="has no VOC2010"):
        PreparePascalContextConfig(devkit=tmp_path / "nowhere", json=json_path)
    with pytest.raises(ConfigError, match="--json"):
        PreparePascalContextConfig(devkit=tmp_path, json=tmp_path / "missing.json", out=tmp_path)


# ------------------------------------------------------------------------------------------ COCO

# COCO's 1-based category ids: 80 things (ids 12, 26, 29, 30, 45, 66, 68, 69, 71, 83 unused) then 91 stuff.
_THINGS = [*range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70, *range(72, 83),
           *range(84, 91)]
_STUFF = list(range(92, 183))
_STUFF_TRAIN_IDS = {**{cid - 1: i for i, cid in enumerate(_THINGS + _STUFF)}, 255: 255}  # mmseg's clsID_to_trID
_OBJECT_TRAIN_IDS = {k: (v + 1 if k <= 90 else 0) for k, v in _STUFF_TRAIN_IDS.items()}  # cvt_coco_object.py


def _reference_coco(root: Path, table: dict[int, int], suffix: str, split: str) -> None:
    sources = [p for p in (root / "annotations" / split).glob("*.png") if "TrainIds" not in str(p)]
    for path in sources:
        mask = np.array(Image.open(path))
        mask_copy = mask.copy()
        for cls_id, train_id in table.items():
            mask_copy[mask == cls_id] = train_id
        Image.fromarray(mask_copy).save(root / "annotations" / split / (path.name.split(".")[0] + suffix), "PNG")


def _stuffthingmaps(root: Path, split: str = "val2017") -> None:
    rng = np.random.default_rng(3)
    (root / "annotations" / split).mkdir(parents=True)
    values = np.array([*range(182), 255], np.uint8)  # every value, the 11 unused ids included
    for number, (height, width) in ((139, (12, 16)), (285, (15, 10))):
        raw = rng.choice(values, size=(height, width)).astype(np.uint8)
        raw.flat[: values.size] = values
        Image.fromarray(raw).save(root / "annotations" / split / f"{number:012d}.png")


@pytest.mark.parametrize("which", ["coco_stuff", "coco_object"])
def test_coco_converters_match_reference(tmp_path, which):
    assert len(_THINGS) == 80 and len(_STUFF_TRAIN_IDS) == 172
    table, suffix, run = {"coco_stuff": (_STUFF_TRAIN_IDS, "_labelTrainIds.png", run_prepare_coco_stuff),
                          "coco_object": (_OBJECT_TRAIN_IDS, "_instanceTrainIds.png", run_prepare_coco_object)}[which]
    ours, reference = tmp_path / "ours", tmp_path / "reference"
    _stuffthingmaps(ours)
    shutil.copytree(ours, reference)
    _reference_coco(reference, table, suffix, "val2017")
    result = run(PrepareCocoConfig(root=ours))
    assert result.written == {"val2017": 2}
    assert sorted(result.unmapped.values())[0] == [11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90]
    for name in ("000000000139", "000000000285"):
        _same_png(ours / "annotations/val2017" / f"{name}{suffix}",
                  reference / "annotations/val2017" / f"{name}{suffix}")
    converted = np.array(Image.open(ours / "annotations/val2017" / f"000000000139{suffix}"))
    raw = np.array(Image.open(ours / "annotations/val2017/000000000139.png"))
    assert converted[raw == 11].tolist() == [11] * int((raw == 11).sum())  # unused ids are left as they were
    with pytest.raises(OutputError, match="already exist"):
        run(PrepareCocoConfig(root=ours))
    assert run(PrepareCocoConfig(root=ours, overwrite=True)).written == {"val2017": 2}  # inputs: no *TrainIds file
    with pytest.raises(ConfigError, match="train2017 does not exist"):
        PrepareCocoConfig(root=ours, splits=("train2017",))


def test_coco_converters_feed_the_readers(tmp_path):
    root = tmp_path / "coco_stuff164k"
    _stuffthingmaps(root)
    for path in (root / "annotations/val2017").glob("*.png"):  # the real maps never hold the unused ids
        raw = np.array(Image.open(path))
        raw[~np.isin(raw, list(_STUFF_TRAIN_IDS))] = 255
        Image.fromarray(raw).save(path)
        (root / "images/val2017").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((*raw.shape, 3), np.uint8)).save(root / "images/val2017" / f"{path.stem}.jpg")
    run_prepare_coco_stuff(PrepareCocoConfig(root=root))
    run_prepare_coco_object(PrepareCocoConfig(root=root))
    stuff, objects = benchmark_dataset("coco_stuff", tmp_path)[0]["label"], benchmark_dataset("coco_object",
                                                                                             tmp_path)[0]["label"]
    np.testing.assert_array_equal(objects, np.where(stuff < 80, stuff + 1, 0))


# ------------------------------------------------------------------------------------------ Cityscapes

# cityscapesscripts/helpers/labels.py: (name, id, trainId)
_CITY_LABELS = [("unlabeled", 0, 255), ("ego vehicle", 1, 255), ("rectification border", 2, 255),
                ("out of roi", 3, 255), ("static", 4, 255), ("dynamic", 5, 255), ("ground", 6, 255), ("road", 7, 0),
                ("sidewalk", 8, 1), ("parking", 9, 255), ("rail track", 10, 255), ("building", 11, 2),
                ("wall", 12, 3), ("fence", 13, 4), ("guard rail", 14, 255), ("bridge", 15, 255),
                ("tunnel", 16, 255), ("pole", 17, 5), ("polegroup", 18, 255), ("traffic light", 19, 6),
                ("traffic sign", 20, 7), ("vegetation", 21, 8), ("terrain", 22, 9), ("sky", 23, 10),
                ("person", 24, 11), ("rider", 25, 12), ("car", 26, 13), ("truck", 27, 14), ("bus", 28, 15),
                ("caravan", 29, 255), ("trailer", 30, 255), ("train", 31, 16), ("motorcycle", 32, 17),
                ("bicycle", 33, 18), ("license plate", -1, -1)]


def _json2label(objects, size, encoding):
    """cityscapesscripts json2labelImg's createLabelImage: polygons drawn in order on the 'unlabeled' value."""
    by_name = {name: (label_id, train_id) for name, label_id, train_id in _CITY_LABELS}
    column = 0 if encoding == "ids" else 1
    image = Image.new("L", size, by_name["unlabeled"][column])
    drawer = ImageDraw.Draw(image)
    for name, polygon in objects:
        if name not in by_name and name.endswith("group"):
            name = name[: -len("group")]
        if by_name[name][0] < 0:
            continue
        drawer.polygon(polygon, fill=by_name[name][column])
    return image


def test_cityscapes_matches_json2labelimg(tmp_path):
    rng = np.random.default_rng(5)
    names = [n for n, i, _ in _CITY_LABELS if i >= 0] + ["cargroup", "persongroup", "license plate"]
    root, reference = tmp_path / "cityscapes", tmp_path / "reference"
    reference.mkdir()
    stems = [("frankfurt", "frankfurt_000000_000294"), ("lindau", "lindau_000001_000019")]
    for town, stem in stems:
        objects = [(names[rng.integers(len(names))], [tuple(int(v) for v in rng.integers(0, 40, 2))
                                                      for _ in range(rng.integers(3, 7))]) for _ in range(25)]
        (root / "gtFine/val" / town).mkdir(parents=True)
        _json2label(objects, (40, 20), "ids").save(root / "gtFine/val" / town / f"{stem}_gtFine_labelIds.png")
        _json2label(objects, (40, 20), "trainIds").save(reference / f"{stem}_gtFine_labelTrainIds.png")
    result = run_prepare_cityscapes(PrepareCityscapesConfig(root=root, splits=("val",)))
    assert result.written == {"val": 2}
    for town, stem in stems:
        _same_png(root / "gtFine/val" / town / f"{stem}_gtFine_labelTrainIds.png",
                  reference / f"{stem}_gtFine_labelTrainIds.png")
    with pytest.raises(OutputError, match="already exist"):
        run_prepare_cityscapes(PrepareCityscapesConfig(root=root, splits=("val",)))
    Image.fromarray(np.full((4, 4), 34, np.uint8)).save(
        root / "gtFine/val/lindau/lindau_000002_000019_gtFine_labelIds.png")
    with pytest.raises(DataError, match=r"ids above 33 \(\[34\]\)"):
        run_prepare_cityscapes(PrepareCityscapesConfig(root=root, splits=("val",), overwrite=True))
    with pytest.raises(ConfigError, match="gtFine/train does not exist"):
        PrepareCityscapesConfig(root=root)


# ------------------------------------------------------------------------------------------ check

def test_check_reports_every_benchmark(tmp_path):
    make_fake_benchmarks(tmp_path)
    shutil.rmtree(tmp_path / "cityscapes")
    result = run_check(CheckConfig(data_root=tmp_path))
    assert result.valid == [n for n in BENCHMARKS if n != "cityscapes"]
    table = format_check(result).splitlines()
    assert len(table) == 2 + len(BENCHMARKS)
    assert table[2].startswith("| voc21 | ok | 3 / 1449 |")
    assert any(line.startswith("| cityscapes | missing | - / 500 |") and "segclip prepare cityscapes" in line
               for line in table)
    assert check(tmp_path, roots={"cityscapes": tmp_path / "nowhere"}).valid == result.valid
