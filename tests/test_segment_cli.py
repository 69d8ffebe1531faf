"""`segclip eval / compare / segment` end to end through `segclip.cli.main`, with a tiny random model standing in
for the loader (the README's own commands with real architectures are the `slow` tests at the end)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_data import make_fake_pascal_context
from PIL import Image
from test_methods import tiny_model

import segclip.cli
from segclip.cli import main
from segclip.data.images import read_label
from segclip.segment.metric import miou_from_confusion
from segclip.segment.results import ResultStore

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FAST = ["--short-side", "128", "--templates", "single", "--k", "200", "--no-progress"]


@pytest.fixture
def tiny(monkeypatch):
    """Every command loads the tiny float32 model; records how often the loader ran."""
    model = tiny_model(torch.float32)
    calls = []
    monkeypatch.setattr(segclip.cli, "load_model_for", lambda config, devices=1: calls.append(config) or model)
    return calls


@pytest.fixture
def data(tmp_path):
    make_fake_pascal_context(tmp_path / "data", n_images=4)
    return tmp_path / "data"


def read_results(out: Path) -> tuple[list[dict], dict]:
    """(per-method scores, provenance) of a results.json in the result envelope."""
    envelope = json.loads((out / "results.json").read_text())
    assert envelope["schema"] == "segclip.result/2"
    return envelope["results"]["scores"], envelope["provenance"]


def compare(data, out, *extra):
    return main(["compare", "--dataset", "pascal_context", "--data-root", str(data), "--limit", "4", "--out",
                 str(out), *FAST, *extra])


def test_progress_bar_goes_to_stderr_and_stdout_holds_the_table(tiny, data, tmp_path, capsys):
    args = [a for a in FAST if a != "--no-progress"]
    assert main(["compare", "--dataset", "pascal_context", "--data-root", str(data), "--limit", "2", "--out",
                 str(tmp_path / "out"), "--methods", "maskclip", *args]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("| method |") and "it/s" not in captured.out
    assert "image/s" in captured.err and "results: " in captured.err  # the bar (in images) and the files, on stderr


def test_compare_results_match_saved_predictions(tiny, data, tmp_path, capsys):
    assert compare(data, tmp_path / "out", "--save-predictions") == 0
    table = capsys.readouterr().out
    assert table.count("| ") >= 6 and "neuron-head" in table and "self-self" in table
    results, protocol = read_results(tmp_path / "out")
    assert [r["method"] for r in results] == ["neuron-head", "maskclip", "self-self", "neuron-only", "head-only"]
    ids = [line for line in (data / "VOCdevkit/VOC2010/ImageSets/SegmentationContext/val.txt").read_text().split()]
    for entry in results:
        confusion = torch.zeros(59, 59, dtype=torch.long)
        for image_id in ids:
            predicted = np.asarray(Image.open(tmp_path / "out/predictions" / entry["method"] / f"{image_id}.png"))
            label = read_label(data / "VOCdevkit/VOC2010/SegmentationClassContext" / f"{image_id}.png", 59, True)
            keep = label != 255
            confusion += torch.bincount(torch.from_numpy(label[keep].astype(np.int64) * 59 + predicted[keep]),
                                        minlength=59 * 59).view(59, 59)
        assert entry["miou"] == pytest.approx(miou_from_confusion(confusion), abs=1e-9)
        assert protocol["window"]["short_side"] == 128 and protocol["window"]["crop"] == 128
        assert len(protocol["class_names"]) == 59 and "torch" in protocol["package_versions"]
        assert entry["params"]["text"]["templates"] == "single"
    assert results[0]["params"]["signs"] == "assumed +1 (no calibration)" and results[0]["params"]["k"] == 200
    csv_lines = (tmp_path / "out" / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 6 and csv_lines[0].startswith("method,miou,pixel_accuracy,images_per_second,iou_")


def test_interrupted_run_resumes_to_identical_numbers(tiny, data, tmp_path, monkeypatch):
    assert compare(data, tmp_path / "fresh", "--methods", "neuron-head,maskclip") == 0
    original, written = ResultStore.write, []

    def interrupt_after_two(self, image_id, *args):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(image_id)
        original(self, image_id, *args)

    monkeypatch.setattr(ResultStore, "write", interrupt_after_two)
    assert compare(data, tmp_path / "resumed", "--methods", "neuron-head,maskclip") == 130
    assert len(list((tmp_path / "resumed" / "partial").glob("*.npy"))) == 2
    assert not (tmp_path / "resumed" / "results.json").exists()
    monkeypatch.setattr(ResultStore, "write", original)
    assert compare(data, tmp_path / "resumed", "--methods", "neuron-head,maskclip") == 0
    fresh, resumed = read_results(tmp_path / "fresh")[0], read_results(tmp_path / "resumed")[0]
    for a, b in zip(fresh, resumed):
        assert a["confusion_matrix"] == b["confusion_matrix"] and a["miou"] == b["miou"]
    assert resumed[0]["images_this_run"] == 2
    assert not (tmp_path / "resumed" / "partial").exists()  # removed once the results hold everything


def test_existing_outputs_and_other_runs_are_never_overwritten(tiny, data, tmp_path, capsys):
    out = tmp_path / "out"
    assert compare(data, out, "--methods", "maskclip") == 0
    first = capsys.readouterr().out
    assert compare(data, out, "--methods", "maskclip") == 0  # a finished run re-run: its result, read back
    again = capsys.readouterr().out
    assert again.splitlines()[:3] == first.splitlines()[:3] and "read back" in again
    assert compare(data, out, "--methods", "maskclip", "--stride", "32") == 2  # would replace a different result
    err = capsys.readouterr().err
    assert "different run" in err and "--overwrite" in err
    (out / "results.json").write_text("[]")  # an older segclip's layout: refused, not misread
    assert compare(data, out, "--methods", "maskclip") == 2
    assert "older segclip" in capsys.readouterr().err
    (out / "results.json").unlink()
    (out / "results.csv").unlink()
    (out / "partial").mkdir()
    (out / "partial" / "run.json").write_text("{}")
    assert compare(data, out, "--methods", "maskclip", "--stride", "32") == 2  # partial results of another run
    assert "different run" in capsys.readouterr().err
    assert compare(data, out, "--methods", "maskclip", "--stride", "32", "--overwrite") == 0


def test_bad_inputs_fail_before_model_work(tiny, data, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert compare(data, blocker / "out") == 2
    assert "Cannot write" in capsys.readouterr().err
    assert main(["eval", "--dataset", "pascal_context", "--data-root", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["eval", "--dataset", "pascal_context"]) == 2
    assert "--data-root" in capsys.readouterr().err
    assert main(["compare", "--dataset", "pascal_context", "--data-root", str(data), "--methods", "nope"]) == 2
    assert tiny == []
    assert compare(data, tmp_path / "out", "--zero-registers", "4") == 2
    assert "calibration" in capsys.readouterr().err


def test_config_file(tiny, data, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text((CONFIGS / "pascal_context_authors.yaml").read_text() + "limit: 2\nmethod: maskclip\n")
    assert main(["eval", "--config", str(config), "--data-root", str(data), "--out", str(tmp_path / "out"),
                 "--stride", "64", *FAST]) == 0  # the tiny stand-in model has 128-pixel crops
    entries, protocol = read_results(tmp_path / "out")
    entry = entries[0]
    assert entry["method"] == "maskclip" and entry["images"] == 2
    assert protocol["class_names"][0] == "airplane"  # the authors' text names
    assert tiny[0].model == "RN50x16"


@pytest.mark.parametrize("name", ["pascal_context_paper", "pascal_context_authors", "synthetic"])
def test_shipped_configs_parse(name):
    from segclip.cli.options import read_yaml, split_values
    from segclip.config import build_config
    from segclip.models import ModelConfig
    from segclip.segment.run import CompareConfig

    model_values, values = split_values(read_yaml(CONFIGS / f"{name}.yaml"), [ModelConfig, CompareConfig], name)
    config = build_config(CompareConfig, values)
    assert config.short_side in (512, 384, 256)
    assert build_config(ModelConfig, model_values).model.startswith(("RN", "seg"))


def test_a_config_file_key_satisfies_a_required_option(tiny, tmp_path):
    """`out` in a YAML file is the same field as --out (it used to be refused as missing)."""
    from segclip.paths import example_image_path

    config = tmp_path / "segment.yaml"
    config.write_text(f"out: {tmp_path / 'seg'}\nclasses: [ball, sky]\n")
    assert main(["segment", str(example_image_path()), "--config", str(config), *FAST]) == 0
    assert (tmp_path / "seg" / "example.png").is_file()
    config.write_text("outt: x\n")
    assert main(["segment", str(example_image_path()), "--config", str(config)]) == 2


def test_synthetic_dataset(tiny, tmp_path):
    out = tmp_path / "out"
    assert main(["eval", "--dataset", "synthetic", "--data-root", str(tmp_path / "syn"), "--limit", "2", "--method",
                 "neuron-head", "--out", str(out), "--templates", "single", "--k", "100", "--no-progress"]) == 0
    entries, protocol = read_results(out)
    assert protocol["window"]["crop"] == 128 and protocol["window"]["stride"] == 64
    assert protocol["window"]["short_side"] == 171  # the paper's 512 at crop 384, scaled to 128
    assert protocol["protocol"]["name"] == "paper" and protocol["protocol"]["at_crop"]["long_side"] == 683
    assert protocol["dataset"]["name"] == "synthetic" and len(entries[0]["per_class_iou"]) == 12


def write_images(folder: Path) -> list[Path]:
    folder.mkdir()
    rng = np.random.default_rng(0)
    rgba = folder / "rgba.png"
    Image.fromarray(rng.integers(0, 256, (70, 90, 4), dtype=np.uint8), mode="RGBA").save(rgba)
    gray = folder / "gray.jpg"
    Image.fromarray(rng.integers(0, 256, (150, 60), dtype=np.uint8), mode="L").save(gray)
    return [rgba, gray]


def test_segment_writes_labels_overlays_heatmaps(tiny, tmp_path):
    paths = write_images(tmp_path / "images")
    out = tmp_path / "out"
    assert main(["segment", *map(str, paths), "--classes", "cat,dog,grass", "--out", str(out), "--heatmaps",
                 "--templates", "single", "--k", "50"]) == 0
    labels = np.asarray(Image.open(out / "rgba.png"))
    assert labels.shape == (70, 90) and labels.max() < 3
    assert Image.open(out / "gray_overlay.png").size[0] > 60  # image plus legend strip
    assert len(list((out / "heatmaps" / "gray").glob("*.png"))) == 3
    summary = json.loads((out / "segment.json").read_text())["results"]
    assert summary["params"]["text"]["centring_applied"].startswith("reference vocabulary (3 classes")
    assert main(["segment", *map(str, paths), "--classes", "cat,dog", "--out", str(out)]) == 2  # existing outputs
    assert main(["segment", str(paths[0]), "--classes", "cat,dog", "--out", str(out), "--overwrite",
                 "--background-threshold", "0.9", "--templates", "single", "--method", "maskclip"]) == 0
    assert np.asarray(Image.open(out / "rgba.png")).max() <= 2


def test_segment_bad_inputs(tiny, tmp_path, capsys):
    paths = write_images(tmp_path / "images")
    corrupt = tmp_path / "images" / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8 not a jpeg")
    out = tmp_path / "out"
    assert main(["segment", str(corrupt), "--classes", "cat", "--out", str(out)]) == 2
    assert "corrupt.jpg" in capsys.readouterr().err
    latin = tmp_path / "classes.txt"
    latin.write_bytes("café\nthé\n".encode("latin-1"))
    assert main(["segment", str(paths[0]), "--classes-file", str(latin), "--out", str(out)]) == 2
    assert "not UTF-8" in capsys.readouterr().err
    for classes, message in (("cat,,dog", "blank"), ("cat,Cat", "Duplicate"), ("", "blank")):
        assert main(["segment", str(paths[0]), "--classes", classes, "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
    assert main(["segment", str(paths[0]), "--classes", "cat", "--classes-file", str(latin), "--out", str(out)]) == 2
    assert tiny == [] and not list(out.glob("*.png"))


@pytest.mark.slow
def test_readme_compare_command(data, tmp_path):
    """The issue's acceptance command, as written (RN50, random weights, the paper protocol scaled to crop 224)."""
    out = tmp_path / "out"
    assert main(["compare", "--dataset", "pascal_context", "--data-root", str(data), "--model", "RN50",
                 "--pretrained", "none", "--limit", "4", "--save-predictions", "--out", str(out)]) == 0
    results, protocol = read_results(out)
    assert len(results) == 5 and all(len(list((out / "predictions" / r["method"]).glob("*.png"))) == 4
                                     for r in results)
    assert (protocol["window"]["short_side"], protocol["window"]["stride"]) == (299, 112)  # 512, 192 at 224 / 384


