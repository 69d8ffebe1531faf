"""PASCAL Context 459 and ADE20K-847 in CAT-Seg's layouts (reader, converters, benchmark end to end), the COCO-Stuff
label-order check, and hostile data files (issue 21: paths leaving their folder, malformed JSON records and .mat
files, prepare resumed after Ctrl-C, byte-order marks).

References are transcribed here from CAT-Seg (cvlab-kaist/CAT-Seg ``datasets/prepare_pascal_context_459.py``,
``datasets/prepare_ade20k_full.py``, ``cat_seg/data/datasets/register_*.py``) in plain numpy / Pillow / OpenCV.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io
from fake_benchmarks import make_fake_wide_benchmarks
from PIL import Image

import segclip.data.prepare as prepare_module
from segclip.cli import main
from segclip.data.benchmarks import BenchmarkDataset, benchmark_dataset, label_names
from segclip.data.classification import read_imagenet_meta, read_stanford_cars
from segclip.data.protocols import benchmark_protocol
from segclip.data.queries import benchmark_class_file, read_query_file
from segclip.errors import DataError

FAST = ["--templates", "single", "--k", "50", "--no-progress"]
# CAT-Seg's registration: label folder, extension, class count, ignore value; plus the 65535 of a wrapped raw 0.
WIDE = {"pc459": ("VOCdevkit/VOC2010", "annotations_detectron2/pc459_val/{}.tif", 459, (459, 65535)),
        "ade847": ("ADE20K_2021_17_01", "annotations_detectron2/validation/{}.tif", 847, (65535,))}


def run_cli(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def detectron2_label(root: Path, name: str, image_id: str) -> np.ndarray:
    """The label as detectron2's SemSegEvaluator loads it (``np.array(Image.open(f), dtype=int)``); ignored -> -1."""
    folder, pattern, _, ignore = WIDE[name]
    raw = np.array(Image.open(root / folder / pattern.format(image_id)), dtype=int)
    return np.where(np.isin(raw, ignore), -1, raw)


# ------------------------------------------------------------------------------------------ reader, tables

def test_wide_readers_match_catseg_registration(tmp_path):
    ids = make_fake_wide_benchmarks(tmp_path)
    # VOC2010/JPEGImages holds every VOC2010 image; the ids are the label files present (load_sem_seg's pairing)
    Image.new("RGB", (4, 4)).save(tmp_path / "VOCdevkit/VOC2010/JPEGImages/2007_000027.jpg")
    for name in ("pc459", "ade847"):
        data = benchmark_dataset(name, tmp_path)
        assert data.ids == ids[name] and data.ignore_index == 65535 and data.num_classes == WIDE[name][2]
        for index, image_id in enumerate(data.ids):
            label = data.read_label(index)
            expected = detectron2_label(tmp_path, name, image_id)
            assert label.dtype == np.uint16
            np.testing.assert_array_equal(label.astype(int), np.where(expected < 0, 65535, expected))
            assert 255 in expected and expected.max() > 255  # class 255 is a class here, not ignore
        assert data.description["ignore_index"] == 65535
    assert len(read_query_file(benchmark_class_file("pc459"))[2]) == 459
    assert len(read_query_file(benchmark_class_file("ade847"), allow_duplicates=True)[2]) == 847
    assert label_names("pc459")[:3] == ["accordion", "aeroplane", "airconditioner"]
    assert label_names("ade847")[:2] == ["wall", "building"] and len(label_names("ade847")) == 847
    for name in ("pc459", "ade847"):
        at = benchmark_protocol(name).for_crop(224)
        assert (at["short_side"], at["crop"], at["stride"], at["temperature"]) == (448, 224, 112, 40.0)


def test_wide_label_out_of_range_is_named(tmp_path):
    make_fake_wide_benchmarks(tmp_path)
    path = tmp_path / WIDE["pc459"][0] / WIDE["pc459"][1].format("2008_000001")
    Image.fromarray(np.array([[0, 460]], np.uint16)).save(path, "TIFF")
    data = BenchmarkDataset("pc459", data_root=tmp_path)
    with pytest.raises(DataError, match=r"values \[460\] outside the expected range 0..458"):
        data.read_label(1)


