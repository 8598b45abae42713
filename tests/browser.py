"""Headless Chromium from Debian's packages (chromium, chromium-driver), driven by Selenium:
for the status page's browser test and its benchmark."""

from __future__ import annotations

import shutil
import tempfile

#: Flags that keep Chromium quiet on a machine with no network but loopback.
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1400,900",
)  # fmt: skip


def missing() -> str | None:
    """Why a browser cannot be driven here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        return "no chromium/chromedriver (apt install chromium chromium-driver)"
    return None


def chromium():
    """A fresh headless Chromium (its own empty profile); quit() it when done."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tempfile.mkdtemp(prefix='sinagot-chromium-')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
