"""The explorer site builder, without a browser: what the data files hold, checked against the model itself."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from explore_data import (
    PLANTED_WORD,
    read_shard,
    statistics,
    write_images,
    write_labels,
)

from segclip.analysis.statistics import Statistics
from segclip.core.pairs import PairDirections
from segclip.data.images import read_image
from segclip.data.preprocess import clip_batch
from segclip.errors import ConfigError, OutputError
from segclip.explore import ExploreConfig, run_explore
from segclip.explore.site import decode_map, read_labels
from segclip.io import write_result
from segclip.models import load_model
from segclip.models.text import encode_classes


@pytest.fixture(scope="module")
def model():
    return load_model()


@pytest.fixture(scope="module")
def built(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("explore")
    write_images(root / "images", per_class=2)
    stats = statistics(model, root / "images", root / "s.safetensors")
    flat = int(stats.pair_top_norm.flatten().argmax())
    pair = divmod(flat, stats.mean_scalars.shape[1])
    labels = write_labels(root / "label", pair)
    config = ExploreConfig(statistics=root / "s.safetensors", images=root / "images", out=root / "site",
                           labels=labels, keep_pairs=0.25, neurons_per_shard=16, images_per_unit=4)
    result = run_explore(config, model)
    return root, stats, pair, config, result


def shard_of(config, site_dir, n):
    return read_shard(site_dir / "data" / "neurons" / f"{n // config.neurons_per_shard}.js")[1]["neurons"][str(n)]


def test_site_layout_and_threshold(built):
    root, stats, _, config, result = built
    site = result.out
    assert (site / "index.html").is_file() and (site / "assets" / "app.js").is_file()
    neurons, heads = stats.mean_scalars.shape
    assert result.shards == math.ceil(neurons / config.neurons_per_shard)
    assert len(list((site / "data" / "neurons").glob("*.js"))) == result.shards
    assert result.pairs_kept == round(0.25 * neurons * heads)
    name, data = read_shard(site / "data" / "site.js")
    assert name == "site" and data["threshold"] == pytest.approx(result.threshold)
    kept = 0
    for n in range(neurons):
        neuron = shard_of(config, site, n)
        for h, norm, has_page in neuron["heads"]:
            assert has_page == (str(h) in neuron["pairs"])
            assert has_page == (norm >= result.threshold)  # pairs below the threshold are left out
            kept += has_page
    assert kept == result.pairs_kept
    traced = set(stats.pair_top_images[:4].flatten().tolist()) | set(stats.neuron_top_images[:4].flatten().tolist()) \
        | set(stats.head_top_images[:4].flatten().tolist())
    assert {int(p.stem) for p in (site / "thumbs").glob("*.jpg")} <= traced  # thumbnails written once, shared
    assert result.bytes == sum(p.stat().st_size for p in site.rglob("*") if p.is_file())


def test_pair_maps_are_the_token_shares_of_alpha(built, model):
    root, stats, (n, h), config, result = built
    page = shard_of(config, result.out, n)["pairs"][str(h)]
    names = stats.metadata["images"]
    assert [item["i"] for item in page["top"]] == stats.pair_top_images[:4, n, h].tolist()
    for item in page["top"][:2]:
        image = clip_batch([read_image(root / "images" / names[item["i"]])], model.info.image_size)
        trace = model.trace(image)
        share = trace.attention[0, h] * trace.tokens[0, :, n]  # (K+1,) a^h_i z'_i[n]
        decoded = decode_map(item)
        assert decoded.shape == (model.info.grid ** 2,)
        assert torch.allclose(decoded, share[1:], atol=share[1:].abs().max().item() / 200)
        assert item["c"] + float(share[1:].sum()) == pytest.approx(float(trace.pair_scalars[0, n, h]), rel=1e-4)
        assert item["a"] == pytest.approx(float(trace.pair_scalars[0, n, h]), rel=1e-5)


def test_pair_page_words_statistics_and_siblings(built):
    _, stats, (n, h), config, result = built
    neuron = shard_of(config, result.out, n)
    page = neuron["pairs"][str(h)]
    assert page["words"][0] == [PLANTED_WORD, 0.812]
    assert neuron["words"][0] == ["ring", 0.7]
    assert page["sign"] == int(stats.signs[n, h])
    assert page["mean"] == pytest.approx(float(stats.mean_scalars[n, h]))
    assert page["std"] == pytest.approx(float(stats.neuron_covariance[n, h, h].sqrt()), rel=1e-5)
    assert sum(page["histogram"]["counts"]) == stats.top_k == page["tail"]
    saved = Statistics.load(config.statistics)  # what the site read: float16 deviations
    tail = (saved.mean_scalars[n, h] + saved.deviations[:, n, h]).numpy()
    counts, edges = np.histogram(tail, config.histogram_bins)
    assert page["histogram"]["counts"] == counts.tolist()
    assert page["histogram"]["edges"] == pytest.approx(edges.tolist(), abs=1e-5)
    assert len(page["histogram"]["edges"]) == config.histogram_bins + 1
    norms = [norm for _, norm, _ in neuron["heads"]]
    assert norms == sorted(norms, reverse=True)  # siblings ranked by contribution
    assert sorted(head for head, _, _ in neuron["heads"]) == list(range(stats.mean_scalars.shape[1]))


def test_head_page_and_landing(built):
    _, stats, (n, h), _, result = built
    _, site = read_shard(result.out / "data" / "site.js")
    head = site["head_pages"][h]
    assert head["words"] == [["snow", 31.5], ["grass", 12.0]] and site["head_kind"] == "textspan"
    assert head["sink"] == pytest.approx(float(stats.sink_attention[h]))
    assert [item["i"] for item in head["top"]] == stats.head_top_images[:4, h].tolist()
    assert site["landing"]["pairs"][0][:2] == [n, h]
    assert "segclip explore" in site["about"]["command"] and "--keep-pairs 0.25" in site["about"]["command"]
    assert len(site["registers"]) == 32


def test_search_ranks_pairs_by_signed_cosine(built, model):
    _, stats, _, _, result = built
    _, index = read_shard(result.out / "data" / "search.js")
    assert PLANTED_WORD in index["words"]
    word = "star"
    found = index["results"][index["words"].index(word)]
    text = encode_classes(model, [word], "single")
    cosines = (PairDirections(model.pool).cosines(text)[0].detach().cpu() * stats.signs.cpu()).float()
    cosines[stats.pair_top_norm.cpu() < result.threshold] = -2
    best = divmod(int(cosines.flatten().argmax()), cosines.shape[1])
    assert found["pairs"][0][:2] == list(best)
    assert found["pairs"][0][2] == pytest.approx(float(cosines.max()), abs=1e-3)


def test_refuses_to_overwrite(built, model, tmp_path):
    _, _, _, config, _ = built
    with pytest.raises(OutputError, match="--overwrite"):
        run_explore(config, model)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="no segclip site"):
        run_explore(ExploreConfig(statistics=config.statistics, images=config.images, out=tmp_path,
                                  overwrite=True), model)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_config_and_inputs_are_checked(built, tmp_path):
    _, _, _, config, _ = built
    with pytest.raises(ConfigError, match="--keep-pairs"):
        ExploreConfig(statistics=config.statistics, images=config.images, out=tmp_path, keep_pairs=0)
    with pytest.raises(ConfigError, match="--images-per-unit"):
        ExploreConfig(statistics=config.statistics, images=config.images, out=tmp_path, images_per_unit=0)
    other = load_model("segclip-tiny", "none")
    with pytest.raises(ConfigError, match="computed for"):
        run_explore(ExploreConfig(statistics=config.statistics, images=config.images, out=tmp_path / "x"), other)


def test_read_labels_parses_omp_and_textspan(tmp_path):
    folder = write_labels(tmp_path, (3, 1))
    labels = read_labels(folder)
    assert labels["pairs"][(3, 1)] == [[PLANTED_WORD, 0.812], ["star", -0.301], ["sky", 0.12]]
    assert labels["heads"][1] == [["snow", 31.5], ["grass", 12.0]] and labels["head_kind"] == "textspan"
    assert labels["neurons"][3][1] == ["sand", -0.2]


def test_subconcepts_shown_on_neuron_pages(built, model, tmp_path):
    import json

    _, stats, _, config, _ = built
    weakest = divmod(int(stats.pair_top_norm.flatten().argmin()), stats.mean_scalars.shape[1])
    hit = {"rank": 1, "neuron": weakest[0], "head": weakest[1], "score": 0.5, "overlap": 0.3, "response": 0.9,
           "spread": 0.1, "neuron_spread": 0.2, "distance": 0.4, "words": [["stripes", 0.7]], "montage": "m.png"}
    write_result(tmp_path / "subconcepts.json", {"model": {"name": model.info.name}, "weights_hash": model.info.weights_hash},
                 {"hits": [hit]})
    result = run_explore(ExploreConfig(statistics=config.statistics, images=config.images, out=tmp_path / "site",
                                       subconcepts=tmp_path / "subconcepts.json", keep_pairs=0.01), model)
    assert result.pairs_kept == round(0.01 * stats.pair_top_norm.numel()) + 1  # the sub-concept's page is kept
    neuron = read_shard(tmp_path / "site" / "data" / "neurons" / f"{weakest[0] // 8}.js")[1]["neurons"][str(weakest[0])]
    assert neuron["subconcepts"][0]["head"] == weakest[1] and neuron["subconcepts"][0]["words"] == [["stripes", 0.7]]
    assert str(weakest[1]) in neuron["pairs"]
