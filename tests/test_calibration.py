"""Calibration artifacts: computed, saved in the cache, found again; stale or corrupt ones are not used."""
import logging

import pytest
import torch
from test_analysis import small_model, write_images

from segclip.analysis.calibration import CalibrateConfig, run_calibrate
from segclip.core.calibration import calibration_path, load_calibration


def calibrate(model, images, **options):
    return run_calibrate(CalibrateConfig(images=images, progress=False, **options), model).calibration


def test_calibrate_and_find_again(tmp_path, caplog):
    model = small_model()
    write_images(tmp_path / "images", 6)
    made = calibrate(model, tmp_path / "images", keep_registers=5, top_k=4, batch_size=4, set_default=True)
    assert made.signs.shape == (256, 4) and set(made.signs.unique().tolist()) <= {-1.0, 1.0}
    assert made.registers.dtype == torch.long and len(made.registers) == 5
    scores = made.register_scores[made.registers]
    assert (scores[:-1] >= scores[1:]).all() and scores[-1] >= made.register_scores.sort().values[-5]
    assert made.to_dict()["count"] == 6 and made.to_dict()["model"] == "small-rn"
    assert calibration_path(model.info).is_file()
    assert not list(calibration_path(model.info).parent.glob("*.partial.*"))  # checkpoint removed at the end

    found = load_calibration(model.info)
    assert torch.equal(found.signs, made.signs) and torch.equal(found.registers, made.registers)
    assert torch.allclose(found.mean_scalars, made.mean_scalars.float())

    caplog.set_level(logging.WARNING)
    assert load_calibration(small_model(seed=1).info, calibration_path(model.info)) is None  # other weights: stale
    assert "stale" in caplog.text
    calibration_path(model.info).write_bytes(b"garbage")
    assert load_calibration(model.info) is None and "unreadable" in caplog.text


def test_out_path_and_limit(tmp_path):
    model = small_model()
    write_images(tmp_path / "images", 5)
    out = tmp_path / "cal.safetensors"
    made = calibrate(model, tmp_path / "images", out=out, limit=3, keep_registers=2, top_k=2)
    assert made.metadata["count"] == 3 and out.is_file()
    assert (tmp_path / "cal.statistics.safetensors").is_file()
    assert load_calibration(model.info) is None and load_calibration(model.info, out) is not None


def test_bundled_model_ships_its_calibration():
    from segclip.models import load_model

    model = load_model()
    calibration = load_calibration(model.info)
    assert calibration is not None and calibration.signs.shape == (model.info.neurons, model.info.heads)
    assert calibration.metadata["weights_hash"] == model.info.weights_hash and calibration.metadata["count"] == 1000
    assert load_calibration(load_model(pretrained="none").info) is None  # random weights: nothing shipped applies


def test_calibrate_refuses_to_replace_an_artifact_without_overwrite(tmp_path):
    from segclip.errors import OutputError

    model = small_model()
    write_images(tmp_path / "images", 3)
    first = calibrate(model, tmp_path / "images", keep_registers=2, top_k=2, set_default=True)
    with pytest.raises(OutputError, match="already exists .* in the cache every later command uses.*--overwrite"):
        calibrate(model, tmp_path / "images", keep_registers=2, top_k=2, set_default=True)  # the cached default
    out = tmp_path / "mine.safetensors"
    calibrate(model, tmp_path / "images", out=out, keep_registers=2, top_k=2)
    with pytest.raises(OutputError, match="mine.safetensors already exists"):
        calibrate(model, tmp_path / "images", out=out, keep_registers=2, top_k=2)
    again = calibrate(model, tmp_path / "images", out=out, keep_registers=2, top_k=2, overwrite=True)
    assert torch.equal(again.signs, first.signs)


def test_register_search_is_recorded_and_ranked_both_ways(tmp_path):
    model = small_model()
    write_images(tmp_path / "images", 4)
    absolute = calibrate(model, tmp_path / "images", out=tmp_path / "a.safetensors", keep_registers=6, top_k=2)
    signed = calibrate(model, tmp_path / "images", out=tmp_path / "s.safetensors", keep_registers=6, top_k=2,
                       register_ranking="signed")
    assert absolute.register_search == {"variant": "activations", "ranking": "absolute"}
    assert signed.register_search["ranking"] == "signed"
    assert torch.equal(absolute.registers, absolute.register_scores.topk(6).indices)
    assert torch.equal(signed.registers, signed.register_decrease.topk(6).indices)
    found = load_calibration(model.info, tmp_path / "s.safetensors")
    assert torch.equal(found.register_decrease, signed.register_decrease.float())


def test_thin_sign_margins_are_reported_and_warned_about(tmp_path, caplog):
    model = small_model()
    write_images(tmp_path / "images", 6)
    caplog.set_level(logging.WARNING)
    made = calibrate(model, tmp_path / "images", top_k=6, keep_registers=2, set_default=True)
    share = made.metadata["thin_sign_share"]
    assert 0 < share <= 1 and "thin margin" in caplog.text  # 6 images: most signs are a coin flip
    assert load_calibration(model.info).metadata["thin_sign_share"] == share


