"""One trial per person, through the form and the emulator over HTTP: the same mailbox under
another spelling is refused as taken, throwaway inboxes and the operator's domain lists are
refused before Keygen is called, the per-email limits count the mailbox, the per-domain cap,
what the operator sees, and each setting off restores the behaviour from before."""

from __future__ import annotations

import logging
import threading
import uuid

import pytest
import requests

from app import create_app
from email_rules import METADATA_KEY, disposable_list
from journal import State
from outcomes import EMAIL_TAKEN, Applicant, Rejected, TryLater
from services import services
from support.http import csrf_token_from, form_submitter, issued_key, sign_up_over_http
from support.leaks import PASSWORD, secret
from support.portal import make_settings
from support.servers import emulator, keygen_state, portal, redis_server, settings_for
from support.workflow import CLARK, make_workflow, submit, wait_for_call

TAKEN = EMAIL_TAKEN
DISPOSABLE = "temporary inbox"
WORK_EMAIL = "work email address"
DENIED = "cannot be used to sign up"


def built(keygen, **changes):
    """A portal built against the emulator, and its form submitter."""
    app = create_app(make_settings(keygen, **changes))
    return app, form_submitter(app.test_client())


def scrape(app) -> str:
    return app.test_client().get("/metrics").get_data(as_text=True)


def counted(app, outcome: str) -> float:
    for line in scrape(app).splitlines():
        if line.startswith(f'portal_signups_total{{outcome="{outcome}"}}'):
            return float(line.split()[-1])
    raise AssertionError(f"no portal_signups_total for {outcome}")


def portal_lines(caplog) -> str:
    """What the portal's own loggers said (not urllib3's request lines)."""
    return "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("portal."))


def issued(response) -> bool:
    if response.status_code != 200 or 'id="license-key"' not in response.get_data(as_text=True):
        return False
    issued_key(response.get_data(as_text=True))
    return True


def refused_as(response, text: str) -> bool:
    return response.status_code == 422 and text in response.get_data(as_text=True)


# -- The same mailbox is the same person ---------------------------------------------------------


def test_plus_tags_dots_and_googlemail_are_refused_as_taken(keygen):
    app, sign_up = built(keygen)
    assert issued(sign_up(email="jane.doe@gmail.com"))
    variants = ("jane.doe+1@gmail.com", "J.A.N.E.doe@gmail.com", "janedoe+trial@googlemail.com")
    for variant in variants:
        assert refused_as(sign_up(email=variant), TAKEN), variant
    [user] = keygen.users()
    assert user["email"] == "jane.doe@gmail.com"  # the address typed is the one Keygen keeps
    assert user["metadata"][METADATA_KEY] == "janedoe@gmail.com"
    assert len(keygen.licenses()) == 1
    assert counted(app, "same_person") == 3
    assert counted(app, "issued") == 1


def test_different_mailboxes_are_not_merged_where_dots_and_tags_count(keygen):
    _, sign_up = built(keygen)
    addresses = [
        "jane@yahoo.com",
        "j.ane@yahoo.com",  # Yahoo: a dot makes another mailbox
        "jane@outlook.com",
        "j.ane@outlook.com",  # Outlook takes plus tags, but dots count
        "jane@example.com",
        "jane+1@example.com",  # a custom domain's server may deliver + elsewhere
        "ja.ne@example.com",
    ]
    for email in addresses:
        assert issued(sign_up(email=email)), email
    assert sorted(u["email"] for u in keygen.users()) == sorted(addresses)
    assert len(keygen.licenses()) == len(addresses)


def test_the_happy_path_is_the_lookup_then_two_creates(keygen):
    app, sign_up = built(keygen)
    assert issued(sign_up(email="Jane+News@GMail.com"))
    routes = [c["route"] for c in keygen.calls()]
    assert routes == ["users.index", "users.create", "licenses.create"]
    [lookup] = keygen.calls("users.index")
    assert "metadata%5BcanonicalEmail%5D=jane%40gmail.com" in lookup["query"]
    assert services(app).signup.admission.calls_per_signup == 3  # each call has its turn


def test_a_user_from_before_the_canonical_form_is_still_found_by_exact_address(keygen):
    """Created without the metadata (by an earlier version, or in Keygen's dashboard): Keygen's
    own uniqueness refuses the same address, as before."""
    headers = {
        "Authorization": f"Bearer {keygen.token}",
        "Content-Type": "application/vnd.api+json",
        "Accept": "application/vnd.api+json",
    }
    body = {"data": {"type": "users", "attributes": {"email": "old@example.com"}}}
    url = f"{keygen.url}/v1/accounts/{keygen.account}/users"
    assert requests.post(url, json=body, headers=headers, timeout=5).status_code == 201
    app, sign_up = built(keygen)
    assert refused_as(sign_up(email="old@example.com"), TAKEN)
    assert len(keygen.users()) == 1
    assert keygen.licenses() == []
    assert counted(app, "rejected") == 1  # the exact address: not a same-person refusal


