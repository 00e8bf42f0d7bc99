"""ENUMERATION_SAFE without verification (KEY_DELIVERY=email): a new address and one that has an
account get the same answer, in the same time, because the answer leaves before Keygen is asked
anything. A backlog thread does the work; the person gets the key, "you already have an
account", or, if the process stopped first, an email saying to sign up again."""

from __future__ import annotations

import statistics
import time
import uuid

import pytest

from journal import State
from services import services
from support.leaks import secret
from support.mail import PUBLIC_URL, text_of

SAME_HEADERS_EXCEPT = {"X-Request-ID", "Date", "Set-Cookie"}


def comparable(response) -> tuple:
    headers = sorted((k, v) for k, v in response.headers if k not in SAME_HEADERS_EXCEPT)
    return response.status_code, headers, response.data


def enumeration_safe(portal_with, **settings):
    settings.setdefault("ratelimit_per_ip", "1000/minute")
    settings.setdefault("ratelimit_per_domain", "")  # off: forty signups at example.com
    return portal_with(enumeration_safe=True, key_delivery="email", **settings)


def settled(portal, timeout: float = 20.0) -> list:
    return portal.settled(timeout)


def mail_to(portal, address: str) -> list:
    portal.deliver()
    return [m for m in portal.mails() if m["To"].addresses[0].addr_spec == address]


def test_new_and_registered_addresses_get_identical_answers_before_keygen_is_asked(
    portal_with, keygen
):
    portal = enumeration_safe(portal_with)
    portal.sign_up(email="taken@example.com")
    settled(portal)
    portal.deliver()
    portal.handler.received.clear()
    keygen.emulator.inject("users.create", delay=0.5, times=None)  # Keygen is slow today
    started = time.monotonic()
    existing = portal.sign_up(email="taken@example.com", first_name="Mallory")
    new = portal.sign_up(email="new@example.com")
    assert time.monotonic() - started < 0.5  # neither waited for Keygen
    assert comparable(existing) == comparable(new)
    assert "Check your inbox" in new.get_data(as_text=True)
    assert b"taken@example.com" not in existing.data
    settled(portal)
    [taken] = mail_to(portal, "taken@example.com")
    assert "already has an account" in text_of(taken, "plain")
    assert f"{PUBLIC_URL}/lost-key" in text_of(taken, "html")
    [key_mail] = mail_to(portal, "new@example.com")
    [license] = [lic for lic in keygen.licenses() if lic["owner_id"] != keygen.users()[0]["id"]]
    assert secret(license["key"]) in text_of(key_mail, "plain")
    assert [u["email"] for u in keygen.users()].count("taken@example.com") == 1


@pytest.mark.slow
def test_new_and_registered_addresses_answer_in_the_same_time_with_a_slow_keygen(
    portal_with, keygen
):
    """200 ms of Keygen latency on every call: the medians of 20 new and 20 registered
    addresses differ by less than 30 ms."""
    portal = enumeration_safe(portal_with, keygen_max_rps=100)
    client = services(portal.app).keygen
    taken = [f"taken{i}-{uuid.uuid4().hex[:6]}@example.com" for i in range(20)]
    for email in taken:
        client.create_user(
            email=email, password=secret(f"pw-{uuid.uuid4().hex}"), first_name="T", last_name="U"
        )
    new = [f"new{i}-{uuid.uuid4().hex[:6]}@example.com" for i in range(20)]
    for route in ("users.index", "users.create", "users.show", "licenses.create", "licenses.show"):
        keygen.emulator.inject(route, delay=0.2, times=None)
    took: dict[str, list[float]] = {"new": [], "taken": []}
    for new_email, taken_email in zip(new, taken, strict=True):
        for kind, email in (("new", new_email), ("taken", taken_email)):
            started = time.perf_counter()
            response = portal.sign_up(email=email)
            took[kind].append(time.perf_counter() - started)
            assert response.status_code == 200
    medians = {kind: statistics.median(seconds) for kind, seconds in took.items()}
    print(f"medians: {medians}")
    assert abs(medians["new"] - medians["taken"]) < 0.030, medians
    rows = settled(portal, timeout=60)
    assert sorted(row.state for row in rows) == [State.ISSUED] * 20 + [State.REJECTED] * 20


def test_a_signup_whose_process_stopped_before_the_user_is_told_to_sign_up_again(
    portal_with, keygen, clock
):
    portal = enumeration_safe(portal_with)
    admission = services(portal.app).signup.admission
    admission.run_later = lambda job, starts_in: None  # the process stops before the turn
    answer = portal.sign_up()
    assert "Check your inbox" in answer.get_data(as_text=True)
    [row] = portal.journal.all()
    assert (row.state, row.background) == (State.NEW, True)
    clock.offset += 3600  # the lease of the process that stopped runs out
    services(portal.app).reconciler.run_once()
    assert portal.journal.all()[0].state == State.ABANDONED
    [message] = mail_to(portal, "clark@example.com")
    assert "could not finish your signup" in text_of(message, "plain")
    assert f"{PUBLIC_URL}/" in text_of(message, "plain")
    assert keygen.users() == []


def test_a_signup_whose_process_stopped_after_the_user_still_gets_its_key(
    portal_with, keygen, clock
):
    portal = enumeration_safe(portal_with)
    services(portal.app).signup.admission.run_later = lambda job, starts_in: None
    portal.sign_up()
    [row] = portal.journal.all()
    services(portal.app).keygen.create_user(  # the run created the user, then the process died
        email=row.email, password=secret("chosen-on-the-form-1"), first_name="Clark",
        last_name="Kent", metadata={"portalSignupId": row.id},
    )  # fmt: skip
    clock.offset += 3600
    services(portal.app).reconciler.run_once()
    assert portal.journal.all()[0].state == State.ISSUED
    [message] = mail_to(portal, "clark@example.com")
    [license] = keygen.licenses()
    assert secret(license["key"]) in text_of(message, "plain")
