"""Screenshots of the page's main states, light and dark, for the README.

Usage: .venv/bin/python scripts/screenshots.py [OUTPUT_DIR]   (default: docs/screenshots)

Starts a branded portal against its own Keygen emulator on loopback ports, and photographs the
form, an error state and the key page with headless Chromium (/usr/bin/chromium).
"""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # the portal's modules, and tests/support

from support.branded import branded_portal  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def main(out: Path) -> None:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    with branded_portal(secrets.token_urlsafe(48)) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        for scheme in ("light", "dark"):
            context = browser.new_context(
                color_scheme=scheme, viewport={"width": 720, "height": 900}, locale="en-US"
            )
            page = context.new_page()
            page.goto(url + "/")
            shoot(page, out / f"form-{scheme}.png")

            page.get_by_label("First name").fill("Lois")
            page.get_by_label("Email").fill("lois@example")
            page.get_by_label("Password", exact=True).fill("short")
            page.get_by_role("button", name="Create account and get my key").click()
            page.wait_for_load_state("load")
            shoot(page, out / f"error-{scheme}.png")

            page.get_by_label("Last name").fill("Lane")
            page.get_by_label("Email").fill(f"lois-{scheme}@example.com")
            page.get_by_label("Password", exact=True).fill("a long enough password")
            page.get_by_label("I accept the terms of service").check()
            page.get_by_role("button", name="Create account and get my key").click()
            page.locator("#license-key").wait_for()
            shoot(page, out / f"key-{scheme}.png")
            context.close()
        browser.close()


def shoot(page, path: Path) -> None:
    page.screenshot(path=str(path), full_page=True, animations="disabled", caret="hide")
    print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "screenshots")