@pytest.mark.slow
@pytest.mark.skipif(not (Path(segclip.__file__).parent / "assets" / "tiny-rn" / "weights.safetensors").is_file(),
                    reason="the bundled tiny model is not built yet (tools/train_tiny_clip.py)")
def test_default_compare_on_synthetic_with_bundled_model(tmp_path, capsys):
    """`segclip compare --dataset synthetic` with no --model: the bundled model, every method, a table."""
    assert main(["compare", "--dataset", "synthetic", "--limit", "4", "--out", str(tmp_path / "out"),
                 "--no-progress"]) == 0
    results, protocol = read_results(tmp_path / "out")
    assert protocol["model"]["name"] == "segclip-tiny" and len(results) == 5
    assert protocol["window"]["crop"] == protocol["model"]["image_size"]


def test_calibration_signs_and_registers(tiny, data, tmp_path):
    from segclip.core.calibration import CALIBRATION_VERSION, Calibration

    model = tiny_model(torch.float32)
    signs = torch.where(torch.rand(256, 4, generator=torch.Generator().manual_seed(0)) < 0.5, -1.0, 1.0)
    calibration = Calibration(signs=signs, registers=torch.arange(10, 0, -1), mean_scalars=torch.zeros(256, 4),
                              register_scores=torch.rand(256), sink_attention=torch.rand(4),
                              metadata={"model": model.info.name, "weights_hash": model.info.weights_hash,
                                        "count": 3, "version": CALIBRATION_VERSION})
    calibration.save(tmp_path / "calibration.safetensors")
    out = tmp_path / "out"
    assert compare(data, out, "--methods", "neuron-head,maskclip", "--calibration",
                   str(tmp_path / "calibration.safetensors"), "--zero-registers", "4") == 0
    results, protocol = read_results(out)
    assert results[0]["params"]["signs"] == "calibration" and results[0]["params"]["registers"] == 4
    assert "registers" not in results[1]["params"]  # maskclip reads no attention
    assert protocol["register_intervention"]["registers"] == [10, 9, 8, 7]
    assert protocol["register_intervention"]["variant"] == "activations"


