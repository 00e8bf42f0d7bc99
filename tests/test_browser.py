"""The README's run command, driven by a person's browser: real headless Chromium."""

import os
import re
import signal
import subprocess

import pytest
import requests

from support.browser import navigate, settled_content
from support.leaks import KEY_PATTERN, PASSWORD, secret
from support.paths import LOG_DIR, ROOT
from support.processes import free_port, wait_for_http

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """`scripts/run.sh` with no Keygen settings: the demo against the built-in emulator."""
    demo_dir = tmp_path_factory.mktemp("demo")
    port, emulator_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEYGEN_", "SECRET_KEY"))}
    env.update(
        BIND=f"127.0.0.1:{port}",
        DEMO_KEYGEN_PORT=str(emulator_port),
        DEMO_DIR=str(demo_dir),
        # Every test here posts from 127.0.0.1, sooner or later more than the default 10 a
        # minute: that limit is tested in test_protection.py, not here.
        RATELIMIT_PER_IP="1000/minute",
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


def keygen_state(url: str) -> dict:
    state = requests.get(url + "/_emulator/state", timeout=5).json()
    for license in state["licenses"]:
        secret(license["key"])
    return state


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


# -- Errors, the key's buttons, phones and languages ----------------------------------------------


def csp_violations(page) -> list[str]:
    """Collects the console's CSP refusals: every script and style must be a static file."""
    refused: list[str] = []
    page.on("console", lambda m: refused.append(m.text) if "Content Security" in m.text else None)
    return refused


@pytest.mark.parametrize(
    ("field", "changes", "message"),
    [
        ("first_name", {"First name": ""}, "Enter your first name."),
        ("last_name", {"Last name": ""}, "Enter your last name."),
        ("email", {"Email": "lois@"}, "Enter a valid email address, like name@example.com."),
        ("password", {"Password": "short"}, "Use at least 8 characters."),
    ],
)
def test_each_field_error_is_shown_beside_its_field(demo, browser, field, changes, message):
    page = browser.new_page()
    refused = csp_violations(page)
    try:
        page.goto(demo["url"] + "/")
        values = {"First name": "Lois", "Last name": "Lane", "Email": "lois-err@example.com"}
        values["Password"] = PASSWORD
        values.update(changes)
        for label, value in values.items():
            page.get_by_label(label, exact=True).fill(value)
        page.get_by_role("button", name="Create account and get my key").click()
        page.wait_for_load_state("load")
        assert page.locator(f"#{field}-error").inner_text() == message
        assert page.locator(".errors").count() == 1
        assert page.locator(f"#{field}").get_attribute("aria-invalid") == "true"
        page.locator(".error-summary:focus").wait_for(timeout=5000)
        page.locator(f".error-summary a[href='#{field}']").click()
        assert page.evaluate("document.activeElement.id") == field
        assert refused == []
    finally:
        page.close()


def test_a_taken_email_is_shown_under_the_email_field(demo, browser):
    page = browser.new_page()
    try:
        page.goto(demo["url"] + "/")
        fill_and_submit(page, "lois-twice@example.com")
        secret(page.locator("#license-key").inner_text().strip())
        page.goto(demo["url"] + "/")
        fill_and_submit(page, "Lois-Twice@Example.com")
        assert page.locator("#email-error").inner_text() == (
            "An account with this email already exists."
        )
        assert page.locator("#license-key").count() == 0
    finally:
        page.close()


def test_copy_and_download_the_key(demo, browser, tmp_path):
    context = browser.new_context()
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=demo["url"])
    page = context.new_page()
    refused = csp_violations(page)
    try:
        page.goto(demo["url"] + "/")
        fill_and_submit(page, "lois-copy@example.com")
        key = secret(page.locator("#license-key").inner_text().strip())
        status = page.locator(".copy-status")
        assert status.get_attribute("role") == "status"
        assert page.locator("#license-key").get_attribute("aria-live") == "polite"
        page.get_by_role("button", name="Copy key").click()
        status.filter(has_text="Copied to the clipboard.").wait_for(timeout=5000)
        assert page.evaluate("navigator.clipboard.readText()") == key

        with page.expect_download() as download:
            page.get_by_role("button", name="Download as .txt").click()
        assert download.value.suggested_filename == "license-key.txt"
        assert not download.value.url.startswith("data:")  # a blob: URL keeps it out of history
        saved = tmp_path / "key.txt"
        download.value.save_as(saved)
        assert saved.read_text() == key + "\n"
        assert refused == []
    finally:
        context.close()