def test_signs_imported_from_the_authors_pcs(tmp_path):
    """The authors' pcs.npy is (H, N, d), one oriented PC per pair: its sign against w[n, h] is the pair sign."""
    import numpy as np

    from segclip.analysis.calibration import calibration_from_pcs
    from segclip.errors import ConfigError, DataError

    model = small_model()
    info = model.info
    signs = torch.where(torch.rand(info.neurons, info.heads, generator=torch.Generator().manual_seed(1)) < 0.3,
                        -1.0, 1.0)
    w = torch.stack([model.pairs.head_vectors(h) for h in range(info.heads)])  # (H, N, d)
    pcs = (w / w.norm(dim=-1, keepdim=True)) * signs.T[..., None]
    np.save(tmp_path / "pcs.npy", pcs.numpy().astype(np.float32))
    diffs = np.random.default_rng(0).normal(size=(5, info.neurons)).astype(np.float32)
    np.save(tmp_path / "sink_diffs.npy", diffs)
    made = run_calibrate(CalibrateConfig(from_pcs=tmp_path / "pcs.npy", sink_diffs=tmp_path / "sink_diffs.npy",
                                         keep_registers=3, register_ranking="signed", out=tmp_path / "c.safetensors"),
                         model).calibration
    assert torch.equal(made.signs, signs)
    assert made.registers.tolist() == np.argsort(-diffs.mean(0))[:3].tolist()  # their segmentor: the signed mean
    assert load_calibration(info, tmp_path / "c.safetensors") is not None
    assert calibration_from_pcs(model, pcs, diffs, 3).registers.tolist() == \
        np.argsort(-np.abs(diffs).mean(0))[:3].tolist()  # find_registers: mean |difference|
    with pytest.raises(DataError, match="heads first"):
        calibration_from_pcs(model, pcs.transpose(0, 1))
    with pytest.raises(ConfigError, match="exactly one"):
        CalibrateConfig(images=tmp_path, from_pcs=tmp_path / "pcs.npy")


def test_a_throwaway_calibration_never_replaces_the_default(tmp_path, monkeypatch):
    """Issue 21 item 6: fewer than MIN_DEFAULT_IMAGES images, or an explicit --out, leave the cached default alone
    unless --set-default; the summary says which one was written."""
    import segclip.analysis.calibration as calibration_module
    from segclip.analysis.calibration import run_calibrate
    from segclip.core import calibration as core
    from segclip.errors import ConfigError

    model = small_model()
    write_images(tmp_path / "images", 5)
    default = calibration_path(model.info)
    with pytest.raises(ConfigError, match=r"on 5 images \(fewer than 256\).*--out FILE.*--set-default"):
        calibrate(model, tmp_path / "images", keep_registers=2, top_k=2)
    assert not default.exists()
    with pytest.raises(ConfigError, match="is the cached default.*--set-default"):  # --out naming the default
        calibrate(model, tmp_path / "images", out=default, keep_registers=2, top_k=2)
    assert not default.exists()

    out = tmp_path / "mine.safetensors"
    result = run_calibrate(CalibrateConfig(images=tmp_path / "images", out=out, keep_registers=2, top_k=2,
                                           progress=False), model)
    assert not default.exists() and not result.default and "not the default: use it with --calibration" in \
        result.summary()
    assert load_calibration(model.info) is None  # later commands still see no default

    # with --set-default and --out: both files, bit-identical calibrations
    result = run_calibrate(CalibrateConfig(images=tmp_path / "images", out=tmp_path / "b.safetensors", keep_registers=2,
                                           top_k=2, set_default=True, progress=False), model)
    assert result.default and default.is_file() and core.statistics_path(default).is_file()
    assert "the default every later command uses" in result.summary()
    assert torch.equal(load_calibration(model.info).signs, load_calibration(model.info, out).signs)

    # at the threshold a plain calibrate makes the default (threshold lowered to keep the test small)
    monkeypatch.setattr(calibration_module, "MIN_DEFAULT_IMAGES", 5)
    result = run_calibrate(CalibrateConfig(images=tmp_path / "images", keep_registers=2, top_k=2, overwrite=True,
                                           progress=False), model)
    assert result.path == default and result.default
    monkeypatch.setattr(calibration_module, "MIN_DEFAULT_IMAGES", 6)
    with pytest.raises(ConfigError, match="on 5 images"):
        run_calibrate(CalibrateConfig(images=tmp_path / "images", keep_registers=2, top_k=2, overwrite=True,
                                      progress=False), model)


def test_calibration_note_names_path_hash_and_count(tmp_path):
    """The note printed under tables and recorded in results: file, SHA-256 of its bytes, image count."""
    import hashlib

    from segclip.core.calibration import calibration_note

    model = small_model()
    write_images(tmp_path / "images", 3)
    out = tmp_path / "c.safetensors"
    made = calibrate(model, tmp_path / "images", out=out, keep_registers=2, top_k=2)
    sha = hashlib.sha256(out.read_bytes()).hexdigest()  # independent of file_sha256
    assert made.sha256 == sha and made.path == out
    found = load_calibration(model.info, out)
    assert found.sha256 == sha and found.to_dict()["path"] == str(out) and found.to_dict()["sha256"] == sha
    assert calibration_note(found) == f"calibration: {out} (sha256 {sha[:12]}, 3 images)"
    assert calibration_note(found.to_dict()) == calibration_note(found)
    assert calibration_note(None).startswith("calibration: none")


def test_compare_prints_and_records_the_calibration(tmp_path, capsys):
    """`compare` prints the calibration note under its table and results.json records path, hash and count."""
    import hashlib
    import json

    from segclip.cli import main
    from segclip.models import load_model

    model = load_model()
    out = tmp_path / "run"
    assert main(["compare", "--methods", "neuron-head", "--limit", "1", "--no-progress", "--out", str(out),
                 "--batch-size", "4"]) == 0
    printed = capsys.readouterr().out
    shipped = load_calibration(model.info)  # the bundled model's shipped calibration
    sha = hashlib.sha256(shipped.path.read_bytes()).hexdigest()
    assert f"calibration: {shipped.path} (sha256 {sha[:12]}, 1000 images)" in printed.splitlines()
    provenance = json.loads((out / "results.json").read_text())["provenance"]
    assert provenance["calibration"]["sha256"] == sha and provenance["calibration"]["count"] == 1000
