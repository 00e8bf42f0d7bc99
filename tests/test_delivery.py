"""Delivering the key, end to end through the real form, the Keygen emulator over HTTP and a real
SMTP server (aiosmtpd) on loopback: each KEY_DELIVERY mode, the outbox when SMTP is down, refuses
or answers 4xx (F10-F12 of docs/reference/reliability.md), and lost-key recovery. Email
verification is test_verification.py's, enumeration-safe answers test_enumeration.py's."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field

import pytest
from sqlalchemy import select

from app import create_app
from config import ConfigError, load_settings
from journal import signups
from outbox import Letter, MailState, outbox
from services import services
from support.http import csrf_token_from, form_data, issued_key
from support.leaks import secret
from support.mail import PRODUCT, PUBLIC_URL, SENDER, Recorder, link_in, smtp_on, text_of
from support.portal import make_settings


@dataclass
class Flaky(Recorder):
    """Answers DATA with these replies first, in order, then accepts."""

    refusals: list[str] = field(default_factory=list)

    async def handle_DATA(self, server, session, envelope):
        if self.refusals:
            return self.refusals.pop(0)
        return await super().handle_DATA(server, session, envelope)


def keys_in_keygen(keygen) -> list[str]:
    return [secret(license["key"]) for license in keygen.licenses()]


# -- Each mode delivers what it promises ------------------------------------------------------


def test_page_mode_shows_the_key_and_sends_nothing(portal_with, keygen):
    portal = portal_with(key_delivery="page")
    response = portal.sign_up()
    assert response.status_code == 200
    assert issued_key(response.get_data(as_text=True)) == keys_in_keygen(keygen)[0]
    assert portal.deliver() == {"sent": 0, "retry": 0, "failed": 0, "dropped": 0}
    assert portal.handler.received == []


def test_email_mode_keeps_the_key_off_the_page_and_emails_it(portal_with, keygen):
    portal = portal_with(key_delivery="email")
    response = portal.sign_up(first_name="Clark")
    html = response.get_data(as_text=True)
    [key] = keys_in_keygen(keygen)
    assert response.status_code == 200
    assert "Check your inbox" in html and key not in html and 'id="license-key"' not in html
    assert portal.deliver()["sent"] == 1
    [message] = portal.mails()
    assert message["To"].addresses[0].addr_spec == "clark@example.com"
    assert message["From"].addresses[0].addr_spec == "licenses@portal.example"
    assert message["Subject"] == f"Your {PRODUCT} license key"
    for part in ("plain", "html"):
        assert key in text_of(message, part)
        assert PRODUCT in text_of(message, part)
    assert re.fullmatch(r"<license\.[0-9a-f-]{36}@127\.0\.0\.1>", message["Message-ID"])
    assert portal.deliver()["sent"] == 0  # exactly once


def test_both_mode_shows_the_key_and_emails_the_same_key(portal_with, keygen):
    portal = portal_with(key_delivery="both")
    response = portal.sign_up()
    shown = issued_key(response.get_data(as_text=True))
    assert "also emailed" in response.get_data(as_text=True)
    portal.deliver()
    [message] = portal.mails()
    assert shown in text_of(message, "plain") and shown in text_of(message, "html")
    assert [shown] == keys_in_keygen(keygen)


def test_a_repeated_submission_in_email_mode_is_emailed_once(portal_with, keygen):
    portal = portal_with(key_delivery="email")
    page = portal.client.get("/")
    data = form_data(csrf_token=csrf_token_from(page.get_data(as_text=True)))
    nonce = re.search(r'name="nonce" type="hidden" value="([^"]+)"', page.get_data(as_text=True))
    data["nonce"] = nonce.group(1)
    first = portal.client.post("/", data=data)
    again = portal.client.post("/", data=data)
    assert first.data == again.data  # "check your inbox", never the key
    portal.deliver()
    assert len(portal.handler.received) == 1 and len(keygen.licenses()) == 1


@pytest.mark.parametrize(("first", "last"), [("Zoë", "O'Hara"), ("ねこ", "ねこ")])
def test_names_in_any_script_arrive_intact(portal_with, keygen, first, last):
    portal = portal_with(key_delivery="email")
    portal.sign_up(first_name=first, last_name=last)
    portal.deliver()
    [message] = portal.mails()
    assert message["To"].addresses[0].display_name == f"{first} {last}"
    assert text_of(message, "plain").startswith(f"Hello {first},")
    assert f"Hello {first}," in text_of(message, "html").replace("&#39;", "'")
    raw = portal.handler.received[0].content
    assert raw.isascii()  # encoded words, not raw UTF-8, in the headers


def test_a_name_with_a_line_break_never_reaches_a_header(portal_with, keygen):
    portal = portal_with(key_delivery="email")
    response = portal.sign_up(first_name="Eve\r\nBcc: victim@example.com")
    assert response.status_code == 422 and keygen.users() == []
    # Even a row that got into the outbox some other way is refused before any SMTP command.
    portal.journal.queue(
        Letter("taken", "eve@example.com", first_name="Eve\nBcc: victim@example.com")
    )
    assert portal.deliver() == {"sent": 0, "retry": 0, "failed": 1, "dropped": 0}
    assert portal.handler.received == [] and portal.handler.mail_commands == 0


def test_links_come_from_public_url_never_from_the_host_header(portal_with, keygen):
    portal = portal_with(require_email_verification=True)
    page = portal.client.get("/", headers={"Host": "evil.example"})
    data = form_data(csrf_token=csrf_token_from(page.get_data(as_text=True)))
    portal.client.post("/", data=data, headers={"Host": "evil.example"})
    portal.deliver()
    [message] = portal.mails()
    assert link_in(message).startswith(PUBLIC_URL + "/verify/")
    assert "evil.example" not in text_of(message, "plain") + text_of(message, "html")


def test_the_database_never_holds_the_key(portal_with, keygen):
    portal = portal_with(key_delivery="both")
    portal.sign_up()
    portal.deliver()
    [key] = keys_in_keygen(keygen)
    with portal.journal.engine.connect() as db:
        rows = [*db.execute(select(signups)), *db.execute(select(outbox))]
    assert rows and all(key not in repr(tuple(row)) for row in rows)


# -- SMTP down, refusing, or failing for now (F10-F12) -------------------------------------------


def test_f10_smtp_down_at_signup_then_the_key_arrives_exactly_once(portal_with, keygen, clock):
    portal = portal_with(key_delivery="both", smtp_running=False)
    response = portal.sign_up()
    assert response.status_code == 200
    shown = issued_key(response.get_data(as_text=True))
    assert portal.deliver()["retry"] == 1
    [row] = portal.journal.mail()
    assert (row.state, row.attempts) == (MailState.PENDING, 1)
    assert "Connection refused" in row.last_error or "refused" in row.last_error.lower()
    with smtp_on(portal.port, portal.handler):
        assert portal.deliver()["sent"] == 0  # not due yet: backoff
        clock.offset += 3600
        assert portal.deliver()["sent"] == 1
        clock.offset += 3600
        assert portal.deliver()["sent"] == 0
    [message] = portal.mails()
    assert shown in text_of(message, "plain")
    assert portal.journal.mail()[0].state == MailState.SENT


def test_f11_451_twice_then_250_delivers_once_with_backoff(portal_with, keygen, clock):
    handler = Flaky(refusals=["451 4.3.0 try again later", "451 4.3.0 try again later"])
    portal = portal_with(key_delivery="email", handler=handler)
    portal.sign_up()
    delays = []
    for _ in range(3):
        before = clock.wall()
        portal.deliver()
        [row] = portal.journal.mail()
        if row.state == MailState.SENT:
            break
        delays.append(row.next_attempt_at - before)
        clock.offset += delays[-1] + 0.01
    assert row.state == MailState.SENT and row.attempts == 3
    assert len(handler.received) == 1
    base = portal.courier.backoff_base
    assert base / 2 <= delays[0] <= base  # equal jitter: at least half of each step
    assert base <= delays[1] <= 2 * base


def test_f12_550_is_given_up_at_once_with_an_operator_line_without_the_key(
    portal_with, keygen, clock, caplog
):
    handler = Flaky(refusals=["550 5.1.1 mailbox unavailable"] * 5)
    portal = portal_with(key_delivery="email", handler=handler)
    portal.sign_up()
    assert portal.deliver()["failed"] == 1
    clock.offset += 10**6
    assert portal.deliver() == {"sent": 0, "retry": 0, "failed": 0, "dropped": 0}
    [row] = portal.journal.mail()
    assert (row.state, row.attempts) == (MailState.FAILED, 1)
    [line] = [r for r in caplog.records if r.name == "portal.delivery" and r.levelname == "ERROR"]
    text = line.getMessage()
    assert "gave up on license email" in text and "550" in text
    [key] = keys_in_keygen(keygen)
    assert key not in text and "clark@example.com" not in text


def test_two_couriers_never_send_one_message_twice(portal_with, keygen):
    portal = portal_with(key_delivery="email")
    portal.sign_up()
    [due] = portal.journal.due_mail()
    mine = portal.journal.lease_mail(due.id, owner="a", lease=60)
    assert mine is not None
    assert portal.journal.lease_mail(due.id, owner="b", lease=60) is None
    assert portal.deliver()["sent"] == 0  # leased elsewhere
    assert portal.handler.received == []


def test_the_outbox_backlog_is_a_metric(portal_with, keygen):
    portal = portal_with(key_delivery="email", smtp_running=False)
    portal.sign_up()
    body = portal.client.get("/metrics").get_data(as_text=True)
    assert "portal_outbox_backlog 1.0" in body
    assert 'portal_signups_total{outcome="check_inbox"} 1.0' in body


# -- No account enumeration -------------------------------------------------------------------


SAME_HEADERS_EXCEPT = {"X-Request-ID", "Date", "Set-Cookie"}


def comparable(response) -> tuple:
    headers = sorted((k, v) for k, v in response.headers if k not in SAME_HEADERS_EXCEPT)
    return response.status_code, headers, response.data


def test_without_enumeration_safety_a_taken_address_is_named(portal_with, keygen):
    portal = portal_with(key_delivery="email")
    portal.sign_up()
    response = portal.sign_up(first_name="Mallory")
    assert response.status_code == 422
    assert "already exists" in response.get_data(as_text=True)


# -- Lost-key recovery -----------------------------------------------------------------------


def ask_for_keys(portal, email: str):
    page = portal.client.get("/lost-key")
    token = csrf_token_from(page.get_data(as_text=True))
    return portal.client.post("/lost-key", data={"email": email, "csrf_token": token})


def test_the_form_and_the_key_page_link_to_recovery(portal_with, keygen):
    portal = portal_with()
    assert 'href="/lost-key"' in portal.client.get("/").get_data(as_text=True)
    assert 'href="/lost-key"' in portal.sign_up().get_data(as_text=True)


def test_recovery_emails_the_keys_of_a_known_address(portal_with, keygen):
    portal = portal_with()
    shown = issued_key(portal.sign_up(first_name="Zoë").get_data(as_text=True))
    before = len(keygen.calls())
    response = ask_for_keys(portal, "  Clark@Example.com ")
    assert response.status_code == 200
    assert keygen.calls()[before:] == []  # nothing asked of Keygen while the person waits
    assert portal.deliver()["sent"] == 1
    [message] = portal.mails()
    assert message["To"].addresses[0].addr_spec == "clark@example.com"
    assert message["To"].addresses[0].display_name == "Zoë Kent"
    for part in ("plain", "html"):
        assert shown in text_of(message, part) and PRODUCT in text_of(message, part)


def test_recovery_sends_only_this_products_keys(portal_with, keygen):
    from keygen_api import KeygenClient

    portal = portal_with()
    shown = issued_key(portal.sign_up().get_data(as_text=True))
    # Another product of the account (a seeded product and token outlive the emulator's
    # reset; unlike an admin, they change no list another test reads) sells the same person a
    # license too.
    product, token = keygen.emulator.add_product(keygen.account, name="Third App")
    policy = keygen.emulator.add_policy(keygen.account, product)
    other = KeygenClient(keygen.url, keygen.account, secret(token))
    user = other.get_user("clark@example.com")
    other.create_license(license_id=str(uuid.uuid4()), policy_id=policy, owner_id=user.id)
    ask_for_keys(portal, "clark@example.com")
    portal.deliver()
    [message] = portal.mails()
    keys = re.findall(r"[0-9A-F]{6}(?:-[0-9A-F]{6}){4}-V3", text_of(message, "plain"))
    assert keys == [shown]
    secret_all = [secret(k) for k in keys_in_keygen(keygen)]
    assert len(secret_all) == 2


def test_recovery_takes_its_turns_in_the_signups_keygen_budget(portal_with, keygen):
    """Lost-key requests cost Keygen calls too: a flood of them must wait for turns like the
    signups', not spend the quota the signups need."""
    portal = portal_with(keygen_max_rps=4)
    portal.sign_up()
    budget = services(portal.app).signup.admission.budget
    assert budget.reserve(1000, within=10**6) is not None  # the next minutes' turns are taken
    before = len(keygen.calls())
    ask_for_keys(portal, "clark@example.com")
    assert portal.deliver()["retry"] == 1
    assert len(keygen.calls()) == before
    [row] = portal.journal.mail()
    assert "no turn at Keygen" in row.last_error


