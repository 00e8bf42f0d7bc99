"""The signup journal: one row per submission, written before Keygen is called.

A row holds what is needed to finish or undo a signup after any failure: the form's nonce, the
normalised email, the license id chosen up front, the Keygen user id once known, and the state.
Never the password, never the license key. Rows are leased, so that one worker at a time (a
request, or a reconciler in any process or instance) drives a row forward.

The outbox lives here too, in the same database, so that a signup's state and the email it owes
are written in one transaction. An outbox row holds what is needed to compose the message again
(the kind, the recipient, the license, user or signup it is about), never a key or a link's token:
delivery.py fetches the key from Keygen and signs the link when it sends.

SQLite (WAL) by default; PostgreSQL when DATABASE_URL points at one. One code path serves both.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    create_engine,
    event,
    func,
    insert,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError


class State(StrEnum):
    NEW = "NEW"  # the user create may or may not have happened yet
    USER_CREATED = "USER_CREATED"  # the user exists; the license does not yet (as far as we know)
    ISSUED = "ISSUED"  # the license exists in Keygen
    REJECTED = "REJECTED"  # Keygen refused the submission; nothing exists; may be resubmitted
    ABANDONED = "ABANDONED"  # no user was created and the password is gone; may be resubmitted
    COMPENSATED = "COMPENSATED"  # no license could be issued, so the user was deleted again
    # REQUIRE_EMAIL_VERIFICATION: the user exists and the license waits for the link's click.
    PENDING_VERIFICATION = "PENDING_VERIFY"
    EXPIRED = "EXPIRED"  # never verified: the user was deleted again, freeing the address


UNFINISHED = (State.NEW, State.USER_CREATED)
RESUBMITTABLE = (State.REJECTED, State.ABANDONED, State.COMPENSATED, State.EXPIRED)


class MailState(StrEnum):
    PENDING = "PENDING"  # to be sent (again) at next_attempt_at
    SENT = "SENT"  # the server took it (250)
    FAILED = "FAILED"  # refused for good (5xx) or given up; logged for the operator
    DROPPED = "DROPPED"  # nothing to send after all (a recovery request for an unknown address)


metadata = MetaData()
signups = Table(
    "signups",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("nonce", String(64), nullable=False, unique=True),
    Column("email", String(255), nullable=False, index=True),
    Column("license_id", String(36), nullable=False, unique=True),
    Column("user_id", String(36)),
    Column("state", String(16), nullable=False, index=True),
    Column("key_shown", Boolean, nullable=False, default=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", Float, nullable=False),
    Column("lease_owner", String(64)),
    Column("lease_until", Float),
    Column("last_error", String(500)),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    # Added with email delivery: for the greeting, and whether the license waits for a click.
    Column("first_name", String(255)),
    Column("last_name", String(255)),
    Column("verify", Boolean, nullable=False, default=False, server_default=text("false")),
    # Added with translated emails: the language of the page, for the emails this signup owes.
    Column("locale", String(16)),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("kind", String(16), nullable=False),
    # One message per purpose ("license:<signup id>"), however often it is queued.
    Column("dedupe", String(80), unique=True),
    Column("email", String(255), nullable=False),
    Column("first_name", String(255)),
    Column("last_name", String(255)),
    Column("ref", String(255)),  # the signup, license or user the message is about
    Column("state", String(16), nullable=False, index=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", Float, nullable=False),
    Column("lease_owner", String(64)),
    Column("lease_until", Float),
    Column("last_error", String(500)),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("locale", String(16)),  # the language to write in (i18n.py); none: the default
)


# The statements of the signup path, built once with bound parameters and executed with a dict
# of values. `_id`, `_owner`, `_now` fill the conditions; the other keys are the SET.
_ID, _OWNER, _NOW = bindparam("_id"), bindparam("_owner"), bindparam("_now")
_NEW_SIGNUP = insert(signups)
_ROW = update(signups).where(signups.c.id == _ID)
_HELD_ROW = _ROW.where(signups.c.lease_owner == _OWNER)  # ours: we hold the lease
# Nobody holds the row, their lease ran out, or it is already ours.
_FREE_ROW = _ROW.where(
    or_(
        signups.c.lease_owner.is_(None),
        signups.c.lease_until < _NOW,
        signups.c.lease_owner == _OWNER,
    )
)
_VERIFYING_ROW = _FREE_ROW.where(signups.c.state == State.PENDING_VERIFICATION)
_UNSHOWN_ROW = _ROW.where(signups.c.key_shown.is_(False))
_BY_ID = select(signups).where(signups.c.id == _ID)
_BY_NONCE = select(signups).where(signups.c.nonce == bindparam("_nonce"))
# Queued twice (a request and the reconciler both finishing a signup): sent once.
_NEW_MAIL = {
    "postgresql": postgresql.insert(outbox).on_conflict_do_nothing(),
    "sqlite": sqlite.insert(outbox).on_conflict_do_nothing(),
}


@dataclass(frozen=True)
class Letter:
    """A message to queue: what it is about, and to whom."""

    kind: str  # license | verify | taken | recovery (delivery.py composes each)
    email: str
    ref: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    dedupe: str | None = None
    locale: str | None = None  # the language of the page the person used


@dataclass(frozen=True)
class Mail:
    id: str
    kind: str
    dedupe: str | None
    email: str
    first_name: str | None
    last_name: str | None
    ref: str | None
    state: MailState
    attempts: int
    next_attempt_at: float
    lease_owner: str | None
    lease_until: float | None
    last_error: str | None
    created_at: float
    updated_at: float
    locale: str | None = None


@dataclass(frozen=True)
class Signup:
    id: str
    nonce: str
    email: str
    license_id: str
    user_id: str | None
    state: State
    key_shown: bool
    attempts: int
    next_attempt_at: float
    lease_owner: str | None
    lease_until: float | None
    last_error: str | None
    created_at: float
    updated_at: float
    first_name: str | None = None
    last_name: str | None = None
    verify: bool = False
    locale: str | None = None

    @property
    def finished(self) -> bool:
        return self.state not in UNFINISHED


@dataclass(frozen=True)
class Claim:
    """The outcome of presenting a nonce: ``signup`` is leased to us only if ``leased``."""

    signup: Signup
    leased: bool


class Journal:
    def __init__(self, url: str, *, threads: int = 5, clock: Callable[[], float] = time.time):
        """``threads``: how many of the process's threads may use it at once (gunicorn's)."""
        self.clock = clock
        self.engine = _engine(url, threads)

    def create_schema(self) -> None:
        """Create the tables, or add what a newer version needs. Safe to run on every start,
        by every worker of every instance at once."""
        for attempt in range(5):
            try:
                with self.engine.begin() as db:
                    if db.dialect.name == "postgresql":  # one migrator at a time
                        db.execute(text("SELECT pg_advisory_xact_lock(7242017)"))
                    metadata.create_all(db)
                    for table in metadata.sorted_tables:
                        _add_missing_columns(db, table)
                return
            except DBAPIError:
                # SQLite has no advisory lock: another process created the table between our
                # check and our create. Look again.
                if attempt == 4:
                    raise
                time.sleep(0.1 * (attempt + 1))

    def claim(
        self,
        nonce: str,
        email: str,
        *,
        owner: str,
        lease: float,
        first_name: str | None = None,
        last_name: str | None = None,
        verify: bool = False,
        locale: str | None = None,
    ) -> Claim:
        """Record a submission (or find the one with this nonce) and try to lease it.

        A nonce whose earlier attempt ended without an account (rejected, abandoned,
        compensated) starts over with the new email; its ids are kept.
        """
        now = self.clock()
        row = {
            "id": str(uuid.uuid4()),
            "nonce": nonce,
            "email": email,
            "license_id": str(uuid.uuid4()),
            "state": State.NEW,
            "key_shown": False,
            "attempts": 0,
            "next_attempt_at": now,
            "lease_owner": owner,
            "lease_until": now + lease,
            "created_at": now,
            "updated_at": now,
            "first_name": first_name,
            "last_name": last_name,
            "verify": verify,
            "locale": locale,
        }
        try:
            with self.engine.begin() as db:
                db.execute(_NEW_SIGNUP, row)
            return Claim(Signup(**{**row, "user_id": None, "last_error": None}), leased=True)
        except IntegrityError:
            pass  # the nonce was seen before
        existing = self.by_nonce(nonce)
        if existing.state in RESUBMITTABLE:
            restarted = self._update(
                _FREE_ROW,
                {"_id": existing.id, "_owner": owner, "_now": now},
                email=email,
                first_name=first_name,
                last_name=last_name,
                verify=verify,
                locale=locale,
                state=State.NEW,
                user_id=None,
                attempts=0,
                last_error=None,
                next_attempt_at=now,
                lease_owner=owner,
                lease_until=now + lease,
            )
            return Claim(self.get(existing.id), leased=restarted)
        if existing.state in UNFINISHED:
            return Claim(existing, leased=self.lease(existing.id, owner=owner, lease=lease))
        return Claim(existing, leased=False)

    def lease(self, signup_id: str, *, owner: str, lease: float) -> bool:
        """Take the row if nobody holds it (or their lease ran out)."""
        now = self.clock()
        return self._update(
            _FREE_ROW,
            {"_id": signup_id, "_owner": owner, "_now": now},
            lease_owner=owner,
            lease_until=now + lease,
        )

    def release(self, signup_id: str, *, owner: str) -> None:
        self._update(
            _HELD_ROW, {"_id": signup_id, "_owner": owner}, lease_owner=None, lease_until=None
        )

    def record(
        self, signup_id: str, *, owner: str, mail: tuple[Letter, ...] = (), **changes
    ) -> bool:
        """Change a row we hold the lease on; False if we lost it (someone else took over).
        ``mail`` is queued in the same transaction, and only if the change was made."""
        return self._update(_HELD_ROW, {"_id": signup_id, "_owner": owner}, mail=mail, **changes)

    def start_verified(self, signup_id: str, *, owner: str, lease: float) -> bool:
        """The click on a verification link: true for exactly one caller, who then holds the
        row (now USER_CREATED) and issues the license."""
        now = self.clock()
        return self._update(
            _VERIFYING_ROW,
            {"_id": signup_id, "_owner": owner, "_now": now},
            state=State.USER_CREATED,
            next_attempt_at=now,
            lease_owner=owner,
            lease_until=now + lease,
        )

    def unverified_due(self) -> list[Signup]:
        """Verifications nobody completed in time (next_attempt_at is when their time is up),
        and that nobody holds."""
        now = self.clock()
        query = (
            select(signups)
            .where(signups.c.state == State.PENDING_VERIFICATION)
            .where(signups.c.next_attempt_at <= now)
            .where(or_(signups.c.lease_until.is_(None), signups.c.lease_until < now))
            .order_by(signups.c.created_at)
        )
        with self.engine.connect() as db:
            return [_signup(row) for row in db.execute(query)]

    # -- The outbox --

    def queue(self, *letters: Letter) -> None:
        with self.engine.begin() as db:
            self._queue(db, letters)

    def due_mail(self, *, limit: int = 50) -> list[Mail]:
        now = self.clock()
        query = (
            select(outbox)
            .where(outbox.c.state == MailState.PENDING)
            .where(outbox.c.next_attempt_at <= now)
            .where(or_(outbox.c.lease_until.is_(None), outbox.c.lease_until < now))
            .order_by(outbox.c.next_attempt_at)
            .limit(limit)
        )
        with self.engine.connect() as db:
            return [_mail(row) for row in db.execute(query)]

    def lease_mail(self, mail_id: str, *, owner: str, lease: float) -> Mail | None:
        """The row, now ours until the lease ends, if it is still due and nobody holds it."""
        now = self.clock()
        statement = (
            update(outbox)
            .where(outbox.c.id == mail_id)
            .where(outbox.c.state == MailState.PENDING)
            .where(or_(outbox.c.lease_until.is_(None), outbox.c.lease_until < now))
            .values(lease_owner=owner, lease_until=now + lease, updated_at=now)
        )
        with self.engine.begin() as db:
            if db.execute(statement).rowcount != 1:
                return None
            return _mail(db.execute(select(outbox).where(outbox.c.id == mail_id)).one())

    def settle_mail(self, mail_id: str, *, owner: str, **changes) -> bool:
        """Record how a send we hold the lease on went, and let go of the row."""
        changes.update(updated_at=self.clock(), lease_owner=None, lease_until=None)
        statement = (
            update(outbox)
            .where(outbox.c.id == mail_id)
            .where(outbox.c.lease_owner == owner)
            .values(**changes)
        )
        with self.engine.begin() as db:
            return db.execute(statement).rowcount == 1

    def mail(self) -> list[Mail]:
        with self.engine.connect() as db:
            query = select(outbox).order_by(outbox.c.created_at)
            return [_mail(row) for row in db.execute(query)]

    def mail_backlog(self) -> tuple[int, float | None]:
        """How many messages wait to be sent, and since when the oldest has waited."""
        query = select(func.count(), func.min(outbox.c.created_at)).where(
            outbox.c.state == MailState.PENDING
        )
        with self.engine.connect() as db:
            count, oldest = db.execute(query).one()
        return count, oldest

    def _queue(self, db, letters) -> None:
        now = self.clock()
        for letter in letters:
            row = {
                "id": str(uuid.uuid4()),
                "kind": letter.kind,
                "dedupe": letter.dedupe,
                "email": letter.email,
                "first_name": letter.first_name,
                "last_name": letter.last_name,
                "ref": letter.ref,
                "locale": letter.locale,
                "state": MailState.PENDING,
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
                "updated_at": now,
            }
            db.execute(_NEW_MAIL[db.dialect.name], row)

    def mark_key_shown(self, signup_id: str) -> bool:
        """True for exactly one caller: the one that may display the key."""
        return self._update(_UNSHOWN_ROW, {"_id": signup_id}, key_shown=True)

    def get(self, signup_id: str) -> Signup:
        return self._one(_BY_ID, {"_id": signup_id})

    def find(self, signup_id: str) -> Signup | None:
        return self._one(_BY_ID, {"_id": signup_id}, missing_ok=True)

    def by_nonce(self, nonce: str) -> Signup:
        return self._one(_BY_NONCE, {"_nonce": nonce})

    def find_nonce(self, nonce: str) -> Signup | None:
        """The submission with this nonce, if there is one."""
        return self._one(_BY_NONCE, {"_nonce": nonce}, missing_ok=True)

    def _one(self, query, params: dict, *, missing_ok: bool = False) -> Signup | None:
        """The one row that matches; None (or NoResultFound) when there is none."""
        with self.engine.connect() as db:
            result = db.execute(query, params)
            row = result.one_or_none() if missing_ok else result.one()
        return _signup(row) if row is not None else None

    def due(self, *, limit: int = 100) -> list[Signup]:
        """Unfinished rows whose next attempt is due and that nobody holds, oldest first."""
        now = self.clock()
        query = (
            select(signups)
            .where(signups.c.state.in_(UNFINISHED))
            .where(signups.c.next_attempt_at <= now)
            .where(or_(signups.c.lease_until.is_(None), signups.c.lease_until < now))
            .order_by(signups.c.created_at)
            .limit(limit)
        )
        with self.engine.connect() as db:
            return [_signup(row) for row in db.execute(query)]

    def unfinished_older_than(self, seconds: float) -> list[Signup]:
        query = (
            select(signups)
            .where(signups.c.state.in_(UNFINISHED))
            .where(signups.c.created_at < self.clock() - seconds)
            .order_by(signups.c.created_at)
        )
        with self.engine.connect() as db:
            return [_signup(row) for row in db.execute(query)]

    def oldest_unfinished(self) -> float | None:
        """When the oldest unfinished signup was created, if there is one."""
        query = select(func.min(signups.c.created_at)).where(signups.c.state.in_(UNFINISHED))
        with self.engine.connect() as db:
            return db.execute(query).scalar()

    def all(self) -> list[Signup]:
        with self.engine.connect() as db:
            return [_signup(r) for r in db.execute(select(signups).order_by(signups.c.created_at))]

    def ping(self) -> None:
        with self.engine.connect() as db:
            db.execute(text("SELECT 1"))

    def _update(self, statement, where: dict, *, mail: tuple[Letter, ...] = (), **changes):
        """One of the prepared UPDATEs above: `where` fills its conditions, `changes` its SET."""
        changes["updated_at"] = self.clock()
        with self.engine.begin() as db:
            if db.execute(statement, {**where, **changes}).rowcount != 1:
                return False
            self._queue(db, mail)
            return True


def _add_missing_columns(db, table: Table) -> None:
    """Additive migrations: a column a newer version added (none was ever removed)."""
    present = {c["name"] for c in inspect(db).get_columns(table.name)}
    for column in table.columns:
        if column.name in present:
            continue
        kind = column.type.compile(db.dialect)
        default = ""
        if column.server_default is not None:
            default = f" NOT NULL DEFAULT {column.server_default.arg.text}"
        db.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}{default}'))


def default_url(instance_path: str) -> str:
    """Without DATABASE_URL: SQLite in the instance folder (one machine only)."""
    return f"sqlite:///{Path(instance_path) / 'portal.db'}"


def _mail(row) -> Mail:
    values = dict(row._mapping)
    values["state"] = MailState(values["state"])
    return Mail(**values)


def _signup(row) -> Signup:
    values = dict(row._mapping)
    values["state"] = State(values["state"])
    return Signup(**values)


def _engine(url: str, threads: int) -> Engine:
    # A connection kept for every thread that may need one at once, and SQLAlchemy's usual ten
    # more for the background threads and bursts. With its default of five kept, a busy worker
    # closed and reopened connections all the time: each reopening paid for a PostgreSQL login
    # or SQLite's PRAGMAs, and started with an empty statement cache.
    pool = {"pool_size": threads, "max_overflow": 10}
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if str(path) not in ("", ":memory:"):
            path.parent.mkdir(parents=True, exist_ok=True)
        # Waiting for a lock beats failing a signup; WAL lets readers and a writer overlap.
        engine = create_engine(url, connect_args={"timeout": 30}, **pool)

        @event.listens_for(engine, "connect")
        def _pragmas(connection, _record):
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, pool_pre_ping=True, **pool)
