"""Forgot-password end to end: the portal's page asks Keygen (the emulator) for a reset, Keygen
posts its signed `user.password-reset` webhook to the portal over real HTTP, the portal emails
its own link through a real SMTP server (aiosmtpd), and the link sets the new password once and
signs the person in. Plus what the webhook endpoint refuses."""

from __future__ import annotations

import base64
import json
import re
import time

import pytest
import requests

from keygen_emulator.webhooks import Webhooks
from keygen_webhooks import public_key
from services import services
from support.accounts import customer, serving
from support.http import csrf_token_from
from support.languages import assert_no_english, catalogue
from support.leaks import PASSWORD, secret
from support.mail import text_of
from support.processes import free_port

NEW_PASSWORD = secret("a completely new passphrase")


@pytest.fixture
def reset_portal(portal_with, keygen):
    """A portal with email and forgot-password on, served on a port Keygen can post to."""
    port = free_port()
    public_url = f"http://127.0.0.1:{port}"
    portal = portal_with(
        public_url=public_url, keygen_public_key=keygen.emulator.public_key(keygen.account)
    )
    services(portal.app).accounts.floor = 0.0
    endpoint = public_url + "/webhooks/keygen"
    keygen.emulator.add_webhook_endpoint(keygen.account, endpoint, ["user.password-reset"])
    with serving(portal.app, port) as url:
        portal.url = url
        yield portal


def ask_for_reset(url: str, email: str, browser: requests.Session | None = None):
    browser = browser or requests.Session()
    page = browser.get(url + "/forgot-password", timeout=10)
    data = {"csrf_token": csrf_token_from(page.text), "email": email}
    return browser.post(url + "/forgot-password", data=data, timeout=10)


def link_in(message) -> str:
    [link] = re.findall(r"http://\S+/reset/[A-Za-z0-9_.-]+", text_of(message, "plain"))
    return secret(link)


def test_a_forgotten_password_is_reset_through_the_emailed_link(reset_portal, keygen):
    clark = customer(keygen, "clark@example.com")
    browser = requests.Session()
    answer = ask_for_reset(reset_portal.url, "Clark@Example.com", browser)
    assert answer.status_code == 200 and "Check your inbox" in answer.text
    keygen.emulator.webhooks.wait()
    assert [d["status"] for d in keygen.emulator.webhooks.deliveries] == [204]
    assert keygen.emulator.reset_emails == []  # Keygen's own email is off: deliver false
    assert reset_portal.deliver()["sent"] == 1
    [message] = reset_portal.mails()
    assert message["To"].addresses[0].addr_spec == "clark@example.com"
    assert message["Subject"] == "Choose a new password for Acme Pro"
    link = link_in(message)
    assert link.startswith(reset_portal.url + "/reset/")
    assert "60 minutes" in text_of(message, "plain") and link in text_of(message, "html")

    opened = browser.get(link, allow_redirects=False, timeout=10)
    assert opened.status_code == 303 and opened.headers["Location"] == "/reset"
    form = browser.get(reset_portal.url + "/reset", timeout=10)
    assert "Choose a new password" in form.text and link.rsplit("/", 1)[1] not in form.text
    data = {"csrf_token": csrf_token_from(form.text), "password": NEW_PASSWORD}
    done = browser.post(reset_portal.url + "/reset", data=data, allow_redirects=False, timeout=10)
    assert done.status_code == 303 and done.headers["Location"] == "/account"
    account = browser.get(reset_portal.url + "/account", timeout=10)
    assert "Your password is changed, and you are signed in." in account.text
    assert clark.keys(keygen)[0] in account.text

    def signs_in(password: str) -> bool:
        other = requests.Session()
        page = other.get(reset_portal.url + "/sign-in", timeout=10)
        data = {"csrf_token": csrf_token_from(page.text), "email": clark.email}
        data["password"] = password
        response = other.post(reset_portal.url + "/sign-in", data=data, allow_redirects=False)
        return response.status_code == 303

    assert not signs_in(PASSWORD) and signs_in(NEW_PASSWORD)
    again = requests.Session()
    again.get(link, timeout=10)
    assert again.get(reset_portal.url + "/reset", timeout=10).status_code == 410


