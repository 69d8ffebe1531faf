"""``segclip explain`` end to end on the bundled model and example, and the demo's logic without a browser."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from PIL import Image

from segclip.cli import main
from segclip.data.images import read_image
from segclip.errors import ConfigError
from segclip.explain.command import ExplainConfig
from segclip.paths import example_image_path


def test_explain_writes_figure_and_json(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["explain", str(example_image_path()), "--classes", "sand,water,star,ring", "--at", "60,200",
            "--method", "maskclip", "--templates", "single", "--remove", "2", "--out", str(out)]
    assert main(args) == 0
    data = json.loads((out / "explain.json").read_text())
    assert set(data) == {"schema", "provenance", "results", "summary"} and data["schema"] == "segclip.result/2"
    attribution = data["results"]["attribution"]
    assert attribution["target"] == "water" and attribution["where"] == {"pixel": [60, 200]}
    assert attribution["sum_of_contributions"] == pytest.approx(attribution["logit"], abs=1e-5)
    assert attribution["sum_of_margins"] == pytest.approx(attribution["margin"], abs=1e-5)
    assert len(data["results"]["removed"]["heads"]) == 2  # the two top heads (the bias is never among them here)
    assert data["provenance"]["config"]["method"] == "maskclip"
    assert Image.open(out / "explain.png").size[0] > 500
    assert "water" in capsys.readouterr().out
    assert main(args) == 2  # outputs exist
    assert "--overwrite" in capsys.readouterr().err


def test_explain_region_and_errors(tmp_path, capsys):
    image = read_image(example_image_path())
    mask = np.zeros(image.shape[:2], np.uint8)
    mask[200:, :] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    assert main(["explain", str(example_image_path()), "--region", str(tmp_path / "mask.png"), "--method", "head-only",
                 "--templates", "single", "--target", "sand", "--remove", "0", "--out", str(tmp_path / "r")]) == 0
    data = json.loads((tmp_path / "r" / "explain.json").read_text())["results"]
    assert data["attribution"]["target"] == "sand" and data["comparison"] is None
    assert data["attribution"]["where"] == {"region": int((mask > 0).sum())}
    with pytest.raises(ConfigError, match="one of them"):
        ExplainConfig(image=example_image_path(), out=tmp_path)
    assert main(["explain", str(example_image_path()), "--at", "9999,1", "--out", str(tmp_path / "e")]) == 2
    assert "outside the 320x256 image" in capsys.readouterr().err
    assert main(["explain", str(example_image_path()), "--at", "1,1", "--target", "zebra",
                 "--out", str(tmp_path / "e")]) == 2
    assert "not among the classes" in capsys.readouterr().err


def test_demo_logic_without_a_browser(bundled_model):
    pytest.importorskip("gradio")
    from segclip.explain.demo import DemoApp, label_regions

    app = DemoApp(bundled_model, top=4)
    image = read_image(example_image_path())
    state, picture, gallery, status = app.segment(image, "sand, water, star", "", "", "head-only")
    assert picture.size == (image.shape[1], image.shape[0]) and len(gallery) == 3 and "Segmented" in status
    state, answer, maps, units = app.click(state, 60, 200)
    assert "is 'water'" in answer and units == [u.split(" +")[0] for _, u in maps][:len(units)]
    before, after, text = app.intervene(state, units[:1], 0.0)
    assert "changed" in text and after.size == before.size
    np.testing.assert_array_equal(np.asarray(before), np.asarray(label_regions(image, state.explainer.labels,
                                                                               ["sand", "water", "star"])))
    with pytest.raises(ConfigError, match="Segment an image first"):
        app.click(None, 1, 1)


def test_demo_without_gradio_says_how_to_install(monkeypatch):
    from segclip.explain import demo

    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    with pytest.raises(ConfigError, match=r'pip install "segclip\[demo\]"'):
        demo.run_demo(demo.DemoConfig(), lambda: pytest.fail("the model must not load"))


def test_demo_serves_the_explorer_links(tmp_path, bundled_model):
    pytest.importorskip("gradio")
    import urllib.request

    from segclip.explain.attribution import Unit
    from segclip.explain.demo import DemoConfig, run_demo

    (tmp_path / "site" / "assets").mkdir(parents=True)
    (tmp_path / "site" / "index.html").write_text('<script src="assets/app.js"></script>')
    (tmp_path / "site" / "assets" / "app.js").write_text("var planted = 1;")
    server = run_demo(DemoConfig(port=0, site=tmp_path / "site"), bundled_model)
    blocks, url = server.launch()
    try:
        link = server.app._link(Unit("pair", 3, 1))
        assert link.endswith("index.html#/pair/3/1)")
        page = link.split("](")[1].split("#")[0]
        with urllib.request.urlopen(url.rstrip("/") + page.replace("index.html", "assets/app.js")) as response:
            assert response.read() == b"var planted = 1;"  # the page's relative scripts resolve too
        assert server.app._link(Unit("bias")) == "bias"
    finally:
        blocks.close()
    with pytest.raises(ConfigError, match="holds no index.html"):
        DemoConfig(site=tmp_path)
