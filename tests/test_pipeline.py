"""The segmentation pipeline: batch N equals batch 1, any image size, one trace per chunk, Lightning and DDP."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_methods import tiny_model

from segclip.errors import ConfigError
from segclip.process import make_trainer
from segclip.segment.lightning import SegmentationData, SegmentationTask
from segclip.segment.methods import METHODS, build_methods
from segclip.segment.pipeline import protocol_for, segment_images, window_logits
from segclip.segment.windows import prepare_windows

NAMES = ["cat", "dog", "grass", "sky"]
SIZES = [(90, 140), (200, 100), (60, 60), (171, 400)]  # smaller than a crop, tall, tiny, very wide


def images(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in SIZES]


@pytest.fixture(scope="module")
def setup():
    model = tiny_model(torch.float32)
    methods = build_methods(model, NAMES, METHODS, k=50, templates="single")
    return model, methods, protocol_for(model)


def test_protocol_scales_the_paper(setup):
    model, _, protocol = setup
    assert (protocol.crop, protocol.stride, protocol.short_side) == (128, 64, 171)  # 384, 192, 512 scaled


def test_batch_n_equals_batch_1(setup):
    model, methods, protocol = setup
    together = segment_images(model, images(), methods, protocol, batch_size=5)
    for image, expected in zip(images(), together):
        alone = segment_images(model, [image], methods, protocol, batch_size=1)[0]
        for method in methods:
            assert torch.equal(alone[method.name].labels, expected[method.name].labels)
            assert torch.allclose(alone[method.name].logits, expected[method.name].logits, rtol=0, atol=1e-5)
    for image, result in zip(images(), together):
        for method in methods:
            labels = result[method.name].labels
            assert labels.shape == image.shape[:2] and 0 <= labels.min() and labels.max() < len(NAMES)


def test_one_trace_per_chunk(setup, monkeypatch):
    model, methods, protocol = setup
    calls = []
    original = type(model).trace

    def counting(self, crops, **kwargs):
        calls.append(len(crops))
        return original(self, crops, **kwargs)

    monkeypatch.setattr(type(model), "trace", counting)
    windows = prepare_windows(images(), protocol)
    outputs = window_logits(model, windows.crops, methods, batch_size=4)
    assert calls == [4] * (len(windows.crops) // 4) + ([len(windows.crops) % 4] if len(windows.crops) % 4 else [])
    assert all(out.shape == (len(windows.crops), len(NAMES), 4, 4) for out in outputs)


def test_background_threshold_and_bad_options(setup):
    model, methods, protocol = setup
    result = segment_images(model, images()[:1], methods[:1], protocol, background_threshold=0.999)
    assert (result[0]["neuron-head"].labels == len(NAMES)).any()
    with pytest.raises(ConfigError, match="batch-size"):
        segment_images(model, images()[:1], methods, protocol, batch_size=0)
    with pytest.raises(ConfigError, match="crop"):
        segment_images(model, images()[:1], methods, protocol_for(model, stride=32).__class__(crop=96, stride=48))


class LabelledImages(torch.utils.data.Dataset):
    def __init__(self, count: int):
        rng = np.random.default_rng(3)
        self.samples = [{"id": f"im{i}", "image": img, "label": rng.integers(0, len(NAMES), img.shape[:2],
                                                                              dtype=np.uint8)}
                        for i, img in enumerate(images() * (count // len(SIZES)))]

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        return self.samples[index]


def test_lightning_test_matches_pipeline(setup):
    """The LightningModule's confusion matrices equal the ones counted from segment_images directly."""
    model, methods, protocol = setup
    data = LabelledImages(4)
    seen = {}
    task = SegmentationTask(model, methods, protocol, len(NAMES), crops_per_pass=3,
                            on_image=lambda i, result, stack, image: seen.__setitem__(i, stack))
    make_trainer(torch.device("cpu"), progress=False).test(task, datamodule=SegmentationData(data, 2), verbose=False)
    direct = segment_images(model, [s["image"] for s in data.samples], methods, protocol)
    for m, method in enumerate(methods):
        expected = torch.zeros(len(NAMES), len(NAMES), dtype=torch.long)
        for sample, result in zip(data.samples, direct):
            target = torch.from_numpy(sample["label"]).long().flatten()
            expected += torch.bincount(target * len(NAMES) + result[method.name].labels.flatten(),
                                       minlength=len(NAMES) ** 2).view(len(NAMES), len(NAMES))
        assert torch.equal(task.local_confusions()[m].cpu(), expected)
        assert torch.equal(sum(stack[m] for stack in seen.values()), expected)
    assert task.images_seen == 4


@pytest.mark.slow
def test_ddp_two_processes_equal_one(tmp_path):
    """`segclip eval --devices 2` (Lightning DDP, gloo, 2 CPU processes) gives the single-process confusion matrix."""
    sys.path.insert(0, str(Path(__file__).parent))
    from fake_data import make_fake_pascal_context

    make_fake_pascal_context(tmp_path / "data", n_images=5)
    env = {"SEGCLIP_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    matrices = []
    for devices in (1, 2):
        out = tmp_path / f"out{devices}"
        command = [sys.executable, "-m", "segclip.cli", "eval", "--dataset", "pascal_context", "--data-root",
                   str(tmp_path / "data"), "--model", "RN50", "--pretrained", "none", "--templates", "single",
                   "--short-side", "224", "--method", "maskclip", "--devices", str(devices), "--out", str(out),
                   "--no-progress", "--device", "cpu"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        scores = json.loads((out / "results.json").read_text())["results"]["scores"][0]
        matrices.append(scores["confusion_matrix"])
        assert scores["images"] == 5
    assert matrices[0] == matrices[1] and sum(map(sum, matrices[0])) > 0


@pytest.mark.slow
@pytest.mark.parametrize("limit", [1, 3])
def test_ddp_with_fewer_images_than_processes(tmp_path, limit):
    """`eval --devices 3 --limit 1` (two processes without an image) and `--limit 3` end with the one-process
    confusion matrix; before, an idle process crashed Lightning's loop or left the others waiting."""
    env = {**os.environ, "SEGCLIP_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    matrices = []
    for devices in (1, 3):
        out = tmp_path / f"out{devices}"
        command = [sys.executable, "-m", "segclip.cli", "eval", "--dataset", "synthetic", "--data-root",
                   str(tmp_path / "synthetic"), "--templates", "single", "--method", "maskclip", "--limit",
                   str(limit), "--devices", str(devices), "--out", str(out), "--no-progress", "--device", "cpu"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env,
                              cwd=Path(__file__).resolve().parents[1])
        assert done.returncode == 0, done.stderr[-3000:]
        scores = json.loads((out / "results.json").read_text())["results"]["scores"][0]
        assert scores["images"] == limit
        matrices.append(scores["confusion_matrix"])
    assert matrices[0] == matrices[1] and sum(map(sum, matrices[0])) > 0
