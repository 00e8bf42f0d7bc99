"""The README's run command, driven by a person's browser: real headless Chromium."""

import os
import re
import shutil
import signal
import subprocess

import pytest
import requests

from conftest import KEY_PATTERN, LOG_DIR, PASSWORD, ROOT, free_port, require, secret, wait_for_http

pytestmark = [pytest.mark.browser, pytest.mark.slow]
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
def demo(tmp_path_factory):
    """`scripts/run.sh` with no Keygen settings: the demo against the built-in emulator."""
    demo_dir = tmp_path_factory.mktemp("demo")
    port, emulator_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEYGEN_", "SECRET_KEY"))}
    env.update(
        BIND=f"127.0.0.1:{port}", DEMO_KEYGEN_PORT=str(emulator_port), DEMO_DIR=str(demo_dir)
    )
    log = open(LOG_DIR / "run-sh.log", "ab")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        ["bash", "scripts/run.sh"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # so that stopping it stops gunicorn and the emulator too
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_http(url + "/healthz", timeout=120, process=proc)
        settings = dict(
            line.split("=", 1) for line in (demo_dir / "keygen.env").read_text().splitlines()
        )
        secret(settings["KEYGEN_PRODUCT_TOKEN"])
        yield {
            "url": url,
            "keygen": settings["KEYGEN_API_URL"],
            "policy": settings["KEYGEN_POLICY_ID"],
        }
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="module")
def browser():
    require(os.path.exists(CHROMIUM), "Chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def keygen_state(url: str) -> dict:
    state = requests.get(url + "/_emulator/state", timeout=5).json()
    for license in state["licenses"]:
        secret(license["key"])
    return state


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


def fill_and_submit(page, email: str) -> None:
    page.get_by_label("First name").fill("Lois")
    page.get_by_label("Last name").fill("Lane")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Create account and get my key").click()


@pytest.mark.parametrize("javascript", [True, False], ids=["with-js", "without-js"])
def test_demo_signup_in_a_browser_shows_the_key(demo, browser, javascript):
    context = browser.new_context(java_script_enabled=javascript)
    page = context.new_page()
    try:
        page.goto(demo["url"] + "/")
        assert page.get_by_text("Demo mode").is_visible()
        email = f"lois-{'js' if javascript else 'nojs'}@example.com"
        before = keygen_state(demo["keygen"])
        fill_and_submit(page, email)
        key = secret(page.locator("#license-key").inner_text().strip())
        assert KEY_PATTERN.match(key)
        state = keygen_state(demo["keygen"])
        [user] = [u for u in state["users"] if u["email"] == email]
        [license] = [lic for lic in state["licenses"] if lic["owner_id"] == user["id"]]
        assert license["key"] == key
        assert license["policy_id"] == demo["policy"]
        assert len(state["users"]) == len(before["users"]) + 1
        assert len(state["licenses"]) == len(before["licenses"]) + 1
    finally:
        context.close()


def test_show_password_toggles_the_field(demo, browser):
    page = browser.new_page()
    try:
        page.goto(demo["url"] + "/")
        password = page.get_by_label("Password", exact=True)
        password.fill("visible secret")
        assert password.get_attribute("type") == "password"
        page.get_by_role("button", name="Show password").click()
        assert password.get_attribute("type") == "text"
        page.get_by_role("button", name="Hide password").click()
        assert password.get_attribute("type") == "password"
    finally:
        page.close()


def test_field_errors_in_the_browser_keep_what_was_typed(demo, browser):
    page = browser.new_page()
    try:
        page.goto(demo["url"] + "/")
        fill_and_submit(page, "not-an-email")
        assert page.locator("#email-error").inner_text() == (
            "Enter a valid email address, like name@example.com."
        )
        assert page.get_by_label("First name").input_value() == "Lois"
        assert page.get_by_label("Password", exact=True).input_value() == ""
        assert re.search(r"Please check the form", page.content())
    finally:
        page.close()


def test_f16_back_forward_and_reload_never_show_the_key_again(demo, browser):
    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(demo["url"] + "/")
        fill_and_submit(page, "lana-f16@example.com")
        key = secret(page.locator("#license-key").inner_text().strip())
        assert KEY_PATTERN.match(key)
        before = keygen_state(demo["keygen"])

        page.go_back()
        assert key not in page.content()
        # no-store: Chromium may not restore the result page, only offer to resend the form.
        navigate(page, page.go_forward)
        assert key not in settled_content(page)
        navigate(page, page.reload)  # if resent: the same nonce, so the same, finished signup
        assert key not in settled_content(page)

        after = keygen_state(demo["keygen"])
        assert len(after["requests"]) == len(before["requests"])  # Keygen was not called
        assert (len(after["users"]), len(after["licenses"])) == (
            len(before["users"]),
            len(before["licenses"]),
        )
    finally:
        context.close()
