"""What Keygen does that the portal must live with: creates that race (409), deletions it refuses,
keys it shows only once (LEGACY_ENCRYPT), and accounts over their plan (402). Each ends with one
user and one license, or with the operator told once, never in a retry loop."""

from __future__ import annotations

import logging
import threading

import pytest
import requests
from sqlalchemy import update

from app import create_app
from forms import new_nonce
from journal import State, signups
from keygen_api import KeygenClient
from outcomes import Issued, Processing, SignupUnavailable
from sealing import Sealer
from services import services
from support.http import csrf_token_from, form_data, issued_key
from support.leaks import SECRET_KEY, secret
from support.mail import text_of
from support.portal import make_settings
from support.setups import doctor, line_with
from support.workflow import make_workflow, only_row, only_user_and_license, submit
from worker import Reconciler


def routes(world) -> list[str]:
    return [call["route"] for call in world.calls()]


# -- 5. Races answer 409 -------------------------------------------------------------------------


def test_a_409_on_the_user_create_is_resolved_like_a_timeout(workflow, keygen, journal):
    keygen.emulator.race("users.create")  # a twin request went through; this one lost
    assert isinstance(submit(workflow), Issued)
    only_user_and_license(keygen)
    assert routes(keygen) == ["users.create", "users.show", "licenses.create"]
    assert keygen.calls()[0]["status"] == 409


def test_a_409_whose_twin_is_not_visible_yet_is_sent_again(workflow, keygen, journal, pauses):
    keygen.emulator.inject("users.create", status=409)  # answered before anything was created
    assert isinstance(submit(workflow), Issued)
    only_user_and_license(keygen)
    assert routes(keygen) == ["users.create", "users.show", "users.create", "licenses.create"]
    assert len(pauses) == 1


def test_a_409_on_the_license_create_is_resolved_like_a_timeout(workflow, keygen, journal):
    keygen.emulator.race("licenses.create")
    outcome = submit(workflow)
    _, license = only_user_and_license(keygen)
    assert (outcome.license_id, outcome.license_key) == (license["id"], license["key"])
    assert routes(keygen) == ["users.create", "licenses.create", "licenses.show"]


def test_a_409_on_a_license_not_visible_yet_is_sent_again(workflow, keygen, journal, pauses):
    keygen.emulator.inject("licenses.create", status=409)
    assert isinstance(submit(workflow), Issued)
    only_user_and_license(keygen)
    assert routes(keygen) == ["users.create", "licenses.create", "licenses.show", "licenses.create"]


# -- 6. Deleting a user can be refused -----------------------------------------------------------


def license_of_another_product(world, user_id: str) -> None:
    """Another portal (another product of the account) gives the user a license of its own."""
    body = {
        "data": {
            "type": "licenses",
            "relationships": {
                "policy": {"data": {"type": "policies", "id": world.other_policy}},
                "owner": {"data": {"type": "users", "id": user_id}},
            },
        }
    }
    headers = {"Authorization": f"Bearer {world.other_token}", "Content-Type": "application/json"}
    url = f"{world.url}/v1/accounts/{world.account}/licenses"
    response = requests.post(url, json=body, headers=headers, timeout=10)
    assert response.status_code == 201, response.text
    secret(response.json()["data"]["attributes"]["key"])


def test_a_user_keygen_will_not_delete_is_kept_for_the_operator_once(
    setups, journal, database_url, clock, caplog
):
    problems: list[str] = []
    workflow = make_workflow(setups, journal, clock, on_operator_problem=problems.append)
    setups.emulator.inject("licenses.create", status=503, times=None)
    assert isinstance(submit(workflow), Processing)  # the reconciler will finish it
    setups.emulator.clear_faults()
    user_id = only_row(journal).user_id
    license_of_another_product(setups, user_id)
    # The account's plan allows one licensed user: our license is refused (402), so the signup
    # is undone, but the user now holds another product's license: Keygen refuses the delete.
    setups.emulator.set_account_state(setups.account, licensed_user_limit=1)
    reconciler = Reconciler(journal, workflow, interval=0)
    clock.offset += 3600
    with caplog.at_level(logging.ERROR, logger="portal"):
        reconciler.run_once()
    row = only_row(journal)
    assert row.state == State.KEPT
    assert "user cannot belong to another product" in row.last_error
    assert problems == ["payment_required", "delete_refused"]
    [kept] = [r for r in caplog.records if "Keygen refused to delete user" in r.getMessage()]
    assert "holds, or is attached to, a license of another product" in kept.getMessage()
    assert kept.keygen_request_id
    assert user_id in {user["id"] for user in setups.users()}
    calls = len(setups.calls())
    clock.offset += 86400  # no retry storm: the reconciler leaves a kept signup alone
    reconciler.run_once()
    assert len(setups.calls()) == calls
    _, lines = doctor(setups, database_url=database_url)
    line = line_with(lines, "Keygen refused to delete their users")
    assert line.startswith("WARN ")
    assert f"user {user_id}" in line


