"""The workflow against the emulator's fault injection, on SQLite and on PostgreSQL: the happy
path, Keygen's refusals, retries that never duplicate, resubmissions, and compensation.

Each test asserts what Keygen ends up holding, what the journal says, and what the person saw.
The F-numbers are those of the fault list in docs/reference/reliability.md."""

import logging
import threading
import time
import uuid

import pytest

from admission import Admission
from forms import new_nonce
from journal import State
from keygen_api import KeygenClient
from outcomes import (
    AlreadyIssued,
    Applicant,
    Issued,
    Processing,
    Rejected,
    SignupUnavailable,
    TryLater,
)
from signup import SignupWorkflow
from signup_run import CREATED_BY
from support.leaks import PASSWORD, secret
from support.workflow import (
    make_workflow,
    only_row,
    only_user_and_license,
    submit,
    wait_for_call,
)
from worker import Reconciler

# -- The happy path ---------------------------------------------------------------------------


def test_happy_path_makes_exactly_two_calls(workflow, keygen, journal):
    outcome = submit(workflow)
    assert isinstance(outcome, Issued)
    user, license = only_user_and_license(keygen)
    assert [c["route"] for c in keygen.calls()] == ["users.create", "licenses.create"]
    assert outcome.license_key == license["key"]
    assert user["metadata"] == {"createdBy": CREATED_BY, "portalSignupId": outcome.signup_id}
    assert license["metadata"]["portalSignupId"] == outcome.signup_id
    row = only_row(journal)
    assert (row.id, row.state, row.key_shown) == (outcome.signup_id, State.ISSUED, True)
    assert (row.user_id, row.license_id, row.email) == (user["id"], license["id"], user["email"])
    assert row.lease_owner is None


def test_the_journal_is_written_before_keygen_is_called(workflow, keygen, journal):
    keygen.emulator.inject("users.create", status=503, times=None)
    with pytest.raises(TryLater):
        submit(workflow)
    row = only_row(journal)
    assert row.state == State.NEW
    assert row.next_attempt_at > journal.clock()


def test_the_journal_holds_neither_password_nor_key(workflow, keygen, journal):
    outcome = submit(workflow)
    with journal.engine.connect() as db:
        dump = repr(db.exec_driver_sql("SELECT * FROM signups").all())
    assert PASSWORD not in dump
    assert outcome.license_key not in dump


def test_the_license_id_is_chosen_before_the_call(workflow, keygen, journal):
    outcome = submit(workflow)
    [create] = keygen.calls("licenses.create")
    assert create["json"]["data"]["id"] == outcome.license_id == only_row(journal).license_id
    assert uuid.UUID(outcome.license_id).version == 4
    assert create["json"]["data"]["relationships"] == {
        "policy": {"data": {"type": "policies", "id": keygen.policy}},
        "owner": {"data": {"type": "users", "id": only_row(journal).user_id}},
    }


# -- Refusals ---------------------------------------------------------------------------------


def test_taken_email_is_rejected_under_the_email_field(workflow, keygen, journal):
    submit(workflow)
    with pytest.raises(Rejected) as caught:
        submit(workflow, Applicant("CLARK@example.COM", PASSWORD, "Other", "Person"))
    assert caught.value.errors == {"email": "An account with this email already exists."}
    assert (len(keygen.users()), len(keygen.licenses())) == (1, 1)


def test_f18_a_foreign_user_with_the_email_gets_no_license(workflow, keygen, journal):
    KeygenClient(keygen.url, keygen.account, keygen.token).create_user(
        email="clark@example.com", password=PASSWORD, first_name="Real", last_name="Clark"
    )
    with pytest.raises(Rejected) as caught:
        submit(workflow)
    assert caught.value.errors == {"email": "An account with this email already exists."}
    assert keygen.licenses() == []
    assert [c["route"] for c in keygen.calls()][-2:] == ["users.create", "users.show"]
    assert only_row(journal).state == State.REJECTED


