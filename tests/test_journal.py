"""The journal's guarantees, on SQLite and on a real PostgreSQL: one row per nonce, one holder
per row, the key shown to one caller, and a schema that updates itself."""

import threading

import pytest
from sqlalchemy import event, text

from journal import Journal, State


def claim(journal: Journal, nonce="n" * 32, owner="worker-1", email="a@example.com"):
    return journal.claim(nonce, email, owner=owner, lease=30)


def test_a_new_nonce_is_recorded_and_leased_to_the_caller(journal):
    result = claim(journal)
    assert result.leased
    row = result.signup
    assert (row.state, row.email, row.lease_owner, row.key_shown) == (
        State.NEW,
        "a@example.com",
        "worker-1",
        False,
    )
    assert row.license_id and row.id != row.license_id


def test_the_same_nonce_is_one_row_held_by_one_worker(journal):
    first = claim(journal)
    second = claim(journal, owner="worker-2")
    assert not second.leased
    assert second.signup.id == first.signup.id
    assert len(journal.all()) == 1


def test_many_threads_with_one_nonce_lease_it_once(journal):
    results = []
    barrier = threading.Barrier(8)

    def race(n):
        barrier.wait(timeout=10)
        results.append(claim(journal, owner=f"worker-{n}"))

    threads = [threading.Thread(target=race, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(results) == 8
    assert sum(result.leased for result in results) == 1
    assert len({result.signup.id for result in results}) == 1


def test_an_expired_lease_can_be_taken_over(journal):
    now = [1000.0]
    journal.clock = lambda: now[0]
    first = claim(journal)
    assert not journal.lease(first.signup.id, owner="reconciler", lease=30)
    now[0] += 31
    assert journal.lease(first.signup.id, owner="reconciler", lease=30)
    assert not journal.record(first.signup.id, owner="worker-1", state=State.ISSUED)
    assert journal.record(first.signup.id, owner="reconciler", state=State.ISSUED)


def test_a_finished_rejection_starts_over_with_the_new_email(journal):
    first = claim(journal)
    journal.record(first.signup.id, owner="worker-1", state=State.REJECTED, last_error="x")
    journal.release(first.signup.id, owner="worker-1")
    again = claim(journal, owner="worker-2", email="b@example.com")
    assert again.leased
    assert (again.signup.id, again.signup.license_id) == (first.signup.id, first.signup.license_id)
    assert (again.signup.state, again.signup.email, again.signup.last_error) == (
        State.NEW,
        "b@example.com",
        None,
    )


def test_an_issued_row_is_never_leased_again(journal):
    first = claim(journal)
    journal.record(first.signup.id, owner="worker-1", state=State.ISSUED)
    journal.release(first.signup.id, owner="worker-1")
    again = claim(journal, owner="worker-2")
    assert not again.leased
    assert again.signup.state == State.ISSUED


def test_a_row_finished_after_it_was_read_is_not_leased(journal):
    """A copy of a submission reads the row while its holder is working, the holder finishes
    it and lets it go, and only then does the copy try to lease it: it must not get it, or it
    would drive a finished signup again."""
    first = claim(journal)
    seen = journal.by_nonce(first.signup.nonce)
    assert seen.state == State.NEW
    journal.record(first.signup.id, owner="worker-1", state=State.ISSUED, lease_owner=None)
    assert not journal.lease(seen.id, owner="worker-2", lease=30)
    assert journal.get(seen.id).lease_owner is None


def test_the_key_is_shown_to_exactly_one_caller(journal):
    signup_id = claim(journal).signup.id
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(journal.mark_key_shown(signup_id)))
        for _ in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(results) == [False] * 5 + [True]


def test_due_rows_are_unfinished_unleased_and_scheduled(journal):
    now = [1000.0]
    journal.clock = lambda: now[0]
    held = claim(journal, nonce="a" * 32).signup
    later = claim(journal, nonce="b" * 32).signup
    journal.record(later.id, owner="worker-1", next_attempt_at=2000.0)
    journal.release(later.id, owner="worker-1")
    done = claim(journal, nonce="c" * 32).signup
    journal.record(done.id, owner="worker-1", state=State.ISSUED)
    journal.release(done.id, owner="worker-1")
    assert journal.due() == []
    now[0] = 1100.0  # the first lease ran out
    assert [row.id for row in journal.due()] == [held.id]
    now[0] = 2001.0
    assert [row.id for row in journal.due()] == [held.id, later.id]
    assert [row.id for row in journal.unfinished_older_than(500)] == [held.id, later.id]


def test_schema_creation_is_repeatable_and_adds_missing_columns(database_url):
    journal = Journal(database_url)
    journal.create_schema()
    with journal.engine.begin() as db:
        db.execute(text("ALTER TABLE signups DROP COLUMN key_shown"))
    journal.create_schema()
    journal.create_schema()
    assert claim(journal).signup.key_shown is False


def test_the_sqlite_journal_uses_wal(tmp_path):
    journal = Journal(f"sqlite:///{tmp_path}/sub/dir/portal.db")
    journal.create_schema()
    with journal.engine.connect() as db:
        assert db.execute(text("PRAGMA journal_mode")).scalar() == "wal"


UNSUPPORTED = "must start with sqlite:/// or postgresql://"
IN_MEMORY = "must name a SQLite file, not an in-memory database"  # one database a connection


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("mysql://x", UNSUPPORTED),
        ("sqlite://relative.db", UNSUPPORTED),
        ("sqlite:///", IN_MEMORY),
        ("sqlite:///:memory:", IN_MEMORY),
    ],
)
def test_only_supported_databases_are_configurable(url, problem):
    from config import ConfigError, load_settings

    env = {
        "KEYGEN_ACCOUNT_ID": "acme",
        "KEYGEN_PRODUCT_TOKEN": "prod-" + "a" * 64 + "v3",
        "KEYGEN_POLICY_ID": "6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f",
        "SECRET_KEY": "s" * 40,
        "DATABASE_URL": url,
    }
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    assert caught.value.problems == [f"DATABASE_URL {problem}"]
    assert url not in str(caught.value)


def test_a_journal_keeps_a_connection_for_each_of_its_threads(database_url):
    """Busy threads do not close and reopen connections (a PostgreSQL login, SQLite's PRAGMAs
    and an empty statement cache each time): however often they all write at once, the journal
    opens one connection per thread, no more."""
    threads = 8
    journal = Journal(database_url, threads=threads)
    journal.create_schema()
    opened = []
    event.listen(journal.engine, "connect", lambda *_: opened.append(1))
    barrier = threading.Barrier(threads)

    def write(n):
        for round_ in range(5):
            with journal.engine.begin() as db:
                db.execute(text("SELECT 1"))
                barrier.wait(timeout=10)  # every thread holds a connection at once,
            barrier.wait(timeout=10)  # then none does
            claim(journal, nonce=f"{n:02d}{round_:02d}".ljust(32, "x"), email=f"{n}@example.com")

    workers = [threading.Thread(target=write, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert len(opened) <= threads, len(opened)
    assert len(journal.all()) == threads * 5
    journal.engine.dispose()


def test_every_worker_may_create_the_schema_at_once(database_url):
    journals = [Journal(database_url) for _ in range(6)]
    barrier = threading.Barrier(len(journals))
    errors = []

    def start(journal):
        barrier.wait(timeout=10)
        try:
            journal.create_schema()
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=start, args=(j,)) for j in journals]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert claim(journals[0]).leased
