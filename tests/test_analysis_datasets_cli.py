"""The analyses' commands on the paper's dataset layouts and on several processes, through ``segclip.cli.main``:
``analyze reconstruct --dataset imagenet`` on fabricated wnid folders, ``analyze shift --dataset stanford_cars
--group year --concepts convertible`` on fabricated devkit ``.mat`` files (with the drift report), one-line
errors before any model work, and ``calibrate --devices 2`` (2-process CPU DDP) against ``--devices 1``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import torch_threads
import torch
from test_analysis import small_model
from test_classification_data import image, write_cars
from test_distributed import assert_same_statistics, write_set

from segclip import cli
from segclip.analysis.statistics import Statistics
from segclip.data.classification import imagenet_wnids
from segclip.io import read_tensors

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def model(monkeypatch):
    loaded = small_model()
    monkeypatch.setattr(cli, "load_model_for", lambda config, devices=1: loaded)
    return loaded


@pytest.fixture
def no_model(monkeypatch):
    def refuse(config, devices=1):
        raise AssertionError("the model was loaded before the inputs were checked")
    monkeypatch.setattr(cli, "load_model_for", refuse)


def write_imagenet(root: Path) -> list[str]:
    """val/<wnid>/ folders for three classes, two of them the duplicated 'missile' names (657 and 744)."""
    wnids = imagenet_wnids()
    chosen = [wnids[0], wnids[657], wnids[744]]
    for i, wnid in enumerate(chosen):
        for j in range(2):
            image(root / "val" / wnid / f"ILSVRC2012_val_{10 * i + j + 1:08d}.JPEG", 3 * i + j)
    return chosen


def test_reconstruct_on_imagenet_folders(model, tmp_path, capsys):
    write_imagenet(tmp_path / "imagenet")
    out = tmp_path / "run"
    assert cli.main(["analyze", "reconstruct", "--dataset", "imagenet", "--data-root", str(tmp_path / "imagenet"),
                     "--templates", "single", "--components", "1", "--top-k", "4", "--batch-size", "4",
                     "--out", str(out), "--no-progress"]) == 0
    written = json.loads((out / "reconstruct.json").read_text())
    results = written["results"]
    assert results["images"] == 6 and results["statistics_images"] == 6
    assert results["accuracy"]["pairs rank-1"] == results["accuracy"]["baseline"]
    dataset = results["dataset"]
    assert dataset["dataset"] == "imagenet" and dataset["layout"] == "folder" and dataset["classes"] == 1000
    assert dataset["duplicate_text_names"] == {"missile": [657, 744], "sunglasses": [836, 837]}
    assert "lowest class index" in dataset["tie_rule"]
    assert written["provenance"]["config"]["dataset"] == "imagenet"
    assert not list(out.glob("*.partial*"))


def test_shift_on_stanford_cars_by_year(model, tmp_path, capsys):
    write_cars(tmp_path / "cars", n=12)
    out = tmp_path / "shift"
    assert cli.main(["analyze", "shift", "--dataset", "stanford_cars", "--data-root", str(tmp_path / "cars"),
                     "--group", "year", "--concepts", "convertible", "--templates", "single", "--permutations",
                     "20", "--batch-size", "4", "--out", str(out), "--no-progress"]) == 0
    results = json.loads((out / "shift.json").read_text())["results"]
    assert results["dataset"]["dataset"] == "stanford_cars" and results["dataset"]["group"] == "year"
    assert results["images"] == 12
    # years of the fabricated classes: 2000 (SUV), 2012 x3 (convertible, cab, minivan), 2008, 2007; 1 in 6 convertible
    assert sorted(results["proportion_by_group"]["convertible"]) == [0.0, 0.0, 0.0, 1 / 3]
    assert -1 <= results["point_biserial"]["convertible"] <= 1
    drift = results["drift"]["convertible"]
    assert results["reference_group"] == drift["reference"] == "2000"
    assert [m["group"] for m in drift["means"]] == ["2000", "2007", "2008", "2012"]
    assert all(m["ci_low"] <= m["mean"] <= m["ci_high"] for m in drift["means"])
    assert sorted({(t["group"], t["method"]) for t in drift["tests"]}) == \
        [(g, m) for g in ("2007", "2008", "2012") for m in ("classifier", "ks", "mmd")]
    for test in drift["tests"]:
        assert test["drift_detected"] == (test["p_value"] < test["threshold"] == 0.05)
    assert (out / "shift-drift.png").stat().st_size > 0 and (out / "shift.png").is_file()
    assert "drift_detected (ks, vs 2000)" in capsys.readouterr().out
    assert not list(out.glob("*.partial*"))


def test_shift_reference_group_and_drift_on_a_folder_are_bit_identical(model, tmp_path):
    """A plain folder with a groups CSV: the scores equal the accumulator run directly (today's path)."""
    from segclip.analysis.stream import run_pass
    from segclip.analysis.units import ConceptScores, concept_pairs
    from segclip.models.text import encode_classes

    paths = write_set(tmp_path / "images", 8)
    (tmp_path / "groups.csv").write_text("image,group\n" + "".join(f"{p.name},{'ab'[i % 2]}\n"
                                                                   for i, p in enumerate(paths)))
    out = tmp_path / "shift"
    assert cli.main(["analyze", "shift", "--images", str(tmp_path / "images"), "--groups", str(tmp_path / "groups.csv"),
                     "--concepts", "snow", "--templates", "single", "--reference-group", "b", "--drift-methods",
                     "ks", "--batch-size", "4", "--out", str(out), "--no-progress"]) == 0
    results = json.loads((out / "shift.json").read_text())["results"]
    assert results["reference_group"] == "b" and [t["group"] for t in results["drift"]["snow"]["tests"]] == ["a"]
    pairs = concept_pairs(model.pool, encode_classes(model, ["snow"], "single").to(model.device, model.dtype), 5)
    scores = ConceptScores(model.pool, pairs, len(paths))
    run_pass(model, paths, scores, key={}, batch_size=4, progress=False)
    expected = [scores.scores[i::2, 0].mean().item() for i in (0, 1)]
    assert results["scores_by_group"]["snow"] == expected


@pytest.mark.parametrize("argv, message", [
    (["analyze", "reconstruct", "--dataset", "cifar", "--data-root", "."], "invalid choice: 'cifar'"),
    (["analyze", "reconstruct", "--dataset", "imagenet"], "--dataset imagenet needs --data-root"),
    (["analyze", "reconstruct", "--dataset", "imagenet", "--data-root", "{tmp}/nothing"], "does not exist"),
    (["analyze", "shift", "--dataset", "stanford_cars", "--data-root", "{tmp}/cars", "--group", "year",
      "--concepts", "convertible"], "cars_meta.mat is missing"),
    (["analyze", "shift", "--dataset", "stanford_cars", "--data-root", "{tmp}/cars", "--concepts", "convertible"],
     "takes --group KEY"),
    (["analyze", "shift", "--dataset", "stanford_cars", "--data-root", "{tmp}/cars", "--group", "colour",
      "--concepts", "red"], None),
    (["calibrate", "--dataset", "stanford_cars", "--data-root", "{tmp}/cars"], "cars_meta.mat is missing"),
    (["analyze", "sink", "--dataset", "imagenet", "--images", "{tmp}"], "--images is for --dataset folder"),
    (["analyze", "top-images", "--images", "{tmp}", "--devices", "0"], "--devices must be at least 1"),
])
def test_bad_dataset_is_one_line_before_model_work(no_model, tmp_path, capsys, argv, message):
    (tmp_path / "cars" / "stanford_cars" / "devkit").mkdir(parents=True)
    if message is None:  # a devkit is there, but the dataset has no colour key without --colours
        write_cars(tmp_path / "cars")
        message = "no grouping key 'colour'"
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv] + ["--out", str(tmp_path / "out")]
    if argv[0] == "calibrate":
        argv[-2:] = ["--out", str(tmp_path / "cal.safetensors")]
    with pytest.raises(SystemExit) if "invalid choice" in message else _no_raise():
        assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err
    if "invalid choice" not in message:
        assert len(err.splitlines()) == 1, err