def test_an_unknown_address_gets_the_same_page_and_no_email(portal_with, keygen):
    portal = portal_with()
    portal.sign_up()
    known = ask_for_keys(portal, "clark@example.com")
    unknown = ask_for_keys(portal, "nobody@example.com")
    assert comparable(known) == comparable(unknown)
    counts = portal.deliver()
    assert (counts["sent"], counts["dropped"]) == (1, 1)
    assert [m["To"].addresses[0].addr_spec for m in portal.mails()] == ["clark@example.com"]


def test_recovery_is_throttled_per_address_and_per_client(portal_with, keygen):
    portal = portal_with(
        ratelimit_recovery_per_email="2/hour", ratelimit_recovery_per_ip="4/minute"
    )
    statuses = [ask_for_keys(portal, "clark@example.com").status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    statuses = [ask_for_keys(portal, f"p{i}@example.com").status_code for i in range(3)]
    assert statuses == [200, 200, 429]  # the client's 4 per minute are used up
    assert len(portal.journal.mail()) == 4


def test_recovery_checks_the_address(portal_with):
    portal = portal_with()
    response = ask_for_keys(portal, "not an address")
    assert response.status_code == 422
    assert "Enter a valid email address" in response.get_data(as_text=True)
    assert portal.journal.mail() == []


def test_without_email_there_is_no_recovery_page(client):
    assert client.get("/lost-key").status_code == 404
    assert 'href="/lost-key"' not in client.get("/").get_data(as_text=True)


# -- Settings ------------------------------------------------------------------------------------

GOOD = {
    "KEYGEN_ACCOUNT_ID": "acme",
    "KEYGEN_PRODUCT_TOKEN": "prod-" + "ab" * 32 + "v3",
    "KEYGEN_POLICY_ID": "6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f",
    "SECRET_KEY": "s" * 40,
}
MAIL = {
    "MAIL_SERVER": "smtp.example.com",
    "MAIL_DEFAULT_SENDER": "Acme <keys@example.com>",
    "PUBLIC_URL": "https://licenses.example.com/",
}


def problems(**env) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings({**GOOD, **env})
    return caught.value.problems


@pytest.mark.parametrize(
    "env",
    [
        {"KEY_DELIVERY": "email"},
        {"KEY_DELIVERY": "both"},
        {"REQUIRE_EMAIL_VERIFICATION": "true"},
        {"ENUMERATION_SAFE": "true", "KEY_DELIVERY": "email"},
    ],
)
def test_email_modes_without_mail_settings_refuse_to_start(env):
    found = problems(**env)
    assert any("needs MAIL_SERVER" in p for p in found)
    assert any("needs MAIL_DEFAULT_SENDER" in p for p in found)
    assert any("needs PUBLIC_URL" in p for p in found)


def test_mail_settings_load():
    settings = load_settings(
        {**GOOD, **MAIL, "KEY_DELIVERY": "Both", "MAIL_USERNAME": "u", "MAIL_PASSWORD": "pw"}
    )
    assert (settings.key_delivery, settings.public_url) == ("both", MAIL["PUBLIC_URL"][:-1])
    assert "pw" not in repr(settings)


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"PUBLIC_URL": "http://licenses.example.com"}, "PUBLIC_URL must use https"),
        ({"PUBLIC_URL": "licenses.example.com"}, "PUBLIC_URL must be the portal's public URL"),
        ({"MAIL_USE_SSL": "true"}, "MAIL_USE_TLS and MAIL_USE_SSL exclude each other"),
        ({"MAIL_USERNAME": "portal"}, "MAIL_USERNAME and MAIL_PASSWORD must be set together"),
        ({"KEY_DELIVERY": "sms"}, "KEY_DELIVERY must be page, email or both"),
        ({"MAIL_DEFAULT_SENDER": "Acme <keys@example.com"}, "MAIL_DEFAULT_SENDER must be"),
        ({"ENUMERATION_SAFE": "true"}, "ENUMERATION_SAFE without REQUIRE_EMAIL_VERIFICATION"),
    ],
)
def test_unsafe_mail_settings_are_named(env, problem):
    assert any(p.startswith(problem) for p in problems(**{**MAIL, **env}))


def test_the_demo_prints_mail_to_the_console(keygen, capsys):
    app = create_app(
        make_settings(
            keygen,
            demo_mode=True,
            public_url="http://127.0.0.1:8000",
            mail_default_sender=SENDER,
            outbox_interval=0.0,
        )
    )
    client = app.test_client()
    page = client.get("/lost-key")
    token = csrf_token_from(page.get_data(as_text=True))
    client.post("/lost-key", data={"email": "nobody@example.com", "csrf_token": token})
    services(app).courier.journal.queue(Letter("taken", "zoe@example.com"))
    assert services(app).courier.run_once() == {
        "sent": 1,
        "retry": 0,
        "failed": 0,
        "dropped": 1,
    }
    printed = capsys.readouterr().out
    assert "To: zoe@example.com" in printed and "http://127.0.0.1:8000/lost-key" in printed
