"""`segclip analyze ...` end to end on a small random model, planted-signal tests, and bad input."""
from __future__ import annotations

import json
import re

import pytest
import torch
from test_analysis import small_model, write_images

from segclip import cli
from segclip.analysis.components import component_directions, principal_components
from segclip.analysis.evaluation import neuron_pca_condition, read_labelled_folder
from segclip.analysis.omp import (
    component_text_condition,
    label_components,
    label_pairs,
    omp,
    read_vocabulary,
)
from segclip.analysis.statistics import RunningStatistics, RunningTopDeviations, add_a2, head_values
from segclip.analysis.units import ConceptScores, point_biserial, read_groups
from segclip.core import PairDirections, trace_pool
from segclip.errors import ConfigError, DataError


@pytest.fixture
def model(monkeypatch):
    loaded = small_model()
    monkeypatch.setattr(cli, "load_model_for", lambda config, devices=1: loaded)
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
    assert data["schema"] == "segclip.result/2" and data["summary"]
    assert data["provenance"]["model"]["weights_hash"] and data["provenance"]["package_versions"]["torch"]
    return data["results"]


def test_a_finished_analysis_rerun_is_read_back(tmp_path, capsys):
    """The bundled model (no stand-in: the stored model must match the one asked for)."""
    write_images(tmp_path / "flat", 4, seed=1)
    out = tmp_path / "sink"
    args = ["analyze", "sink", "--images", str(tmp_path / "flat"), "--show-registers", "4", "--out", str(out)]
    run(*args)
    first = capsys.readouterr().out
    written = (out / "sink.json").stat().st_mtime_ns
    run(*args)  # a finished run re-run: its summary again, exit 0, nothing recomputed
    again = capsys.readouterr().out
    assert again.startswith(first) and "read back" in again
    assert (out / "sink.json").stat().st_mtime_ns == written
    assert cli.main([*args[:-3], "5", "--out", str(out), "--batch-size", "2"]) == 2  # other options: refused
    assert "--overwrite" in capsys.readouterr().err


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
    run("analyze", "label", "--vocabulary", str(vocabulary), "--words", "4", "--record", "1,4", "--components", "2",
        "--pc-samples", "top", "--images", str(labelled), "--templates", "single", "--out", str(out))
    label = results(out, "label")
    assert label["labelled"] == {"pairs": 256 * 4, "neurons": 256 * 2, "heads": 4 * 2}
    assert label["table_sparsity"] == 4  # --table-sparsity 8 capped at --words 4
    assert set(label["accuracy"]) == {"baseline"} | {f"{u} {j} words" for u in ("pairs", "neurons", "heads")
                                                     for j in (1, 4)}
    assert label["principal_components"]["neurons"].startswith("top 6 images")  # min(--top-k 50, 6 images)
    table = (out / "label.csv").read_text().splitlines()
    assert table[0] == "unit,neuron,head,component,words" and len(table) == 1 + 1024 + 512 + 8
    assert table[1].startswith("pair,0,0,,") and table[1025].startswith("neuron,0,,1,") and \
        table[-1].startswith("head,,3,2,") and table[-1].count("(") == 4
    flat = tmp_path / "flat"
    write_images(flat, 6, seed=5)
    run("analyze", "sink", "--images", str(flat), "--show-registers", "4", "--out", str(out / "sink"))
    assert len(results(out / "sink", "sink")["registers"]) == 4
    run("analyze", "top-images", "--images", str(flat), "--images-per-unit", "3", "--top", "2", "--out", str(out / "top"))
    assert (out / "top" / "top-images-montage.png").is_file()
    assert results(out / "top", "top-images")["images_per_unit"] == 3
    groups = tmp_path / "groups.csv"
    groups.write_text("image,group,dog\n" + "".join(f"img{i:04d}.png,{2000 + i % 2},{i % 2}\n" for i in range(6)))
    run("analyze", "shift", "--images", str(flat), "--groups", str(groups), "--concepts", "dog,red",
        "--templates", "single", "--out", str(out / "shift"))
    shift = results(out / "shift", "shift")
    assert set(shift["point_biserial"]) == {"dog"} and len(shift["scores_by_group"]["red"]) == 2


def test_label_heads_by_textspan(model, labelled, tmp_path):
    out = tmp_path / "out"
    vocabulary = tmp_path / "words.txt"
    vocabulary.write_text("\n".join(f"word{i}" for i in range(60)) + "\n")
    run("analyze", "label", "--units", "heads", "--head-labels", "textspan", "--vocabulary", str(vocabulary),
        "--words", "32", "--record", "2,32", "--table", "3", "--images", str(labelled), "--templates", "single",
        "--out", str(out))
    label = results(out, "label")
    assert label["labelled"] == {"heads": 4}
    assert label["accuracy"]["heads 32 words"] == label["accuracy"]["baseline"]  # the whole span: the output
    assert label["principal_components"]["heads"].startswith("TextSpan over the covariance of each head's top 6 images")
    table = (out / "label.csv").read_text().splitlines()
    assert len(table) == 1 + 4 and table[1].startswith("head,,0,textspan,word") and table[1].count("%)") == 3