def test_without_javascript_the_key_has_no_dead_buttons(demo, browser):
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    try:
        page.goto(demo["url"] + "/")
        assert not page.get_by_role("button", name="Show password").is_visible()
        fill_and_submit(page, "lois-nojs-buttons@example.com")
        secret(page.locator("#license-key").inner_text().strip())
        assert not page.get_by_role("button", name="Copy key").is_visible()
        assert not page.get_by_role("button", name="Download as .txt").is_visible()
    finally:
        context.close()


def test_leaving_the_key_page_clears_the_key(demo, browser):
    """The page may survive in the back/forward cache: it must not keep the key there."""
    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(demo["url"] + "/")
        fill_and_submit(page, "lois-leave@example.com")
        key = secret(page.locator("#license-key").inner_text().strip())
        # The key is in the HTML before the deferred script listens: a person leaves later.
        page.wait_for_load_state("load")
        page.evaluate("window.dispatchEvent(new PageTransitionEvent('pagehide'))")
        assert page.locator("#license-key").inner_text() == ""
        assert key not in page.content()
    finally:
        context.close()


def test_a_phone_sized_screen_has_no_sideways_scrolling(demo, browser):
    context = browser.new_context(
        viewport={"width": 360, "height": 740}, is_mobile=True, has_touch=True
    )
    page = context.new_page()
    try:
        page.goto(demo["url"] + "/")
        assert page.evaluate("document.documentElement.scrollWidth") <= 360
        first = page.get_by_label("First name").bounding_box()
        last = page.get_by_label("Last name").bounding_box()
        assert last["y"] > first["y"] + first["height"]  # stacked, not side by side
        assert first["width"] > 280
        button = page.get_by_role("button", name="Create account and get my key").bounding_box()
        assert button["height"] >= 44  # a target a thumb can hit
        fill_and_submit(page, "lois-phone@example.com")
        key = secret(page.locator("#license-key").inner_text().strip())
        assert KEY_PATTERN.match(key)
        assert page.evaluate("document.documentElement.scrollWidth") <= 360
    finally:
        context.close()


HEADINGS = {
    "en": "Get your license key",
    "de": "Ihren Lizenzschlüssel erhalten",
    "fr": "Obtenez votre clé de licence",
    "es": "Obtenga su clave de licencia",
}


@pytest.mark.parametrize("language", sorted(HEADINGS))
def test_each_language_renders(demo, browser, language):
    context = browser.new_context(locale="en-US")
    page = context.new_page()
    try:
        page.goto(demo["url"] + "/")
        page.get_by_role("navigation").get_by_role("link", name=LANGUAGE_NAMES[language]).click()
        page.wait_for_load_state("load")
        assert page.locator("html").get_attribute("lang") == language
        assert page.get_by_role("heading", level=1).inner_text() == HEADINGS[language]
        page.goto(demo["url"] + "/")  # remembered
        assert page.locator("html").get_attribute("lang") == language
    finally:
        context.close()


def test_the_browser_language_is_used_without_a_choice(demo, browser):
    context = browser.new_context(locale="de-DE")
    page = context.new_page()
    try:
        page.goto(demo["url"] + "/")
        assert page.locator("html").get_attribute("lang") == "de"
        assert page.get_by_label("Vorname").is_visible()
    finally:
        context.close()


LANGUAGE_NAMES = {"en": "English", "de": "Deutsch", "fr": "Français", "es": "Español"}
