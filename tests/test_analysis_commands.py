"""`segclip analyze ...` end to end on a small random model, planted-signal tests, and bad input."""
from __future__ import annotations

import json

import pytest
import torch

from segclip import cli
from segclip.analysis.evaluation import read_labelled_folder
from segclip.analysis.omp import omp, read_vocabulary
from segclip.analysis.statistics import RunningStatistics
from segclip.analysis.units import ConceptScores, point_biserial, read_groups
from segclip.decompose import PairDirections, trace_pool
from segclip.errors import DataError
from test_analysis import small_model, write_images


@pytest.fixture
def model(monkeypatch):
    loaded = small_model()
    monkeypatch.setattr(cli, "load_from_args", lambda args: loaded)
    return loaded


@pytest.fixture
def labelled(tmp_path):
    for i, name in enumerate(["red_car", "dog"]):
        write_images(tmp_path / "labelled" / name, 3, seed=i)
    (tmp_path / "classes.txt").write_text("red_car\tred car\ndog\n")
    return tmp_path / "labelled"


def run(*argv) -> dict:
    assert cli.main([*argv, "--batch-size", "2"]) == 0
    return argv


def results(out, name) -> dict:
    assert (out / f"{name}.png").is_file() and (out / f"{name}.csv").is_file()
    data = json.loads((out / f"{name}.json").read_text())
    assert data["protocol"]["model"]["weights_hash"] and data["protocol"]["versions"]["torch"]
    return data["results"]


def test_reconstruct_and_ablate_identities(model, labelled, tmp_path):
    out = tmp_path / "out"
    run("analyze", "reconstruct", "--images", str(labelled), "--class-names", str(tmp_path / "classes.txt"),
        "--templates", "single", "--out", str(out), "--top-k", "3")
    accuracy = results(out, "reconstruct")["accuracy"]
    assert accuracy["pairs rank-1"] == accuracy["baseline"]
    assert set(accuracy) >= {"neurons 1 PC", "neurons 4 PC"}
    run("analyze", "ablate", "--images", str(labelled), "--templates", "single", "--out", str(out),
        "--fractions", "0.5,1.0")
    accuracy = results(out, "ablate")["accuracy"]
    for unit in ("pairs", "neurons", "activations"):
        assert accuracy[f"{unit} 1"] == accuracy["baseline"]  # ablating nothing
    assert not list(out.glob("*.partial.*"))


def test_label_sink_top_images_shift_run(model, labelled, tmp_path):
    out = tmp_path / "out"
    vocabulary = tmp_path / "words.txt"
    vocabulary.write_text("\n".join(f"word{i}" for i in range(40)) + "\n")
    run("analyze", "label", "--vocabulary", str(vocabulary), "--words", "4", "--record", "1,4",
        "--images", str(labelled), "--templates", "single", "--out", str(out))
    label = results(out, "label")
    assert label["pairs"] == 256 * 4 and set(label["accuracy"]) == {"baseline", "pairs 1 words", "pairs 4 words"}
    flat = tmp_path / "flat"
    write_images(flat, 6, seed=5)
    run("analyze", "sink", "--images", str(flat), "--registers", "4", "--out", str(out / "sink"))
    assert len(results(out / "sink", "sink")["registers"]) == 4
    run("analyze", "top-images", "--images", str(flat), "--count", "3", "--units", "2", "--out", str(out / "top"))
    assert (out / "top" / "top-images-montage.png").is_file()
    assert results(out / "top", "top-images")["images_per_unit"] == 3
    groups = tmp_path / "groups.csv"
    groups.write_text("image,group,dog\n" + "".join(f"img{i:04d}.png,{2000 + i % 2},{i % 2}\n" for i in range(6)))
    run("analyze", "shift", "--images", str(flat), "--groups", str(groups), "--concepts", "dog,red",
        "--templates", "single", "--out", str(out / "shift"))
    shift = results(out / "shift", "shift")
    assert set(shift["point_biserial"]) == {"dog"} and len(shift["scores_by_group"]["red"]) == 2