def unverified_user_of_an_earlier_release(world, journal):
    """A verification row as the release before email-first verification left it: its user
    created on the form, before anyone proved the address, waiting for a click that is now
    refused; the reconciler's expiry deletes that user."""
    row = journal.claim("earlier-" + "x" * 20, "clark@example.com", owner="earlier", lease=0)
    user = KeygenClient(world.url, world.account, world.token).create_user(
        email="clark@example.com",
        password=secret("chosen-by-whoever-77"),
        first_name="Clark",
        last_name="Kent",
        metadata={"portalSignupId": row.signup.id},
    )
    changes = dict(state=State.PENDING_VERIFICATION, verify=True, user_id=user.id)
    with journal.engine.begin() as db:
        db.execute(
            update(signups)
            .where(signups.c.id == row.signup.id)
            .values(**changes, next_attempt_at=0, lease_owner=None, lease_until=None)
        )
    return user


def test_an_unverified_user_keygen_will_not_delete_is_kept(setups, journal, clock):
    workflow = make_workflow(setups, journal, clock, verify=True)
    user = unverified_user_of_an_earlier_release(setups, journal)
    license_of_another_product(setups, user.id)
    reconciler = Reconciler(journal, workflow, interval=0)
    reconciler.run_once()
    assert only_row(journal).state == State.KEPT
    assert routes(setups)[-2:] == ["licenses.index", "users.destroy"]
    calls = len(setups.calls())
    clock.offset += 86400
    reconciler.run_once()
    assert len(setups.calls()) == calls


def test_owned_licenses_deleted_later_do_not_hold_up_an_undo(setups, journal, clock):
    """Keygen deletes a deleted user's licenses in the background: an unverified user's
    expiry goes through, and the next pass does not look at it again."""
    setups.emulator.configure(delete_delay=3600)
    workflow = make_workflow(setups, journal, clock, verify=True)
    unverified_user_of_an_earlier_release(setups, journal)
    reconciler = Reconciler(journal, workflow, interval=0)
    reconciler.run_once()
    assert only_row(journal).state == State.EXPIRED
    assert setups.users() == []


# -- 7. Keys Keygen shows only once (LEGACY_ENCRYPT) ---------------------------------------------


def legacy_workflow(world, journal, clock, **options):
    return make_workflow(
        world,
        journal,
        clock,
        policy=world.legacy_policy,
        sealer=Sealer(SECRET_KEY, "license-keys"),
        **options,
    )


def test_a_key_shown_only_once_is_shown_from_keygens_create_answer(setups):
    client = create_app(make_settings(setups, keygen_policy_id=setups.legacy_policy)).test_client()
    data = form_data(csrf_token=csrf_token_from(client.get("/").get_data(as_text=True)))
    key = issued_key(client.post("/", data=data).get_data(as_text=True))
    [license] = setups.licenses()
    assert key == license["key"]
    assert "licenses.show" not in routes(setups)


def test_a_reload_shows_a_key_keygen_will_not_show_again_from_its_sealed_copy(
    setups, journal, clock
):
    workflow = legacy_workflow(setups, journal, clock)
    nonce = new_nonce()
    setups.emulator.inject("licenses.create", status=503, times=None)
    assert isinstance(submit(workflow, nonce=nonce), Processing)
    setups.emulator.clear_faults()
    clock.offset += 3600
    Reconciler(journal, workflow, interval=0).run_once()  # issues it; nobody sees it yet
    row = only_row(journal)
    [license] = setups.licenses()
    assert row.state == State.ISSUED and row.sealed_key
    assert license["key"] not in row.sealed_key  # encrypted at rest
    calls = len(setups.calls())
    shown = submit(workflow, nonce=nonce)  # the person reloads the page
    assert isinstance(shown, Issued)
    assert shown.license_key == license["key"]
    assert setups.calls()[calls:] == []  # not read back: Keygen would not show it
    assert only_row(journal).sealed_key is None  # shown: wiped