class _no_raise:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_labelled_folder_limit_and_names_unchanged(model, tmp_path):
    """--images keeps today's reading: folder names, a seeded subset, and the same texts as encode_classes."""
    from segclip.analysis.common import labelled_set, read_labelled
    from segclip.analysis.reconstruct import ReconstructConfig
    from segclip.models.text import encode_classes

    for i, name in enumerate(["red_car", "dog"]):
        write_set(tmp_path / "labelled" / name, 3 + i)
    config = ReconstructConfig(images=tmp_path / "labelled", out=tmp_path / "o", limit=4, templates="single")
    labelled = labelled_set(config, model, read_labelled(config))
    assert labelled.names == ["dog", "red car"] and len(labelled.paths) == 4
    assert torch.equal(labelled.texts, encode_classes(model, ["dog", "red car"], "single").to(torch.float64))
    assert labelled.description["dataset"] == "folder" and "tie_rule" not in labelled.description


def _calibrate(tmp_path: Path, images: Path, devices: int) -> Path:
    out = tmp_path / f"cal{devices}" / "calibration.safetensors"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "SEGCLIP_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "segclip.cli", "calibrate", "--images", str(images), "--out",
                           str(out), "--devices", str(devices), "--batch-size", "3", "--top-k", "4",
                           "--keep-registers", "8", "--no-progress"],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("calibrated ") == 1  # rank 0 reports, once
    assert ("MEMBER: 2/2" in done.stderr) == (devices == 2), done.stderr[-2000:]  # Lightning's DDP did run
    return out


