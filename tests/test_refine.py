"""PAMR against an independent transcription of the reference (visinf/1-stage-wseg ``models/mods/pamr.py``, as
SCLIP and NACLIP vendor it), and its wiring into the segmentation pipeline and results."""
import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segclip.data.images import normalise
from segclip.errors import ConfigError
from segclip.segment.refine import PAMRConfig, guide_image, pamr, refine_config

# the reference's 3x3 kernel positions of the 8 neighbours, in its order (row-major, centre skipped)
NEIGHBOURS = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)]
ALL_TAPS = [(ky, kx) for ky in range(3) for kx in range(3)]


def shifted(x: np.ndarray, ky: int, kx: int, d: int) -> np.ndarray:
    """What a 3x3 conv with a one-hot kernel at (ky, kx), dilation d, on an edge-padded (by d) input reads."""
    height, width = x.shape[-2:]
    padded = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(d, d), (d, d)], mode="edge")
    return padded[..., ky * d:ky * d + height, kx * d:kx * d + width]


def reference_pamr(image: np.ndarray, mask: np.ndarray, iterations: int, dilations) -> np.ndarray:
    """The reference, transcribed in numpy (float64): (B, K, H, W) image, (B, C, H, W) mask."""
    diffs = np.concatenate([np.stack([image - shifted(image, ky, kx, d) for ky, kx in NEIGHBOURS], 2)
                            for d in dilations], 2)  # LocalAffinity: centre minus neighbour, (B, K, 8D, H, W)
    taps = np.concatenate([np.stack([shifted(image, ky, kx, d) for ky, kx in ALL_TAPS], 2)
                           for d in dilations], 2)  # LocalStDev's input, (B, K, 9D, H, W)
    std = taps.std(axis=2, ddof=1, keepdims=True)
    x = (-np.abs(diffs) / (1e-8 + 0.1 * std)).mean(1, keepdims=True)  # (B, 1, 8D, H, W)
    x = np.exp(x - x.max(2, keepdims=True))
    x = x / x.sum(2, keepdims=True)
    for _ in range(iterations):
        m = np.concatenate([np.stack([shifted(mask, ky, kx, d) for ky, kx in NEIGHBOURS], 2)
                            for d in dilations], 2)  # LocalAffinityCopy, (B, C, 8D, H, W)
        mask = (m * x).sum(2)
    return mask


@pytest.mark.parametrize("dilations,size", [((1,), (9, 11)), ((1, 2), (13, 17)), ((8, 16), (13, 21))])
def test_pamr_equals_the_reference(dilations, size):
    """Random guide and logits; the (8, 16) case has dilations beyond the image's height (replicate padding)."""
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, *size, generator=generator) * 4 - 2
    image[:, :, :3, :4] = 0.5  # a flat patch: zero spread, the 1e-8 guard
    logits = torch.randn(2, 5, *size, generator=generator, dtype=torch.float64)
    ours = pamr(image.double(), logits, 3, dilations)
    expected = reference_pamr(image.double().numpy(), logits.numpy(), 3, dilations)
    assert ours.dtype == torch.float64 and ours.shape == logits.shape
    assert np.allclose(ours.numpy(), expected, rtol=1e-9, atol=1e-9)
    # float32, the pipeline's precision, to round-off
    ours32 = PAMRConfig(3, dilations)(image, logits.float())
    assert ours32.dtype == torch.float32
    assert np.allclose(ours32.numpy(), expected, rtol=1e-4, atol=1e-5)


def test_pamr_resizes_smaller_logits_first_like_the_reference():
    generator = torch.Generator().manual_seed(1)
    image = torch.rand(1, 3, 12, 16, generator=generator, dtype=torch.float64)
    logits = torch.randn(1, 4, 3, 4, generator=generator, dtype=torch.float64)
    resized = F.interpolate(logits, size=(12, 16), mode="bilinear", align_corners=True)  # the reference's call
    expected = reference_pamr(image.numpy(), resized.numpy(), 2, (1, 3))
    assert np.allclose(pamr(image, logits, 2, (1, 3)).numpy(), expected, rtol=1e-9, atol=1e-9)


