"""The eight benchmark readers, class files, the synonym-max rule and the protocols."""
from __future__ import annotations

import doctest
import logging
import math
import shutil

import numpy as np
import pytest
import torch
from fake_benchmarks import make_fake_benchmarks
from PIL import Image

from segclip.data import benchmarks, prepare, protocols, queries
from segclip.data.benchmarks import (
    BENCHMARKS,
    SPECS,
    BenchmarkDataset,
    benchmark_dataset,
    find_datasets,
    label_names,
)
from segclip.data.protocols import PROTOCOLS, benchmark_protocol
from segclip.data.queries import (
    assign_query_labels,
    benchmark_class_file,
    query_class_probabilities,
    read_query_file,
)
from segclip.errors import ConfigError, DataError
from segclip.segment.evaluate import window_protocol

# mmsegmentation's label semantics per benchmark, written out independently of the readers:
# (number of classes, reduce_zero_label, label file for image id i relative to the dataset folder)
MMSEG = {
    "voc21": (21, False, lambda i: f"SegmentationClass/{i}.png"),
    "voc20": (20, True, lambda i: f"SegmentationClass/{i}.png"),
    "context60": (60, False, lambda i: f"SegmentationClassContext/{i}.png"),
    "context59": (59, True, lambda i: f"SegmentationClassContext/{i}.png"),
    "coco_object": (81, False, lambda i: f"annotations/val2017/{i}_instanceTrainIds.png"),
    "coco_stuff": (171, False, lambda i: f"annotations/val2017/{i}_labelTrainIds.png"),
    "cityscapes": (19, False, lambda i: f"gtFine/val/{i.split('_')[0]}/{i}_gtFine_labelTrainIds.png"),
    "ade20k": (150, True, lambda i: f"annotations/validation/{i}.png"),
}
EIGHT = tuple(MMSEG)  # the 8-bit benchmarks; PC-459 and ADE-847 (16-bit TIFFs): tests/test_wide_data.py
FOLDERS = {"voc21": "VOCdevkit/VOC2012", "voc20": "VOCdevkit/VOC2012", "context60": "VOCdevkit/VOC2010",
           "context59": "VOCdevkit/VOC2010", "coco_object": "coco_stuff164k", "coco_stuff": "coco_stuff164k",
           "cityscapes": "cityscapes", "ade20k": "ade/ADEChallengeData2016"}


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("benchmarks")
    return root, make_fake_benchmarks(root)


def _mmseg_label(path, reduce_zero_label):
    """LoadAnnotations: the PNG's indices; with reduce_zero_label 0 -> 255, then -1, and 254 back to 255."""
    gt = np.array(Image.open(path)).astype(np.uint8)
    if reduce_zero_label:
        gt[gt == 0] = 255
        gt = gt - 1
        gt[gt == 254] = 255
    return gt


def test_benchmark_order_and_specs():
    assert BENCHMARKS == ("voc21", "context60", "coco_object", "voc20", "context59", "coco_stuff", "cityscapes",
                          "ade20k", "pc459", "ade847")
    for name in EIGHT:
        assert len(label_names(name)) == MMSEG[name][0]
    assert len(label_names("pc459")) == 459 and len(label_names("ade847")) == 847


@pytest.mark.parametrize("name", EIGHT)
def test_reader_matches_mmseg_semantics(fake_root, name):
    root, ids = fake_root
    data = benchmark_dataset(name, root)
    num_classes, reduce_zero_label, label_file = MMSEG[name]
    assert data.ids == ids[name] and len(data) == 3 and data.num_classes == num_classes
    assert len(data.class_names) == num_classes and data.description["images"] == 3
    for index, image_id in enumerate(ids[name]):
        sample = data[index]
        expected = _mmseg_label(root / FOLDERS[name] / label_file(image_id), reduce_zero_label)
        assert sample["id"] == image_id
        assert sample["image"].dtype == np.uint8 and sample["image"].shape == (*expected.shape, 3)
        np.testing.assert_array_equal(sample["label"], expected)
        valid = sample["label"][sample["label"] != 255]
        assert valid.max(initial=0) < num_classes


def test_voc_labels_are_palette_indices(fake_root):
    root, ids = fake_root
    path = root / "VOCdevkit/VOC2012/SegmentationClass" / f"{ids['voc21'][0]}.png"
    assert Image.open(path).mode == "P"
    label = benchmark_dataset("voc21", root)[0]["label"]
    assert set(np.unique(label)) <= set(range(21)) | {255} and (label == 255).any()
    voc20 = benchmark_dataset("voc20", root)[0]["label"]
    np.testing.assert_array_equal(voc20[label == 0], 255)  # background ignored
    np.testing.assert_array_equal(voc20[(label > 0) & (label < 255)], label[(label > 0) & (label < 255)] - 1)


