"""Issue 21 items 4-5 (explorer): malformed label.csv / subconcepts.json and those of another model are refused in
one line naming the file and record; the site is built next to --out and swapped in, so a killed build or rebuild
loses nothing and the rerun works."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from explore_data import PLANTED_WORD, read_shard, statistics, write_images, write_labels

from segclip.errors import ConfigError, DataError, OutputError, SegclipError
from segclip.explore import ExploreConfig, run_explore
from segclip.explore import site as site_module
from segclip.explore.site import _read_subconcepts, read_labels, staging_folder
from segclip.models import load_model


@pytest.fixture(scope="module")
def model():
    return load_model()


@pytest.fixture(scope="module")
def inputs(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("explore-inputs")
    write_images(root / "images", per_class=1)
    statistics(model, root / "images", root / "s.safetensors", top_k=4)
    return root


def small(inputs, out, **options):
    return ExploreConfig(statistics=inputs / "s.safetensors", images=inputs / "images", out=out, keep_pairs=0.02,
                         images_per_unit=2, search_words=20, **options)


def write_csv(path, rows, header=("unit", "neuron", "head", "component", "words")):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.mark.parametrize("rows,match", [
    ([["pair", "x", "1", "", "a(+0.1)"]], r"line 2: column neuron is 'x', not an integer"),
    ([["pair", "3", "1", "", "a(+0.1)"], ["pair", "3", "", "", "a(+0.1)"]], r"line 3: column head is ''"),
    ([["pair", "3", "1", "", "a(+1.2.3)"]], r"line 2: words .* not a number"),
    ([["pair", "3", "1"]], r"line 2 has 3 values for the 5 columns"),
    ([["pair", "3", "1", "", "a(+0.1)", "extra"]], r"line 2 has 6 values for the 5 columns"),
    ([["blob", "3", "1", "", "a(+0.1)"]], r"line 2: unit 'blob' is not pair, neuron or head"),
    ([["neuron", "-1", "", "1", "a(+0.1)"]], r"line 2: neuron -1 is negative"),
])
def test_malformed_label_csv_is_named(tmp_path, model, rows, match):
    path = write_csv(tmp_path / "label.csv", rows)
    with pytest.raises(DataError, match=match) as caught:
        read_labels(path, model.info)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_label_csv_of_another_model_is_refused(tmp_path, model):
    n, h = model.info.neurons, model.info.heads
    write_csv(tmp_path / "label.csv", [["pair", str(n), "0", "", "a(+0.1)"]])  # a neuron this model lacks
    with pytest.raises(ConfigError, match=rf"line 2: neuron {n} is outside the explored model's 0..{n - 1}"):
        read_labels(tmp_path, model.info)
    write_csv(tmp_path / "label.csv", [["head", "", str(h), "textspan", "a(10%)"]])
    with pytest.raises(ConfigError, match=rf"head {h} is outside"):
        read_labels(tmp_path, model.info)
    write_csv(tmp_path / "label.csv", [["pair", "1", "1", "", "a(+0.1)"]])  # in range, but label.json says RN50
    (tmp_path / "label.json").write_text(json.dumps({"schema": "segclip.result/2", "results": {},
                                                     "provenance": {"model": {"name": "RN50"}, "weights_hash": "abc"}}))
    with pytest.raises(ConfigError, match=r"label.json was computed for RN50 \(weights abc\), not the explored"):
        read_labels(tmp_path, model.info)
    (tmp_path / "label.json").write_text(json.dumps({"schema": "segclip.result/2", "results": {}, "provenance": {
        "model": {"name": model.info.name}, "weights_hash": model.info.weights_hash}}))
    assert read_labels(tmp_path, model.info)["pairs"] == {(1, 1): [["a", 0.1]]}
    write_labels(tmp_path / "bom", (3, 1))  # a byte-order mark (a spreadsheet's export) is not part of 'unit'
    path = tmp_path / "bom" / "label.csv"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert read_labels(path, model.info)["pairs"][(3, 1)][0][0] == PLANTED_WORD
    for text in ("", "pair,1,1,,a(+0.1)\n"):  # empty, or rows without the header: not a label.csv
        (tmp_path / "bad.csv").write_text(text, encoding="utf-8")
        with pytest.raises(DataError, match="is not a label.csv of `segclip analyze label`"):
            read_labels(tmp_path / "bad.csv", model.info)


def hit(**changes):
    base = {"rank": 1, "neuron": 3, "head": 1, "score": 0.5, "overlap": 0.3, "response": 0.9, "spread": 0.1,
            "neuron_spread": 0.2, "distance": 0.4, "words": [["stripes", 0.7]], "montage": "m.png"}
    return {**base, **changes}


def envelope(provenance, hits):
    """A subconcepts.json as `segclip analyze subconcepts` writes it (the result envelope)."""
    return {"schema": "segclip.result/2", "provenance": provenance, "results": {"hits": hits}}


@pytest.mark.parametrize("data,error,match", [
    ("not json", DataError, r"Cannot read sub-concepts"),
    ([1, 2], DataError, r"Cannot read sub-concepts .*older segclip"),
    ({"hits": {"a": 1}}, DataError, r"holds no list of hits"),
    ({"hits": [hit()]}, DataError, r"holds no provenance"),
    ({"protocol": "a text", "hits": [hit()]}, DataError, r"holds no provenance"),
    ({"protocol": "P", "hits": [7]}, DataError, r"hit 0 is int, not an object"),
    ({"protocol": "P", "hits": [hit(), hit(neuron="3")]}, DataError, r"hit 1: 'neuron' is '3', not an integer"),
    ({"protocol": "P", "hits": [hit(head=None)]}, DataError, r"hit 0: 'head' is None"),
    ({"protocol": "P", "hits": [hit(head=True)]}, DataError, r"hit 0: 'head' is True"),
    ({"protocol": "P", "hits": [hit(score="high")]}, DataError, r"hit 0: 'score' is 'high', not a finite number"),
    ({"protocol": "P", "hits": [hit(words="stripes")]}, DataError, r"hit 0: 'words' must be a list"),
    ({"protocol": "P", "hits": [hit(words=[["a", None]])]}, DataError, r"hit 0: 'words' must be a list"),
    ({"protocol": "P", "hits": [hit(neuron=100000)]}, ConfigError, r"hit 0: neuron 100000 is outside the explored"),
    ({"protocol": "P", "hits": [hit(head=-1)]}, ConfigError, r"hit 0: head -1 is outside"),
    ({"protocol": {"model": {"name": "RN50"}, "weights_hash": "openai:x"}, "hits": [hit()]}, ConfigError,
     r"was computed for RN50 \(weights openai:x\), not the explored segclip-tiny"),
])
def test_malformed_or_foreign_subconcepts_are_named(tmp_path, model, data, error, match):
    own = {"model": {"name": model.info.name}, "weights_hash": model.info.weights_hash}
    if isinstance(data, dict):
        data = envelope(own if data.get("protocol") == "P" else data.get("protocol"), data.get("hits"))
    path = tmp_path / "subconcepts.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    with pytest.raises(error, match=match) as caught:
        _read_subconcepts(path, model.info)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_well_formed_subconcepts_are_read(tmp_path, model):
    own = {"model": {"name": model.info.name}, "weights_hash": model.info.weights_hash}
    (tmp_path / "s.json").write_text(json.dumps(envelope(own, [hit(), hit(neuron=5, head=2)])))
    found = _read_subconcepts(tmp_path / "s.json", model.info)
    assert sorted(found) == [3, 5] and found[5][0]["head"] == 2 and found[3][0]["words"] == [["stripes", 0.7]]


def site_files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_failed_rebuild_leaves_the_old_site_and_the_rerun_resumes(inputs, model, tmp_path, monkeypatch):
    out = tmp_path / "site"
    run_explore(small(inputs, out), model)
    (out / "notes.txt").write_text("mine")  # a user's file in the site folder survives rebuilds
    before = site_files(out)

    def fail(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C (or a crash) after the thumbnails, before the data files
    monkeypatch.setattr(site_module, "_search_index", fail)
    with pytest.raises(KeyboardInterrupt):
        run_explore(small(inputs, out, overwrite=True, thumbnail_size=64), model)
    assert site_files(out) == before  # the old site is intact, byte for byte
    staging = staging_folder(out)
    thumbs = sorted((staging / "thumbs").glob("*.jpg"))
    assert staging.is_dir() and thumbs

    monkeypatch.undo()
    made = []
    original = site_module._thumbnail
    monkeypatch.setattr(site_module, "_thumbnail", lambda *a: made.append(a) or original(*a))
    result = run_explore(small(inputs, out, overwrite=True, thumbnail_size=64), model)  # the same command again
    assert made == []  # resumed: every thumbnail was kept from the interrupted build
    assert not staging.exists() and (out / "notes.txt").read_text() == "mine"
    assert read_shard(out / "data" / "site.js")[1]["about"]["command"] == result.command
    assert "thumbnail-size 64" in result.command and not list(tmp_path.glob(".site.explore-*"))

    # a staging folder of other options is cleared, not reused
    monkeypatch.setattr(site_module, "_search_index", fail)
    with pytest.raises(KeyboardInterrupt):
        run_explore(small(inputs, out, overwrite=True, thumbnail_size=48), model)
    monkeypatch.undo()
    made.clear()
    monkeypatch.setattr(site_module, "_thumbnail", lambda *a: made.append(a) or original(*a))
    run_explore(small(inputs, out, overwrite=True, thumbnail_size=32), model)
    assert made and all(size == 32 for _, size in made)


def test_a_killed_first_build_reruns_and_a_foreign_staging_folder_is_refused(inputs, model, tmp_path, monkeypatch):
    out = tmp_path / "site"

    def fail(*args, **kwargs):
        raise RuntimeError("killed")
    monkeypatch.setattr(site_module, "_search_index", fail)
    with pytest.raises(RuntimeError):
        run_explore(small(inputs, out), model)
    assert not out.exists()  # nothing half-written where the site goes
    monkeypatch.undo()
    run_explore(small(inputs, out), model)  # the same command, without --overwrite
    assert (out / "data" / "site.js").is_file()

    other = tmp_path / "other"
    staging_folder(other).mkdir()
    (staging_folder(other) / "keep.txt").write_text("not a build")
    with pytest.raises(OutputError, match="is not a segclip build in progress; move it away, or pass --overwrite"):
        run_explore(small(inputs, other), model)
    assert (staging_folder(other) / "keep.txt").is_file()
    run_explore(small(inputs, other, overwrite=True), model)
    assert (other / "index.html").is_file()

    monkeypatch.chdir(other)  # the build replaces the whole folder: never the one the user stands in
    with pytest.raises(OutputError, match="is the current folder"):
        run_explore(small(inputs, Path("."), overwrite=True), model)
    with pytest.raises(OutputError, match="is the current folder"):
        run_explore(small(inputs, Path("..") / other.name / "..", overwrite=True), model)
    assert (other / "index.html").is_file()


@pytest.mark.parametrize("kill_at", ["exchange", "between-renames"])
def test_a_process_killed_during_the_swap_loses_no_site(inputs, tmp_path, kill_at):
    """A subprocess dies (os._exit, no cleanup) inside the swap; the next run finds a whole site."""
    out = tmp_path / "site"
    run_explore(small(inputs, out), load_model())
    (out / "notes.txt").write_text("mine")
    old_site = site_files(out)
    script = textwrap.dedent(f"""
        import os
        from pathlib import Path
        from segclip.explore import site, ExploreConfig, run_explore
        from segclip.models import load_model
        if {kill_at!r} == "exchange":
            real = site._move_extras
            def die(*a):  # after the atomic exchange, before the old site is cleaned up
                os._exit(9)
            site._move_extras = die
        else:
            site._exchange = lambda a, b: False  # a system without RENAME_EXCHANGE
            real_rename = Path.rename
            def rename(self, target):
                result = real_rename(self, target)
                if self.name == "site":  # the old site moved aside; die before the new one arrives
                    os._exit(9)
                return result
            Path.rename = rename
        root = Path({str(inputs)!r})
        run_explore(ExploreConfig(statistics=root / "s.safetensors", images=root / "images", out=Path({str(out)!r}),
                                  keep_pairs=0.02, images_per_unit=2, search_words=20, overwrite=True,
                                  thumbnail_size=40), load_model())
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 9, done.stderr[-2000:]
    if kill_at == "between-renames":
        assert not out.exists()  # the window the recovery repairs
    result = run_explore(small(inputs, out, overwrite=True), load_model())  # the next run
    assert (out / "data" / "site.js").is_file() and (out / "notes.txt").read_text() == "mine"
    assert not list(tmp_path.glob(".site.explore-*")) and result.index.is_file()
    if kill_at == "between-renames":  # recovery restored the old site first; then it was rebuilt
        assert set(old_site) <= set(site_files(out))


def test_errors_are_segclip_errors():
    assert issubclass(DataError, SegclipError) and issubclass(OutputError, SegclipError)
