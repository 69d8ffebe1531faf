"""`segclip benchmark` and `segclip prepare` end to end through `segclip.cli.main`, on fabricated copies of the
eight layouts, with a tiny random model standing in for the loader (the issue's acceptance command with RN50 is the
`slow` test at the end); the query rule through the real pipeline against brute force."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fake_benchmarks import make_fake_benchmarks
from PIL import Image
from test_methods import tiny_model

import segclip.cli
from segclip.cli import build_parser, main
from segclip.data.benchmarks import BENCHMARKS
from segclip.data.protocols import benchmark_protocol
from segclip.data.queries import parse_query_lines
from segclip.io import to_jsonable
from segclip.segment.methods import SegmentationMethod, TextRecipe, build_methods
from segclip.segment.pipeline import QueryLabelRule, distinct_queries, segment_images
from segclip.segment.results import ResultStore
from segclip.segment.windows import SlidingWindowProtocol, logits_to_labels

README = Path(__file__).resolve().parents[1] / "README.md"
FAST = ["--templates", "single", "--k", "50", "--no-progress"]
# Each benchmark's label files and encoding as mmsegmentation reads them, written out here independently of the
# readers: (folder under the data root, label path of an image id, classes, reduce_zero_label).
LABELS = {
    "voc21": ("VOCdevkit/VOC2012", "SegmentationClass/{}.png", 21, False),
    "context60": ("VOCdevkit/VOC2010", "SegmentationClassContext/{}.png", 60, False),
    "coco_object": ("coco_stuff164k", "annotations/val2017/{}_instanceTrainIds.png", 81, False),
    "voc20": ("VOCdevkit/VOC2012", "SegmentationClass/{}.png", 20, True),
    "context59": ("VOCdevkit/VOC2010", "SegmentationClassContext/{}.png", 59, True),
    "coco_stuff": ("coco_stuff164k", "annotations/val2017/{}_labelTrainIds.png", 171, False),
    "cityscapes": ("cityscapes", "gtFine/val/{town}/{}_gtFine_labelTrainIds.png", 19, False),
    "ade20k": ("ade/ADEChallengeData2016", "annotations/validation/{}.png", 150, True),
    "pc459": ("VOCdevkit/VOC2010", "annotations_detectron2/pc459_val/{}.tif", 459, False),
    "ade847": ("ADE20K_2021_17_01", "annotations_detectron2/validation/{}.tif", 847, False),
}
# CAT-Seg's ignore values of the 16-bit benchmarks (detectron2 registration; 65535: PC-459's wrapped raw 0)
WIDE_IGNORE = {"pc459": (459, 65535), "ade847": (65535,)}


def mmseg_label(root: Path, name: str, image_id: str) -> np.ndarray:
    """The label as mmseg's LoadAnnotations gives it: the PNG's indices; with reduce_zero_label 0 -> 255,
    c -> c - 1, 255 stays 255; PC-459 / ADE-847 as detectron2 loads CAT-Seg's TIFFs. Ignored pixels -> -1."""
    folder, pattern, _, reduce = LABELS[name]
    raw = np.array(Image.open(root / folder / pattern.format(image_id, town=image_id.split("_")[0]))).astype(int)
    if reduce:
        raw = np.where((raw == 0) | (raw == 255), 255, raw - 1)
    if name in WIDE_IGNORE:
        return np.where(np.isin(raw, WIDE_IGNORE[name]), -1, raw)
    return np.where(raw == 255, -1, raw)


def confusion_from_predictions(root: Path, out: Path, name: str, method: str, ids: list[str]) -> np.ndarray:
    classes = LABELS[name][2]
    confusion = np.zeros((classes, classes), np.int64)
    for image_id in ids:
        predicted = np.array(Image.open(out / name / "predictions" / method / f"{image_id}.png")).astype(int)
        label = mmseg_label(root, name, image_id)
        keep = label >= 0
        confusion += np.bincount(label[keep] * classes + predicted[keep], minlength=classes**2).reshape(classes,
                                                                                                        classes)
    return confusion


