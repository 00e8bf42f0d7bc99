"""The outbox in the journal's database, on SQLite and on a real PostgreSQL: queued once per
purpose, queued only with the state change it belongs to, leased to one sender at a time, and
added to a database an older version created."""

from __future__ import annotations

from sqlalchemy import create_engine, inspect, text

from journal import Journal, State
from outbox import Letter, MailState


def test_a_letter_is_queued_once_per_purpose(journal):
    letter = Letter("license", "zoe@example.com", ref="lic-1", dedupe="license:lic-1")
    journal.queue(letter)
    journal.queue(letter)  # the request and the reconciler both finished the signup
    journal.queue(Letter("recovery", "zoe@example.com"))
    journal.queue(Letter("recovery", "zoe@example.com"))  # no dedupe key: each request counts
    assert sorted(m.kind for m in journal.mail()) == ["license", "recovery", "recovery"]
    assert journal.mail_backlog()[0] == 3


def test_mail_is_queued_only_with_the_state_change_it_belongs_to(journal):
    claim = journal.claim("n" * 20, "zoe@example.com", owner="me", lease=60)
    letter = Letter("license", "zoe@example.com", ref="lic", dedupe="license:lic")
    assert not journal.record(claim.signup.id, owner="not-me", state=State.ISSUED, mail=(letter,))
    assert journal.mail() == []
    assert journal.record(claim.signup.id, owner="me", state=State.ISSUED, mail=(letter,))
    assert [m.kind for m in journal.mail()] == ["license"]


def test_one_sender_at_a_time_holds_a_message(journal):
    journal.queue(Letter("taken", "zoe@example.com", dedupe="taken:x"))
    [due] = journal.due_mail()
    first = journal.lease_mail(due.id, owner="a", lease=60)
    assert first is not None and first.lease_owner == "a"
    assert journal.lease_mail(due.id, owner="b", lease=60) is None
    assert journal.due_mail() == []  # held: not due for anyone else
    assert not journal.settle_mail(due.id, owner="b", state=MailState.SENT)
    assert journal.settle_mail(due.id, owner="a", state=MailState.SENT)
    assert journal.due_mail() == [] and journal.mail_backlog() == (0, None)


def test_an_expired_lease_lets_another_sender_take_over(journal):
    journal.queue(Letter("taken", "zoe@example.com"))
    [due] = journal.due_mail()
    assert journal.lease_mail(due.id, owner="crashed", lease=-1) is not None
    assert journal.lease_mail(due.id, owner="b", lease=60) is not None  # at least once


def test_a_click_is_taken_by_exactly_one_caller(journal):
    letter = Letter("verify", "zoe@example.com", ref="s-1", dedupe="verify:s-1")
    mail = (letter,)
    common = dict(signup_id="s-1", email="zoe@example.com", expires_at=10**12, mail=mail)
    assert journal.await_address("v" * 64, **common)
    assert not journal.await_address("v" * 64, **{**common, "signup_id": "s-2"})  # sent again
    assert [m.ref for m in journal.mail()] == ["s-1"]  # and queued once, with its row
    [row] = journal.all()
    assert (row.state, row.user_id, row.verify) == (State.PENDING_VERIFICATION, None, False)
    assert journal.start_verified("s-1", owner="a", lease=60)
    assert not journal.start_verified("s-1", owner="b", lease=60)
    assert journal.get("s-1").state == State.NEW


def test_a_click_never_starts_a_row_whose_user_was_made_before_it(journal):
    """Rows of the release that created the user on the form (verify): never licensed."""
    claim = journal.claim("w" * 20, "zoe@example.com", owner="me", lease=60)
    journal.record(
        claim.signup.id, owner="me", state=State.PENDING_VERIFICATION, user_id="u", verify=True
    )
    journal.release(claim.signup.id, owner="me")
    assert not journal.start_verified(claim.signup.id, owner="a", lease=60)


def test_the_outbox_and_new_columns_are_added_to_an_older_database(tmp_path):
    url = f"sqlite:///{tmp_path}/old.db"
    engine = create_engine(url)
    with engine.begin() as db:  # the signups table as the previous release created it
        db.execute(
            text(
                "CREATE TABLE signups (id VARCHAR(36) PRIMARY KEY, nonce VARCHAR(64) NOT NULL "
                "UNIQUE, email VARCHAR(255) NOT NULL, license_id VARCHAR(36) NOT NULL UNIQUE, "
                "user_id VARCHAR(36), state VARCHAR(16) NOT NULL, key_shown BOOLEAN NOT NULL, "
                "attempts INTEGER NOT NULL, next_attempt_at FLOAT NOT NULL, "
                "lease_owner VARCHAR(64), lease_until FLOAT, last_error VARCHAR(500), "
                "created_at FLOAT NOT NULL, updated_at FLOAT NOT NULL)"
            )
        )
        db.execute(
            text(
                "INSERT INTO signups VALUES ('s1', 'nonce-of-the-old-row', 'a@b.co', 'l1', "
                "NULL, 'NEW', 0, 0, 0, NULL, NULL, NULL, 0, 0)"
            )
        )
    journal = Journal(url)
    journal.create_schema()
    journal.create_schema()  # every start runs it
    columns = {c["name"] for c in inspect(journal.engine).get_columns("signups")}
    assert {"first_name", "last_name", "verify", "consent", "background"} <= columns
    assert "outbox" in inspect(journal.engine).get_table_names()
    old = journal.get("s1")
    assert (old.verify, old.first_name, old.background, old.consent) == (False, None, False, None)