def test_an_unknown_address_gets_the_same_page_and_no_email(reset_portal, keygen):
    customer(keygen, "clark@example.com")
    known = ask_for_reset(reset_portal.url, "clark@example.com")
    unknown = ask_for_reset(reset_portal.url, "nobody@example.com")
    strip = re.compile(r'name="csrf_token" type="hidden" value="[^"]+"')
    assert (known.status_code, unknown.status_code) == (200, 200)
    assert strip.sub("", known.text) == strip.sub("", unknown.text)
    keygen.emulator.webhooks.wait()
    reset_portal.deliver()
    assert [m["To"].addresses[0].addr_spec for m in reset_portal.mails()] == ["clark@example.com"]


def test_a_link_expires(reset_portal, keygen, clock):
    customer(keygen, "clark@example.com")
    ask_for_reset(reset_portal.url, "clark@example.com")
    keygen.emulator.webhooks.wait()
    reset_portal.deliver()
    link = link_in(reset_portal.mails()[0])
    clock.offset += 3601
    browser = requests.Session()
    browser.get(link, timeout=10)
    expired = browser.get(reset_portal.url + "/reset", timeout=10)
    assert expired.status_code == 410 and "expired or was used" in expired.text


def test_a_link_not_made_here_is_refused(reset_portal):
    response = requests.get(reset_portal.url + "/reset/forged.token", timeout=10)
    assert response.status_code == 404 and "does not work" in response.text


def test_a_queued_email_whose_link_is_dead_by_then_is_not_sent(reset_portal, keygen, clock):
    customer(keygen, "clark@example.com")
    ask_for_reset(reset_portal.url, "clark@example.com")
    keygen.emulator.webhooks.wait()
    clock.offset += 3601
    assert reset_portal.deliver()["dropped"] == 1
    assert reset_portal.mails() == []


# -- The webhook endpoint -------------------------------------------------------------------


def reset_event(user_id: str, email: str, event_id: str = "e-1") -> bytes:
    payload = {
        "data": {"type": "users", "id": user_id, "attributes": {"email": email}},
        "meta": {"passwordResetToken": secret("f" * 48 + "v3")},
    }
    attributes = {"event": "user.password-reset", "payload": json.dumps(payload)}
    data = {"id": event_id, "type": "webhook-events", "attributes": attributes}
    return json.dumps({"data": {**data, "meta": {"idempotencyToken": "t"}}}).encode()


def post(url: str, body: bytes, headers: dict) -> requests.Response:
    return requests.post(url + "/webhooks/keygen", data=body, headers=headers, timeout=10)


def test_unsigned_and_mis_signed_webhooks_are_refused_and_logged(reset_portal, keygen, caplog):
    clark = customer(keygen, "clark@example.com")
    ask_for_reset(reset_portal.url, "clark@example.com")
    keygen.emulator.webhooks.wait()
    reset_portal.deliver()
    sent = len(reset_portal.mails())
    body = reset_event(clark.user_id, clark.email)
    endpoint = reset_portal.url + "/webhooks/keygen"
    other_key = Webhooks(keygen.emulator.clock)  # a key that is not the account's
    forged = other_key.signed_headers(keygen.account, endpoint, body, "1.8")
    genuine = keygen.emulator.webhooks.signed_headers(keygen.account, endpoint, body, "1.8")
    tampered = {**genuine}
    stale = Webhooks(lambda: time.time() - 600)  # the account's key, ten minutes ago
    stale.keys = keygen.emulator.webhooks.keys
    replayed = stale.signed_headers(keygen.account, endpoint, body, "1.8")
    cases = {
        "unsigned": {"Content-Type": "application/json"},
        "another key": forged,
        "a changed body": tampered,
        "an old Date": replayed,
        "another path": keygen.emulator.webhooks.signed_headers(
            keygen.account, reset_portal.url + "/elsewhere", body, "1.8"
        ),
    }
    with caplog.at_level("WARNING", logger="portal.reset_views"):
        for case, headers in cases.items():
            sent_body = body.replace(b"clark@", b"lois@@") if case == "a changed body" else body
            response = post(reset_portal.url, sent_body, headers)
            assert response.status_code == 400, case
    refusals = [r.getMessage() for r in caplog.records if "webhook refused" in r.getMessage()]
    assert len(refusals) == len(cases)
    assert any("no Keygen-Signature" in line for line in refusals)
    assert any("Date is" in line for line in refusals)
    reset_portal.deliver()
    assert len(reset_portal.mails()) == sent