def test_pair_labels_resume_after_an_interruption(statistics, tmp_path, monkeypatch, caplog):
    import segclip.analysis.omp as omp_module

    model, stats, _ = statistics
    words = torch.nn.functional.normalize(torch.randn(60, 32, generator=torch.Generator().manual_seed(3),
                                                      dtype=torch.float64), dim=-1)
    reference = label_pairs(model.pool, stats, words, 4, [2, 4], progress=False)
    checkpoint, calls, original = tmp_path / "pairs.partial.safetensors", [], omp_module.label_directions

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)
    monkeypatch.setattr(omp_module, "label_directions", interrupted)
    with pytest.raises(KeyboardInterrupt):
        label_pairs(model.pool, stats, words, 4, [2, 4], progress=False, checkpoint=checkpoint, key="run")
    monkeypatch.setattr(omp_module, "label_directions", original)
    caplog.set_level("INFO")
    resumed = label_pairs(model.pool, stats, words, 4, [2, 4], progress=False, checkpoint=checkpoint, key="run")
    assert "2 of 4 heads done" in caplog.text
    assert torch.equal(resumed[0], reference[0])
    assert all(torch.equal(resumed[1][j], reference[1][j]) for j in (2, 4))
    other = label_pairs(model.pool, stats, words, 4, [2, 4], progress=False, checkpoint=checkpoint, key="other")
    assert "belongs to another labelling run" in caplog.text and torch.equal(other[0], reference[0])


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


@pytest.fixture(scope="module")
def statistics():
    model = small_model()
    running = RunningStatistics(model.pool, top_k=4, registers=False)
    x = torch.rand(16, 256, 2, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    running.update(trace_pool(model.pool, x), 0)
    stats = running.finalise()
    second = RunningTopDeviations(model.pool, stats.mean_scalars, top_k=4)  # the A.2 pass, for --pc-samples top
    second.update(trace_pool(model.pool, x), 0)
    return model, add_a2(stats, second), trace_pool(model.pool, x[:5])


@torch.no_grad()
@pytest.mark.parametrize("unit, samples", [("neurons", "all"), ("neurons", "top"), ("heads", "all"),
                                           ("heads", "top")])
def test_omp_recovers_a_planted_combination_for_unit_components(statistics, unit, samples):
    model, stats, _ = statistics
    components = principal_components(model.pool, stats, unit, 2, samples)
    target = component_directions(model.pool, components)[3, 1]  # unit 3, second component (unit norm)
    generator = torch.Generator().manual_seed(0)
    words = torch.nn.functional.normalize(torch.randn(80, 32, generator=generator, dtype=torch.float64), dim=-1)
    rest = target - 0.6 * words[5] + 0.4 * words[17]  # the target is 0.6 w5 - 0.4 w17 + |rest| w40
    words[40] = rest / rest.norm()
    index, coefficients = label_components(model.pool, components, words, 3, [3], progress=False)
    found = dict(zip(index[3, 1].tolist(), coefficients[3][3, 1].tolist()))
    assert set(found) == {5, 17, 40}
    assert abs(found[5] - 0.6) < 1e-9 and abs(found[17] + 0.4) < 1e-9 and abs(found[40] - rest.norm()) < 1e-9


@torch.no_grad()
def test_text_condition_with_exact_words_is_the_pca_reconstruction(statistics):
    model, stats, trace = statistics
    pool = model.pool
    neurons = principal_components(pool, stats, "neurons", 1, "top")
    words = component_directions(pool, neurons)[:, 0]  # each neuron's component is a word: one word suffices
    index, coefficients = label_components(pool, neurons, words, 1, [1], progress=False)
    assert torch.equal(index[:, 0, 0], torch.arange(256))
    text = component_text_condition(pool, stats, neurons, words, index, coefficients[1])(trace)
    assert torch.allclose(text, neuron_pca_condition(pool, stats, 1, "top")(trace), atol=1e-10)
    heads = principal_components(pool, stats, "heads", 2)
    words = component_directions(pool, heads).flatten(0, 1)  # (H * 2, d)
    index, coefficients = label_components(pool, heads, words, 1, [1], progress=False)
    values = head_values(pool, trace.pair_scalars)
    projected = heads.mean + torch.einsum("hqc,bhc->bhq", heads.projector(), values - heads.mean)
    w_o = pool.pool.c_proj.weight.view(32, 4, 64)
    expected = torch.einsum("bhc,dhc->bd", projected, w_o) + pool.pool.c_proj.bias
    text = component_text_condition(pool, stats, heads, words, index, coefficients[1])(trace)
    assert torch.allclose(text, expected, atol=1e-10)


@pytest.mark.parametrize("argv, message", [
    (["--units", "pairs,neuron"], "unknown: neuron.*subset of pairs, neurons, heads"),
    (["--units", " , "], r"'units' \(--units\) has a blank entry"),  # the generic field check (issue 21)
    (["--units", "heads"], "need statistics"),
    (["--components", "5", "--images", "IMAGES"], "--components must be between 1 and 4"),
])
def test_label_rejects_bad_units_and_components(model, labelled, tmp_path, capsys, argv, message):
    vocabulary = tmp_path / "words.txt"
    vocabulary.write_text("\n".join(f"word{i}" for i in range(40)) + "\n")
    argv = [str(labelled) if a == "IMAGES" else a for a in argv]
    assert cli.main(["analyze", "label", "--vocabulary", str(vocabulary), "--words", "4", "--out", str(tmp_path / "o"),
                     *argv]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "o" / "label.json").exists()


def test_pc_samples_must_be_all_or_top(model, tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["analyze", "label", "--pc-samples", "top50", "--out", str(tmp_path / "o")])
    assert "invalid choice: 'top50'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="unknown principal-component samples 'top50'"):
        principal_components(model.pool, None, "heads", 1, "top50")


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
    write_images(tmp_path / "a", 4, seed=1)
    write_images(tmp_path / "b", 5, seed=2)
    run("analyze", "sink", "--images", str(tmp_path / "a"), "--out", str(tmp_path / "sink"))
    assert cli.main(["analyze", "top-images", "--images", str(tmp_path / "b"), "--out", str(tmp_path / "top"),
                     "--statistics", str(tmp_path / "sink" / "statistics.safetensors")]) == 2
    assert "computed on other images than" in capsys.readouterr().err
    assert not (tmp_path / "top" / "top-images.json").exists()
