"""Calibration artifacts: computed, saved in the cache, found again; stale or corrupt ones are not used."""
import logging

import torch

from segclip.analysis.calibration import calibrate, calibration_path, load_calibration
from test_analysis import small_model, write_images


def test_calibrate_and_find_again(tmp_path, caplog):
    model = small_model()
    write_images(tmp_path / "images", 6)
    made = calibrate(model, tmp_path / "images", registers=5, top_k=4, batch_size=4, progress=False)
    assert made.signs.shape == (256, 4) and set(made.signs.unique().tolist()) <= {-1.0, 1.0}
    assert made.registers.dtype == torch.long and len(made.registers) == 5
    scores = made.register_scores[made.registers]
    assert (scores[:-1] >= scores[1:]).all() and scores[-1] >= made.register_scores.sort().values[-5]
    assert made.to_dict()["count"] == 6 and made.to_dict()["model"] == "small-rn"
    assert calibration_path(model).is_file()
    assert not list(calibration_path(model).parent.glob("*.partial.*"))  # checkpoint removed at the end

    found = load_calibration(model)
    assert torch.equal(found.signs, made.signs) and torch.equal(found.registers, made.registers)
    assert torch.allclose(found.mean_scalars, made.mean_scalars.float())

    caplog.set_level(logging.WARNING)
    assert load_calibration(small_model(seed=1), calibration_path(model)) is None  # other weights: stale
    assert "stale" in caplog.text
    calibration_path(model).write_bytes(b"garbage")
    assert load_calibration(model) is None and "unreadable" in caplog.text


def test_out_path_and_limit(tmp_path):
    model = small_model()
    write_images(tmp_path / "images", 5)
    out = tmp_path / "cal.safetensors"
    made = calibrate(model, tmp_path / "images", out=out, limit=3, registers=2, top_k=2, progress=False)
    assert made.metadata["count"] == 3 and out.is_file()
    assert (tmp_path / "cal.statistics.safetensors").is_file()
    assert load_calibration(model) is None and load_calibration(model, out) is not None


def test_bundled_model_ships_its_calibration():
    from segclip.analysis.calibration import load_calibration
    from segclip.models import load_model

    model = load_model()
    calibration = load_calibration(model)
    assert calibration is not None and calibration.signs.shape == (model.info.neurons, model.info.heads)
    assert calibration.metadata["weights_hash"] == model.info.weights_hash and calibration.metadata["count"] == 1000
    assert load_calibration(load_model(pretrained="none")) is None  # random weights: nothing shipped applies
