"""Self-service in real headless Chromium, with and without JavaScript: sign in, see two licenses
and their machines, reveal a key, free a machine (gone from the emulator); and axe-core finds no
serious violation on any self-service page, in the light and the dark theme, on a branded
portal."""

from __future__ import annotations

import re

import pytest

from app import create_app
from services import services
from support.accounts import customer, machine_ids, serving
from support.axe import serious_violations
from support.branded import BRANDING
from support.leaks import PASSWORD
from support.portal import make_settings
from support.processes import free_port

pytestmark = [pytest.mark.browser, pytest.mark.slow]
LAPTOP = {"name": "Clark's laptop", "platform": "macOS", "hostname": "kent-mbp"}
DESKTOP = {"name": "Office PC", "platform": "Windows", "hostname": "dp-04"}


@pytest.fixture
def site(keygen):
    port = free_port()
    settings = make_settings(
        keygen,
        **BRANDING,
        public_url=f"http://127.0.0.1:{port}",
        mail_server="127.0.0.1",
        mail_port=free_port(),  # nothing listens: no email leaves in these tests
        mail_default_sender="Acme <keys@acme.example>",
        outbox_interval=0.0,
        keygen_public_key=keygen.emulator.public_key(keygen.account),
        ratelimit_per_ip="1000/minute",
        ratelimit_sign_in_per_ip="1000/minute",
        ratelimit_sign_in_per_email="1000/minute",
    )
    app = create_app(settings)
    services(app).accounts.floor = 0.0
    with serving(app, port) as url:
        yield url


@pytest.fixture
def clark(keygen):
    return customer(
        keygen, "clark@example.com", keygen.policy, keygen.policy, machines={0: [LAPTOP, DESKTOP]}
    )


def sign_in(page, url: str, email: str = "clark@example.com", password: str = PASSWORD) -> None:
    page.goto(url + "/sign-in")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state("load")


@pytest.mark.parametrize("javascript", [True, False], ids=["js", "no-js"])
def test_sign_in_see_licenses_reveal_a_key_and_free_a_machine(
    browser, site, keygen, clark, javascript
):
    context = browser.new_context(java_script_enabled=javascript)
    page = context.new_page()
    try:
        sign_in(page, site)
        assert page.url == site + "/account"
        assert page.locator("section.license").count() == 2
        assert page.get_by_text("Clark's laptop", exact=True).is_visible()
        assert page.get_by_text("Office PC", exact=True).is_visible()
        with_machines = page.locator("section.license", has_text="Clark's laptop")
        key = with_machines.locator("code.license-key")
        assert not key.is_visible()  # masked until asked for
        with_machines.get_by_text("Show key").click()
        assert key.is_visible() and key.inner_text().strip() == clark.keys(keygen)[0]

        laptop = machine_ids(keygen, clark.licenses[0])[0]
        page.get_by_role("link", name=re.compile("^Free this device.*Clark's laptop$")).click()
        page.wait_for_load_state("load")
        assert page.get_by_role("heading", name="Free this device?").is_visible()
        page.get_by_role("button", name="Yes, free this device").click()
        page.wait_for_load_state("load")
        assert page.url == site + "/account"
        assert page.get_by_text("Clark's laptop is no longer activated").is_visible()
        assert laptop not in machine_ids(keygen, clark.licenses[0])
        assert len(machine_ids(keygen, clark.licenses[0])) == 1

        page.get_by_role("button", name="Sign out").click()
        page.wait_for_load_state("load")
        assert page.url == site + "/sign-in"
        tokens = keygen.emulator.tokens(keygen.account)
        assert [t for t in tokens if t["bearer_id"] == clark.user_id] == []  # revoked
    finally:
        context.close()


def test_a_wrong_password_keeps_the_address_and_says_so(browser, site, clark):
    page = browser.new_page()
    try:
        sign_in(page, site, password="not the password")
        assert page.get_by_role("alert").inner_text().startswith("The email address or password")
        assert page.get_by_label("Email").input_value() == "clark@example.com"
        assert page.get_by_label("Password", exact=True).input_value() == ""
    finally:
        page.close()


# -- Accessibility -------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_no_serious_axe_violations_on_the_self_service_pages(
    browser, site, keygen, clark, axe_source, scheme
):
    context = browser.new_context(color_scheme=scheme, bypass_csp=True)
    page = context.new_page()
    try:
        page.goto(site + "/sign-in")
        assert serious_violations(page, axe_source) == [], "sign-in"
        sign_in(page, site, password="wrong")
        assert serious_violations(page, axe_source) == [], "sign-in refused"
        sign_in(page, site)
        page.locator("section.license").first.get_by_text("Show key").click()
        page.get_by_role("link", name=re.compile("^Free this device.*Office PC$")).click()
        page.wait_for_load_state("load")
        assert serious_violations(page, axe_source) == [], "confirmation"
        page.get_by_role("button", name="Yes, free this device").click()
        page.wait_for_load_state("load")
        page.locator("section.license").first.get_by_text("Show key").click()
        assert serious_violations(page, axe_source) == [], "account with a notice and a key"
        page.get_by_role("button", name="Sign out").click()
        page.wait_for_load_state("load")
        assert serious_violations(page, axe_source) == [], "signed out"
        page.goto(site + "/forgot-password")
        assert serious_violations(page, axe_source) == [], "forgot password"
        page.get_by_role("button", name="Email me a link").click()
        page.wait_for_load_state("load")
        assert serious_violations(page, axe_source) == [], "forgot password, errors"
        page.goto(site + "/reset")
        assert serious_violations(page, axe_source) == [], "a link that does not work"
    finally:
        context.close()


def test_a_second_factor_page_is_accessible(browser, site, keygen, clark, axe_source):
    keygen.emulator.enable_second_factor(clark.user_id)
    context = browser.new_context(bypass_csp=True)
    page = context.new_page()
    try:
        sign_in(page, site)
        assert page.get_by_label("Authentication code").is_visible()
        assert page.evaluate("document.activeElement.id") == "code"
        assert serious_violations(page, axe_source) == [], "code"
    finally:
        context.close()
