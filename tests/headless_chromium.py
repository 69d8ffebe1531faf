"""Debian's Chromium driven headless by selenium, for the browser tests (explorer, demo): one place for its binary
paths and flags. Import it after the test module has skipped itself when selenium or Chromium is missing."""
from __future__ import annotations

from pathlib import Path

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage")


def start_chromium(profile: Path, window: str, *extra_flags: str, logs: tuple[str, ...] = ("browser",)):
    """A headless Chromium on a fresh ``profile`` folder with ``window`` (``"W,H"``) and ``extra_flags``, recording
    the ``logs`` kinds (``browser``, ``performance``)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--window-size={window}", *extra_flags, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {kind: "ALL" for kind in logs})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