def test_config_checks_and_options():
    assert PAMRConfig().to_dict()["iterations"] == 10 and PAMRConfig().dilations == (8, 16)
    for bad in ({"iterations": 0}, {"dilations": ()}, {"dilations": (8, 0)}):
        with pytest.raises(ConfigError, match="pamr"):
            PAMRConfig(**bad)

    class Options:
        refine, pamr_iterations, pamr_dilations = "pamr", 4, (2, 4)

    assert refine_config(Options()) == PAMRConfig(4, (2, 4))
    Options.refine = "none"
    assert refine_config(Options()) is None
    Options.refine = "crf"
    with pytest.raises(ConfigError, match="--refine"):
        refine_config(Options())


def test_guide_is_the_resized_input_resized_back():
    image = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    small = cv2.resize(image, (20, 15), interpolation=cv2.INTER_LINEAR)
    expected = F.interpolate(normalise(small), size=(30, 40), mode="bilinear", align_corners=False)
    assert torch.allclose(guide_image(image, (15, 20)), expected)


def test_segment_images_labels_come_from_the_refined_logits(bundled_model):
    from segclip.segment.methods import build_methods
    from segclip.segment.pipeline import QueryLabelRule, protocol_for, segment_images

    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (50, 70, 3), dtype=np.uint8), rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)]
    names = ["cat", "dog", "grass"]
    config = PAMRConfig(3, (1, 2))
    plain = build_methods(bundled_model, names, ["maskclip", "neuron-head"], templates="single")
    refined = build_methods(bundled_model, names, ["maskclip", "neuron-head"], templates="single", refine=config)
    assert refined[0].params["refine"]["dilations"] == [1, 2] and "refine" not in plain[0].params
    protocol = protocol_for(bundled_model)
    before = segment_images(bundled_model, images, plain, protocol)
    after = segment_images(bundled_model, images, refined, protocol, background_threshold=0.4)
    rule = QueryLabelRule((0, 1, 2, 2), (0, 1, 2, 2), scale=40.0)
    ruled = segment_images(bundled_model, images, refined, protocol, label_rule=rule)
    changed = 0
    for image, plain_result, result, ruled_result in zip(images, before, after, ruled):
        for name in ("maskclip", "neuron-head"):
            stitched = result[name].stitched
            size = image.shape[:2]
            small = cv2.resize(image, stitched.size[::-1], interpolation=cv2.INTER_LINEAR)
            guide = F.interpolate(normalise(small), size=size, mode="bilinear", align_corners=False)
            dense = F.interpolate(stitched.logits()[None], size=size, mode="bilinear", align_corners=False)
            expected = torch.from_numpy(reference_pamr(guide.double().numpy(), dense.double().numpy(), 3, (1, 2)))[0]
            probabilities = (expected * 40.0).softmax(0)
            top, labels = probabilities.max(0)
            labels[top < 0.4] = len(names)
            assert (result[name].labels == labels).float().mean() > 0.999  # float32 vs float64 near-ties
            assert (ruled_result[name].labels == rule(expected.float(), size)).float().mean() > 0.999
            assert torch.allclose(result[name].stitched.grids, plain_result[name].stitched.grids)
            changed += int((plain_result[name].labels != result[name].labels).sum())
    assert changed > 0


def test_compare_records_the_refinement(bundled_model, tmp_path):
    from segclip.segment.run import CompareConfig, run_compare

    config = CompareConfig(methods=("maskclip",), limit=2, progress=False, refine="pamr", pamr_iterations=2,
                           pamr_dilations=(1, 2), out=tmp_path)
    result = run_compare(config, bundled_model)
    assert result.scores[0].params["refine"]["method"] == "pamr"
    assert result.provenance["config"]["refine"] == "pamr"
    result.write(tmp_path)
    assert '"refine"' in (tmp_path / "results.json").read_text()


def test_segment_with_refinement_and_heatmaps(bundled_model, tmp_path):
    """``segment --refine pamr --heatmaps`` runs (heatmaps from the refined logits), recording the refinement."""
    from PIL import Image

    from segclip.paths import example_image_path
    from segclip.segment.predict import SegmentConfig, run_segment

    config = SegmentConfig(images=(example_image_path(),), out=tmp_path, progress=False, heatmaps=True,
                           refine="pamr", pamr_iterations=3, pamr_dilations=(2, 4))
    result = run_segment(config, bundled_model)
    assert result.record["params"]["refine"]["iterations"] == 3
    labels = np.asarray(Image.open(result.files["example"][0]))
    assert labels.ndim == 2 and labels.shape == np.asarray(Image.open(example_image_path())).shape[:2]
    assert len(result.files["example"]) == 2 + len(bundled_model.info.classes)  # label map, overlay, heatmaps
