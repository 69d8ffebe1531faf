"""``segclip demo`` driven end to end in headless Chromium: upload the bundled example, type classes, segment,
click a pixel, tick a unit, read the changed segmentation. The browser resolves no host but 127.0.0.1, so the app
must work offline; every request it makes is checked to stay on 127.0.0.1.

Needs Gradio (``segclip[demo]``), Debian's ``chromium`` and ``chromium-driver`` and ``selenium``; skipped with
what to install otherwise. Times (start, click -> answer) are printed (``-s``), never asserted.
``SEGCLIP_SCREENSHOTS=1`` saves ``docs/demo_*.png``.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from headless_chromium import CHROMEDRIVER, CHROMIUM, start_chromium

INSTALL = 'apt-get install -y chromium chromium-driver && pip install selenium "segclip[demo]"'
DOCS = Path(__file__).resolve().parents[1] / "docs"
CLASSES = ["sand", "water", "star", "ring", "sky"]

pytest.importorskip("gradio", reason=f"gradio is not installed ({INSTALL})")
webdriver = pytest.importorskip("selenium.webdriver", reason=f"selenium is not installed ({INSTALL})")
if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
    pytest.skip(f"Chromium is absent ({CHROMIUM}, {CHROMEDRIVER}); install it: {INSTALL}", allow_module_level=True)

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from segclip.data.images import read_image  # noqa: E402
from segclip.explain import ImageExplainer, UnitIntervention  # noqa: E402
from segclip.explain.demo import DemoConfig, run_demo  # noqa: E402
from segclip.models import load_model  # noqa: E402
from segclip.paths import example_image_path  # noqa: E402
from segclip.segment.methods import build_methods  # noqa: E402
from segclip.segment.pipeline import protocol_for, segment_images  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return load_model()


@pytest.fixture(scope="module")
def server(model):
    begun = time.perf_counter()
    blocks, url = run_demo(DemoConfig(port=0), model).launch()
    sys.stdout.write(f"\ndemo start (model loaded, app built and serving): {time.perf_counter() - begun:.2f} s\n")
    yield url
    blocks.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = start_chromium(tmp_path_factory.mktemp("chromium-profile"), "1400,1800",
                            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # offline: nothing else
                            logs=("browser", "performance"))
    yield driver
    driver.quit()


def requested_urls(driver) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def text_of(driver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def screenshot(driver, name: str) -> None:
    if os.environ.get("SEGCLIP_SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        driver.save_screenshot(str(DOCS / f"demo_{name}.png"))


def test_upload_segment_click_and_remove_a_unit(server, browser, model):
    wait = WebDriverWait(browser, 120)
    browser.get(server)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#input-image input[type=file]"))
    browser.find_element(By.CSS_SELECTOR, "#input-image input[type=file]").send_keys(str(example_image_path()))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#input-image img"))
    box = browser.find_element(By.CSS_SELECTOR, "#classes textarea, #classes input")
    box.clear()
    box.send_keys(", ".join(CLASSES))
    browser.find_element(By.ID, "segment").click()
    wait.until(lambda d: "Segmented" in text_of(d, "status"))
    picture = browser.find_element(By.CSS_SELECTOR, "#segmentation img")
    wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0;",
                                          picture))
    natural = browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight];", picture)
    image = read_image(example_image_path())
    assert natural == [image.shape[1], image.shape[0]]

    # Click a pixel in the lower (water) part: its class must be the segmentation's there (the pipeline's own path).
    rect = browser.execute_script("var r = arguments[0].getBoundingClientRect(); return [r.width, r.height];",
                                  picture)
    dx, dy = 0.3 * rect[0], 0.35 * rect[1]  # from the centre
    begun = time.perf_counter()
    ActionChains(browser).move_to_element_with_offset(picture, int(dx), int(dy)).click().perform()
    wait.until(lambda d: "logit" in text_of(d, "answer"))
    click_seconds = time.perf_counter() - begun
    answer = text_of(browser, "answer")
    x, y, name = re.search(r"\((\d+), (\d+)\) is '([^']+)'", answer).groups()
    x, y = int(x), int(y)
    assert abs(x - image.shape[1] * (0.5 + 0.3)) <= 3 and abs(y - image.shape[0] * (0.5 + 0.35)) <= 3
    method = build_methods(model, CLASSES, ["neuron-head"])[0]
    labels = segment_images(model, [image], [method], protocol_for(model))[0]["neuron-head"].labels.numpy()
    assert name == CLASSES[labels[y, x]]
    units = browser.find_elements(By.CSS_SELECTOR, "#units input[type=checkbox]")
    assert len(units) == 8
    screenshot(browser, "click")

    # Tick the top three units: the app's change must be the library's.
    for unit in units[:3]:
        unit.click()
        time.sleep(0.3)
    wait.until(lambda d: "Scaling 3 unit(s)" in text_of(d, "change"))
    change = text_of(browser, "change")
    explainer = ImageExplainer(model, image, method, protocol_for(model))
    top = explainer.attribute(at=(x, y), maps=False).top_units(3)
    _, comparison = explainer.intervene(UnitIntervention(pairs={(u.neuron, u.head): 0.0 for u in top}))
    assert f"changed {100 * comparison.changed:.2f}% of the pixels" in change
    after = browser.find_element(By.CSS_SELECTOR, "#after img")
    assert browser.execute_script("return arguments[0].naturalWidth;", after) == image.shape[1]
    screenshot(browser, "intervene")

    outside = [u for u in requested_urls(browser) if u.startswith(("http", "ws"))  # not chrome://, data:, blob:
               and not u.startswith(("http://127.0.0.1:", "ws://127.0.0.1:"))]
    assert not outside, outside
    sys.stdout.write(f"click -> answer in the browser: {click_seconds:.2f} s\n")
    assert np.isfinite(comparison.changed)