def test_cityscapes_ids_span_cities_sorted(fake_root):
    root, _ = fake_root
    data = benchmark_dataset("city_scapes", root)
    assert data.ids == ["frankfurt_000000_000010", "frankfurt_000000_000011", "lindau_000000_000010"]
    assert data.label_paths[2].parent.name == "lindau"


def test_root_override_and_limit(fake_root, tmp_path):
    root, ids = fake_root
    data = benchmark_dataset("ade", None, roots={"ade20k": root / "ade" / "ADEChallengeData2016"}, limit=2)
    assert data.ids == ids["ade20k"][:2]
    with pytest.raises(ConfigError, match="data root"):
        BenchmarkDataset("ade20k")
    with pytest.raises(ConfigError, match="Unknown dataset"):
        BenchmarkDataset("voc2012", data_root=root)


def test_count_warning(fake_root, caplog):
    root, _ = fake_root
    with caplog.at_level(logging.WARNING, logger="segclip.data.benchmarks"):
        benchmark_dataset("voc21", root)
    assert "lists 3 images; the standard val set has 1449" in caplog.text


def _copy(fake_root, tmp_path, folder):
    root, _ = fake_root
    shutil.copytree(root / folder, tmp_path / folder)
    return tmp_path


def test_missing_files_name_file_and_prepare_command(fake_root, tmp_path):
    root = _copy(fake_root, tmp_path, "VOCdevkit/VOC2010")
    (root / "VOCdevkit/VOC2010/SegmentationClassContext/2008_000001.png").unlink()
    with pytest.raises(DataError, match=r"1 of 3 label maps .*2008_000001\.png.*segclip prepare pascal_context"):
        benchmark_dataset("context59", root)
    shutil.rmtree(root / "VOCdevkit/VOC2010/ImageSets")
    with pytest.raises(DataError, match=r"split file .*SegmentationContext/val\.txt does not exist"):
        benchmark_dataset("context60", root)
    with pytest.raises(DataError, match=r"coco_stuff164k does not exist.*segclip prepare coco_object"):
        benchmark_dataset("coco_object", root)
    statuses = find_datasets(root)
    assert [n for n, s in statuses.items() if s.present] == ["context60", "context59", "pc459"]
    assert not statuses["context59"].valid and "val.txt" in statuses["context59"].message


def test_out_of_range_label_is_a_data_error(fake_root, tmp_path):
    root = _copy(fake_root, tmp_path, "ade/ADEChallengeData2016")
    path = root / "ade/ADEChallengeData2016/annotations/validation/ADE_val_00000001.png"
    label = np.array(Image.open(path))
    label[0, 0] = 151
    Image.fromarray(label).save(path)
    data = benchmark_dataset("ade20k", root)
    with pytest.raises(DataError, match=r"ADE_val_00000001\.png has values \[151\]"):
        data[0]
    with pytest.raises(DataError, match="151"):
        data.validate()
    assert not find_datasets(root, names=["ade20k"])["ade20k"].valid
    label[0, 0] = 150  # the largest raw ADE value is valid
    Image.fromarray(label).save(path)
    assert benchmark_dataset("ade20k", root)[0]["label"][0, 0] == 149


def test_size_mismatch_is_a_data_error(fake_root, tmp_path):
    root = _copy(fake_root, tmp_path, "coco_stuff164k")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(
        root / "coco_stuff164k/annotations/val2017/000000000002_labelTrainIds.png")
    with pytest.raises(DataError, match=r"000000000002_labelTrainIds\.png is 5x5"):
        benchmark_dataset("coco_stuff", root)[1]


def test_find_datasets_all_valid(fake_root):
    root, _ = fake_root
    statuses = find_datasets(root)
    assert list(statuses) == list(BENCHMARKS)
    assert all(s.present and s.valid and s.images == 3 for s in statuses.values())
    assert "standard val set has 5000" in statuses["coco_stuff"].message


# ------------------------------------------------------------------------------------------ class files