def miou(confusion: np.ndarray) -> float:
    """mmseg IoUMetric: IoU per class over one confusion matrix, mean over classes with a non-empty union."""
    tp = np.diag(confusion).astype(float)
    union = confusion.sum(0) + confusion.sum(1) - tp
    return float(np.mean(tp[union > 0] / union[union > 0])) * 100


def run_cli(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def model():
    return tiny_model(torch.float32)


@pytest.fixture
def tiny(monkeypatch, model):
    """Every command loads the tiny float32 model (128-pixel crops); records how often the loader ran."""
    calls = []
    monkeypatch.setattr(segclip.cli, "load_model_for", lambda config, devices=1: calls.append(config) or model)
    return calls


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    root = tmp_path_factory.mktemp("benchmarks")
    return root, make_fake_benchmarks(root)


@pytest.fixture(scope="module")
def e2e(fake, model, tmp_path_factory):
    """The README's `segclip benchmark` command over all eight fabricated layouts, the tiny model standing in for
    RN50x16 / OpenAI's weights, with --limit 2 --save-predictions."""
    root, ids = fake
    out = tmp_path_factory.mktemp("e2e") / "out"
    readme = next(c for c in readme_section_commands() if c.startswith("segclip benchmark "))
    args = shlex.split(readme)[1:]
    for flag in ("--model", "--pretrained"):
        index = args.index(flag)
        del args[index: index + 2]
    args[args.index("--data-root") + 1] = str(root)
    args[args.index("--out") + 1] = str(out)
    with pytest.MonkeyPatch.context() as patch:
        calls = []
        patch.setattr(segclip.cli, "load_model_for", lambda config, devices=1: calls.append(config) or model)
        code, stdout, stderr = run_cli([*args, "--limit", "2", "--save-predictions", "--methods",
                                        "neuron-head,maskclip", *FAST])
    assert code == 0, stderr
    return {"root": root, "ids": ids, "out": out, "stdout": stdout, "stderr": stderr, "calls": calls,
            "readme": readme}


def top(out: Path) -> dict:
    """The ``results`` of a benchmark's results.json (the result envelope)."""
    envelope = json.loads((out / "results.json").read_text())
    assert envelope["schema"] == "segclip.result/2" and "provenance" in envelope
    return {**envelope["results"], "provenance": envelope["provenance"]}


def dataset_scores(folder: Path) -> list[dict]:
    """The per-method scores of one dataset's results.json."""
    return json.loads((folder / "results.json").read_text())["results"]["scores"]


def check_against_predictions(root: Path, out: Path, ids: dict[str, list[str]], methods: list[str]) -> dict:
    """results.json (table, per-dataset scores) against the mIoU recomputed from the saved predictions."""
    results = top(out)
    assert list(results["datasets"]) == list(BENCHMARKS) == results["column_order"]
    for name in BENCHMARKS:
        per_dataset = {e["method"]: e for e in dataset_scores(out / name)}
        for method in methods:
            written = sorted(p.stem for p in (out / name / "predictions" / method).glob("*.png"))
            assert written == sorted(ids[name][:2])
            confusion = confusion_from_predictions(root, out, name, method, ids[name][:2])
            assert per_dataset[method]["confusion_matrix"] == confusion.tolist()
            assert results["table"][method][name] == pytest.approx(miou(confusion), abs=1e-9)
            score = next(s for s in results["datasets"][name]["scores"] if s["method"] == method)
            assert score["pixel_accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum() * 100, abs=1e-9)
    for method in methods:
        row = results["table"][method]
        assert row["average"] == pytest.approx(sum(row[n] for n in BENCHMARKS) / len(BENCHMARKS), abs=1e-9)
    return results


def test_benchmark_all_eight_matches_saved_predictions(e2e):
    results = check_against_predictions(e2e["root"], e2e["out"], e2e["ids"], ["neuron-head", "maskclip"])
    assert len(e2e["calls"]) == 1  # one model for every dataset
    assert max(results["table"]["neuron-head"][n] for n in BENCHMARKS) > 0  # a check on all-zero scores is empty
    lines = e2e["stdout"].splitlines()
    assert lines[0] == "| method | " + " | ".join(BENCHMARKS) + " | average |"
    assert lines[2].startswith("| neuron-head | ") and len(lines) == 6
    assert lines[5].startswith("calibration: none (pair signs assumed +1")  # the calibration used, under the table
    assert f"{results['table']['maskclip']['average']:.2f} |" in lines[3]
    with open(e2e["out"] / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["method"] for r in rows] == ["neuron-head", "maskclip"]
    assert list(rows[0]) == ["method", *BENCHMARKS, "average"]
    assert float(rows[1]["ade20k"]) == pytest.approx(results["table"]["maskclip"]["ade20k"], abs=1e-9)


def test_every_result_records_its_protocol(e2e):
    results = top(e2e["out"])
    for name in BENCHMARKS:
        protocol = benchmark_protocol(name)
        record = results["datasets"][name]["provenance"]
        assert record["protocol"] == to_jsonable(protocol.to_dict(128))
        at = protocol.for_crop(128)
        assert {k: record["window"][k] for k in ("short_side", "long_side", "crop", "stride", "temperature")} == {
            k: at[k] for k in ("short_side", "long_side", "crop", "stride", "temperature")}
        assert record["label_rule"]["scale"] == protocol.logit_scale
        assert record["label_rule"]["prob_threshold"] == protocol.prob_threshold
        assert record["label_rule"]["area_threshold"] == protocol.area_threshold
        assert record["dataset"]["name"] == name and record["dataset"]["images"] == 2
        assert len(record["class_names"]) == LABELS[name][2] == record["dataset"]["num_classes"]
        own = json.loads((e2e["out"] / name / "results.json").read_text())["provenance"]
        assert own["protocol"] == record["protocol"] and own["window"] == record["window"]
    voc = results["datasets"]["voc21"]["provenance"]["window"]
    assert (voc["short_side"], voc["stride"], voc["temperature"]) == (192, 64, 65.0)  # 336, 112 at crop 128 / 224
    coco = results["datasets"]["coco_object"]["provenance"]
    assert coco["queries"].count("bed") == 2 and coco["distinct_queries"].count("bed") == 1
    assert coco["label_rule"]["queries"] == len(coco["queries"]) == len(coco["distinct_queries"]) + 1
    pairs = results["datasets"]["voc20"]["scores"][0]["params"]
    assert pairs["k"] == 50 and pairs["text"]["templates"] == "single"
    assert results["provenance"]["config"]["protocol"] == "sclip" and results["skipped"] == {}


def test_resume_after_one_dataset_gives_the_same_table(tiny, fake, tmp_path, monkeypatch, caplog):
    root, _ = fake
    args = ["benchmark", "--data-root", str(root), "--datasets", "ade20k,voc21,context59", "--methods", "maskclip",
            *FAST]
    code, fresh_table, _ = run_cli([*args, "--out", str(tmp_path / "fresh"), "--limit", "1"])
    assert code == 0
    original, written = ResultStore.write, []

    def interrupt_after_one_dataset(self, image_id, *rest):
        if len(written) == 1:  # voc21's image is done
            raise KeyboardInterrupt
        written.append(image_id)
        original(self, image_id, *rest)

    monkeypatch.setattr(ResultStore, "write", interrupt_after_one_dataset)
    resumed = tmp_path / "resumed"
    assert run_cli([*args, "--out", str(resumed), "--limit", "1"])[0] == 130
    assert (resumed / "voc21" / "results.json").is_file() and not (resumed / "voc21" / "partial").exists()
    assert not list((resumed / "context59" / "partial").glob("*.npy")) and not (resumed / "results.json").exists()
    finished = (resumed / "voc21" / "results.json").stat().st_mtime_ns
    monkeypatch.setattr(ResultStore, "write", original)
    code, _, stderr = run_cli([*args, "--out", str(resumed), "--limit", "2"])  # another run's results
    assert code == 2 and "different run" in stderr
    code, table, stderr = run_cli([*args, "--out", str(resumed), "--limit", "1"])
    assert code == 0 and table == fresh_table
    assert (resumed / "voc21" / "results.json").stat().st_mtime_ns == finished  # read back, not recomputed
    fresh, again = top(tmp_path / "fresh"), top(resumed)
    assert fresh["table"] == again["table"]
    assert again["column_order"] == ["voc21", "context59", "ade20k"]  # the peers' order, whatever the order given
    for name in ("voc21", "context59", "ade20k"):
        assert (dataset_scores(resumed / name)[0]["confusion_matrix"]
                == dataset_scores(tmp_path / "fresh" / name)[0]["confusion_matrix"])
        assert not (resumed / name / "partial").exists()  # removed once the dataset's results are written
    code, again_table, stderr = run_cli([*args, "--out", str(resumed), "--limit", "1"])  # finished: read back
    assert code == 0 and again_table == table
    code, _, stderr = run_cli([*args, "--out", str(resumed), "--limit", "1", "--stride", "32"])
    assert code == 2 and "different run" in stderr and "--overwrite" in stderr


def test_skipped_datasets_are_reported(tiny, fake, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(fake[0], root)
    shutil.rmtree(root / "cityscapes")
    first_ade = fake[1]["ade20k"][0]
    (root / "ade/ADEChallengeData2016/annotations/validation" / f"{first_ade}.png").unlink()
    out = tmp_path / "out"
    code, table, stderr = run_cli(["benchmark", "--data-root", str(root), "--datasets", "ade20k,voc20,cityscapes",
                                   "--methods", "maskclip", "--limit", "1", "--out", str(out), *FAST])
    assert code == 0
    assert re.search(r"skipped cityscapes \(missing\): .*cityscapes does not exist.*segclip prepare cityscapes",
                     stderr)
    assert re.search(r"skipped ade20k \(invalid\): .*1 of 1 label maps .* missing", stderr)
    results = top(out)
    assert {n: s["state"] for n, s in results["skipped"].items()} == {"cityscapes": "missing", "ade20k": "invalid"}
    ran = ["voc20"]
    assert results["column_order"] == ran == results["average_over"]
    assert table.splitlines()[0] == "| method | " + " | ".join(ran) + " | average |"
    assert "skipped: cityscapes (missing); ade20k (invalid)" in table
    assert not (out / "cityscapes").exists() and len(tiny) == 1

    code, _, stderr = run_cli(["benchmark", "--data-root", str(root), "--datasets", "cityscapes,ade20k",
                               "--out", str(tmp_path / "none"), *FAST])
    assert code == 2 and "None of the requested datasets can run" in stderr and "ade20k (invalid)" in stderr
    code, _, stderr = run_cli(["benchmark", "--data-root", str(root), "--datasets", "voc21,nope",
                               "--out", str(tmp_path / "none")])
    assert code == 2 and "Unknown dataset 'nope'" in stderr
    assert len(tiny) == 1  # data and options are checked before the model is loaded

    code, table, stderr = run_cli(["benchmark", "--data-root", str(root), "--protocol", "paper", "--datasets",
                                   "voc21,context59", "--methods", "maskclip", "--limit", "1", "--out",
                                   str(tmp_path / "paper"), *FAST])
    assert code == 0 and table.splitlines()[0] == "| method | context59 | average |"
    paper = top(tmp_path / "paper")
    assert paper["skipped"]["voc21"]["state"] == "no protocol"
    window = paper["datasets"]["context59"]["provenance"]["window"]
    assert (window["short_side"], window["stride"]) == (171, 64)  # 512 / 192 at crop 384, scaled to 128


def test_own_class_files(tiny, fake, tmp_path):
    root = fake[0]
    own = tmp_path / "voc20.txt"
    lines = (Path(segclip.__file__).parent / "data/classnames/voc20.txt").read_text().splitlines()
    own.write_text("\n".join([lines[0] + ", jet"] + lines[1:]) + "\n")
    out = tmp_path / "out"
    code, _, stderr = run_cli(["benchmark", "--data-root", str(root), "--datasets", "voc20", "--class-files",
                               f"voc20={own}", "--methods", "maskclip", "--limit", "1", "--out", str(out), *FAST])
    assert code == 0, stderr
    record = top(out)["datasets"]["voc20"]["provenance"]
    assert record["dataset"]["class_file"] == str(own) and "jet" in record["queries"]
    own.write_text("\n".join(lines[1:]) + "\n")
    code, _, stderr = run_cli(["benchmark", "--data-root", str(root), "--datasets", "voc20", "--class-files",
                               f"voc20={own}", "--out", str(tmp_path / "out2"), *FAST])
    assert code == 2 and "19 lines but voc20 has 20 classes" in stderr and "None of the" not in stderr


# ------------------------------------------------------------------------------------------ the query rule

def brute_force_labels(logits: torch.Tensor, size: tuple[int, int], rows: list[int], classes: list[int],
                       scale: float, prob_threshold: float, area_threshold: float | None) -> np.ndarray:
    """The SCLIP-family rule pixel by pixel in plain Python, from the stitched (R, h, w) logits."""
    full = F.interpolate(logits.float()[None], size=size, mode="bilinear", align_corners=False)[0].double()
    num_classes = max(classes) + 1
    probabilities = np.zeros((num_classes, *size))
    for y in range(size[0]):
        for x in range(size[1]):
            z = [scale * float(full[r, y, x]) for r in rows]
            top = max(z)
            e = [math.exp(v - top) for v in z]
            for query, c in enumerate(classes):
                probabilities[c, y, x] = max(probabilities[c, y, x], e[query] / sum(e))
    if area_threshold is not None:
        winners = probabilities.argmax(0)
        areas = [(winners == c).sum() for c in range(num_classes)]
        foreground = sum(areas[1:])
        for c in range(1, num_classes):
            if not areas[c] > area_threshold * foreground:
                probabilities[c] = 0
    labels = probabilities.argmax(0)
    labels[probabilities.max(0) < prob_threshold] = 0
    return labels


class Planted(SegmentationMethod):
    """Window logits that vary strongly over the image (a random model's maps are nearly constant, under which the
    scale, the area rule and the resizing would go untested): standardised layer4 neurons through a fixed random
    projection, one row per distinct query."""

    name = "planted"

    def __init__(self, model, names):
        super().__init__(model, names, TextRecipe("single", "none"), texts=torch.ones(len(names), 32))
        generator = torch.Generator().manual_seed(3)
        self.projection = torch.randn(model.info.neurons, len(names), generator=generator).to(model.dtype)

    def window_logits(self, trace):
        neurons = trace.neurons.flatten(2)  # (B, N, h, w) -> (B, N, K)
        neurons = neurons - neurons.mean(-1, keepdim=True)
        out = torch.einsum("bnk,nr->brk", neurons, self.projection)
        return (out / out.std() * 0.05).float().unflatten(-1, trace.grid)  # (B, R, h, w)


def test_query_rule_through_the_pipeline_against_brute_force(model):
    # synonyms, a name on two lines (as SCLIP's coco_object 'bed') and one differing only in case
    queries, query_to_class, _ = parse_query_lines(["wall, bed, sky", "cat, kitty", "dog, Puppy", "bed", "puppy"],
                                                   allow_duplicates=True)
    names, rows = distinct_queries(queries)
    assert names == ["wall", "bed", "sky", "cat", "kitty", "dog", "Puppy"] and rows == [0, 1, 2, 3, 4, 5, 6, 1, 6]
    methods = [Planted(model, names), *build_methods(model, names, ["neuron-head", "maskclip"], k=40,
                                                     templates="single")]
    assert methods[1].pair_index.shape == (len(names), 40)  # top-k pairs per query
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (14, 19, 3), dtype=np.uint8), rng.integers(0, 256, (17, 12, 3), dtype=np.uint8)]
    protocol = SlidingWindowProtocol(short_side=160, crop=128, stride=64, temperature=40.0)
    plain = segment_images(model, images, methods, protocol)
    for image, result in zip(images, plain):  # the default path is the temperature rule, unchanged
        for method in methods:
            expected, _ = logits_to_labels(result[method.name].logits, image.shape[:2], 40.0)
            assert torch.equal(result[method.name].labels, expected)
    scale = 50.0
    tops = []
    for image, result in zip(images, plain):
        full = F.interpolate(result["planted"].logits[None], size=image.shape[:2], mode="bilinear",
                             align_corners=False)[0]
        tops.append((full[rows] * scale).softmax(0).amax(0).flatten())
    ordered = torch.cat(tops).sort().values
    middle = len(ordered) // 2  # a threshold between two probabilities near the median, far from both
    gaps = ordered[middle - 20: middle + 20].diff()
    at = middle - 20 + int(gaps.argmax())
    threshold = float(ordered[at] + ordered[at + 1]) / 2
    assert float(gaps.max()) > 1e-5
    planted = {}
    for area_threshold in (None, 0.4):
        rule = QueryLabelRule(tuple(rows), tuple(query_to_class), scale, threshold, area_threshold)
        ruled = segment_images(model, images, methods, protocol, label_rule=rule)
        for image, result, base in zip(images, ruled, plain):
            for method in methods:
                assert torch.equal(result[method.name].logits, base[method.name].logits)
                expected = brute_force_labels(base[method.name].logits, image.shape[:2], rows, query_to_class,
                                              scale, threshold, area_threshold)
                np.testing.assert_array_equal(result[method.name].labels.numpy(), expected)
        planted[area_threshold] = [brute_force_labels(base["planted"].logits, image.shape[:2], rows,
                                                      query_to_class, scale, t, area_threshold)
                                   for image, base in zip(images, plain) for t in (threshold, 0.0)]
    # every step mattered: several classes, pixels moved to 0 by the threshold, classes dropped by the area rule
    with_threshold, without = planted[None][0::2], planted[None][1::2]
    assert all(len(np.unique(labels)) >= 3 for labels in without)
    assert sum(int((a != b).sum()) for a, b in zip(with_threshold, without)) > 0
    assert sum(int((a != b).sum()) for a, b in zip(planted[None], planted[0.4])) > 0


def test_query_rule_refuses_a_second_background_rule(model):
    rule = QueryLabelRule((0, 1), (0, 1), 10.0)
    methods = build_methods(model, ["a", "b"], ["maskclip"], templates="single")
    with pytest.raises(segclip.errors.ConfigError, match="exclude each other"):
        segment_images(model, [np.zeros((8, 8, 3), np.uint8)], methods, SlidingWindowProtocol(crop=128, stride=64),
                       background_threshold=0.5, label_rule=rule)
    with pytest.raises(ValueError, match="2 query rows for 3"):
        QueryLabelRule((0, 1), (0, 1, 1), 10.0)


# ------------------------------------------------------------------------------------------ prepare

def test_prepare_commands(tmp_path, fake):
    from test_prepare import _detail_json, _stuffthingmaps

    data = _detail_json(np.random.default_rng(0))
    (tmp_path / "trainval_merged.json").write_text(json.dumps(data))
    (tmp_path / "VOCdevkit" / "VOC2010").mkdir(parents=True)
    code, stdout, _ = run_cli(["prepare", "pascal_context", "--devkit", str(tmp_path / "VOCdevkit"), "--json",
                               str(tmp_path / "trainval_merged.json")])
    assert code == 0 and "1 train and 4 val ids" in stdout
    split = tmp_path / "VOCdevkit/VOC2010/ImageSets/SegmentationContext/val.txt"
    assert split.read_text() == "2008_000002\n2008_000007\n2008_000009\n2010_000100\n"
    assert len(list((tmp_path / "VOCdevkit/VOC2010/SegmentationClassContext").glob("*.png"))) == 5
    code, _, stderr = run_cli(["prepare", "pascal_context", "--devkit", str(tmp_path / "VOCdevkit"), "--json",
                               str(tmp_path / "trainval_merged.json")])
    assert code == 2 and "--overwrite" in stderr

    coco = tmp_path / "coco_stuff164k"
    _stuffthingmaps(coco)
    for which, suffix, lut in (("coco_stuff", "_labelTrainIds.png", segclip.data.prepare.coco_stuff_lut()),
                               ("coco_object", "_instanceTrainIds.png", segclip.data.prepare.coco_object_lut())):
        code, stdout, _ = run_cli(["prepare", which, "--root", str(coco)])
        assert code == 0 and "val2017: 2 label maps written" in stdout
        raw = np.array(Image.open(coco / "annotations/val2017/000000000139.png"))
        np.testing.assert_array_equal(np.array(Image.open(coco / f"annotations/val2017/000000000139{suffix}")),
                                      lut[raw])

    city = tmp_path / "cityscapes" / "gtFine" / "val" / "lindau"
    city.mkdir(parents=True)
    Image.fromarray(np.array([[7, 26, 0, 33]], np.uint8)).save(city / "lindau_000000_000019_gtFine_labelIds.png")
    code, stdout, _ = run_cli(["prepare", "cityscapes", "--root", str(tmp_path / "cityscapes"), "--splits", "val"])
    assert code == 0 and "val: 1 label maps written" in stdout
    assert np.array(Image.open(city / "lindau_000000_000019_gtFine_labelTrainIds.png")).tolist() == [[0, 13, 255,
                                                                                                     18]]
    code, stdout, _ = run_cli(["prepare", "check", "--data-root", str(fake[0])])
    assert code == 0 and "10 of 10 ready" in stdout and "| voc21 | ok | 3 / 1449 |" in stdout
    code, stdout, _ = run_cli(["prepare", "check", "--data-root", str(tmp_path / "nowhere")])
    assert code == 0 and "0 of 10 ready: none" in stdout and "| cityscapes | missing |" in stdout


# ------------------------------------------------------------------------------------------ README

def readme_section_commands() -> list[str]:
    """The `segclip` commands of the README's "Benchmark suite" section, continuation lines joined."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Benchmark suite", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        commands += [line.strip() for line in block.replace("\\\n", " ").splitlines()
                     if line.strip().startswith("segclip ")]
    return commands


def test_readme_benchmark_commands(e2e, tmp_path):
    commands = readme_section_commands()
    assert {c.split()[2] for c in commands if c.startswith("segclip prepare ")} == {
        "pascal_context", "coco_stuff", "coco_object", "cityscapes", "pc459", "ade847", "check"}
    assert "--model RN50x16 --pretrained " in e2e["readme"]  # the table's command; e2e ran it on fabricated data
    parser = build_parser()
    for command in commands:
        parser.parse_args(shlex.split(command)[1:])  # every flag exists (argparse exits on an unknown one)
    check = next(c for c in commands if c.startswith("segclip prepare check"))
    args = shlex.split(check)[1:]
    args[args.index("--data-root") + 1] = str(e2e["root"])
    code, stdout, _ = run_cli(args)
    assert code == 0 and "10 of 10 ready" in stdout


# ------------------------------------------------------------------------------------------ acceptance

@pytest.mark.slow
def test_acceptance_rn50_all_eight(fake, tmp_path):
    """The issue's acceptance command: RN50, random weights, every method, --limit 2 --save-predictions, on all
    eight fabricated layouts; the mIoU recomputed from the saved predictions equals results.json.

    With one prompt template (``--templates single``): with the default 80 / 85 templates the eight class files make
    about 100,000 prompts for RN50's text tower, half an hour of CPU before any image is seen."""
    root, ids = fake
    out = tmp_path / "out"
    code, table, stderr = run_cli(["benchmark", "--data-root", str(root), "--model", "RN50", "--pretrained", "none",
                                   "--device", "cpu", "--limit", "2", "--save-predictions", "--out", str(out),
                                   "--templates", "single", "--no-progress"])
    assert code == 0, stderr[-3000:]
    results = check_against_predictions(root, out, ids, ["neuron-head", "maskclip", "self-self", "neuron-only",
                                                         "head-only"])
    assert table.splitlines()[0] == "| method | " + " | ".join(BENCHMARKS) + " | average |"
    record = results["datasets"]["voc21"]["provenance"]
    assert record["model"]["name"] == "RN50" and record["window"]["crop"] == 224
    assert record["window"]["short_side"] == 336 and record["window"]["stride"] == 112


@pytest.mark.slow
def test_ddp_two_processes_equal_one(fake, tmp_path):
    """`segclip benchmark --devices 2` (Lightning DDP, gloo, 2 CPU processes, one trainer over several datasets)
    gives the single-process confusion matrices."""
    import subprocess
    import sys

    env = {"SEGCLIP_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    matrices = []
    for devices in (1, 2):
        out = tmp_path / f"out{devices}"
        command = [sys.executable, "-m", "segclip.cli", "benchmark", "--data-root", str(fake[0]), "--datasets",
                   "voc21,cityscapes", "--model", "RN50", "--pretrained", "none", "--templates", "single",
                   "--methods", "maskclip,neuron-head", "--devices", str(devices), "--out", str(out),
                   "--no-progress", "--device", "cpu"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env,
                              cwd=Path(__file__).resolve().parents[1])
        assert done.returncode == 0, done.stderr[-3000:]
        matrices.append({name: [e["confusion_matrix"] for e in dataset_scores(out / name)]
                         for name in ("voc21", "cityscapes")})
        assert dataset_scores(out / "cityscapes")[0]["images"] == 3
    assert matrices[0] == matrices[1] and sum(map(sum, matrices[0]["voc21"][0])) > 0


@pytest.mark.parametrize("protocol", ["paper", "sclip"])
def test_eval_and_benchmark_run_the_identical_protocol(tiny, fake, tmp_path, protocol):
    """`eval --dataset pascal_context --protocol P` and `benchmark --datasets context59 --protocol P` are one code
    path: the same window, label rule, queries and confusion matrices."""
    root = fake[0]
    common = ["--limit", "2", "--templates", "single", "--k", "50", "--no-progress", "--protocol", protocol]
    code, _, stderr = run_cli(["eval", "--dataset", "pascal_context", "--data-root", str(root), "--method",
                               "neuron-head", "--out", str(tmp_path / "eval"), *common])
    assert code == 0, stderr
    code, _, stderr = run_cli(["benchmark", "--data-root", str(root), "--datasets", "context59", "--methods",
                               "neuron-head", "--out", str(tmp_path / "bench"), *common])
    assert code == 0, stderr
    evaluated = json.loads((tmp_path / "eval" / "results.json").read_text())
    benchmarked = json.loads((tmp_path / "bench" / "context59" / "results.json").read_text())
    for key in ("window", "protocol", "label_rule", "queries", "class_names", "register_intervention"):
        assert evaluated["provenance"][key] == benchmarked["provenance"][key], key
    assert evaluated["provenance"]["protocol"]["name"] == protocol
    assert evaluated["results"]["scores"][0]["confusion_matrix"] == \
        benchmarked["results"]["scores"][0]["confusion_matrix"]