def test_an_earlier_send_of_the_same_submission_is_ours_not_taken(keygen, journal, clock):
    """The create went through but its answer was lost, and the lookup after it failed: the
    resubmitted form finds the user by its canonical form, and it is ours."""
    workflow = make_workflow(keygen, journal, clock, one_account_per_person=True)
    keygen.emulator.inject("users.create", drop=True, when="after")
    keygen.emulator.inject("users.show", status=503, times=None)
    nonce = "same-form-" + "n" * 20
    with pytest.raises(TryLater):
        submit(workflow, CLARK, nonce)
    keygen.emulator.clear_faults()
    outcome = submit(workflow, CLARK, nonce)
    assert outcome.license_id
    [user] = keygen.users()
    assert user["metadata"][METADATA_KEY] == "clark@example.com"
    assert len(keygen.licenses()) == 1


def test_two_spellings_sent_at_once_get_one_account(keygen, journal, clock):
    """Both would pass Keygen's lookup before either user exists: the first holds the mailbox
    in the journal while it creates the account, and the second is refused as taken."""
    workflow = make_workflow(keygen, journal, clock, one_account_per_person=True)
    keygen.emulator.inject("users.create", delay=0.5, times=1)  # the first is slow to finish
    jane = Applicant("jane@gmail.com", PASSWORD, "Jane", "Doe")
    results: list = []
    first = threading.Thread(target=lambda: results.append(submit(workflow, jane)))
    first.start()
    wait_for_call(keygen, "users.create")
    with pytest.raises(Rejected) as refused:
        submit(workflow, Applicant("j.ane+farm@googlemail.com", PASSWORD, "Jane", "Doe"))
    first.join(timeout=10)
    assert refused.value.errors == {"email": EMAIL_TAKEN}
    assert refused.value.refusal == "same_person"
    assert [user["email"] for user in keygen.users()] == ["jane@gmail.com"]
    assert len(keygen.licenses()) == 1
    # Once the first has finished, Keygen's lookup refuses the next spelling (no hold needed).
    with pytest.raises(Rejected):
        submit(workflow, Applicant("jane+2@gmail.com", PASSWORD, "Jane", "Doe"))


def test_a_mailbox_is_held_only_while_its_account_is_being_created(journal):
    first = journal.claim("a" * 32, "jane@gmail.com", owner="w1", lease=30).signup
    second = journal.claim("b" * 32, "j.ane@gmail.com", owner="w2", lease=30).signup
    assert journal.hold_person("jane-mailbox", first.id)
    assert journal.hold_person("jane-mailbox", first.id)  # again: still its own
    assert not journal.hold_person("jane-mailbox", second.id)  # the first is still working
    journal.record(first.id, owner="w1", state=State.REJECTED)
    assert journal.hold_person("jane-mailbox", second.id)  # a finished holder's hold passes on


def test_a_lookup_keygen_refuses_stops_the_signup_and_names_the_problem(keygen, caplog):
    _, sign_up = built(keygen)
    keygen.emulator.inject("users.index", status=403, times=None)
    with caplog.at_level(logging.ERROR, logger="portal.signup_run"):
        response = sign_up(email="jane@example.com")
    assert response.status_code == 503
    assert keygen.users() == []
    assert "looking up the person" in caplog.text


def test_a_lookup_that_fails_once_is_asked_again(keygen):
    _, sign_up = built(keygen)
    keygen.emulator.inject("users.index", status=503)
    assert issued(sign_up(email="jane@example.com"))
    assert [c["status"] for c in keygen.calls("users.index")] == [503, 200]


def test_with_enumeration_safety_the_same_mailbox_gets_a_new_addresss_answer(portal_with, keygen):
    mailed = portal_with(enumeration_safe=True, key_delivery="email")
    mailed.sign_up(email="jane@gmail.com")
    mailed.settled()  # jane's account exists (signups run in the background here)
    mailed.deliver()
    mailed.handler.received.clear()
    same = mailed.sign_up(email="j.ane+2@gmail.com", first_name="Mallory")
    new = mailed.sign_up(email="someone.new@gmail.com")
    assert same.status_code == new.status_code == 200
    assert same.data == new.data
    mailed.settled()  # the signups run in the background (ENUMERATION_SAFE)
    mailed.deliver()
    by_address = {m["To"].addresses[0].addr_spec: m for m in mailed.mails()}
    taken = by_address["j.ane+2@gmail.com"]  # the address typed, which is jane's mailbox
    assert "already has an account" in taken.get_body(("plain",)).get_content()
    assert "someone.new@gmail.com" in by_address
    assert len([u for u in keygen.users() if "jane" in u["email"] or "j.ane" in u["email"]]) == 1
    assert counted(mailed.app, "same_person") == 1


