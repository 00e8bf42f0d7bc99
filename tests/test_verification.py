"""REQUIRE_EMAIL_VERIFICATION, email first: the form takes no password and creates nothing in
Keygen; whoever opens the emailed link chooses the password, and only then are the user and the
license created. Through the real form, the Keygen emulator over HTTP and aiosmtpd on loopback."""

from __future__ import annotations

import base64
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import pytest
import requests
from sqlalchemy import update
from werkzeug.serving import make_server

from app import create_app
from journal import State, signups
from services import services
from support.axe import serious_violations
from support.http import csrf_token_from, form_data, hidden, issued_key
from support.leaks import secret
from support.mail import PUBLIC_URL, Recorder, link_in, smtp_on, text_of
from support.portal import make_settings
from support.processes import free_port

VICTIM_PASSWORD = secret("the-victims-own-choice-42")
SIGN_IN = "sign-in"


def verifying(portal_with, **settings):
    return portal_with(require_email_verification=True, **settings)


def mails_to(portal, address: str) -> list:
    portal.deliver()
    return [m for m in portal.mails() if m["To"].addresses[0].addr_spec == address]


def link_to(portal, address: str = "clark@example.com") -> str:
    [message] = [m for m in mails_to(portal, address) if "Confirm" in m["Subject"]]
    path = link_in(message).removeprefix(PUBLIC_URL)
    secret(path.removeprefix("/verify/"))  # no log line may hold it (conftest's scan)
    return path


def open_link(portal, path: str):
    """What a browser does with the link: its GET, then the redirect's target."""
    first = portal.client.get(path)
    assert first.status_code == 303 and first.headers["Location"] == "/verify", first.status
    return portal.client.get("/verify")


def choose_password(portal, path: str, password: str = VICTIM_PASSWORD, *, client=None):
    client = client or portal.client
    client.get(path)
    page = client.get("/verify").get_data(as_text=True)
    if 'name="csrf_token"' not in page:  # a page saying why the link does not work
        page = client.get("/").get_data(as_text=True)  # any page of ours carries a token
    token = csrf_token_from(page)
    return client.post("/verify", data={"csrf_token": token, "password": password})


def signs_in(keygen, email: str, password: str) -> bool:
    """Whether Keygen takes this email and password (POST /tokens with HTTP Basic)."""
    basic = base64.b64encode(f"{email}:{password}".encode()).decode()
    response = requests.post(
        f"{keygen.url}/v1/accounts/{keygen.account}/tokens",
        headers={"Authorization": f"Basic {basic}", "Accept": "application/vnd.api+json"},
        timeout=5,
    )
    if response.status_code == 201:
        secret(response.json()["data"]["attributes"]["token"])
    return response.status_code == 201


# -- The form --------------------------------------------------------------------------------


def test_the_form_asks_for_no_password_and_creates_nothing_in_keygen(portal_with, keygen):
    portal = verifying(portal_with)
    page = portal.client.get("/").get_data(as_text=True)
    assert 'type="password"' not in page and "Email me the link" in page
    response = portal.sign_up()
    assert response.status_code == 200
    assert "Open the link in it to confirm your address" in response.get_data(as_text=True)
    assert keygen.calls() == [] and keygen.users() == []
    [row] = portal.journal.all()
    assert (row.state, row.user_id, row.verify) == (State.PENDING_VERIFICATION, None, False)
    [letter] = portal.journal.mail()
    assert (letter.kind, letter.ref) == ("verify", row.id)


def test_nobody_can_choose_the_password_of_an_address_they_do_not_control(portal_with, keygen):
    """The attack the email-first flow closes: Mallory signs up as Clark with a password she
    knows. No account exists until Clark, who gets the link, chooses his own password."""
    portal = verifying(portal_with)
    mallorys = secret("mallory-knows-this-one-7")
    portal.sign_up(first_name="Mallory", password=mallorys)  # a password field is ignored
    assert keygen.users() == []
    issued = choose_password(portal, link_to(portal))
    assert issued.status_code == 200
    [user] = keygen.users()
    assert user["email"] == "clark@example.com"
    assert signs_in(keygen, "clark@example.com", VICTIM_PASSWORD)
    assert not signs_in(keygen, "clark@example.com", mallorys)


# -- The link --------------------------------------------------------------------------------


def test_the_link_goes_into_the_session_and_the_page_has_no_token_in_its_url(portal_with, keygen):
    portal = verifying(portal_with)
    portal.sign_up()
    path = link_to(portal)
    token = path.removeprefix("/verify/")
    first = portal.client.get(path)
    assert first.status_code == 303
    assert first.headers["Location"] == "/verify" and token not in first.headers["Location"]
    assert first.headers["Referrer-Policy"] == "no-referrer"
    assert first.headers["Cache-Control"] == "no-store"
    page = portal.client.get("/verify")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and token not in html
    assert "Choose your password" in html and "clark@example.com" in html
    assert 'autocomplete="new-password"' in html
    # Without the session that opened the link, the page knows of no link.
    stranger = portal.app.test_client().get("/verify")
    assert stranger.status_code == 404 and "does not work" in stranger.get_data(as_text=True)