@pytest.mark.parametrize(
    ("errors", "expected"),
    [
        (
            [("EMAIL_INVALID", "is invalid", "/data/attributes/email")],
            {"email": "Enter a valid email address, like name@example.com."},
        ),
        (
            [
                ("PASSWORD_TOO_SHORT", "is too short", "/data/attributes/password"),
                ("FIRST_NAME_TOO_LONG", "is too long", "/data/attributes/firstName"),
            ],
            {
                "password": "This password is too short.",
                "first_name": "Use at most 255 characters.",
            },
        ),
    ],
)
def test_keygen_validation_errors_land_under_their_fields(
    workflow, keygen, journal, errors, expected
):
    keygen.emulator.inject(
        "users.create",
        status=422,
        errors=[
            {"title": "Unprocessable resource", "detail": d, "code": c, "source": {"pointer": p}}
            for c, d, p in errors
        ],
    )
    with pytest.raises(Rejected) as caught:
        submit(workflow)
    assert caught.value.errors == expected
    assert keygen.users() == []
    assert only_row(journal).state == State.REJECTED


def test_a_rejected_submission_can_be_resubmitted_with_the_same_nonce(workflow, keygen, journal):
    nonce = new_nonce()
    with pytest.raises(Rejected):
        submit(workflow, Applicant("lois@example.com", "short", "Lois", "Lane"), nonce)
    outcome = submit(workflow, Applicant("lois@example.com", PASSWORD, "Lois", "Lane"), nonce)
    assert isinstance(outcome, Issued)
    assert only_row(journal).state == State.ISSUED
    only_user_and_license(keygen)


def test_a_bad_token_is_an_operator_problem_logged_with_the_request_id(
    keygen, journal, pauses, clock, caplog
):
    token = secret("prod-" + "1" * 64 + "v3")
    workflow = make_workflow(keygen, journal, clock, token=token)
    with caplog.at_level(logging.ERROR), pytest.raises(SignupUnavailable):
        submit(workflow)
    [record] = [r for r in caplog.records if r.name == "portal.signup_run"]
    assert "401 TOKEN_INVALID" in record.getMessage()
    assert "(request " in record.getMessage()
    assert "KEYGEN_PRODUCT_TOKEN" in record.getMessage()
    assert token not in caplog.text
    assert keygen.users() == []


def test_f5_a_policy_of_another_product_leaves_no_user_behind(
    keygen, journal, pauses, clock, caplog
):
    workflow = make_workflow(keygen, journal, clock, policy=keygen.other_policy)
    with caplog.at_level(logging.ERROR), pytest.raises(SignupUnavailable):
        submit(workflow)
    assert (keygen.users(), keygen.licenses()) == ([], [])
    assert any("403" in r.getMessage() and "(request " in r.getMessage() for r in caplog.records)
    assert [c["route"] for c in keygen.calls()] == [
        "users.create",
        "licenses.create",
        "users.destroy",
    ]
    assert only_row(journal).state == State.COMPENSATED


def test_a_deleted_policy_leaves_no_user_behind(workflow, keygen, journal):
    keygen.emulator.delete_policy(keygen.policy)
    try:
        with pytest.raises(SignupUnavailable):
            submit(workflow)
        assert keygen.users() == []
        assert only_row(journal).state == State.COMPENSATED
    finally:
        keygen.emulator.add_policy(keygen.account, keygen.product, id=keygen.policy)


def test_an_unexpected_400_is_an_operator_problem(workflow, keygen, journal):
    keygen.emulator.inject(
        "users.create",
        status=400,
        errors=[{"title": "Bad request", "detail": "unpermitted parameter"}],
    )
    with pytest.raises(SignupUnavailable):
        submit(workflow)
    assert only_row(journal).state == State.REJECTED


# -- Faults -----------------------------------------------------------------------------------


def test_f1_user_create_500_once_is_retried(workflow, keygen, journal, pauses):
    keygen.emulator.inject("users.create", status=500)
    assert isinstance(submit(workflow), Issued)
    only_user_and_license(keygen)
    assert len(pauses) == 1


def test_f2_user_created_but_answer_lost_is_found_not_duplicated(workflow, keygen, journal):
    keygen.emulator.inject("users.create", drop=True, when="after")
    assert isinstance(submit(workflow), Issued)
    only_user_and_license(keygen)
    assert [c["route"] for c in keygen.calls()] == [
        "users.create",
        "users.show",
        "licenses.create",
    ]


def test_f2_user_created_then_500_then_resent_gets_email_taken_and_continues(
    workflow, keygen, journal
):
    # The first create commits but answers 500; the lookup fails too, so the create is resent.
    keygen.emulator.inject("users.create", status=500, when="after")
    keygen.emulator.inject("users.show", status=503)
    assert isinstance(submit(workflow), Issued)
    only_user_and_license(keygen)