@pytest.mark.slow
def test_calibrate_two_processes_equal_one(tmp_path):
    """`segclip calibrate --devices 2` (CPU DDP, gloo) == `--devices 1` on the bundled model: the artifact's signs
    and register neurons exactly, its float32 means and scores and the statistics to float64 round-off."""
    images = tmp_path / "images"
    write_set(images, 10)
    one, two = _calibrate(tmp_path, images, 1), _calibrate(tmp_path, images, 2)
    (a, meta_a), (b, meta_b) = read_tensors(one), read_tensors(two)
    assert sorted(a) == sorted(b) and meta_a == meta_b
    assert torch.equal(a["signs"], b["signs"]) and torch.equal(a["registers"], b["registers"])
    for name in ("mean_scalars", "register_scores", "sink_attention", "register_decrease"):
        assert torch.allclose(a[name], b[name], rtol=1e-6, atol=1e-8), name
    assert_same_statistics(Statistics.load(one.with_name("calibration.statistics.safetensors")),
                           Statistics.load(two.with_name("calibration.statistics.safetensors")))
    assert not [p.name for p in two.parent.iterdir() if "partial" in p.name]  # per-rank checkpoints removed
    assert np.isfinite(b["mean_scalars"].numpy()).all()


def test_repeated_text_names_of_a_folder_are_classified_with_the_tie_rule(model, tmp_path):
    from segclip.analysis.common import labelled_set, read_labelled
    from segclip.analysis.reconstruct import ReconstructConfig

    for name in ("tabby", "tiger", "dog"):
        write_set(tmp_path / "labelled" / name, 2)
    (tmp_path / "classes.txt").write_text("tabby\tcat\ntiger\tcat\ndog\n")
    config = ReconstructConfig(images=tmp_path / "labelled", class_names=tmp_path / "classes.txt",
                               out=tmp_path / "o", templates="single")
    labelled = labelled_set(config, model, read_labelled(config))
    assert torch.equal(labelled.texts[0], labelled.texts[1]) and not torch.equal(labelled.texts[0], labelled.texts[2])
    assert labelled.description["duplicate_text_names"] == {"cat": [0, 1]}
    assert "lowest class index" in labelled.description["tie_rule"]


def test_workers_take_the_lightning_pass_with_the_same_results(model, tmp_path):
    """--num-workers 1 (one process on Lightning, DataLoader workers) == the default run_pass path, for the
    statistics and the accuracy pass; the per-process checkpoints are removed."""
    for i, name in enumerate(["red_car", "dog"]):
        write_set(tmp_path / "labelled" / name, 3 + i)
    runs = {}
    for workers in ("0", "1"):
        out = tmp_path / f"run{workers}"
        assert cli.main(["analyze", "ablate", "--images", str(tmp_path / "labelled"), "--templates", "single",
                         "--fractions", "0.1,1", "--top-k", "4", "--batch-size", "3", "--num-workers", workers,
                         "--out", str(out), "--no-progress"]) == 0
        runs[workers] = json.loads((out / "ablate.json").read_text())["results"]
        assert not list(out.glob("*.partial*"))
    assert runs["0"]["accuracy"] == runs["1"]["accuracy"]
    assert Statistics.load(tmp_path / "run1" / "statistics.safetensors").count == 7
    assert_same_statistics(Statistics.load(tmp_path / "run0" / "statistics.safetensors"),
                           Statistics.load(tmp_path / "run1" / "statistics.safetensors"))


