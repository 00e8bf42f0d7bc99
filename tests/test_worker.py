"""The reconciler: after a crash or an outage it finishes what it can, undoes what it must,
reports what is stuck, and never works a row another worker holds."""

import pytest

from journal import State
from keygen_api import KeygenClient
from outcomes import Processing
from services import services
from support.leaks import PASSWORD
from support.workflow import make_workflow, only_row, only_user_and_license, submit
from worker import Reconciler


def crashed_before_the_user(journal, keygen, email="clark@example.com"):
    """A row left in NEW by a process that died around the user create."""
    row = journal.claim("crash-" + "x" * 20, email, owner="dead-process", lease=0).signup
    return row


def test_a_user_of_ours_is_found_and_given_a_license(workflow, keygen, journal):
    row = crashed_before_the_user(journal, keygen)
    KeygenClient(keygen.url, keygen.account, keygen.token).create_user(
        email="clark@example.com",
        password=PASSWORD,
        first_name="Clark",
        last_name="Kent",
        metadata={"portalSignupId": row.id},
    )
    report = Reconciler(journal, workflow).run_once()
    assert report.worked == {row.id: State.ISSUED}
    only_user_and_license(keygen)
    assert only_row(journal).key_shown is False  # still to be shown to the person, once


def test_no_user_means_abandoned_and_nothing_created(workflow, keygen, journal):
    row = crashed_before_the_user(journal, keygen)
    assert Reconciler(journal, workflow).run_once().worked == {row.id: State.ABANDONED}
    assert (keygen.users(), keygen.licenses()) == ([], [])


def test_someone_elses_user_is_left_alone(workflow, keygen, journal):
    row = crashed_before_the_user(journal, keygen)
    KeygenClient(keygen.url, keygen.account, keygen.token).create_user(
        email="clark@example.com", password=PASSWORD, first_name="Real", last_name="Clark"
    )
    assert Reconciler(journal, workflow).run_once().worked == {row.id: State.REJECTED}
    assert keygen.licenses() == []
    assert len(keygen.users()) == 1


def test_a_permanently_refused_license_compensates(workflow, keygen, journal, clock):
    keygen.emulator.inject("licenses.create", status=503, times=None)
    assert isinstance(submit(workflow), Processing)
    keygen.emulator.clear_faults()
    keygen.emulator.delete_policy(keygen.policy)
    try:
        clock.offset += 700
        report = Reconciler(journal, workflow).run_once()
        assert list(report.worked.values()) == [State.COMPENSATED]
        assert (keygen.users(), keygen.licenses()) == ([], [])
    finally:
        keygen.emulator.add_policy(keygen.account, keygen.product, id=keygen.policy)


def test_giving_up_after_the_limit_deletes_the_user(keygen, journal, pauses, clock):
    workflow = make_workflow(keygen, journal, clock, give_up_after=3600)
    keygen.emulator.inject("licenses.create", status=503, times=None)
    assert isinstance(submit(workflow), Processing)
    clock.offset += 3700
    report = Reconciler(journal, workflow).run_once()
    assert list(report.worked.values()) == [State.COMPENSATED]
    assert keygen.users() == []


def test_a_row_held_by_another_worker_is_skipped(workflow, keygen, journal):
    journal.claim("held-" + "y" * 20, "clark@example.com", owner="alive", lease=600)
    report = Reconciler(journal, workflow).run_once()
    assert report.worked == {}
    assert keygen.calls() == []


def test_two_reconcilers_work_each_row_once(workflow, keygen, journal):
    rows = [
        journal.claim(f"crash-{n}-" + "z" * 20, f"u{n}@example.com", owner="dead", lease=0).signup
        for n in range(4)
    ]
    first, second = Reconciler(journal, workflow), Reconciler(journal, workflow)
    done = {**first.run_once().worked, **second.run_once().worked}
    assert sorted(done) == sorted(row.id for row in rows)
    assert len(keygen.calls("users.show")) == 4