def test_shipped_class_files():
    counts = {}
    for name in BENCHMARKS:
        queries, query_to_class, class_names = read_query_file(benchmark_class_file(name), allow_duplicates=True)
        assert len(class_names) == SPECS[name].num_classes and len(queries) == len(query_to_class)
        assert query_to_class == sorted(query_to_class)
        counts[name] = len(queries)
    assert counts == {"voc21": 56, "context60": 60, "coco_object": 113, "voc20": 30, "context59": 59,
                      "coco_stuff": 171, "cityscapes": 19, "ade20k": 150, "pc459": 459, "ade847": 1281}
    queries, query_to_class, class_names = read_query_file(benchmark_class_file("voc21"))
    assert class_names[0].startswith("sky, wall, tree, wood") and query_to_class[:26] == [0] * 26
    assert class_names[15].split(", ")[:2] == ["person", "person in shirt"]
    assert class_names[20] == "television monitor, tv monitor, monitor, television, screen"
    with pytest.raises(DataError, match="'bed' on line 61 .* line 1"):
        read_query_file(benchmark_class_file("coco_object"))


def test_user_class_file(tmp_path, fake_root):
    path = tmp_path / "classes.txt"
    path.write_text("cat, kitty\ndog\n")
    assert read_query_file(path) == (["cat", "kitty", "dog"], [0, 0, 1], ["cat, kitty", "dog"])
    for text, match in (("cat\n\ndog\n", "empty lines"), ("cat, , kitty\n", "empty name"),
                        ("cat, cat\n", "twice on line 1"), ("cat\ndog, cat\n", "'cat' on line 2 .* line 1"),
                        ("", "no classes")):
        path.write_text(text)
        with pytest.raises(DataError, match=match):
            read_query_file(path)
    path.write_text("a\nb\n")
    with pytest.raises(DataError, match="2 lines but voc20 has 20 classes"):
        benchmark_dataset("voc20", fake_root[0], class_file=path)
    path.write_text("".join(f"thing {i}, object {i}\n" for i in range(20)))
    data = benchmark_dataset("voc20", fake_root[0], class_file=path)
    assert len(data.queries) == 40 and data.class_names[3] == "thing 3, object 3"


# ------------------------------------------------------------------------------------------ the rule

def _brute_force(logits, query_to_class, scale, prob_threshold, area_threshold):
    """Per pixel, in plain Python: softmax over queries, max over synonyms, area rule, argmax, threshold."""
    q, h, w = len(logits), len(logits[0]), len(logits[0][0])
    c = max(query_to_class) + 1
    probs = [[[0.0] * c for _ in range(w)] for _ in range(h)]
    for y in range(h):
        for x in range(w):
            exps = [math.exp(scale * logits[k][y][x]) for k in range(q)]
            total = sum(exps)
            for k in range(q):
                cls = query_to_class[k]
                probs[y][x][cls] = max(probs[y][x][cls], exps[k] / total)

    def first_argmax(values):
        best = 0
        for i, v in enumerate(values):
            if v > values[best]:
                best = i
        return best

    if area_threshold is not None:
        area = [0] * c
        for y in range(h):
            for x in range(w):
                area[first_argmax(probs[y][x])] += 1
        foreground = sum(area[1:])
        for cls in range(1, c):
            if not area[cls] > area_threshold * foreground:
                for y in range(h):
                    for x in range(w):
                        probs[y][x][cls] = 0.0
    labels = [[0] * w for _ in range(h)]
    for y in range(h):
        for x in range(w):
            best = first_argmax(probs[y][x])
            labels[y][x] = 0 if max(probs[y][x]) < prob_threshold else best
    return labels, probs


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("prob_threshold, area_threshold", [(0.0, None), (0.35, None), (0.1, 0.1), (0.0, 0.3)])
def test_rule_matches_brute_force(seed, prob_threshold, area_threshold):
    rng = np.random.default_rng(seed)
    query_to_class = [0, 0, 0, 1, 2, 2, 3, 4, 4, 4, 5]
    logits = rng.normal(0.2, 0.05, size=(len(query_to_class), 9, 7))
    logits[3, :2] += 0.2  # a small region of class 1, so the area rule has something to drop
    labels = assign_query_labels(torch.tensor(logits), query_to_class, 40.0, prob_threshold, area_threshold)
    expected, probs = _brute_force(logits.tolist(), query_to_class, 40.0, prob_threshold, area_threshold)
    assert labels.dtype == torch.int64 and labels.tolist() == expected
    if area_threshold is None:
        got = query_class_probabilities(torch.tensor(logits), query_to_class, 40.0).permute(1, 2, 0)
        np.testing.assert_allclose(got.numpy(), np.array(probs), rtol=1e-12, atol=1e-15)