def test_f3_license_503_twice_then_success(workflow, keygen, journal, pauses):
    keygen.emulator.inject("licenses.create", status=503, times=2)
    assert isinstance(submit(workflow), Issued)
    only_user_and_license(keygen)
    assert len(pauses) == 2
    # Full jitter under a cap that doubles: 0 <= pause <= 0.25 * 2**attempt.
    assert 0 <= pauses[0] <= 0.5
    assert 0 <= pauses[1] <= 1.0


def test_f4_license_created_but_answer_lost_is_read_back_with_the_same_key(
    workflow, keygen, journal
):
    keygen.emulator.inject("licenses.create", drop=True, when="after")
    outcome = submit(workflow)
    _, license = only_user_and_license(keygen)
    assert (outcome.license_key, outcome.license_id) == (license["key"], license["id"])


def test_f19_license_garbled_answer_is_verified_before_showing(workflow, keygen, journal):
    keygen.emulator.inject("licenses.create", garbled=True)
    outcome = submit(workflow)
    _, license = only_user_and_license(keygen)
    assert outcome.license_key == license["key"]
    assert "licenses.show" in [c["route"] for c in keygen.calls()]


@pytest.mark.slow
def test_f6_retry_after_is_honoured_before_calling_again(keygen, journal, clock):
    workflow = make_workflow(keygen, journal, clock)
    clock.really_sleeps = True  # really wait, and measure it
    # Retry-After: 2, and X-RateLimit-Reset at the end of the next whole second: the window
    # ends between 1 and 2 s from now, and no call may come before.
    keygen.emulator.inject("licenses.create", retry_after=2)
    started = time.monotonic()
    assert isinstance(submit(workflow), Issued)
    assert time.monotonic() - started >= 1.0
    assert len(keygen.calls("licenses.create")) == 2
    only_user_and_license(keygen)


def test_f7_long_retry_after_is_finished_in_the_background(workflow, keygen, journal, clock):
    keygen.emulator.inject("licenses.create", retry_after=60)
    outcome = submit(workflow)
    assert isinstance(outcome, Processing)
    row = only_row(journal)
    assert row.state == State.USER_CREATED
    assert row.next_attempt_at >= journal.clock() + 59
    reconciler = Reconciler(journal, workflow)
    assert reconciler.run_once().worked == {}  # not due yet: Keygen asked for 60 s
    clock.offset += 61
    assert reconciler.run_once().worked == {row.id: State.ISSUED}
    only_user_and_license(keygen)
    assert len(keygen.calls("licenses.create")) == 2  # one refused, one after the wait


def test_f8_keygen_down_fails_fast_and_the_breaker_stops_calling(workflow, keygen, journal, clock):
    for route in ("users.create", "users.show"):
        keygen.emulator.inject(route, status=503, times=None)
    while workflow.keygen.breaker.state == "closed":
        with pytest.raises(TryLater):
            submit(workflow)
    calls = len(keygen.calls())
    started = time.monotonic()
    with pytest.raises(TryLater):
        submit(workflow)
    assert time.monotonic() - started < 0.5
    assert len(keygen.calls()) == calls  # open: Keygen was not called at all
    keygen.emulator.clear_faults()
    clock.offset += 31  # past the cool-down: one probe is let through, and it succeeds
    assert isinstance(submit(workflow, Applicant("lois@example.com", PASSWORD, "L", "L")), Issued)
    assert workflow.keygen.breaker.state == "closed"


def test_license_never_answering_is_left_for_the_reconciler(workflow, keygen, journal, clock):
    keygen.emulator.inject("licenses.create", status=503, times=None)
    assert isinstance(submit(workflow), Processing)
    row = only_row(journal)
    assert row.state == State.USER_CREATED
    assert len(keygen.users()) == 1
    keygen.emulator.clear_faults()
    clock.offset += 700
    Reconciler(journal, workflow).run_once()
    only_user_and_license(keygen)
    assert only_row(journal).state == State.ISSUED


def test_keygen_down_for_users_creates_nothing(workflow, keygen, journal):
    keygen.emulator.inject("users.create", status=503, times=None)
    with pytest.raises(TryLater):
        submit(workflow)
    assert keygen.users() == []