def test_coco_stuff_in_the_182_id_order_is_refused(tmp_path):
    from fake_benchmarks import make_fake_benchmarks

    make_fake_benchmarks(tmp_path)
    path = tmp_path / "coco_stuff164k/annotations/val2017/000000000002_labelTrainIds.png"
    Image.fromarray(np.array([[0, 12, 178], [171, 181, 255]], np.uint8)).save(path)
    data = benchmark_dataset("coco_stuff", tmp_path)
    data.read_label(0)  # the 0..170 order reads
    with pytest.raises(DataError, match=r"values \[171, 178, 181\] \(171..181\): it is in the stuffthingmap's "
                                        r"182-id order .*`segclip prepare coco_stuff"):
        data.read_label(1)
    with pytest.raises(DataError, match="182-id order"):
        data.validate(1)  # the first map reads; the order check scans more
    from segclip.data.benchmarks import find_datasets

    status = find_datasets(tmp_path, names=["coco_stuff"])["coco_stuff"]
    assert not status.valid and "182-id order" in status.message


# ------------------------------------------------------------------------------------------ benchmark e2e

def test_benchmark_wide_datasets_match_saved_predictions(tmp_path, bundled_model, monkeypatch):
    import segclip.cli

    ids = make_fake_wide_benchmarks(tmp_path / "data")
    monkeypatch.setattr(segclip.cli, "load_model_for", lambda config, devices=1: bundled_model)
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(["benchmark", "--data-root", tmp_path / "data", "--datasets", "pc459,ade847",
                                    "--methods", "maskclip", "--limit", "2", "--save-predictions", "--out", out,
                                    *FAST])
    assert code == 0, stderr
    results = json.loads((out / "results.json").read_text())["results"]
    assert results["column_order"] == ["pc459", "ade847"]
    for name in ("pc459", "ade847"):
        classes = WIDE[name][2]
        confusion = np.zeros((classes, classes), np.int64)
        for image_id in ids[name][:2]:
            with Image.open(out / name / "predictions" / "maskclip" / f"{image_id}.png") as png:
                assert png.mode.startswith("I")  # 16-bit: class ids above 255 survive
                predicted = np.array(png).astype(int)
            label = detectron2_label(tmp_path / "data", name, image_id)
            keep = label >= 0
            confusion += np.bincount(label[keep] * classes + predicted[keep],
                                     minlength=classes ** 2).reshape(classes, classes)
        tp = np.diag(confusion).astype(float)
        union = confusion.sum(0) + confusion.sum(1) - tp
        expected = float(np.mean(tp[union > 0] / union[union > 0])) * 100
        assert results["table"]["maskclip"][name] == pytest.approx(expected, abs=1e-9)
        envelope = json.loads((out / name / "results.json").read_text())
        assert envelope["results"]["scores"][0]["confusion_matrix"] == confusion.tolist()
        assert envelope["provenance"]["dataset"]["ignore_index"] == 65535


# ------------------------------------------------------------------------------------------ prepare pc459

def catseg_pc459(mat_path: Path) -> np.ndarray:
    """CAT-Seg's convert_pc459: LabelMap - 1 in the map's own dtype (uint16: 0 wraps to 65535)."""
    mask = scipy.io.loadmat(str(mat_path))["LabelMap"]
    return mask - 1


def _pc459_tree(root: Path, rng) -> dict[str, np.ndarray]:
    (root / "trainval").mkdir(parents=True)
    maps = {}
    for image_id, size in (("2008_000002", (7, 9)), ("2008_000003", (5, 4)), ("2010_000005", (6, 6))):
        label_map = rng.integers(0, 460, size=size).astype(np.uint16)  # 0 (unlabelled) .. 459
        label_map[0, 0], label_map[-1, -1] = 0, 459
        scipy.io.savemat(str(root / "trainval" / f"{image_id}.mat"), {"LabelMap": label_map})
        maps[image_id] = label_map
    # a byte-order mark (Notepad), a blank line and an id without a .mat, as a user's list may hold
    (root / "pascalcontext_val.txt").write_bytes("\ufeff2008_000002\n2008_000003\n\n2008_000099\n2010_000005"
                                                 .encode("utf-8"))
    (root / "labels.txt").write_text("1: accordion\n2: aeroplane\n")
    return maps


