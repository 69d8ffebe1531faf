"""Dataset readers on fabricated copies of the real layouts: ImageNet val (wnid folders; flat files with the devkit's
meta.mat and ground truth), Stanford Cars (devkit .mat files written with scipy.io.savemat, read back by
torchvision as the reference); duplicate text names for classification."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from segclip.analysis.datasets import read_dataset
from segclip.analysis.evaluation import ConditionAccuracy
from segclip.data.classification import (
    imagenet_class_names,
    imagenet_wnids,
    parse_car_name,
    read_imagenet,
    read_stanford_cars,
)
from segclip.errors import ConfigError, DataError
from segclip.models.text import check_class_names
from segclip.models.zero_shot import (
    encode_classification_names,
    unique_names,
    zero_shot_predict,
)


def image(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path, "JPEG")


def test_wnids_and_names_line_up():
    wnids, names = imagenet_wnids(), imagenet_class_names()
    assert len(wnids) == len(set(wnids)) == len(names) == 1000 and wnids == sorted(wnids)
    # facts of the ILSVRC2012 synsets: both 'missile' wnids and both 'sunglasses' wnids
    assert [wnids.index(w) for w in ("n03773504", "n04008634", "n04355933", "n04356056")] == [657, 744, 836, 837]
    assert names[657] == names[744] == "missile" and names[836] == names[837] == "sunglasses"
    assert (names[wnids.index("n01440764")], names[wnids.index("n02123045")]) == ("tench", "tabby cat")


def test_imagenet_wnid_folders(tmp_path, caplog):
    chosen = ["n01440764", "n02123045", "n15075141"]
    for i, wnid in enumerate(chosen):
        for j in range(2):
            image(tmp_path / "val" / wnid / f"ILSVRC2012_val_{10 * i + j:08d}.JPEG", i)
    caplog.set_level(logging.WARNING)
    data = read_dataset("imagenet", tmp_path)
    assert data.labels.tolist() == [0, 0, 281, 281, 999, 999]
    assert data.class_names == imagenet_class_names() and data.description["layout"] == "folder"
    assert data.description["duplicate_text_names"] == {"missile": [657, 744], "sunglasses": [836, 837]}
    assert "not the standard 50000" in caplog.text and "3 of the 1000" in caplog.text
    (tmp_path / "val" / "n99999999").mkdir()
    with pytest.raises(DataError, match="n99999999"):
        read_imagenet(tmp_path)


def write_devkit(root, rng):
    """meta.mat as the devkit ships it: leaves with ILSVRC2012_IDs in a shuffled (non-wnid) order, plus inner
    synsets with children; returns {wnid: ILSVRC2012_ID}."""
    wnids = imagenet_wnids()
    order = rng.permutation(1000)
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
              "num_train_images"]
    synsets = np.zeros((1, 1003), dtype=[(f, "O") for f in fields])
    ids = {}
    for position, leaf in enumerate(order):
        ids[wnids[leaf]] = position + 1
        synsets[0, position] = (position + 1, wnids[leaf], f"words {leaf}", "gloss", 0, np.zeros((1, 0)), 0, 1300)
    for extra in range(3):
        synsets[0, 1000 + extra] = (1001 + extra, f"n0000000{extra}", "inner", "gloss", 2,
                                    np.array([[1, 2]]), 1, 0)
    data = root / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True)
    scipy.io.savemat(str(data / "meta.mat"), {"synsets": synsets})
    return ids, data


def test_imagenet_flat_layout_maps_devkit_ids(tmp_path):
    rng = np.random.default_rng(0)
    ids, data = write_devkit(tmp_path, rng)
    wnids = imagenet_wnids()
    truth = [wnids[i] for i in rng.integers(0, 1000, 8)]  # the wnid of image k is truth[k - 1]
    for k in (1, 2, 3, 5, 8):
        image(tmp_path / "val" / f"ILSVRC2012_val_{k:08d}.JPEG", k)
    with pytest.raises(DataError, match="ILSVRC2012_validation_ground_truth.txt"):
        read_imagenet(tmp_path)
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{ids[w]}\n" for w in truth))
    result = read_imagenet(tmp_path)
    assert [p.name for p in result.paths] == [f"ILSVRC2012_val_{k:08d}.JPEG" for k in (1, 2, 3, 5, 8)]
    assert result.labels.tolist() == [wnids.index(truth[k - 1]) for k in (1, 2, 3, 5, 8)]
    assert result.attributes["class"] == [truth[k - 1] for k in (1, 2, 3, 5, 8)]
    image(tmp_path / "val" / "ILSVRC2012_val_00000009.JPEG")
    with pytest.raises(DataError, match="8 lines"):
        read_imagenet(tmp_path)


CAR_NAMES = ["AM General Hummer SUV 2000", "BMW 1 Series Convertible 2012", "Ford F-150 Regular Cab 2012",
             "Acura TL Type-S 2008", "Ram C/V Cargo Van Minivan 2012", "Dodge Caliber Wagon 2007"]


def write_cars(root, split="train", n=9, classes=None):
    base = root / "stanford_cars"
    (base / "devkit").mkdir(parents=True, exist_ok=True)
    names = np.empty((1, len(CAR_NAMES)), dtype=object)
    names[0, :] = CAR_NAMES
    scipy.io.savemat(str(base / "devkit" / "cars_meta.mat"), {"class_names": names})
    classes = classes if classes is not None else [1 + i % len(CAR_NAMES) for i in range(n)]
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"]
    annotations = np.zeros((1, n), dtype=[(f, "O") for f in fields])
    for i in range(n):
        fname = f"{i + 1:05d}.jpg"
        annotations[0, i] = (np.uint8(3), np.uint8(4), np.uint8(30), np.uint8(20), np.uint8(classes[i]), fname)
        image(base / f"cars_{split}" / fname, i)
    path = base / "devkit" / "cars_train_annos.mat" if split == "train" else base / "cars_test_annos_withlabels.mat"
    scipy.io.savemat(str(path), {"annotations": annotations})
    return base


@pytest.mark.parametrize("split", ["train", "test"])
def test_stanford_cars_against_torchvision(tmp_path, split):
    from torchvision.datasets import StanfordCars

    write_cars(tmp_path, split, classes=[3, 1, 2, 2, 6, 5, 4, 2, 1])
    data = read_stanford_cars(tmp_path, split)
    reference = StanfordCars(str(tmp_path), split=split)
    assert [str(p) for p in data.paths] == [path for path, _ in reference._samples]
    assert data.labels.tolist() == [label for _, label in reference._samples]
    assert data.class_names == reference.classes
    assert data.groups("year") == ["2012", "2000", "2012", "2012", "2007", "2012", "2008", "2012", "2000"]
    assert data.groups("body") == ["Cab", "SUV", "Convertible", "Convertible", "Wagon", "Minivan", "unknown",
                                   "Convertible", "SUV"]
    assert data.concepts["convertible"].tolist() == [0, 0, 1, 1, 0, 0, 0, 1, 0]
    with pytest.raises(DataError, match="no grouping key 'colour'"):
        data.groups("colour")


def test_stanford_cars_colours_and_errors(tmp_path):
    base = write_cars(tmp_path)
    csv = tmp_path / "colours.csv"
    csv.write_text("image,colour\n" + "".join(f"{i + 1:05d}.jpg,{'Yellow' if i % 3 == 0 else 'red'}\n"
                                              for i in range(9)))
    data = read_dataset("stanford_cars", tmp_path, colours=csv)
    assert data.concepts["yellow"].tolist() == [1, 0, 0, 1, 0, 0, 1, 0, 0] and data.groups("colour")[1] == "red"
    csv.write_text("image,colour\n00001.jpg,red\n")
    with pytest.raises(DataError, match="no colour for 8 images"):
        read_stanford_cars(tmp_path, colours=csv)
    (base / "cars_train" / "00004.jpg").unlink()
    with pytest.raises(DataError, match="00004.jpg"):
        read_stanford_cars(tmp_path)
    write_cars(tmp_path, classes=[7] * 9)
    with pytest.raises(DataError, match="1-based"):
        read_stanford_cars(tmp_path)
    (base / "devkit" / "cars_meta.mat").unlink()
    with pytest.raises(DataError, match="cars_meta.mat is missing"):
        read_stanford_cars(tmp_path)


@pytest.mark.parametrize("name, expected", [
    ("Chevrolet Silverado 1500 Extended Cab 2012", ("2012", "Cab")), ("Ford Ranger SuperCab 2011", ("2011", "Cab")),
    ("Audi TTS Coupe 2012", ("2012", "Coupe")), ("Hyundai Veloster Hatchback 2012", ("2012", "Hatchback")),
    ("Bentley Continental Supersports Conv. Convertible 2012", ("2012", "Convertible")),
    ("Chevrolet Express Cargo Van 2007", ("2007", "Van")), ("Volvo 240 Sedan 1993", ("1993", "Sedan")),
    ("Chevrolet Corvette ZR1 2012", ("2012", "unknown")), ("no year here", ("unknown", "unknown"))])
def test_car_names(name, expected):
    assert parse_car_name(name) == expected


def test_duplicate_names_for_classification_only():
    with pytest.raises(ConfigError, match="Duplicate"):
        check_class_names(["missile", "cat", "missile"])  # segmentation lists: still refused
    assert unique_names(["missile", "cat", "missile"])[1].tolist() == [0, 1, 0]
    with pytest.raises(ConfigError, match="blank"):
        unique_names(["cat", " "])
    from segclip.models import load_model

    model = load_model()
    texts = encode_classification_names(model, ["ball", "star", "ball", "ring"], "single", cache=False)
    assert torch.equal(texts[0], texts[2]) and not torch.equal(texts[0], texts[1])
    # an image embedded exactly on the duplicated text: both logits tie, the lower class index wins
    accuracy = ConditionAccuracy({"plain": lambda t: t}, texts, torch.tensor([2]))
    accuracy.update(texts[2:3].clone(), 0)
    assert accuracy.predictions.tolist() == [[0]]
    logits = torch.tensor([[0.2, 0.9, 0.3, 0.9], [0.9, 0.1, 0.9, 0.0]])
    assert zero_shot_predict(logits).tolist() == [1, 0]


def test_dataset_config(tmp_path):
    from segclip.analysis.datasets import DatasetConfig
    from segclip.config import build_config

    write_cars(tmp_path)
    data = build_config(DatasetConfig, {"dataset": "stanford_cars", "data-root": str(tmp_path)}).read()
    assert len(data) == 9 and data.description["split"] == "train"
    with pytest.raises(ConfigError, match="--data-root"):
        DatasetConfig(dataset="stanford_cars")
    with pytest.raises(ConfigError, match="--colours applies"):
        DatasetConfig(dataset="imagenet", data_root=tmp_path, colours=tmp_path / "c.csv")


def test_shift_on_fabricated_cars_end_to_end(tmp_path):
    """Stanford Cars -> concept scores on the Lightning pass -> point-biserial and drift by model year."""
    from segclip.analysis.distributed import run_distributed_pass
    from segclip.analysis.drift import DriftConfig
    from segclip.analysis.units import ConceptScores, concept_pairs, point_biserial
    from segclip.models import load_model
    from segclip.models.text import encode_classes

    write_cars(tmp_path, n=12)
    data = read_stanford_cars(tmp_path)
    model = load_model()
    pairs = concept_pairs(model.pool, encode_classes(model, ["convertible"], "single", cache=False), top=5)
    result = run_distributed_pass(model, data.paths, lambda m: ConceptScores(m.pool, pairs, len(data)),
                                  key={"kind": "shift"}, batch_size=4)
    scores = result.accumulator.scores[:, 0]
    assert not scores.isnan().any()
    correlation = point_biserial(scores, data.concepts["convertible"])
    assert -1 <= correlation <= 1
    report = DriftConfig(drift_methods=("ks",)).report(scores.numpy(), data.groups("year"))
    assert report.reference == "2000" and [t.group for t in report.tests] == ["2007", "2008", "2012"]
