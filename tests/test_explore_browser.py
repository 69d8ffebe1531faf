"""The explorer in a real browser: headless Chromium opens the site from file://, with no server and no network.

Needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium`` package; skipped with what to install
otherwise. Page-open times are printed (``-s``), never asserted. ``SEGCLIP_SCREENSHOTS=1`` saves
``docs/explorer_*.png`` (off by default, so tests leave the tree clean).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import torch
from explore_data import (
    PLANTED_WORD,
    read_shard,
    statistics,
    write_images,
    write_labels,
)

from segclip.core.pairs import PairDirections
from segclip.explore import ExploreConfig, run_explore
from segclip.explore.site import decode_map
from segclip.models import load_model
from segclip.models.text import encode_classes

from headless_chromium import CHROMEDRIVER, CHROMIUM, start_chromium

INSTALL = "apt-get install -y chromium chromium-driver && pip install selenium"
DOCS = Path(__file__).resolve().parents[1] / "docs"

webdriver = pytest.importorskip("selenium.webdriver", reason=f"selenium is not installed ({INSTALL})")
if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
    pytest.skip(f"Chromium is absent ({CHROMIUM}, {CHROMEDRIVER}); install it: {INSTALL}", allow_module_level=True)

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("explore-browser")
    model = load_model()
    write_images(root / "images", per_class=3)
    stats = statistics(model, root / "images", root / "s.safetensors")
    pair = divmod(int(stats.pair_top_norm.flatten().argmax()), stats.mean_scalars.shape[1])
    result = run_explore(ExploreConfig(statistics=root / "s.safetensors", images=root / "images",
                                       out=root / "site", labels=write_labels(root / "label", pair)), model)
    text = encode_classes(model, [PLANTED_WORD], "single")
    cosines = (PairDirections(model.pool).cosines(text)[0].detach().cpu() * stats.signs.cpu()).float()
    cosines[stats.pair_top_norm.cpu() < result.threshold] = -2
    best = divmod(int(cosines.flatten().argmax()), cosines.shape[1])
    return result, stats, pair, best


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = start_chromium(tmp_path_factory.mktemp("chromium-profile"), "1200,1000")
    yield driver
    driver.quit()


def open_page(driver, url: str, hash_: str) -> float:
    """Load ``url`` and wait until the app has rendered ``hash_``; the wall time in ms."""
    begun = time.perf_counter()
    driver.get(url)
    WebDriverWait(driver, 20).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-rendered")
                                    == hash_)
    return 1000 * (time.perf_counter() - begun)


def screenshot(driver, name: str) -> None:
    if os.environ.get("SEGCLIP_SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        driver.save_screenshot(str(DOCS / f"explorer_{name}.png"))


def severe_logs(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_pair_page_from_disk(site, browser):
    result, stats, (n, h), _ = site
    index = result.index.resolve().as_uri()
    open_page(browser, index, "#/")
    links = browser.find_elements(By.CSS_SELECTOR, "a.pair-link")
    assert links and links[0].text == f"pair {n}:{h}"
    links[0].click()  # follow the landing page's first pair link
    WebDriverWait(browser, 20).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-rendered")
                                     == f"#/pair/{n}/{h}")
    images = browser.find_elements(By.CSS_SELECTOR, ".pair-page .thumb img")
    assert len(images) == 8
    assert all(browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0;", image)
               for image in images)  # every thumbnail decoded from file://
    # The overlay of the first top image: its strongest cell is where the stored map is largest.
    cells = browser.execute_script(
        "var c = document.querySelector('.pair-page .thumb canvas');"
        "return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data);")
    alpha = torch.tensor(cells[3::4], dtype=torch.float32)
    per_shard = read_shard(result.out / "data" / "site.js")[1]["neurons_per_shard"]
    page = read_shard(result.out / "data" / "neurons" / f"{n // per_shard}.js")[1]["neurons"][str(n)]["pairs"][str(h)]
    expected = decode_map(page["top"][0]).abs()
    assert alpha.max() > 100 and int(alpha.argmax()) == int(expected.argmax())
    words = [w.text for w in browser.find_elements(By.CSS_SELECTOR, ".pair-page .words .word")]
    assert words[0] == PLANTED_WORD and "+0.812" in browser.find_element(By.CSS_SELECTOR, ".words li").text
    assert browser.find_elements(By.CSS_SELECTOR, ".histogram .bar")
    assert not severe_logs(browser)
    screenshot(browser, "pair")


def test_search_finds_the_planted_word(site, browser):
    result, _, _, best = site
    open_page(browser, result.index.resolve().as_uri(), "#/")
    box = browser.find_element(By.ID, "search-input")
    box.send_keys(PLANTED_WORD)
    box.submit()
    WebDriverWait(browser, 20).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-rendered")
                                     == f"#/search/{PLANTED_WORD}")
    first = browser.find_element(By.CSS_SELECTOR, ".search-page tr.result a.pair-link")
    assert first.text == f"pair {best[0]}:{best[1]}"
    assert not severe_logs(browser)
    screenshot(browser, "search")


def test_page_open_times(site, browser):
    result, _, (n, h), _ = site
    index = result.index.resolve().as_uri()
    times = {}
    for hash_ in (f"#/pair/{n}/{h}", f"#/neuron/{n}", f"#/head/{h}", "#/about", "#/"):
        wall = open_page(browser, index + hash_, hash_)
        rendered = float(browser.find_element(By.TAG_NAME, "body").get_attribute("data-render-ms"))
        times[hash_] = (wall, rendered)
        if hash_ == f"#/neuron/{n}":
            assert browser.find_elements(By.CSS_SELECTOR, ".neuron-page .thumb canvas")
            screenshot(browser, "neuron")
        if hash_ == f"#/head/{h}":
            screenshot(browser, "head")
    sys.stdout.write("".join(f"\npage-open {k}: {w:.0f} ms (load + render), {r:.1f} ms (render in page)"
                             for k, (w, r) in times.items()) + "\n")
    assert not severe_logs(browser)