def test_area_rule_counts_foreground_only():
    # 10 pixels: 6 background, 3 of class 1, 1 of class 2. Class 2 has 1/4 of the foreground (kept at 0.2) but
    # 1/10 of the image (dropped at 0.2 if the rule counted every pixel).
    logits = torch.zeros(3, 1, 10)
    logits[0, 0, :6] = 1.0
    logits[1, 0, 6:9] = 1.0
    logits[2, 0, 9] = 1.0
    assert assign_query_labels(logits, [0, 1, 2], 10.0, 0.0, 0.2).tolist() == [[0] * 6 + [1] * 3 + [2]]
    assert assign_query_labels(logits, [0, 1, 2], 10.0, 0.0, 0.3).tolist() == [[0] * 6 + [1] * 3 + [0]]


def test_shared_name_ties_go_to_the_earlier_class():
    logits = torch.tensor([[[0.1]], [[0.9]], [[0.9]]])  # queries: sky (bg), bed (bg), bed (class 1)
    assert assign_query_labels(logits, [0, 0, 1], 50.0).item() == 0


def test_rule_rejects_bad_inputs():
    with pytest.raises(ValueError, match="one class per query"):
        assign_query_labels(torch.zeros(3, 2, 2), [0, 1], 1.0)
    with pytest.raises(ValueError, match="every class"):
        assign_query_labels(torch.zeros(2, 2, 2), [0, 2], 1.0)
    with pytest.raises(ValueError, match="thresholds"):
        assign_query_labels(torch.zeros(2, 2, 2), [0, 1], 1.0, prob_threshold=1.5)


# ------------------------------------------------------------------------------------------ protocols

def test_shipped_protocols_are_sclips():
    # (short side, logit scale, prob threshold, area threshold) in SCLIP's configs/cfg_*.py at crop 224, stride 112
    sclip = {"voc21": (336, 65, 0.1, 0.1), "voc20": (336, 40, 0.0, None), "context60": (336, 50, 0.1, None),
             "context59": (336, 40, 0.0, None), "coco_object": (336, 50, 0.1, None),
             "coco_stuff": (448, 40, 0.0, None), "cityscapes": (560, 40, 0.0, None), "ade20k": (336, 40, 0.0, None)}
    paper = [("context59", "paper"), ("context60", "paper"), ("synthetic", "paper")]
    assert sorted(PROTOCOLS) == sorted([(n, "sclip") for n in BENCHMARKS] + paper)
    for name, _ in paper:  # the paper's RN50x16 numbers exactly at crop 384, scaled for other crops
        assert benchmark_protocol(name, "paper").for_crop(384) == {
            "short_side": 512, "long_side": 2048, "crop": 384, "stride": 192, "temperature": 40.0,
            "prob_threshold": 0.0, "area_threshold": None}
        assert benchmark_protocol(name, "paper").for_crop(224)["short_side"] == 299
    for name, (short, scale, prob, area) in sclip.items():
        at = benchmark_protocol(name).for_crop(224)
        assert (at["short_side"], at["crop"], at["stride"], at["long_side"]) == (short, 224, 112, 2048)
        assert (at["temperature"], at["prob_threshold"], at["area_threshold"]) == (scale, prob, area)


def test_protocols_scale_with_the_crop():
    voc = benchmark_protocol("voc21")
    assert {k: voc.for_crop(384)[k] for k in ("short_side", "crop", "stride", "long_side")} == {
        "short_side": 576, "crop": 384, "stride": 192, "long_side": 3511}
    assert benchmark_protocol("cityscapes").for_crop(288)["short_side"] == 720
    assert benchmark_protocol("coco_stuff").for_crop(448)["short_side"] == 896
    paper = benchmark_protocol("context59", "paper")
    window = window_protocol(paper, 384)
    assert (window.short_side, window.crop, window.stride, window.long_side, window.temperature) == (
        512, 384, 192, 2048, 40.0)
    assert paper.for_crop(384)["prob_threshold"] == 0.0 and paper.for_crop(384)["area_threshold"] is None
    assert paper.to_dict(384)["at_crop"]["short_side"] == 512 and paper.to_dict()["reference_crop"] == 384
    for protocol in PROTOCOLS.values():
        for crop in (224, 288, 384, 448):
            at = protocol.for_crop(crop)
            assert at["stride"] * 2 == crop and at["stride"] <= at["crop"]
    with pytest.raises(ConfigError, match="No protocol 'paper' for dataset 'voc21'"):
        benchmark_protocol("voc21", "paper")


@pytest.mark.parametrize("module", [benchmarks, queries, protocols, prepare], ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