def test_opening_the_link_uses_nothing_up_and_the_button_works_once(portal_with, keygen):
    portal = verifying(portal_with, key_delivery="both")
    portal.sign_up()
    path = link_to(portal)
    for _ in range(2):  # a mail scanner's prefetch, then the person: neither creates anything
        assert open_link(portal, path).status_code == 200
    assert keygen.users() == [] and keygen.licenses() == []
    issued = choose_password(portal, path)
    assert issued.status_code == 200
    shown = issued_key(issued.get_data(as_text=True))
    assert "Welcome, Clark" in issued.get_data(as_text=True)
    [license] = keygen.licenses()
    assert secret(license["key"]) == shown
    again = open_link(portal, path)
    assert again.status_code == 410 and "already used" in again.get_data(as_text=True)
    pressed = choose_password(portal, path, secret("another-password-99"))
    assert pressed.status_code == 410 and shown not in pressed.get_data(as_text=True)
    [key_mail] = [m for m in mails_to(portal, "clark@example.com") if "license key" in m["Subject"]]
    assert shown in text_of(key_mail, "plain")
    assert len(keygen.users()) == 1 and len(keygen.licenses()) == 1


@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("short", "Use at least 8 characters."),
        ("password123", "one of the most commonly used"),
        ("clark@example.com", "use your email address as your password"),
        ("ü" * 40, "at most 72 bytes"),
    ],
)
def test_the_link_page_holds_the_password_to_the_forms_rules(
    portal_with, keygen, password, message
):
    portal = verifying(portal_with)
    portal.sign_up()
    refused = choose_password(portal, link_to(portal), password)
    assert refused.status_code == 422
    assert message in refused.get_data(as_text=True)
    assert keygen.calls("users.create") == []
    assert choose_password(portal, link_to(portal)).status_code == 200  # then a good one


def test_the_key_only_by_email_after_the_button(portal_with, keygen):
    portal = verifying(portal_with, key_delivery="email")
    portal.sign_up()
    issued = choose_password(portal, link_to(portal))
    [license] = keygen.licenses()
    key = secret(license["key"])
    assert "Check your inbox" in issued.get_data(as_text=True)
    assert key not in issued.get_data(as_text=True)
    assert key in text_of(mails_to(portal, "clark@example.com")[-1], "plain")


def test_the_consent_given_on_the_form_reaches_the_user_created_after_the_click(
    portal_with, keygen
):
    portal = verifying(portal_with, terms_url="/terms", terms_version="2025-01")
    portal.sign_up(accept_terms="y")
    choose_password(portal, link_to(portal))
    [user] = keygen.users()
    assert user["metadata"]["termsVersion"] == "2025-01"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", user["metadata"]["termsAcceptedAt"])


def test_keygen_failing_at_the_button_lets_the_person_press_it_again(portal_with, keygen):
    portal = verifying(portal_with)
    portal.sign_up()
    path = link_to(portal)
    keygen.emulator.inject("users.create", status=503, times=None)
    failed = choose_password(portal, path)
    assert failed.status_code == 503
    assert "did not answer in time" in failed.get_data(as_text=True)
    keygen.emulator.clear_faults()
    assert issued_key(choose_password(portal, path).get_data(as_text=True))
    assert len(keygen.users()) == 1


# -- Addresses that have an account ----------------------------------------------------------


def test_an_address_with_an_account_gets_the_same_page_and_an_email_instead_of_a_link(
    portal_with, keygen
):
    portal = verifying(portal_with)
    portal.sign_up(email="taken@example.com")
    choose_password(portal, link_to(portal, "taken@example.com"))
    portal.handler.received.clear()
    calls = len(keygen.calls())
    existing = portal.sign_up(email="taken@example.com", first_name="Mallory")
    new = portal.sign_up(email="new@example.com")
    assert len(keygen.calls()) == calls  # nothing asked of Keygen while the person waits
    assert comparable(existing) == comparable(new)
    assert b"taken@example.com" not in existing.data
    [taken] = mails_to(portal, "taken@example.com")
    assert "already has an account" in text_of(taken, "plain")
    assert "/verify/" not in text_of(taken, "plain") + text_of(taken, "html")
    assert f"{PUBLIC_URL}/lost-key" in text_of(taken, "plain")
    [link] = mails_to(portal, "new@example.com")
    assert "/verify/" in text_of(link, "plain")
    # taken: found by the address; new: not by the address, nor by the mailbox (the canonical
    # form, ONE_ACCOUNT_PER_PERSON).
    routes = [c["route"] for c in keygen.calls()[calls:]]
    assert routes == ["users.show", "users.show", "users.index"]