def test_omp_recovers_a_planted_combination():
    generator = torch.Generator().manual_seed(0)
    words = torch.nn.functional.normalize(torch.randn(300, 48, generator=generator, dtype=torch.float64), dim=-1)
    planted = torch.tensor([[3, 7, 11, 250], [0, 1, 2, 3]])
    weights = torch.tensor([[2.0, -0.7, 1.3, 0.5], [1.0, 1.0, -1.0, 0.25]], dtype=torch.float64)
    targets = torch.einsum("pj,pjd->pd", weights, words[planted])
    index, coefficients = omp(targets, words, 4, record=[2, 4])
    for p in range(2):
        found = dict(zip(index[p].tolist(), coefficients[4][p].tolist()))
        assert set(found) == set(planted[p].tolist())
        for word, weight in zip(planted[p].tolist(), weights[p].tolist()):
            assert abs(found[word] - weight) < 1e-10
    assert coefficients[2].shape == (2, 2)


@torch.no_grad()
def test_top_images_find_planted_images():
    model = small_model()
    running = RunningStatistics(model.pool, top_k=3, registers=False)
    x = torch.rand(12, 256, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x[7, 42] *= 60  # image 7 maximises neuron 42 (and its pairs)
    running.update(trace_pool(model.pool, x[:6]), 0)
    running.update(trace_pool(model.pool, x[6:]), 6)
    stats = running.finalise()
    assert stats.neuron_top_images[0, 42] == 7 and stats.activation_top_images[0, 42] == 7
    assert (stats.pair_top_images[0, 42] == 7).all()


@torch.no_grad()
def test_shift_scores_follow_a_planted_proportion():
    model = small_model()
    pool = model.pool
    texts = PairDirections(pool).vectors(torch.tensor([42]), torch.tensor([1]))  # the concept is pair (42, 1)
    from segclip.analysis.units import concept_pairs

    pairs = concept_pairs(pool, texts, top=5)
    assert pairs[0, 0].tolist() == [42, 1]
    proportions = [0.0, 0.25, 0.5, 0.75, 1.0]
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(40, 256, 2, 2, generator=generator, dtype=torch.float64)
    labels = torch.tensor([float(i % 8 < 8 * proportions[i // 8]) for i in range(40)])
    x[labels == 1, 42] += 30  # the concept is present: its neuron fires
    scores = ConceptScores(pool, pairs, 40)
    scores.update(trace_pool(pool, x), 0)
    by_group = [scores.scores[8 * g:8 * g + 8, 0].mean().item() for g in range(5)]
    assert all(a < b for a, b in zip(by_group, by_group[1:]))
    assert point_biserial(scores.scores[:, 0], labels) > 0.9


def test_bad_input(tmp_path):
    write_images(tmp_path / "labelled" / "cat", 1)
    write_images(tmp_path / "labelled" / "dog", 1)
    names = tmp_path / "names.txt"
    names.write_text("cat\nbird\n")
    with pytest.raises(DataError, match=r"listed but no folder: \['bird'\].*folders not listed: \['dog'\]"):
        read_labelled_folder(tmp_path / "labelled", names)
    (tmp_path / "labelled" / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        read_labelled_folder(tmp_path / "labelled")
    vocabulary = tmp_path / "v.txt"
    vocabulary.write_text("cat\ndog\nCat\n")
    with pytest.raises(DataError, match="duplicates: 'Cat' \\(lines 1 and 3\\)"):
        read_vocabulary(vocabulary)
    vocabulary.write_text("cat\n\ndog\n")
    with pytest.raises(DataError, match="empty lines \\[2\\]"):
        read_vocabulary(vocabulary)
    groups = tmp_path / "g.csv"
    groups.write_text("image,group\nimg0000.png,2001\nnope.png,2002\n")
    with pytest.raises(DataError, match="not in .*nope.png"):
        read_groups(groups, tmp_path / "labelled" / "cat", [])
    groups.write_text("image,group\nimg0000.png,\n")
    with pytest.raises(DataError, match="empty image or group"):
        read_groups(groups, tmp_path / "labelled" / "cat", [])
    groups.write_text("picture,year\nimg0000.png,2001\n")
    with pytest.raises(DataError, match="columns 'image' and 'group'"):
        read_groups(groups, tmp_path / "labelled" / "cat", [])


def test_cli_reports_bad_input_without_traceback(model, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(["analyze", "sink", "--images", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "holds no images" in capsys.readouterr().err
