"""Screenshots of the page's main states, light and dark, for the README.

Usage: .venv/bin/python scripts/screenshots.py [OUTPUT_DIR]   (default: docs/screenshots)

Starts a branded portal against its own Keygen emulator on loopback ports, and photographs the
form, an error state, the key page and the account page (self-service: two licenses and their
devices) with headless Chromium (/usr/bin/chromium).
"""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # the portal's modules, and tests/support

from support.branded import branded_world  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def main(out: Path) -> None:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    world = branded_world(secrets.token_urlsafe(48))
    with world as (url, emulator, ids), sync_playwright() as playwright:
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

            email = f"lois-{scheme}@example.com"
            devices(emulator, ids, email, scheme)
            page.goto(url + "/sign-in")
            page.get_by_label("Email").fill(email)
            page.get_by_label("Password", exact=True).fill("a long enough password")
            page.get_by_role("button", name="Sign in").click()
            page.locator("section.license").first.wait_for()
            shoot(page, out / f"account-{scheme}.png")
            context.close()
        browser.close()


def devices(emulator, ids: dict, email: str, scheme: str) -> None:
    """A second license for the person, and devices on both, as customers would have them."""
    import requests

    [user] = [u for u in emulator.users(ids["account"]) if u["email"] == email]
    _, admin = emulator.add_admin(ids["account"], email=f"admin-{scheme}@acme.example")
    relationships = {
        "policy": {"data": {"type": "policies", "id": ids["policy"]}},
        "owner": {"data": {"type": "users", "id": user["id"]}},
    }
    url = f"{ids['keygen_url']}/v1/accounts/{ids['account']}/licenses"
    body = {"data": {"type": "licenses", "relationships": relationships}}
    requests.post(url, json=body, headers={"Authorization": f"Bearer {admin}"}, timeout=10)
    first, second = [
        lic["id"] for lic in emulator.licenses(ids["account"]) if lic["owner_id"] == user["id"]
    ]
    emulator.add_machine(
        first,
        name="Lois's MacBook",
        platform="macOS 15",
        hostname="lois-mbp",
        last_heartbeat="2026-05-04T09:12:00Z",
    )
    emulator.add_machine(first, name="Studio PC", platform="Windows 11", hostname="studio-04")
    emulator.add_machine(second, name="Build server", platform="Ubuntu 24.04", hostname="ci-1")


def shoot(page, path: Path) -> None:
    page.screenshot(path=str(path), full_page=True, animations="disabled", caret="hide")
    print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "screenshots")
