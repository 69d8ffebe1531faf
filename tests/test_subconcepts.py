"""Sub-concept discovery (paper A.3) with planted sub-concepts.

Planting, two ways:
- fabricated embeddings and top lists: a neuron whose top images are a class in two styles, one head of it whose top
  images are the second style only; the other heads repeat the neuron's images or show unrelated ones;
- the bundled model on real synthetic images, with statistics whose top lists are planted: neuron n's top images are
  balls and stars, pair (n, h)'s are stars only. The embeddings and words come from the model, so the label of the
  centroid difference must be 'star'.
"""
from __future__ import annotations

import json

import pytest
import torch
from explore_data import statistics, write_images

from segclip.analysis.omp import omp
from segclip.analysis.statistics import Statistics
from segclip.analysis.subconcepts import (
    SubconceptsConfig,
    run_subconcepts,
    score_subconcepts,
)
from segclip.errors import ConfigError, OutputError
from segclip.models import load_model


def planted(seed: int = 0):
    """Embeddings (60, 16): images 0-9 class A style 1, 10-19 class A style 2, 20-59 other; responses of neuron 0
    high on class A. Neuron 0's top images: 5 of each style; head 2: style 2 only; head 0: the neuron's own images;
    head 1: unrelated images. Neuron 1: unrelated throughout."""
    g = torch.Generator().manual_seed(seed)
    d = 16
    basis = torch.linalg.qr(torch.randn(d, d, generator=g))[0]
    cls, style1, style2 = basis[0], basis[1] * 0.6, basis[2] * 0.6
    noise = lambda k: 0.05 * torch.randn(k, d, generator=g)  # noqa: E731
    embeddings = torch.cat([cls + style1 + noise(10), cls + style2 + noise(10), torch.randn(40, d, generator=g)])
    embeddings = torch.nn.functional.normalize(embeddings, dim=-1)
    responses = torch.full((60, 2), 0.1)
    responses[:20, 0] = 1.0
    responses[20:40, 1] = 1.0
    neuron_images = torch.tensor([[0, 1, 2, 3, 4, 10, 11, 12, 13, 14], list(range(20, 30))]).T  # (t, N)
    pair_images = torch.empty(10, 2, 4, dtype=torch.long)
    pair_images[:, 0, 0] = neuron_images[:, 0]
    pair_images[:, 0, 1] = torch.arange(40, 50)
    pair_images[:, 0, 2] = torch.arange(10, 20)
    pair_images[:, 0, 3] = torch.tensor([0, 1, 2, 3, 4, 40, 41, 42, 43, 44])
    pair_images[:, 1] = torch.arange(30, 40)[:, None]
    words = torch.nn.functional.normalize(torch.stack([cls, style2 - style1, *torch.randn(6, d, generator=g)]), dim=-1)
    return embeddings, responses, neuron_images, pair_images, words


def test_planted_subconcept_is_the_only_hit():
    embeddings, responses, neuron_images, pair_images, words = planted()
    scores = score_subconcepts(neuron_images, pair_images, embeddings, responses)
    assert scores.hit.nonzero().tolist() == [[0, 2]]
    assert scores.overlap[0].tolist() == [1.0, 0.0, 0.5, 0.5]
    assert scores.response[0, 2] == pytest.approx(1.0) and scores.response[0, 1] == pytest.approx(0.1)
    assert scores.spread[0, 2] < scores.neuron_spread[0]
    assert scores.distance[0, 2] == pytest.approx(float((embeddings[10:20].mean(0) - embeddings[neuron_images[:, 0]]
                                                         .mean(0)).norm()), rel=1e-5)
    index, _ = omp(torch.nn.functional.normalize(scores.difference[0, 2][None], dim=-1), words, 1)
    assert index[0, 0] == 1  # the style word, not the class word


@pytest.mark.parametrize("option, value", [("min_response", 1.5), ("max_overlap", 0.4), ("max_spread", 0.01),
                                           ("min_distance", 2.0)])
def test_each_criterion_can_reject_the_planted_pair(option, value):
    embeddings, responses, neuron_images, pair_images, _ = planted()
    scores = score_subconcepts(neuron_images, pair_images, embeddings, responses, **{option: value})
    assert not scores.hit[0, 2]


@pytest.fixture(scope="module")
def model():
    return load_model()


def test_run_subconcepts_recovers_planted_pair(model, tmp_path):
    classes = ("ball", "star", "sky", "grass")
    paths = write_images(tmp_path / "images", per_class=8, classes=classes)
    names = [p.name for p in paths]
    statistics(model, tmp_path / "images", tmp_path / "real.safetensors")
    stats = Statistics.load(tmp_path / "real.safetensors")
    n, h = 17, 3
    balls = [names.index(f"ball_{i}.png") for i in range(4)]
    stars = [names.index(f"star_{i}.png") for i in range(8)]
    neuron_top = torch.tensor(balls + stars[:4])  # (t=8,) a neuron of balls and stars
    stats.neuron_top_images[:8, n] = neuron_top
    # every other pair repeats its neuron's top images (overlap 1: never a sub-concept) ...
    stats.pair_top_images[:8] = stats.neuron_top_images[:8, :, None].expand(-1, -1, stats.pair_top_images.shape[2])
    stats.pair_top_images[:8, n, h] = torch.tensor(stars)  # ... but head h of n: stars only
    stats.save(tmp_path / "planted.safetensors")
    (tmp_path / "words.txt").write_text("\n".join(("ball", "star", "sky", "grass", "box", "ring")) + "\n")
    config = SubconceptsConfig(statistics=tmp_path / "planted.safetensors", images=tmp_path / "images",
                               out=tmp_path / "out", vocabulary=tmp_path / "words.txt", images_per_unit=8, words=2,
                               min_response=0.0)
    result = run_subconcepts(config, model)
    assert result.found == 1 and [(hit.neuron, hit.head) for hit in result.hits] == [(n, h)]
    mine = result.hits
    words = dict(mine[0].words)  # centroid difference = stars - (balls + stars) / 2: +star, -ball
    assert set(words) == {"star", "ball"} and words["star"] > 0 > words["ball"]
    assert mine[0].overlap == pytest.approx(0.5) and mine[0].spread < mine[0].neuron_spread
    assert mine[0].montage.is_file()
    saved = json.loads(result.json.read_text())
    assert saved["schema"] == "segclip.result/2" and saved["provenance"]["analysis"] == "subconcepts"
    assert any(hit["neuron"] == n and hit["head"] == h for hit in saved["results"]["hits"])
    assert saved["provenance"]["model"]["name"] == model.info.name
    assert result.csv.read_text().splitlines()[0].startswith("rank,neuron,head,score")
    with pytest.raises(OutputError, match="--overwrite"):
        run_subconcepts(config, model)
    assert Statistics.load(tmp_path / "planted.safetensors").pair_top_images[0, n, h] == stars[0]


def test_config_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="--max-overlap"):
        SubconceptsConfig(statistics=tmp_path, images=tmp_path, out=tmp_path, max_overlap=1.5)
    with pytest.raises(ConfigError, match="--min-response"):
        SubconceptsConfig(statistics=tmp_path, images=tmp_path, out=tmp_path, min_response=-1)