def test_lost_keys_are_found_for_another_spelling_of_the_mailbox(portal_with, keygen):
    mailed = portal_with()
    assert issued(mailed.sign_up(email="jane@gmail.com"))
    page = mailed.client.get("/lost-key")
    data = {"email": "ja.ne+keys@gmail.com", "csrf_token": csrf_token_from(page.text)}
    assert mailed.client.post("/lost-key", data=data).status_code == 200
    mailed.deliver()
    [mail] = mailed.mails()
    assert mail["To"].addresses[0].addr_spec == "ja.ne+keys@gmail.com"
    [license] = keygen.licenses()
    assert secret(license["key"]) in mail.get_body(("plain",)).get_content()


# -- Throwaway inboxes and the operator's lists --------------------------------------------------


@pytest.mark.parametrize("email", ["t@mailinator.com", "t@inbox.mailinator.com"])
def test_a_disposable_domain_and_its_subdomains_are_refused_before_keygen(keygen, caplog, email):
    app, sign_up = built(keygen)
    with caplog.at_level(logging.INFO, logger="portal.views"):
        response = sign_up(email=email)
    assert refused_as(response, DISPOSABLE)
    assert "permanent email address" in response.get_data(as_text=True)
    assert keygen.calls() == []
    assert counted(app, "disposable_email") == 1
    lines = portal_lines(caplog)
    assert "signup refused: disposable_email" in lines
    assert "mailinator" not in lines  # the log line names the reason, not the address


def test_the_deny_list_refuses_its_domains_and_subdomains(keygen):
    app, sign_up = built(keygen, email_domains_deny=("rival.example",))
    assert refused_as(sign_up(email="spy@rival.example"), DENIED)
    assert refused_as(sign_up(email="spy@eu.rival.example"), DENIED)
    assert issued(sign_up(email="friend@example.com"))
    assert keygen.calls("users.create") == [keygen.calls("users.create")[0]]
    assert counted(app, "domain_denied") == 2


def test_with_an_allow_list_only_work_addresses_there_sign_up(keygen):
    app, sign_up = built(keygen, email_domains_allow=("acme.example",))
    response = sign_up(email="jane@gmail.com")
    assert refused_as(response, WORK_EMAIL)
    assert issued(sign_up(email="jane@acme.example"))
    assert issued(sign_up(email="joe@eu.acme.example"))
    assert counted(app, "domain_not_allowed") == 1
    assert len(keygen.users()) == 2


def test_the_messages_are_translated(keygen):
    app, _ = built(keygen)
    client = app.test_client()
    page = client.get("/", headers={"Accept-Language": "de"})
    data = {
        "csrf_token": csrf_token_from(page.get_data(as_text=True)),
        "first_name": "Jane",
        "last_name": "Doe",
        "email": "t@mailinator.com",
        "password": PASSWORD,
    }
    response = client.post("/", data=data, headers={"Accept-Language": "de"})
    assert response.status_code == 422
    assert DISPOSABLE not in response.get_data(as_text=True)
    assert "dauerhafte" in response.get_data(as_text=True)


# -- Rate limits: the mailbox and the organisation -----------------------------------------------


def test_the_per_email_limit_counts_the_mailbox(keygen):
    _, sign_up = built(keygen, ratelimit_per_email="2/hour")
    sign_up(email="jane+1@gmail.com")
    sign_up(email="jane+2@gmail.com")
    assert sign_up(email="j.ane+3@gmail.com").status_code == 429
    assert sign_up(email="john@gmail.com").status_code != 429


def test_the_lost_key_limit_counts_the_mailbox(portal_with, keygen):
    mailed = portal_with(ratelimit_recovery_per_email="1/hour")

    def ask(email):
        page = mailed.client.get("/lost-key")
        data = {"email": email, "csrf_token": csrf_token_from(page.text)}
        return mailed.client.post("/lost-key", data=data)

    assert ask("jane+1@gmail.com").status_code == 200
    assert ask("ja.ne+2@googlemail.com").status_code == 429


def test_the_per_domain_cap_counts_an_organisation_but_not_public_providers(keygen, caplog):
    app, sign_up = built(keygen, ratelimit_per_domain="2/day")
    assert issued(sign_up(email="a@acme.example"))
    assert issued(sign_up(email="b@mail.acme.example"))
    with caplog.at_level(logging.INFO, logger="portal.views"):
        assert sign_up(email="c@acme.example").status_code == 429
    lines = portal_lines(caplog)
    assert "rate limit reached: domain" in lines
    assert "acme" not in lines
    for n in range(3):
        assert issued(sign_up(email=f"person{n}@gmail.com"))
    assert counted(app, "domain_limit") == 1
    assert len(keygen.users()) == 5


