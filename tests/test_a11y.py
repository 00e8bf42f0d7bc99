"""Accessibility in real headless Chromium, checked by axe-core (WCAG 2.2 A/AA and best
practice): no serious or critical violation on the form, the error state and the key page, in
the light and the dark theme, on a fully branded portal. Plus what axe cannot see: the error
summary takes focus, its links lead into the fields, and focus is visible."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support.axe import AXE, serious_violations
from support.branded import branded_portal
from support.leaks import KEY_PATTERN, PASSWORD, SECRET_KEY, secret
from support.paths import ROOT

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def portal():
    with branded_portal(SECRET_KEY) as url:
        yield url


def fill(page, email: str, *, accept: bool = True) -> None:
    page.get_by_label("First name").fill("Lois")
    page.get_by_label("Last name").fill("Lane")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    if accept:
        page.get_by_label("I accept the terms of service").check()


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_no_serious_axe_violations_on_the_three_states(portal, browser, axe_source, scheme):
    context = browser.new_context(color_scheme=scheme, bypass_csp=True)
    page = context.new_page()
    try:
        page.goto(portal + "/")
        assert page.evaluate("matchMedia('(prefers-color-scheme: dark)').matches") == (
            scheme == "dark"
        )
        assert serious_violations(page, axe_source) == [], "the form"

        page.get_by_role("button", name="Create account and get my key").click()
        assert page.locator(".error-summary").count() == 1
        assert serious_violations(page, axe_source) == [], "the error state"

        fill(page, f"lois-{scheme}@example.com")
        page.get_by_role("button", name="Create account and get my key").click()
        key = secret(page.locator("#license-key").inner_text().strip())
        assert KEY_PATTERN.match(key)
        assert serious_violations(page, axe_source) == [], "the key page"
    finally:
        context.close()


def test_the_error_summary_takes_focus_and_leads_to_each_field(portal, browser):
    page = browser.new_page()
    try:
        page.goto(portal + "/")
        page.get_by_role("button", name="Create account and get my key").click()
        page.wait_for_load_state("load")
        page.locator(".error-summary:focus").wait_for(timeout=5000)
        summary = page.locator(".error-summary")
        assert summary.get_attribute("role") == "alert"
        links = summary.get_by_role("link")
        targets = [links.nth(i).get_attribute("href") for i in range(links.count())]
        assert targets == ["#first_name", "#last_name", "#email", "#password", "#accept_terms"]
        for target in targets:
            summary.locator(f"a[href='{target}']").click()
            assert page.evaluate("document.activeElement.id") == target[1:]
            field = page.locator(target)
            assert field.get_attribute("aria-invalid") == "true"
            described = field.get_attribute("aria-describedby").split()
            assert f"{target[1:]}-error" in described
    finally:
        page.close()


def test_the_error_summary_takes_focus_without_javascript(portal, browser):
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    try:
        page.goto(portal + "/")
        page.get_by_role("button", name="Create account and get my key").click()
        page.wait_for_load_state("load")
        page.locator(".error-summary:focus").wait_for(timeout=5000)  # autofocus, no script
    finally:
        context.close()


def test_focus_is_visible_on_every_control(portal, browser):
    page = browser.new_page()
    try:
        page.goto(portal + "/")
        seen = []
        for _ in range(30):
            page.keyboard.press("Tab")
            info = page.evaluate(
                """() => { const e = document.activeElement; const s = getComputedStyle(e);
                   return {tag: e.tagName, id: e.id, text: e.textContent.trim().slice(0, 40),
                           outline: s.outlineStyle, width: parseFloat(s.outlineWidth)}; }"""
            )
            if info["tag"] == "BODY":
                break
            seen.append(info)
            assert info["outline"] != "none" and info["width"] >= 2, info
        ids = [i["id"] for i in seen]
        assert [i for i in ids if i in ("first_name", "last_name", "email", "password")] == [
            "first_name",
            "last_name",
            "email",
            "password",
        ]
        assert "website" not in ids  # the honeypot is skipped
    finally:
        page.close()


def test_axe_itself_finds_a_violation(portal, browser, axe_source):
    """The check is not vacuous: an unlabelled input is reported."""
    context = browser.new_context(bypass_csp=True)
    page = context.new_page()
    try:
        page.goto(portal + "/")
        page.evaluate("document.querySelector('label[for=email]').remove()")
        assert any(v.startswith("label ") for v in serious_violations(page, axe_source))
    finally:
        context.close()


def test_axe_version_is_the_pinned_one(axe_source):
    bootstrap = Path(ROOT / "scripts" / "bootstrap.sh").read_text()
    pinned = bootstrap.split("AXE_VERSION=", 1)[1].split()[0]
    package = json.loads((AXE.parent / "package.json").read_text())
    assert package["version"] == pinned