def test_an_account_made_between_the_link_and_the_button_is_named_with_the_lost_key_link(
    portal_with, keygen
):
    portal = verifying(portal_with)
    portal.sign_up()
    path = link_to(portal)
    other = portal.app.test_client()  # meanwhile, someone signs the address up elsewhere
    services(portal.app).keygen.create_user(
        email="clark@example.com", password=secret("made-elsewhere-123"), first_name=None,
        last_name=None,
    )  # fmt: skip
    answer = choose_password(portal, path)
    html = answer.get_data(as_text=True)
    assert answer.status_code == 409
    assert "You already have an account" in html and 'href="/lost-key"' in html
    assert len(keygen.users()) == 1 and keygen.licenses() == []
    assert open_link(portal, path).status_code == 409
    assert other.get("/verify").status_code == 404


SAME_HEADERS_EXCEPT = {"X-Request-ID", "Date", "Set-Cookie"}


def comparable(response) -> tuple:
    headers = sorted((k, v) for k, v in response.headers if k not in SAME_HEADERS_EXCEPT)
    return response.status_code, headers, response.data


# -- Lifetimes and the end of a signup that was never confirmed -------------------------------


def test_a_links_lifetime_runs_from_when_it_is_sent(portal_with, keygen, clock):
    portal = verifying(portal_with, smtp_running=False, verification_link_lifetime=600)
    portal.courier.links.clock = clock.wall
    portal.sign_up()
    assert portal.deliver()["retry"] == 1  # SMTP is down: the email waits in the outbox
    clock.offset += 3600  # far past the lifetime, counted from the form
    with smtp_on(portal.port, portal.handler):
        assert portal.deliver()["sent"] == 1
    path = link_to(portal)
    clock.offset += 590  # within the lifetime, counted from the sending
    services(portal.app).reconciler.run_once()
    assert open_link(portal, path).status_code == 200
    clock.offset += 20
    expired = open_link(portal, path)
    assert expired.status_code == 410 and "expired" in expired.get_data(as_text=True)
    assert keygen.users() == []


def test_an_unconfirmed_signup_expires_without_a_keygen_call(portal_with, keygen, clock):
    portal = verifying(portal_with, verification_link_lifetime=600)
    portal.sign_up()
    path = link_to(portal)
    calls = len(keygen.calls())
    clock.offset += 601
    report = services(portal.app).reconciler.run_once()
    assert list(report.worked.values()) == [State.EXPIRED]
    assert len(keygen.calls()) == calls
    assert open_link(portal, path).status_code == 410
    # The same person signs up again and gets a new, working link.
    portal.sign_up()
    links = [link_in(m) for m in mails_to(portal, "clark@example.com") if "Confirm" in m["Subject"]]
    assert issued_key(choose_password(portal, links[-1].removeprefix(PUBLIC_URL)).data.decode())


def test_a_user_an_earlier_release_made_before_the_click_is_never_licensed_and_is_removed(
    portal_with, keygen, clock
):
    """Rows written by the release that created the user (with the submitter's password) on
    the form: their links no longer work, and the reconciler deletes that user."""
    portal = verifying(portal_with)
    portal.sign_up()
    path = link_to(portal)
    user = services(portal.app).keygen.create_user(
        email="clark@example.com", password=secret("chosen-by-whoever-77"), first_name="Clark",
        last_name="Kent", metadata={"portalSignupId": portal.journal.all()[0].id},
    )  # fmt: skip
    with portal.journal.engine.begin() as db:  # as the earlier release left it
        db.execute(update(signups).values(verify=True, user_id=user.id, next_attempt_at=10**12))
    refused = choose_password(portal, path)
    assert refused.status_code == 410 and "expired" in refused.get_data(as_text=True)
    services(portal.app).reconciler.run_once()
    assert keygen.users() == [] and keygen.licenses() == []
    assert portal.journal.all()[0].state == State.EXPIRED


@pytest.mark.parametrize("change", ["flip", "other-signup"])
def test_a_tampered_link_is_refused(portal_with, keygen, change):
    portal = verifying(portal_with)
    portal.sign_up()
    token = link_to(portal).removeprefix("/verify/")
    if change == "flip":
        token = token[:-3] + ("A" if token[-3] != "A" else "B") + token[-2:]
    else:
        payload, _, signature = token.rpartition(".")
        token = payload.replace(payload[2], "x" if payload[2] != "x" else "y") + "." + signature
    page = open_link(portal, f"/verify/{token}")
    assert page.status_code == 404 and "does not work" in page.get_data(as_text=True)
    assert choose_password(portal, f"/verify/{token}").status_code == 404
    assert keygen.users() == []