def _run_cli(tmp_path: Path, argv: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "SEGCLIP_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "segclip.cli", *argv], capture_output=True, text=True, timeout=600,
                          env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_reconstruct_two_processes_equal_one(tmp_path):
    """`segclip analyze reconstruct --devices 2` == `--devices 1` on the bundled model: the statistics pass and
    the accuracy pass both on DDP (rank 1 evaluates with rank 0's merged statistics); rank 0 writes."""
    from segclip.data.synthetic import write_labelled_folder

    write_labelled_folder(tmp_path / "labelled", per_class=1, seed=5)
    results = {}
    for devices in ("1", "2"):
        out = tmp_path / f"run{devices}"
        done = _run_cli(tmp_path, ["analyze", "reconstruct", "--images", str(tmp_path / "labelled"), "--templates",
                                   "single", "--top-k", "4", "--batch-size", "3", "--devices", devices, "--out",
                                   str(out), "--no-progress"])
        assert ("MEMBER: 2/2" in done.stderr) == (devices == "2")
        assert done.stdout.count("baseline:") == 1
        results[devices] = json.loads((out / "reconstruct.json").read_text())["results"]
        assert not list(out.glob("*.partial*"))
    assert results["1"]["accuracy"] == results["2"]["accuracy"]
    assert_same_statistics(Statistics.load(tmp_path / "run1" / "statistics.safetensors"),
                           Statistics.load(tmp_path / "run2" / "statistics.safetensors"))


SHARE_SCRIPT = """
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
from segclip.analysis.common import run_accumulator
from segclip.analysis.units import Embeddings
from segclip.models import load_model

out, folder = Path(sys.argv[1]), Path(sys.argv[2])
torch.set_num_threads(1)
paths = sorted(folder.glob("*.png"))
config = SimpleNamespace(devices=2, num_nodes=1, num_workers=0, batch_size=3, checkpoint_every=300.0, progress=False)
embeddings = run_accumulator(config, load_model(), paths, lambda m: Embeddings(len(paths), m.info.embed_dim),
                             key={"kind": "embeddings"}, checkpoint=out / "embeddings.partial.safetensors",
                             description="embeddings")
torch.save(embeddings.values, out / f"rank{dist.get_rank()}.pt")
"""


@pytest.mark.slow
def test_every_process_gets_the_merged_state(tmp_path):
    """Under DDP run_accumulator hands rank 0's merged state to every process (so that later passes, e.g. the
    accuracy pass after the statistics, use the statistics of all images on every rank)."""
    from segclip.analysis.stream import run_pass
    from segclip.analysis.units import Embeddings
    from segclip.models import load_model

    paths = write_set(tmp_path / "images", 8)
    (tmp_path / "share.py").write_text(SHARE_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "SEGCLIP_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, str(tmp_path / "share.py"), str(tmp_path), str(tmp_path / "images")],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    model = load_model()
    reference = Embeddings(len(paths), model.info.embed_dim)
    with torch_threads(1):  # the children's thread count (see conftest.torch_threads)
        run_pass(model, paths, reference, key={}, batch_size=3, progress=False)
    for rank in (0, 1):
        assert torch.equal(torch.load(tmp_path / f"rank{rank}.pt"), reference.values), rank
    assert not list(tmp_path.glob("embeddings.partial*"))


def test_limit_is_the_first_images_and_sample_a_seeded_subset(tmp_path):
    """--limit means the first N everywhere; --sample N --seed S is the random subset (it used to be --limit's
    meaning in the labelled analyses only)."""
    from segclip.analysis.common import read_labelled
    from segclip.analysis.reconstruct import ReconstructConfig

    for i, name in enumerate(["cat", "dog", "owl"]):
        write_set(tmp_path / "labelled" / name, 4)
    everything = read_labelled(ReconstructConfig(images=tmp_path / "labelled", out=tmp_path / "o"))[0].paths
    first = read_labelled(ReconstructConfig(images=tmp_path / "labelled", out=tmp_path / "o", limit=5))[0].paths
    assert first == everything[:5]
    picked = {seed: read_labelled(ReconstructConfig(images=tmp_path / "labelled", out=tmp_path / "o", sample=5,
                                                    seed=seed))[0].paths for seed in (0, 1)}
    expected = [everything[i] for i in sorted(torch.randperm(12, generator=torch.Generator().manual_seed(0))[:5])]
    assert picked[0] == expected and picked[0] != picked[1] and len(picked[1]) == 5