# -- Each part off: the behaviour from before ------------------------------------------------------


def test_one_account_per_person_off_compares_exact_addresses_in_two_calls(keygen):
    app, sign_up = built(keygen, one_account_per_person=False, ratelimit_per_email="2/hour")
    assert issued(sign_up(email="jane@gmail.com"))
    assert issued(sign_up(email="jane+1@gmail.com"))
    assert issued(sign_up(email="j.ane@gmail.com"))
    assert refused_as(sign_up(email="jane@gmail.com"), TAKEN)
    assert len(keygen.users()) == 3
    assert all(METADATA_KEY not in u["metadata"] for u in keygen.users())
    assert keygen.calls("users.index") == []
    assert services(app).signup.admission.calls_per_signup == 2
    assert sign_up(email="jane+2@gmail.com").status_code != 429  # its own bucket
    assert counted(app, "same_person") == 0


def test_disposable_blocking_off_lets_throwaway_inboxes_sign_up(keygen):
    _, sign_up = built(keygen, block_disposable_email=False)
    assert issued(sign_up(email="t@mailinator.com"))


def test_the_per_domain_cap_off_counts_no_domain(keygen):
    _, sign_up = built(keygen, ratelimit_per_domain="")
    for n in range(3):
        assert issued(sign_up(email=f"p{n}@acme.example"))


# -- What the operator sees ------------------------------------------------------------------------


def test_the_doctor_names_the_disposable_list_size_and_version(keygen):
    count, version = disposable_list()
    app = create_app(make_settings(keygen, web_concurrency=1))
    output = app.test_cli_runner().invoke(args=["doctor"]).output
    assert f"disposable-email-domains {version}) holds {count} domains" in output
    app = create_app(make_settings(keygen, web_concurrency=1, block_disposable_email=False))
    output = app.test_cli_runner().invoke(args=["doctor"]).output
    assert "SKIP  BLOCK_DISPOSABLE_EMAIL is off" in output


def test_every_refusal_reason_is_a_label_from_the_start(keygen):
    app, _ = built(keygen)
    for reason in (
        "same_person",
        "disposable_email",
        "domain_denied",
        "domain_not_allowed",
        "domain_limit",
    ):
        assert counted(app, reason) == 0


def test_a_ticket_reserves_every_call_of_the_happy_path(keygen):
    """At 3 calls a second, a signup with the lookup takes a second of Keygen's budget; without
    it two thirds of one."""
    for setting, calls in ((True, 3), (False, 2)):
        app = create_app(make_settings(keygen, keygen_max_rps=3, one_account_per_person=setting))
        admission = services(app).signup.admission
        first, second = admission.ticket(), admission.ticket()
        assert first.turn == 0.0
        assert second.turn == pytest.approx(calls / 3, abs=0.05)


# -- The per-domain cap across two gunicorn workers ----------------------------------------------

TWO_SINGLE_THREADED_WORKERS = {
    "WEB_CONCURRENCY": "2",
    "GUNICORN_THREADS": "1",
    "GUNICORN_CMD_ARGS": "--worker-connections 1",
}


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("storage", ["memory", "redis"])
def test_the_per_domain_cap_holds_across_two_workers_only_with_redis(storage):
    with redis_server() as redis_url, emulator() as keygen:
        slow_lookup = {"route": "users.index", "delay": 0.3, "times": None}
        requests.post(keygen["url"] + "/_emulator/faults", json=slow_lookup, timeout=5)
        uri = {"memory": "memory://", "redis": redis_url}[storage]
        env = settings_for(
            keygen,
            RATELIMIT_STORAGE_URI=uri,
            RATELIMIT_PER_DOMAIN="4/day",
            RATELIMIT_PER_IP="100/minute",
            KEYGEN_MAX_RPS="100",
        )
        emails = [f"p{n}-{uuid.uuid4().hex[:6]}@farm.example.com" for n in range(10)]
        with portal({**env, **TWO_SINGLE_THREADED_WORKERS}) as url:
            statuses = at_once(url, emails)
            users = keygen_state(keygen["url"])["users"]
    if storage == "redis":
        assert statuses == [200] * 4 + [429] * 6
        assert len(users) == 4
    else:  # each worker counts on its own: the test can tell the difference
        assert statuses.count(200) > 4, statuses


def at_once(url: str, emails: list[str]) -> list[int]:
    """Everyone submits at the same moment; the answers' statuses, sorted."""
    statuses: list[int] = []
    start = threading.Barrier(len(emails))

    def one(email: str) -> None:
        start.wait(timeout=30)
        statuses.append(sign_up_over_http(url, email).status_code)

    threads = [threading.Thread(target=one, args=(email,)) for email in emails]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return sorted(statuses)