def test_stale_rows_are_reported(workflow, keygen, journal, clock, caplog):
    keygen.emulator.inject("licenses.create", status=503, times=None)
    submit(workflow)
    clock.offset += 1000
    report = Reconciler(journal, workflow, stale_after=900).run_once()
    [stale] = report.stale
    assert stale.state == State.USER_CREATED
    assert any(line.startswith(f"STALE {stale.id}: USER_CREATED") for line in report.lines())
    assert any("is still USER_CREATED" in r.getMessage() for r in caplog.records)


def test_dry_run_calls_nothing(workflow, keygen, journal):
    row = crashed_before_the_user(journal, keygen)
    report = Reconciler(journal, workflow).run_once(dry_run=True)
    assert report.worked[row.id].startswith("NEW (would look the user up")
    assert keygen.calls() == []
    assert only_row(journal).state == State.NEW


@pytest.fixture
def cli_app(keygen, tmp_path):
    from app import create_app
    from support.portal import make_settings

    return create_app(make_settings(keygen, database_url=f"sqlite:///{tmp_path}/cli.db"))


def test_flask_reconcile_command(cli_app, keygen):
    journal = services(cli_app).signup.journal
    row = journal.claim("cli-" + "w" * 20, "lois@example.com", owner="dead", lease=0).signup
    runner = cli_app.test_cli_runner()
    dry = runner.invoke(args=["reconcile", "--dry-run"])
    assert dry.exit_code == 0
    assert f"{row.id}: NEW (would look the user up" in dry.output
    assert "1 signup(s) due" in dry.output
    assert keygen.calls() == []
    real = runner.invoke(args=["reconcile"])
    assert real.exit_code == 0
    assert f"{row.id}: ABANDONED" in real.output
    assert journal.get(row.id).state == State.ABANDONED


@pytest.mark.slow
def test_the_background_reconciler_runs_by_itself(workflow, keygen, journal):
    row = crashed_before_the_user(journal, keygen)
    reconciler = Reconciler(journal, workflow, interval=0.2)
    reconciler.start()
    try:
        import time

        deadline = time.monotonic() + 10
        while journal.get(row.id).state == State.NEW and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        reconciler.stop()
    assert journal.get(row.id).state == State.ABANDONED


def test_personal_data_is_forgotten_after_data_retention_days(portal_with, keygen, clock):
    """The reconciler scrubs finished signups older than DATA_RETENTION_DAYS (the ids stay, to
    match Keygen's records) and deletes the emails sent by then; what is unfinished keeps what
    it needs."""
    from sqlalchemy import select

    from journal import signups
    from outbox import outbox

    portal = portal_with(key_delivery="email", data_retention_days=30)
    portal.sign_up(email="old@example.com", first_name="Oldie", last_name="Longago")
    held = portal.journal.claim("held-" + "n" * 20, "held@example.com", owner="w", lease=10**9)
    portal.deliver()
    clock.offset += 20 * 86400
    portal.sign_up(email="recent@example.com")
    portal.deliver()
    clock.offset += 11 * 86400  # the first two are 31 days old, the last one 11
    services(portal.app).reconciler.run_once()
    rows = {row.id: row for row in portal.journal.all()}
    assert rows[held.signup.id].email == "held@example.com"  # unfinished: still needed
    [old] = [row for row in rows.values() if row.state == State.ISSUED and not row.email]
    assert (old.first_name, old.last_name, old.last_error) == (None, None, None)
    assert old.user_id and old.license_id  # to match Keygen's records
    assert "recent@example.com" in {row.email for row in rows.values()}
    assert [mail.email for mail in portal.journal.mail()] == ["recent@example.com"]
    with portal.journal.engine.connect() as db:
        stored = repr([*db.execute(select(signups)), *db.execute(select(outbox))])
    assert "old@example.com" not in stored and "Oldie" not in stored and "Longago" not in stored