def test_nothing_answering_at_all_is_try_later(keygen, journal, clock):
    client = KeygenClient("http://127.0.0.1:9", keygen.account, keygen.token, connect_timeout=0.5)
    admission = Admission(None, slots=6, clock=clock)
    workflow = SignupWorkflow(client, journal, keygen.policy, admission=admission, deadline=2.0)
    with pytest.raises(TryLater):
        submit(workflow)
    assert only_row(journal).state == State.NEW


# -- Resubmissions ----------------------------------------------------------------------------


def test_resubmitting_after_success_shows_already_issued_and_calls_nothing(
    workflow, keygen, journal
):
    nonce = new_nonce()
    assert isinstance(submit(workflow, nonce=nonce), Issued)
    calls = len(keygen.calls())
    assert submit(workflow, nonce=nonce) == AlreadyIssued("clark@example.com")
    assert len(keygen.calls()) == calls
    only_user_and_license(keygen)


def test_f15_concurrent_submissions_of_one_form_create_once(keygen, journal, pauses, clock):
    # A read timeout well above the delay: this test counts calls, and a timeout under CPU load
    # would (rightly) resend a create.
    workflow = make_workflow(keygen, journal, clock, read_timeout=3.0)
    keygen.emulator.inject("users.create", delay=0.6)  # busy a while, within the read timeout
    nonce = new_nonce()
    outcomes: list = []
    together = threading.Barrier(5)

    def double_click():
        together.wait(timeout=10)  # all five arrive while the first is in flight
        outcomes.append(submit(workflow, nonce=nonce))

    threads = [threading.Thread(target=double_click) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    only_user_and_license(keygen)
    assert len(keygen.calls("users.create")) == 1
    assert len(keygen.calls("licenses.create")) == 1
    # Every duplicate waited for the first and got the key too: a browser shows only the
    # response to the last click, so that one must not say "already issued".
    assert len(outcomes) == 5
    assert {type(outcome) for outcome in outcomes} == {Issued}, outcomes
    assert len({outcome.license_key for outcome in outcomes}) == 1


def test_a_key_never_shown_is_shown_once_on_resubmission(workflow, keygen, journal, clock):
    """The process died after issuing (F14): the reconciler finished, the person reloads."""
    keygen.emulator.inject("licenses.create", status=503, times=None)
    nonce = new_nonce()
    assert isinstance(submit(workflow, nonce=nonce), Processing)
    keygen.emulator.clear_faults()
    clock.offset += 700
    Reconciler(journal, workflow).run_once()
    assert only_row(journal).key_shown is False
    outcome = submit(workflow, nonce=nonce)
    assert isinstance(outcome, Issued)
    assert outcome.license_key == keygen.licenses()[0]["key"]
    assert submit(workflow, nonce=nonce) == AlreadyIssued("clark@example.com")
    only_user_and_license(keygen)


def test_the_bulkhead_refuses_new_signups_at_once_but_lets_duplicates_wait(
    keygen, journal, pauses, clock
):
    from outcomes import TooBusy

    workflow = make_workflow(keygen, journal, clock, concurrency=1)
    keygen.emulator.inject("users.create", delay=1.0)  # the only slot is stuck on Keygen
    nonce = new_nonce()
    first: list = []
    thread = threading.Thread(target=lambda: first.append(submit(workflow, nonce=nonce)))
    thread.start()
    wait_for_call(keygen, "users.create")
    with pytest.raises(TooBusy):
        submit(workflow, Applicant("lois@example.com", PASSWORD, "Lois", "Lane"))
    # Refused while the only slot is still stuck, not queued behind it (by the clock: at most
    # Bulkhead.FLOWING after the slot was taken, which a loaded machine stretches).
    assert thread.is_alive() and first == []
    assert [row.email for row in journal.all()] == ["clark@example.com"]  # nothing written
    duplicate = submit(workflow, nonce=nonce)  # the same form again: waits for the first
    thread.join(timeout=10)
    assert isinstance(duplicate, Issued)
    assert isinstance(first[0], Issued)
    only_user_and_license(keygen)


def test_while_signups_flow_a_burst_waits_for_a_slot_instead_of_being_refused(
    keygen, journal, pauses, clock
):
    """More signups than slots while Keygen answers quickly: the newcomer waits a moment for
    the slot the one before it is about to give back, and is not told "busy"."""
    workflow = make_workflow(keygen, journal, clock, concurrency=1)
    assert isinstance(submit(workflow), Issued)  # a slot was just given back: signups flow
    keygen.emulator.inject("users.create", delay=0.1, times=1)
    results: list = []
    lois = Applicant("lois@example.com", PASSWORD, "Lois", "Lane")
    first = threading.Thread(target=lambda: results.append(submit(workflow, lois)))
    first.start()
    wait_for_call(keygen, "users.create", count=2)  # Lois holds the only slot, briefly
    jimmy = submit(workflow, Applicant("jimmy@example.com", PASSWORD, "Jimmy", "Olsen"))
    first.join(timeout=10)
    assert isinstance(jimmy, Issued)
    assert [type(r) for r in results] == [Issued]
    assert len(keygen.licenses()) == 3


def test_a_signup_whose_turn_passes_while_every_slot_calls_keygen_waits_and_takes_a_new_turn(
    keygen, journal, pauses, clock
):
    """Under load the budget hands out turns a few milliseconds away. A signup that finds the
    slots taken by signups calling Keygen (its speed, not its quota, holds them) waits for one
    as a signup without a turn does, instead of being told "busy" once its turn has passed,
    and then takes a new turn rather than calling Keygen late."""
    from budget import KeygenBudget

    budget = KeygenBudget(100, clock=lambda: 1000.0)  # each signup's turn 20 ms after the last
    workflow = make_workflow(keygen, journal, clock, concurrency=1, budget=budget)
    assert isinstance(submit(workflow), Issued)  # turn 0; a slot was just given back
    keygen.emulator.inject("users.create", delay=0.2, times=1)
    results: list = []
    lois = Applicant("lois@example.com", PASSWORD, "Lois", "Lane")
    first = threading.Thread(target=lambda: results.append(submit(workflow, lois)))
    first.start()
    wait_for_call(keygen, "users.create", count=2)  # Lois holds the only slot, for 0.2 s
    jimmy = submit(workflow, Applicant("jimmy@example.com", PASSWORD, "Jimmy", "Olsen"))
    first.join(timeout=10)
    assert isinstance(jimmy, Issued)
    assert [type(r) for r in results] == [Issued]
    assert len(keygen.licenses()) == 3
    # Lois waited for her turn (20 ms); Jimmy's (40 ms) passed while he waited for the slot,
    # and he waited for a new one (60 ms), which no remainder of the old one could reach.
    # (The shorter pauses are each one's next reserved call, one interval after the one before.)
    lois_wait, jimmy_wait = [pause for pause in pauses if pause > budget.interval]
    assert 0 < lois_wait <= 0.02
    assert 0.04 < jimmy_wait <= 0.06


def test_a_signup_costs_three_journal_statements(workflow, keygen, journal):
    """Written before each step that matters, and nothing more: claim, user, issued+shown."""
    from sqlalchemy import event

    statements: list[str] = []

    def count(conn, cursor, statement, *args):
        if not statement.lstrip().upper().startswith(("PRAGMA", "BEGIN", "COMMIT", "SELECT 1")):
            statements.append(statement.split()[0].upper())

    event.listen(journal.engine, "before_cursor_execute", count)
    try:
        assert isinstance(submit(workflow), Issued)
    finally:
        event.remove(journal.engine, "before_cursor_execute", count)
    assert statements == ["INSERT", "UPDATE", "UPDATE"]
    row = only_row(journal)
    assert (row.state, row.key_shown, row.lease_owner) == (State.ISSUED, True, None)


def test_waiting_for_a_copy_takes_no_slot(keygen, journal, pauses, clock):
    workflow = make_workflow(keygen, journal, clock, concurrency=2)
    keygen.emulator.inject("users.create", delay=0.8)  # A holds one slot on Keygen
    nonce = new_nonce()
    results: list = []
    first = threading.Thread(target=lambda: results.append(submit(workflow, nonce=nonce)))
    first.start()
    wait_for_call(keygen, "users.create")
    copy = threading.Thread(target=lambda: results.append(submit(workflow, nonce=nonce)))
    copy.start()  # waits for A, without a slot
    time.sleep(0.2)
    other = submit(workflow, Applicant("lois@example.com", PASSWORD, "Lois", "Lane"))
    assert isinstance(other, Issued)  # the second slot was free for a new signup
    first.join(timeout=10)
    copy.join(timeout=10)
    assert [type(r) for r in results] == [Issued, Issued]
