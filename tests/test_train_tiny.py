"""The tiny-model training script: runs, is deterministic, and writes weights that reload exactly."""
import importlib.util
import json
from pathlib import Path

import open_clip
import pytest
import safetensors.torch
import torch

from segclip.data.synthetic import SYNTHETIC_CLASSES

TOOL = Path(__file__).resolve().parents[1] / "tools" / "train_tiny_clip.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("train_tiny_clip", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train(tool, out: Path, seed: int = 0):
    args = ["--out", str(out), "--steps", "2", "--batch-size", "4", "--threads", "1", "--workers", "0",
            "--eval-images", "12", "--seed", str(seed)]
    return tool.train(tool.parse_args(args))


def reload(folder: Path) -> open_clip.model.CLIP:
    """What segclip's loader does with a bundled model folder."""
    cfg = json.loads((folder / "config.json").read_text())
    model = open_clip.model.CLIP(**cfg["model_cfg"])
    weights = safetensors.torch.load_file(folder / "weights.safetensors")
    model.load_state_dict({k: v.float() for k, v in weights.items()})
    return model.eval()


def test_weights_reload_with_identical_outputs(tool, tmp_path):
    model, record = train(tool, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["name"] == "segclip-tiny" and cfg["classes"] == list(SYNTHETIC_CLASSES)
    assert cfg["model_cfg"] == tool.MODEL_CFG and cfg["training"] == json.loads(json.dumps(record))
    assert {"seed", "steps", "batch_size", "wall_seconds", "zero_shot_accuracy", "torch"} <= set(record)
    stored = safetensors.torch.load_file(tmp_path / "weights.safetensors")
    assert stored.keys() == model.state_dict().keys()
    assert all(v.dtype == torch.float16 for k, v in stored.items() if not k.endswith("num_batches_tracked"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "weights.safetensors"]
    assert all(p.stat().st_mode & 0o444 == 0o444 for p in tmp_path.iterdir())  # readable as package data

    reloaded = reload(tmp_path)
    assert all(torch.equal(v, v.half().float()) for v in model.state_dict().values() if v.is_floating_point())
    assert not model.training
    images = torch.randn(3, 3, 192, 192, generator=torch.Generator().manual_seed(0))
    tokens = open_clip.tokenize(["a photo of a ball.", "sky", "a star on grass under sky."], context_length=32)
    with torch.no_grad():
        assert torch.equal(model.encode_image(images), reloaded.encode_image(images))
        assert torch.equal(model.encode_text(tokens), reloaded.encode_text(tokens))
        assert torch.equal(model.logit_scale, reloaded.logit_scale)
        untrained = open_clip.model.CLIP(**tool.MODEL_CFG).eval()
        assert not torch.equal(model.encode_image(images), untrained.encode_image(images))  # the weights did load


def test_training_is_deterministic_from_the_seed(tool, tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        train(tool, tmp_path / name, seed)
    weights = {name: (tmp_path / name / "weights.safetensors").read_bytes() for name in "abc"}
    assert weights["a"] == weights["b"] != weights["c"]


def test_bundled_model_is_what_the_script_builds(tool):
    """The shipped asset was written by this script: same config, loads strictly, within the size budget."""
    folder = tool.DEFAULT_OUT
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_cfg"] == tool.MODEL_CFG and cfg["classes"] == list(SYNTHETIC_CLASSES)
    assert sum(p.stat().st_size for p in folder.iterdir()) <= 16 * 2**20
    model = reload(folder)
    visual = model.visual
    assert visual.attnpool.num_heads >= 4 and visual.image_size // 32 >= 6  # several heads, a grid of at least 6 x 6
    assert cfg["training"]["zero_shot_accuracy"]["simple"] >= 0.9