def test_a_double_click_gets_a_key_keygen_will_not_show_again_and_the_copy_is_wiped(
    setups, journal, clock
):
    workflow = legacy_workflow(setups, journal, clock, read_timeout=3.0)
    setups.emulator.inject("users.create", delay=0.6)  # the second click arrives meanwhile
    nonce = new_nonce()
    outcomes: list = []
    together = threading.Barrier(2)

    def click():
        together.wait(timeout=10)
        outcomes.append(submit(workflow, nonce=nonce))

    threads = [threading.Thread(target=click) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    [license] = setups.licenses()
    # The browser shows the last answer of a double click: both must carry the key.
    assert [outcome.license_key for outcome in outcomes] == [license["key"]] * 2
    assert "licenses.show" not in routes(setups)
    assert only_row(journal).sealed_key  # kept while a copy could still be waiting
    clock.offset += workflow.lease + 1
    Reconciler(journal, workflow, interval=0).run_once()
    assert only_row(journal).sealed_key is None


def test_a_key_lost_with_keygens_answer_is_replaced(setups, journal, clock):
    workflow = legacy_workflow(setups, journal, clock)
    setups.emulator.inject("licenses.create", drop=True, when="after")
    outcome = submit(workflow)
    assert isinstance(outcome, Issued)
    [license] = setups.licenses()  # the keyless one was deleted
    assert (outcome.license_id, outcome.license_key) == (license["id"], license["key"])
    assert "licenses.destroy" in routes(setups)


def test_a_key_shown_only_once_is_emailed_from_its_sealed_copy(portal_with, keygen):
    legacy = keygen.emulator.add_policy(keygen.account, keygen.product, scheme="LEGACY_ENCRYPT")
    portal = portal_with(key_delivery="email", keygen_policy_id=legacy)
    assert portal.sign_up().status_code == 200
    [mail] = portal.journal.mail()
    [license] = keygen.licenses()
    assert mail.sealed_key and license["key"] not in mail.sealed_key
    assert portal.deliver()["sent"] == 1
    [message] = portal.mails()
    assert license["key"] in text_of(message, "plain")
    assert portal.journal.mail()[0].sealed_key is None  # sent: wiped


def test_lost_key_recovery_says_such_a_key_cannot_be_sent_again(portal_with, keygen):
    legacy = keygen.emulator.add_policy(keygen.account, keygen.product, scheme="LEGACY_ENCRYPT")
    portal = portal_with(key_delivery="both", keygen_policy_id=legacy)
    portal.sign_up()
    portal.deliver()
    page = portal.client.get("/lost-key")
    token = csrf_token_from(page.get_data(as_text=True))
    portal.client.post("/lost-key", data={"email": "clark@example.com", "csrf_token": token})
    portal.deliver()
    recovery = portal.mails()[-1]
    [license] = keygen.licenses()
    for subtype in ("plain", "html"):
        assert "cannot be sent again" in text_of(recovery, subtype)
        assert license["key"] not in text_of(recovery, subtype)


def test_the_doctor_warns_about_a_policy_whose_keys_are_shown_once(setups):
    _, lines = doctor(setups, keygen_policy_id=setups.legacy_policy)
    line = line_with(lines, "uses LEGACY_ENCRYPT")
    assert line.startswith("WARN ")
    assert "a lost key cannot be sent again" in line


# -- 8. Accounts over their plan (402) -----------------------------------------------------------


def test_a_used_up_daily_limit_is_an_operator_problem_with_its_own_line(setups, caplog):
    setups.emulator.set_account_state(setups.account, daily_limit_reached=True)
    app = create_app(make_settings(setups, one_account_per_person=False))
    client = app.test_client()
    data = form_data(csrf_token=csrf_token_from(client.get("/").get_data(as_text=True)))
    with caplog.at_level(logging.ERROR, logger="portal"):
        response = client.post("/", data=data)
    assert response.status_code == 503
    assert routes(setups) == ["users.create"]  # once: never a retry
    [line] = [r for r in caplog.records if "Keygen refused creating a user" in r.getMessage()]
    assert "402" in line.getMessage()
    assert "over its plan's limits" in line.getMessage()
    assert line.keygen_reason == "payment_required"
    metrics = services(app).metrics.render()[0].decode()
    assert 'portal_operator_problems_total{reason="payment_required"} 1.0' in metrics


def test_a_used_up_daily_limit_stops_the_lookup_of_the_person_too(setups, caplog):
    """Keygen answers 402 to the users index as to the create (users_controller.rb,
    require_active_subscription! for index, create and destroy)."""
    setups.emulator.set_account_state(setups.account, daily_limit_reached=True)
    app = create_app(make_settings(setups, one_account_per_person=True))
    client = app.test_client()
    data = form_data(csrf_token=csrf_token_from(client.get("/").get_data(as_text=True)))
    with caplog.at_level(logging.ERROR, logger="portal"):
        response = client.post("/", data=data)
    assert response.status_code == 503
    assert routes(setups) == ["users.index"]  # once: never a retry, nothing created
    [line] = [r for r in caplog.records if "looking up the person" in r.getMessage()]
    assert line.keygen_reason == "payment_required"


def test_a_licensed_user_limit_undoes_the_signup(setups, journal, clock):
    setups.emulator.set_account_state(setups.account, licensed_user_limit=0)
    problems: list[str] = []
    workflow = make_workflow(setups, journal, clock, on_operator_problem=problems.append)
    with pytest.raises(SignupUnavailable):
        submit(workflow)
    assert (setups.users(), setups.licenses()) == ([], [])
    assert only_row(journal).state == State.COMPENSATED
    assert problems == ["payment_required"]


def test_the_doctor_reports_the_accounts_plan_and_subscription(setups):
    setups.emulator.set_account_state(setups.account, daily_limit_reached=True)
    _, lines = doctor(setups)
    line = line_with(lines, "over its plan's limits")
    assert line.startswith("ERROR ") and "402" in line
    setups.emulator.set_account_state(setups.account, daily_limit_reached=False, active=False)
    _, lines = doctor(setups)
    assert line_with(lines, "subscription is not active").startswith("ERROR ")