def test_a_genuine_event_is_taken_once_and_only_for_a_request_made_here(reset_portal, keygen):
    clark = customer(keygen, "clark@example.com")
    endpoint = reset_portal.url + "/webhooks/keygen"
    body = reset_event(clark.user_id, clark.email, "e-unasked")
    headers = keygen.emulator.webhooks.signed_headers(keygen.account, endpoint, body, "1.8")
    assert post(reset_portal.url, body, headers).status_code == 204  # taken, and ignored
    reset_portal.deliver()
    assert reset_portal.mails() == []

    ask_for_reset(reset_portal.url, "clark@example.com")
    keygen.emulator.webhooks.wait()
    reset_portal.deliver()
    assert len(reset_portal.mails()) == 1
    body = reset_event(clark.user_id, clark.email, "e-other")
    headers = keygen.emulator.webhooks.signed_headers(keygen.account, endpoint, body, "1.8")
    assert post(reset_portal.url, body, headers).status_code == 204  # no open request left
    reset_portal.deliver()
    assert len(reset_portal.mails()) == 1


def test_another_event_is_acknowledged_and_ignored(reset_portal, keygen):
    endpoint = reset_portal.url + "/webhooks/keygen"
    payload = json.dumps({"data": {"type": "licenses", "id": "x", "attributes": {}}})
    attributes = {"event": "license.created", "payload": payload}
    body = json.dumps({"data": {"id": "e-2", "type": "webhook-events", "attributes": attributes}})
    body = body.encode()
    headers = keygen.emulator.webhooks.signed_headers(keygen.account, endpoint, body, "1.8")
    assert post(reset_portal.url, body, headers).status_code == 204


def test_the_verifier_reads_the_key_as_the_dashboard_and_the_api_show_it(keygen):
    hex_key = keygen.emulator.public_key(keygen.account)
    as_api = base64.b64encode(hex_key.encode()).decode()  # account_serializer.rb, meta.keys
    assert public_key(hex_key).public_bytes_raw() == public_key(as_api).public_bytes_raw()
    with pytest.raises(ValueError):
        public_key("not a key")


@pytest.mark.parametrize("language", ["de", "fr", "es"])
def test_the_reset_email_is_in_the_language_of_the_page_it_was_asked_on(
    reset_portal, keygen, language
):
    customer(keygen, "clark@example.com")
    browser = requests.Session()
    browser.get(f"{reset_portal.url}/forgot-password?lang={language}", timeout=10)
    answer = ask_for_reset(reset_portal.url, "clark@example.com", browser)
    assert f'<html lang="{language}">' in answer.text
    keygen.emulator.webhooks.wait()
    reset_portal.deliver()
    [message] = reset_portal.mails()
    subject = catalogue(language)["Choose a new password for %(product_name)s"].string
    assert message["Subject"] == subject % {"product_name": "Acme Pro"}
    for part in ("plain", "html"):
        body = text_of(message, part)
        link_in(message)
        assert_no_english(re.sub(r"<[^>]+>", " ", body), language, f"reset email ({part})")
