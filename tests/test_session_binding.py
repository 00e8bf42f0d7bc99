"""A signup is bound to the browser session that sent it: the form's nonce is in the page, so
whoever gets hold of a form's hidden values (a shared computer's back button, a cached page)
and posts them from another session gets a new, unrelated signup, never the first one's key or
any of its data. The same session's double submit keeps working as before."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from journal import State
from services import services
from support.http import csrf_token_from, form_data, hidden, issued_key
from support.leaks import secret


def served_form(client) -> tuple[str, str]:
    """(the CSRF token, the nonce) of a freshly served form."""
    page = client.get("/").get_data(as_text=True)
    return csrf_token_from(page), hidden(page, "nonce")


def never_shows(response, key: str, victims_email: str | None) -> None:
    """Neither the first signup's key nor (to someone who typed another address) its address."""
    html = response.get_data(as_text=True)
    assert key not in html
    if victims_email:
        assert victims_email not in html


@pytest.mark.slow
@pytest.mark.parametrize("email", ["clark@example.com", "mallory@example.com"])
def test_a_nonce_posted_from_another_session_never_reveals_the_first_signups_key(
    app, keygen, email
):
    victim, other = app.test_client(), app.test_client()
    token, nonce = served_form(victim)
    keygen.emulator.inject("licenses.create", delay=1.5)  # the victim's signup takes its time
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(victim.post, "/", data=form_data(csrf_token=token, nonce=nonce))
        deadline = time.monotonic() + 5
        while not keygen.calls("licenses.create") and time.monotonic() < deadline:
            time.sleep(0.02)  # the victim's user exists; its license is on its way
        copied = form_data(csrf_token=served_form(other)[0], nonce=nonce, email=email)
        copied["password"] = secret("another-persons-password-1")
        during = other.post("/", data=copied)
        key = issued_key(running.result().get_data(as_text=True))
    after = other.post("/", data=copied)
    for answer in (during, after):
        never_shows(answer, key, "clark@example.com" if email != "clark@example.com" else None)
        if email == "clark@example.com":  # a new signup for an address that has an account
            assert answer.status_code == 422 and "already exists" in answer.get_data(as_text=True)
    if email != "clark@example.com":  # a new signup of the other person's own, sent twice
        assert issued_key(during.get_data(as_text=True)) != key
        assert "already complete" in after.get_data(as_text=True)
    assert len(services(app).journal.all()) == 2
    assert [user["email"] for user in keygen.users()].count("clark@example.com") == 1


def test_the_same_sessions_double_submit_still_shows_the_key(app, keygen):
    client = app.test_client()
    token, nonce = served_form(client)
    data = form_data(csrf_token=token, nonce=nonce)
    first = issued_key(client.post("/", data=data).get_data(as_text=True))
    again = client.post("/", data=data)
    assert again.status_code == 200 and first not in again.get_data(as_text=True)
    assert "already complete" in again.get_data(as_text=True)
    assert len(keygen.users()) == 1 and len(services(app).journal.all()) == 1


def test_the_journal_holds_the_nonce_only_bound_to_its_session(app, keygen):
    client = app.test_client()
    token, nonce = served_form(client)
    client.post("/", data=form_data(csrf_token=token, nonce=nonce))
    [row] = services(app).journal.all()
    assert row.nonce != nonce and len(row.nonce) == 64


@pytest.mark.slow
def test_the_background_queues_reload_is_bound_to_the_session_too(keygen):
    """A signup finished in the background ("reload this page to see your key"): a reload from
    another session with the same nonce is that session's own signup."""
    from app import create_app
    from support.portal import make_settings

    app = create_app(make_settings(keygen, signup_deadline=4.0, keygen_max_rps=5))
    budget = services(app).signup.admission.budget
    budget.reserve(30, within=100)  # Keygen's turns are taken for the next 6 s
    victim, other = app.test_client(), app.test_client()
    token, nonce = served_form(victim)
    data = form_data(csrf_token=token, nonce=nonce)
    queued = victim.post("/", data=data)
    assert queued.status_code == 202 and "We are finishing your signup" in queued.text
    copied = form_data(csrf_token=served_form(other)[0], nonce=nonce, email="mallory@example.com")
    theirs = other.post("/", data=copied)
    assert theirs.status_code == 202 and "clark@example.com" not in theirs.text
    journal = services(app).journal
    deadline = time.monotonic() + 20
    while any(not row.finished for row in journal.all()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [row.state for row in journal.all()] == [State.ISSUED, State.ISSUED]
    key = issued_key(victim.post("/", data=data).text)  # the victim's reload shows the key
    reloaded = other.post("/", data=copied)
    never_shows(reloaded, key, "clark@example.com")
    assert issued_key(reloaded.text) != key  # the other session's own signup