# -- One form, one browser session --------------------------------------------------------------


def test_the_same_form_sent_twice_is_one_signup_and_a_corrected_address_another(
    portal_with, keygen
):
    portal = verifying(portal_with)
    page = portal.client.get("/").get_data(as_text=True)
    data = form_data(csrf_token=csrf_token_from(page), nonce=hidden(page, "nonce"))
    first = portal.client.post("/", data=data)
    again = portal.client.post("/", data=data)
    assert first.data == again.data
    fixed = portal.client.post("/", data={**data, "email": "clark.kent@example.com"})
    assert fixed.data == first.data
    portal.deliver()
    assert sorted(m["To"].addresses[0].addr_spec for m in portal.mails()) == [
        "clark.kent@example.com",
        "clark@example.com",
    ]
    assert len(portal.journal.all()) == 2


# -- In a real browser -------------------------------------------------------------------------


@pytest.mark.browser
@pytest.mark.slow
def test_no_request_the_browser_makes_for_the_link_carries_its_token(keygen, browser):
    """Chromium opens the link, chooses the password and presses the button; every request it
    makes on the way (the redirect, the page, its style sheet and script, the form's post, the
    key page's) is recorded: only the link's own request holds the token, and no Referer does."""
    handler, smtp_port = Recorder(), free_port()
    with smtp_on(smtp_port, handler), serving(keygen, smtp_port) as (url, app):
        page = browser.new_page()
        try:
            page.goto(url + "/")
            ask_for_a_link(page)
            services(app).courier.run_once()
            link = link_in(handler.received[0].parsed())
            token = secret(link.rsplit("/", 1)[1])
            requests_made = []
            page.on("request", lambda request: requests_made.append(request))
            page.goto(link)
            assert page.url == url + "/verify"
            page.get_by_label("Password", exact=True).fill(VICTIM_PASSWORD)
            page.get_by_role("button", name="Create account and get my key").click()
            page.wait_for_load_state("load")
            assert secret(page.locator("#license-key").inner_text().strip())
            seen = [(r.method, r.url, r.all_headers().get("referer", "")) for r in requests_made]
        finally:
            page.close()
    assert {"/verify", "/static/style.css", "/static/portal.js"} <= {
        urlsplit(url).path for _, url, _ in seen
    }
    assert any(method == "POST" for method, _, _ in seen)
    assert any(referer for _, _, referer in seen)  # the pages do send one, without the token
    for number, (method, url, referer) in enumerate(seen):
        assert token not in referer, (method, url)
        if number:  # only the first, the link itself, holds it
            assert token not in url, url


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_no_serious_axe_violations_on_the_email_first_pages(keygen, browser, axe_source, scheme):
    """The form without a password, "check your inbox", and the link's page (as opened, and
    with a password the rules refuse) pass axe-core in both colour schemes."""
    handler, smtp_port = Recorder(), free_port()
    with smtp_on(smtp_port, handler), serving(keygen, smtp_port) as (url, app):
        context = browser.new_context(color_scheme=scheme, bypass_csp=True)
        page = context.new_page()
        try:
            page.goto(url + "/")
            assert serious_violations(page, axe_source) == [], "the form"
            ask_for_a_link(page)
            assert serious_violations(page, axe_source) == [], "check your inbox"
            services(app).courier.run_once()
            page.goto(link_in(handler.received[0].parsed()))
            assert page.url == url + "/verify"
            assert serious_violations(page, axe_source) == [], "the link's page"
            page.get_by_label("Password", exact=True).fill("short")
            page.get_by_role("button", name="Create account and get my key").click()
            page.wait_for_load_state("load")
            password = page.get_by_label("Password", exact=True)
            assert password.get_attribute("aria-invalid") == "true"
            assert serious_violations(page, axe_source) == [], "the link's page, refused"
        finally:
            context.close()


def ask_for_a_link(page) -> None:
    """Send the email-first form as Lois, in the browser: the "check your inbox" page."""
    page.get_by_label("First name").fill("Lois")
    page.get_by_label("Last name").fill("Lane")
    page.get_by_label("Email").fill("lois@example.com")
    page.get_by_role("button", name="Email me the link").click()
    page.wait_for_load_state("load")
    assert "Check your inbox" in page.content()


@contextmanager
def serving(keygen, smtp_port: int) -> Iterator[tuple[str, object]]:
    """The portal with email verification on, served over HTTP on loopback for a browser."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = make_settings(
        keygen,
        require_email_verification=True,
        mail_server="127.0.0.1",
        mail_port=smtp_port,
        mail_use_tls=False,
        mail_default_sender="keys@portal.example",
        public_url=url,
        outbox_interval=0.0,
    )
    app = create_app(settings)
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="verifying")
    thread.start()
    try:
        yield url, app
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