def test_bad_label_mid_run_keeps_finished_images(tiny, data, tmp_path, capsys):
    bad = data / "VOCdevkit/VOC2010/SegmentationClassContext/2008_000002.png"
    Image.fromarray(np.full((8, 8), 77, np.uint8)).save(bad)
    out = tmp_path / "out"
    assert compare(data, out, "--methods", "maskclip", "--batch-size", "1") == 2
    assert "outside the expected range" in capsys.readouterr().err
    assert sorted(p.stem for p in (out / "partial").glob("*.npy")) == ["2008_000000", "2008_000001"]


def test_a_finished_segment_rerun_is_read_back(tmp_path, capsys):
    """The same `segment` command twice: the second prints the stored summary and exits 0 (nothing rewritten);
    other options would replace something different: refused."""
    from segclip.paths import example_image_path

    args = ["segment", str(example_image_path()), "--classes", "sand,water", "--out", str(tmp_path / "o"),
            "--templates", "single", "--no-progress"]
    assert main(args) == 0
    envelope = json.loads((tmp_path / "o" / "segment.json").read_text())
    assert envelope["schema"] == "segclip.result/2" and envelope["provenance"]["config"]["classes"] == ["sand", "water"]
    written = (tmp_path / "o" / "example.png").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0 and "read back" in capsys.readouterr().out
    assert (tmp_path / "o" / "example.png").stat().st_mtime_ns == written
    assert main([*args, "--k", "7"]) == 2 and "--overwrite" in capsys.readouterr().err