def test_prepare_pc459_matches_catseg(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2010"
    maps = _pc459_tree(root, np.random.default_rng(0))
    code, stdout, stderr = run_cli(["prepare", "pc459", "--root", root])
    assert code == 0, stderr
    assert "3 label TIFFs" in stdout and "2008_000099" in stdout
    for image_id in maps:
        tif = root / "annotations_detectron2" / "pc459_val" / f"{image_id}.tif"
        reference = catseg_pc459(root / "trainval" / f"{image_id}.mat")
        buffer = io.BytesIO()
        Image.fromarray(reference).save(buffer, "TIFF")  # CAT-Seg's writer
        assert tif.read_bytes() == buffer.getvalue()
        np.testing.assert_array_equal(np.array(Image.open(tif)).astype(int),
                                      (maps[image_id].astype(int) - 1) % 65536)
    assert not list(root.glob(".segclip-prepare-*"))
    (root / "JPEGImages").mkdir()
    for image_id, label_map in maps.items():
        Image.fromarray(np.zeros((*label_map.shape, 3), np.uint8)).save(root / "JPEGImages" / f"{image_id}.jpg")
    data = BenchmarkDataset("pc459", root=root)
    assert data.ids == sorted(maps) and data[0]["label"].shape == maps["2008_000002"].shape
    code, _, stderr = run_cli(["prepare", "pc459", "--root", root])
    assert code == 2 and "already exist" in stderr and "--overwrite" in stderr


def test_prepare_pc459_refuses_hostile_inputs(tmp_path):
    root = tmp_path / "VOC2010"
    _pc459_tree(root, np.random.default_rng(1))
    (root / "pascalcontext_val.txt").write_text("2008_000002\n../../outside\n")
    (tmp_path / "outside.mat").write_bytes(b"")
    code, _, stderr = run_cli(["prepare", "pc459", "--root", root])
    assert code == 2 and "line 2" in stderr and "leaves" in stderr and len(stderr.strip().splitlines()) == 1
    assert not (root / "annotations_detectron2").exists()
    (root / "pascalcontext_val.txt").write_text("2008_000002\n")
    scipy.io.savemat(str(root / "trainval" / "2008_000002.mat"), {"LabelMap": np.ones((2, 2))})  # double
    code, _, stderr = run_cli(["prepare", "pc459", "--root", root])
    assert code == 2 and "not a 2-D uint16 LabelMap" in stderr
    (root / "trainval" / "2008_000002.mat").write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    code, _, stderr = run_cli(["prepare", "pc459", "--root", root])
    assert code == 2 and "as a MATLAB file" in stderr and len(stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------ prepare ade847

ADE_IDS = [2978, 312, 2420]  # wall, building, sky: train ids 0, 1, 2


def catseg_ade847(dataset_dir: Path, folder: str, file_name: str) -> tuple[np.ndarray, np.ndarray]:
    """CAT-Seg's prepare_ade20k_full.py for one index entry, transcribed: (saved JPEG's array, label)."""
    from segclip.data.prepare import ade847_category_ids

    id_map = dict(zip(ade847_category_ids(), range(847)))
    file = str(dataset_dir / folder / file_name)
    seg = np.array(Image.open(file.replace(".jpg", "_seg.png")))
    lab = (seg[:, :, 0] / 10).astype(np.int32) * 256 + seg[:, :, 1].astype(np.int32)
    img = np.asarray(Image.open(file))
    h, w = img.shape[0], img.shape[1]
    if w >= h > 512:
        h_new, w_new, resize = 512, round(w / float(h) * 512), True
    elif h >= w > 512:
        h_new, w_new, resize = round(h / float(w) * 512), 512, True
    else:
        resize = False
    if resize:
        img = cv2.resize(img, (w_new, h_new), interpolation=cv2.INTER_LINEAR)
        lab = cv2.resize(lab, (w_new, h_new), interpolation=cv2.INTER_NEAREST)
    output = np.zeros_like(lab, dtype=np.uint16) + 65535
    for obj_id in np.unique(lab):
        if obj_id in id_map:
            output[lab == obj_id] = id_map[obj_id]
    buffer = io.BytesIO()
    Image.fromarray(img).save(buffer, format="JPEG")
    return buffer.getvalue(), output


def _ade_tree(dataset_dir: Path, rng) -> list[tuple[str, str]]:
    entries = [("ADE20K_2021_17_01/images/ADE/validation/urban/street", "ADE_val_00000001.jpg", (520, 700)),
               ("ADE20K_2021_17_01/images/ADE/validation/home/kitchen", "ADE_val_00000002.jpg", (30, 40)),
               ("ADE20K_2021_17_01/images/ADE/training/urban/street", "ADE_train_00000001.jpg", (20, 20)),
               ("ADE20K_2021_17_01/images/ADE/validation/misc", "ADE_val_00000003.jpg", (600, 530))]
    for folder, name, (height, width) in entries:
        (dataset_dir / folder).mkdir(parents=True, exist_ok=True)
        ids = np.array([*ADE_IDS, 3156, 0, 4])[rng.integers(0, 6, size=(height // 10 + 1, width // 10 + 1))]
        ids = np.kron(ids, np.ones((10, 10), int))[:height, :width]  # blocks, as objects are
        seg = np.zeros((height, width, 3), np.uint8)
        seg[..., 0], seg[..., 1], seg[..., 2] = (ids // 256) * 10 + rng.integers(0, 10), ids % 256, 7
        Image.fromarray(seg).save(dataset_dir / folder / name.replace(".jpg", "_seg.png"))
        image = rng.integers(0, 256, size=(height, width, 3)).astype(np.uint8)
        Image.fromarray(image).save(dataset_dir / folder / name, quality=90)
    index = {"folder": [e[0] for e in entries], "filename": [e[1] for e in entries],
             "objectPresence": np.zeros((3, len(entries)), np.int64), "description": {"filename": "names"}}
    with open(dataset_dir / "ADE20K_2021_17_01" / "index_ade20k.pkl", "wb") as handle:
        pickle.dump(index, handle)
    return [(e[0], e[1]) for e in entries if "_val_" in e[1]]


def test_prepare_ade847_matches_catseg(tmp_path):
    entries = _ade_tree(tmp_path, np.random.default_rng(0))
    root = tmp_path / "ADE20K_2021_17_01"
    code, stdout, stderr = run_cli(["prepare", "ade847", "--root", root])
    assert code == 0, stderr
    assert "3 label TIFFs" in stdout
    for folder, name in entries:
        jpeg, label = catseg_ade847(tmp_path, folder, name)
        assert (root / "images_detectron2" / "validation" / name).read_bytes() == jpeg
        tif = root / "annotations_detectron2" / "validation" / name.replace(".jpg", ".tif")
        with Image.open(tif) as opened:
            assert opened.mode == "I;16"
            np.testing.assert_array_equal(np.array(opened), label)
        assert {0, 65535} <= set(np.unique(label).tolist())  # id 3156 (not among the 847) -> 65535
    assert min(Image.open(root / "images_detectron2/validation/ADE_val_00000001.jpg").size) == 512
    assert not (root / "images_detectron2" / "validation" / "ADE_train_00000001.jpg").exists()
    data = BenchmarkDataset("ade847", root=root)
    assert data.ids == ["ADE_val_00000001", "ADE_val_00000002", "ADE_val_00000003"]
    assert data[0]["label"].shape == (512, 689)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_prepare_ade847_refuses_hostile_index(tmp_path):
    _ade_tree(tmp_path, np.random.default_rng(1))
    root = tmp_path / "ADE20K_2021_17_01"
    index_path = root / "index_ade20k.pkl"
    with open(index_path, "rb") as handle:
        index = pickle.load(handle)
    index["folder"][1] = "ADE20K_2021_17_01/../../elsewhere"
    index_path.write_bytes(pickle.dumps(index))
    code, _, stderr = run_cli(["prepare", "ade847", "--root", root])
    assert code == 2 and "entry 1" in stderr and "leaves" in stderr and len(stderr.strip().splitlines()) == 1
    index_path.write_bytes(pickle.dumps({"folder": [_Evil()], "filename": ["x"]}))
    code, _, stderr = run_cli(["prepare", "ade847", "--root", root])
    assert code == 2 and "not allowed in an index file" in stderr
    assert not (root / "annotations_detectron2").exists()


# ------------------------------------------------------------------------------------------ prepare pascal_context

def _context_json(path: Path, **changes) -> None:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(np.ones((2, 3), np.uint8)))
    data = {"images": [{"file_name": "2008_000002.jpg", "image_id": 2008000002, "height": 2, "width": 3,
                        "phase": "val"}],
            "categories": [{"category_id": 2, "name": "aeroplane"}],
            "annos_segmentation": [{"id": 1, "image_id": 2008000002, "category_id": 2,
                                    "segmentation": {"size": [2, 3], "counts": rle["counts"].decode()}}]}
    for key, change in changes.items():
        change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("change, message", [
    (lambda d: d["images"][0].update(file_name="../../../escaped.jpg"), r"image file_name '../../../escaped.jpg'"
                                                                        r": the path .* leaves"),
    (lambda d: d["images"][0].update(file_name="/tmp/abs.jpg"), "leaves"),
    (lambda d: d["images"][0].pop("phase"), r"record 0 of 'images' \(file_name '2008_000002.jpg'\) has no 'phase'"),
    (lambda d: d["annos_segmentation"][0].pop("category_id"), r"record 0 of 'annos_segmentation' \(id '1'\) has no "
                                                              r"'category_id'"),
    (lambda d: d["images"][0].update(height="tall"), r"has a 'height' that is not a whole number \('tall'\)"),
    (lambda d: d.update(images={"2008_000002": d["images"][0]}), r"'images' is a dict, not a list of records"),
    (lambda d: d["images"].append(7), r"record 1 of 'images' is a int, not an object"),
])
def test_prepare_pascal_context_refuses_malformed_json(tmp_path, change, message):
    voc = tmp_path / "devkit" / "VOC2010"
    voc.mkdir(parents=True)
    _context_json(tmp_path / "trainval_merged.json", x=change)
    code, stdout, stderr = run_cli(["prepare", "pascal_context", "--devkit", tmp_path / "devkit", "--json",
                                    tmp_path / "trainval_merged.json"])
    assert code == 2, stdout
    assert len(stderr.strip().splitlines()) == 1 and "trainval_merged.json" in stderr and "again" in stderr
    import re

    assert re.search(message, stderr), stderr
    assert not (voc / "SegmentationClassContext").exists() and not list(tmp_path.rglob("escaped.png"))


# ------------------------------------------------------------------------------------------ resume after Ctrl-C

def _interrupt_after(monkeypatch, writes: int) -> None:
    real = prepare_module.atomic_write_bytes
    count = {"n": 0}

    def flaky(path, data):
        count["n"] += 1
        if count["n"] > writes:
            raise KeyboardInterrupt
        return real(path, data)

    monkeypatch.setattr(prepare_module, "atomic_write_bytes", flaky)


def test_prepare_resumes_after_ctrl_c(tmp_path, monkeypatch):
    root = tmp_path / "VOC2010"
    _pc459_tree(root, np.random.default_rng(2))
    clean = tmp_path / "clean"
    shutil.copytree(root, clean)
    assert run_cli(["prepare", "pc459", "--root", clean])[0] == 0
    with monkeypatch.context() as patch:
        _interrupt_after(patch, 1)
        code, _, stderr = run_cli(["prepare", "pc459", "--root", root])
    assert code == 130 and "run the same command again to resume" in stderr
    assert len(list((root / "annotations_detectron2" / "pc459_val").glob("*.tif"))) == 1
    code, stdout, stderr = run_cli(["prepare", "pc459", "--root", root])  # the command the message names
    assert code == 0, stderr
    for tif in (clean / "annotations_detectron2" / "pc459_val").glob("*.tif"):
        assert (root / "annotations_detectron2" / "pc459_val" / tif.name).read_bytes() == tif.read_bytes()
    assert not list(root.glob(".segclip-prepare-*"))
    code, _, stderr = run_cli(["prepare", "pc459", "--root", root])  # finished: a rerun refuses again
    assert code == 2 and "--overwrite" in stderr

    devkit = tmp_path / "devkit"
    (devkit / "VOC2010").mkdir(parents=True)
    _context_json(tmp_path / "trainval_merged.json", second=lambda d: d["images"].append(
        {"file_name": "2008_000003.jpg", "image_id": 2008000003, "height": 2, "width": 2, "phase": "val"}))
    args = ["prepare", "pascal_context", "--devkit", devkit, "--json", tmp_path / "trainval_merged.json"]
    with monkeypatch.context() as patch:
        _interrupt_after(patch, 1)
        assert run_cli(args)[0] == 130
    code, stdout, stderr = run_cli(args)
    assert code == 0, stderr
    assert (devkit / "VOC2010/ImageSets/SegmentationContext/val.txt").read_text() == "2008_000002\n2008_000003\n"
    assert np.array(Image.open(devkit / "VOC2010/SegmentationClassContext/2008_000003.png")).tolist() == [[0, 0]] * 2


# ------------------------------------------------------------------------------------------ .mat files

def test_devkit_mat_files_give_one_line_errors(tmp_path):
    meta = tmp_path / "meta.mat"
    meta.write_bytes(b"")
    with pytest.raises(DataError, match="not a readable MATLAB file"):
        read_imagenet_meta(meta)
    scipy.io.savemat(str(meta), {"synsets": np.arange(5)})
    with pytest.raises(DataError, match=r"'synsets' is a ndarray of int64 without the fields"):
        read_imagenet_meta(meta)
    scipy.io.savemat(str(meta), {"other": np.arange(5)})
    with pytest.raises(DataError, match=r"has no 'synsets' \(it holds \['other'\]\)"):
        read_imagenet_meta(meta)
    synsets = np.zeros((1, 2), dtype=[(f, "O") for f in ("ILSVRC2012_ID", "WNID", "num_children")])
    synsets[0, 0] = ("1", "n01440764", 0)  # a text id, even one that reads as a number
    synsets[0, 1] = (2, "n01443537", 0)
    scipy.io.savemat(str(meta), {"synsets": synsets})
    with pytest.raises(DataError, match=r"synset 0 has ILSVRC2012_ID '1'"):
        read_imagenet_meta(meta)

    base = tmp_path / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    names = np.empty((1, 2), dtype=object)
    names[0, :] = ["AM General Hummer SUV 2000", "Acura TL Type-S 2008"]
    scipy.io.savemat(str(base / "devkit" / "cars_meta.mat"), {"class_names": names})
    scipy.io.savemat(str(base / "devkit" / "cars_train_annos.mat"), {"annotations": np.arange(4.0)})
    with pytest.raises(DataError, match=r"'annotations' is a ndarray of float64 without the fields \['fname', "
                                        r"'class'\]"):
        read_stanford_cars(tmp_path)
    annotations = np.zeros((1, 1), dtype=[(f, "O") for f in ("class", "fname")])
    annotations[0, 0] = (1, "../../secret.jpg")
    scipy.io.savemat(str(base / "devkit" / "cars_train_annos.mat"), {"annotations": annotations})
    with pytest.raises(DataError, match="leaves cars_train"):
        read_stanford_cars(tmp_path)
    (base / "devkit" / "cars_train_annos.mat").write_bytes(b"\x00" * 10)
    with pytest.raises(DataError, match="not a readable MATLAB file"):
        read_stanford_cars(tmp_path)


# ------------------------------------------------------------------------------------------ byte-order marks

def test_byte_order_marks_are_stripped(tmp_path):
    from fake_benchmarks import make_fake_benchmarks

    ids = make_fake_benchmarks(tmp_path)
    split = tmp_path / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt"
    split.write_bytes(b"\xef\xbb\xbf" + split.read_bytes())
    assert benchmark_dataset("voc21", tmp_path).ids == ids["voc21"]
    classes = tmp_path / "classes.txt"
    classes.write_bytes("\ufeffsky\nwall, walls\n".encode("utf-8"))
    assert read_query_file(classes)[0] == ["sky", "wall", "walls"]
