"""The signup journal: one row per submission, written before Keygen is called.

A row holds what is needed to finish or undo a signup after any failure: the form's nonce bound
to the browser session that sent it (forms.bound_nonce), the normalised email, the license id
chosen up front, the Keygen user id once known, and the state. Never the password, never the
license key. Rows are leased, so that one worker at a time (a request, or a reconciler in any
process or instance) drives a row forward.

The outbox (outbox.py) shares its database (database.py), so that a signup's state and the
email it owes are written in one transaction.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from sqlalchemy import (
    Boolean,
    Column,
    String,
    Table,
    Text,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError

from database import create_schema, metadata, open_engine, work_columns
from outbox import Letter, MailState, Outbox, outbox
from person_holds import PersonHolds, person_holds


class State(StrEnum):
    NEW = "NEW"  # the user create may or may not have happened yet
    USER_CREATED = "USER_CREATED"  # the user exists; the license does not yet (as far as we know)
    ISSUED = "ISSUED"  # the license exists in Keygen
    REJECTED = "REJECTED"  # Keygen refused the submission; nothing exists; may be resubmitted
    ABANDONED = "ABANDONED"  # no user was created and the password is gone; may be resubmitted
    COMPENSATED = "COMPENSATED"  # no license could be issued, so the user was deleted again
    # REQUIRE_EMAIL_VERIFICATION: nothing exists in Keygen; the link's page asks for the password.
    PENDING_VERIFICATION = "PENDING_VERIFY"
    EXPIRED = "EXPIRED"  # never verified (a user an earlier release had created is deleted)
    # Keygen refused for good to delete the user of a signup that got no license (the user
    # holds another product's license, or the token may not delete): kept for an operator.
    KEPT = "KEPT"


UNFINISHED = (State.NEW, State.USER_CREATED)
RESUBMITTABLE = (State.REJECTED, State.ABANDONED, State.COMPENSATED, State.EXPIRED, State.KEPT)


signups = Table(
    "signups",
    metadata,
    Column("id", String(36), primary_key=True),
    # forms.bound_nonce(): the form's nonce, bound to the browser session that sent it. Rows of
    # releases before that hold the bare nonce, which no submission presents any more.
    Column("nonce", String(64), nullable=False, unique=True),
    Column("email", String(255), nullable=False, index=True),
    Column("license_id", String(36), nullable=False, unique=True),
    Column("user_id", String(36)),
    Column("state", String(16), nullable=False, index=True),
    Column("key_shown", Boolean, nullable=False, default=False),
    *work_columns(),
    # Added with email delivery: for the greeting.
    Column("first_name", String(255)),
    Column("last_name", String(255)),
    # True only on rows of releases that created the Keygen user before its address was
    # confirmed: such a user (with a password the submitter chose) never gets a license; the
    # reconciler deletes it. Email-first rows (PENDING_VERIFICATION, no user) keep it false.
    Column("verify", Boolean, nullable=False, default=False, server_default=text("false")),
    # Added with translated emails: the language of the page, for the emails this signup owes.
    Column("locale", String(16)),
    # Added for keys Keygen shows only once (sealing.py): sealed until shown, then wiped.
    Column("sealed_key", Text),
    # Added with email-first verification: the consent given on the form (JSON), for the user
    # created after the click.
    Column("consent", String(255)),
    # Added with background signups: the person was told to wait (for an email, or to reload),
    # so a signup that ends without an account owes them an email saying so.
    Column("background", Boolean, nullable=False, default=False, server_default=text("false")),
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
# The state is part of each condition: between reading a row and leasing it, its holder may
# have finished it and let it go.
_RESUBMITTABLE_ROW = _FREE_ROW.where(signups.c.state.in_(RESUBMITTABLE))
# A click on a verification link may start (or, after a failure, start over) a row that waits
# for its address, or one whose click ended without an account; never a row whose user an
# earlier release created before the click (verify).
_VERIFYING_ROW = _FREE_ROW.where(signups.c.verify.is_(False)).where(
    or_(
        (signups.c.state == State.PENDING_VERIFICATION) & signups.c.user_id.is_(None),
        signups.c.state.in_((State.NEW, State.ABANDONED, State.COMPENSATED)),
    )
)
_LEGACY_PENDING_ROW = _ROW.where(signups.c.verify.is_(True)).where(
    signups.c.state == State.PENDING_VERIFICATION
)
_AWAITING_ROW = _ROW.where(signups.c.state == State.PENDING_VERIFICATION).where(
    signups.c.next_attempt_at < bindparam("until")
)
_UNSHOWN_ROW = _ROW.where(signups.c.key_shown.is_(False))
_BY_ID = select(signups).where(signups.c.id == _ID)
_BY_NONCE = select(signups).where(signups.c.nonce == bindparam("_nonce"))


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
    sealed_key: str | None = field(default=None, repr=False)
    consent: str | None = None
    background: bool = False

    @property
    def finished(self) -> bool:
        return self.state not in UNFINISHED


@dataclass(frozen=True)
class Claim:
    """The outcome of presenting a nonce: ``signup`` is leased to us only if ``leased``."""

    signup: Signup
    leased: bool


class Journal(Outbox, PersonHolds):
    def __init__(self, url: str, *, threads: int = 5, clock: Callable[[], float] = time.time):
        """``threads``: how many of the process's threads may use it at once (gunicorn's)."""
        self.clock = clock
        self.engine = open_engine(url, threads)

    def create_schema(self) -> None:
        """Create the tables, or add what a newer version needs."""
        create_schema(self.engine)

    def claim(
        self,
        nonce: str,
        email: str,
        *,
        owner: str,
        lease: float,
        first_name: str | None = None,
        last_name: str | None = None,
        locale: str | None = None,
        background: bool = False,
    ) -> Claim:
        """Record a submission (or find the one with this nonce) and try to lease it.

        A nonce whose earlier attempt ended without an account (rejected, abandoned,
        compensated) starts over with the new email; its ids are kept.
        """
        now = self.clock()
        submitted = {
            "email": email,
            "first_name": first_name,
            "last_name": last_name,
            "locale": locale,
            "background": background,
        }
        fresh = {
            "state": State.NEW,
            "attempts": 0,
            "next_attempt_at": now,
            "lease_owner": owner,
            "lease_until": now + lease,
        }
        row = {
            "id": str(uuid.uuid4()),
            "nonce": nonce,
            "license_id": str(uuid.uuid4()),
            "key_shown": False,
            "created_at": now,
            "updated_at": now,
            **submitted,
            **fresh,
        }
        try:
            with self.engine.begin() as db:
                db.execute(_NEW_SIGNUP, row)
            return Claim(Signup(**{**row, "user_id": None, "last_error": None}), leased=True)
        except IntegrityError:
            pass  # the nonce was seen before
        existing = self.by_nonce(nonce)
        if existing.state in RESUBMITTABLE:
            where = {"_id": existing.id, "_owner": owner, "_now": now}
            changes = {**submitted, **fresh, "user_id": None, "last_error": None}
            restarted = self._update(_RESUBMITTABLE_ROW, where, **changes)
            return Claim(self.get(existing.id), leased=restarted)
        unfinished = existing.state in UNFINISHED
        if unfinished and self.lease(existing.id, owner=owner, lease=lease, background=background):
            return Claim(self.get(existing.id), leased=True)
        return Claim(existing, leased=False)

    def lease(
        self,
        signup_id: str,
        *,
        owner: str,
        lease: float,
        states: tuple[State, ...] = UNFINISHED,
        background: bool = False,
    ) -> bool:
        """Take the row if it is still in one of ``states`` and nobody holds it (or their lease
        ran out); ``background``: to finish it in a backlog thread, which the person was told
        to wait for."""
        now = self.clock()
        changes = {"background": True} if background else {}
        return self._update(
            _FREE_ROW.where(signups.c.state.in_(states)),
            {"_id": signup_id, "_owner": owner, "_now": now},
            lease_owner=owner,
            lease_until=now + lease,
            **changes,
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

    def await_address(
        self,
        nonce: str,
        *,
        signup_id: str,
        email: str,
        expires_at: float,
        mail: tuple[Letter, ...],
        first_name: str | None = None,
        last_name: str | None = None,
        locale: str | None = None,
        consent: str | None = None,
    ) -> bool:
        """REQUIRE_EMAIL_VERIFICATION: record a signup that waits for its address to be
        confirmed, and queue `mail` (the link) in the same transaction. False, and nothing
        written, if this nonce was recorded before (the same form sent again)."""
        now = self.clock()
        row = {
            "id": signup_id,
            "nonce": nonce,
            "email": email,
            "license_id": str(uuid.uuid4()),
            "state": State.PENDING_VERIFICATION,
            "key_shown": False,
            "attempts": 0,
            "next_attempt_at": expires_at,  # then the reconciler marks it EXPIRED
            "created_at": now,
            "updated_at": now,
            "first_name": first_name,
            "last_name": last_name,
            "locale": locale,
            "consent": consent,
        }
        try:
            with self.engine.begin() as db:
                db.execute(_NEW_SIGNUP, row)
                self._queue(db, mail)
        except IntegrityError:
            return False
        return True

    def keep_awaiting(self, signup_id: str, *, until: float) -> None:
        """A link to this signup is being sent now: it may wait for the click until ``until``
        (the link's lifetime runs from when it is sent, however long the email queued)."""
        self._update(_AWAITING_ROW, {"_id": signup_id, "until": until}, next_attempt_at=until)

    def start_verified(self, signup_id: str, *, owner: str, lease: float) -> bool:
        """The button on a verification link's page: true for exactly one caller, who then
        holds the row (now NEW) and creates the user with the password just chosen."""
        now = self.clock()
        return self._update(
            _VERIFYING_ROW,
            {"_id": signup_id, "_owner": owner, "_now": now},
            state=State.NEW,
            user_id=None,
            attempts=0,
            last_error=None,
            next_attempt_at=now,
            lease_owner=owner,
            lease_until=now + lease,
        )

    def retire_soon(self, signup_id: str) -> None:
        """A link of a row whose user an earlier release created before the click was opened:
        the reconciler deletes that user at its next pass, so the address can sign up again."""
        self._update(_LEGACY_PENDING_ROW, {"_id": signup_id}, next_attempt_at=self.clock())

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

    def mark_key_shown(self, signup_id: str) -> bool:
        """True for exactly one caller: the one that may display the key."""
        return self._update(_UNSHOWN_ROW, {"_id": signup_id}, key_shown=True)

    # Keys Keygen shows only once (sealing.py) and signups kept for an operator.

    def wipe_sealed_key(self, signup_id: str) -> None:
        self._update(_ROW, {"_id": signup_id}, sealed_key=None)

    def wipe_shown_keys(self, *, older_than: float) -> int:
        """Wipe the sealed keys shown at least ``older_than`` seconds ago: by then no copy of
        the submission can still be waiting to show it again (a double click's)."""
        statement = (
            update(signups)
            .where(signups.c.key_shown.is_(True))
            .where(signups.c.sealed_key.is_not(None))
            .where(signups.c.updated_at < self.clock() - older_than)
            .values(sealed_key=None)
        )
        with self.engine.begin() as db:
            return db.execute(statement).rowcount

    def kept(self) -> list[Signup]:
        """Signups whose Keygen user Keygen would not let the portal delete, oldest first."""
        query = select(signups).where(signups.c.state == State.KEPT).order_by(signups.c.created_at)
        with self.engine.connect() as db:
            return [_signup(row) for row in db.execute(query)]

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

    def forget(self, *, before: float) -> tuple[int, int]:
        """Personal data kept no longer than needed: finished signups created before ``before``
        lose their address, names, consent and last error (the ids stay, to match Keygen's
        records), and the emails sent, given up or dropped before then are deleted. Unfinished
        signups, and signups waiting for their address, keep what they need to be finished.
        How many of each there were."""
        kept = (*UNFINISHED, State.PENDING_VERIFICATION)
        scrub = (
            update(signups)
            .where(signups.c.created_at < before)
            .where(signups.c.state.not_in(kept))
            .where(signups.c.email != "")
            .values(email="", first_name=None, last_name=None, consent=None, last_error=None)
        )
        done = (MailState.SENT, MailState.FAILED, MailState.DROPPED)
        drop = delete(outbox).where(outbox.c.created_at < before).where(outbox.c.state.in_(done))
        holds = delete(person_holds).where(person_holds.c.held_at < before)
        with self.engine.begin() as db:
            db.execute(holds)
            return db.execute(scrub).rowcount, db.execute(drop).rowcount

    def still_working(self, signup_id: str) -> bool:
        signup = self.find(signup_id)
        return signup is not None and signup.state in UNFINISHED

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


def _signup(row) -> Signup:
    values = dict(row._mapping)
    values["state"] = State(values["state"])
    return Signup(**values)
