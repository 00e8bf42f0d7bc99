"""Headless Chromium, driven by Playwright, for the tests that need a real browser; and the
history steps of a page that must not show a key again."""

from __future__ import annotations

import os
import shutil

import pytest

from support.processes import require

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser():
    require(os.path.exists(CHROMIUM), "Chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def navigate(page, step) -> None:
    """A history step; Chromium answers ERR_CACHE_MISS where a no-store POST result would be."""
    from playwright.sync_api import Error

    try:
        step()
    except Error as error:
        assert "ERR_CACHE_MISS" in str(error), error


def settled_content(page) -> str:
    """The page's HTML once it stops navigating (Chromium may still be showing its error page)."""
    import time

    from playwright.sync_api import Error

    deadline = time.monotonic() + 10
    while True:
        try:
            page.wait_for_load_state("load")
            return page.content()
        except Error:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
