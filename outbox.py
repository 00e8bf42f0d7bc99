"""The outbox: the emails the portal owes, written in the same transaction as the state they
belong to (journal.py), and sent off the request's path by delivery.py.

A row holds what is needed to compose the message again (the kind, the recipient, the license,
user or signup it is about), never a key in the clear or a link's token: delivery.py fetches
the key from Keygen and signs the link when it sends. A key Keygen shows only once is the
exception: it is kept sealed (sealing.py) until the message is sent or given up, then wiped.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from sqlalchemy import Column, String, Table, Text, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from database import metadata, work_columns


class MailState(StrEnum):
    PENDING = "PENDING"  # to be sent (again) at next_attempt_at
    SENT = "SENT"  # the server took it (250)
    FAILED = "FAILED"  # refused for good (5xx) or given up; logged for the operator
    DROPPED = "DROPPED"  # nothing to send after all (a recovery request for an unknown address)


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
    *work_columns(),
    Column("locale", String(16)),  # the language to write in (i18n.py); none: the default
    Column("sealed_key", Text),  # a key Keygen shows only once, sealed; wiped when settled
)

# Queued twice (a request and the reconciler both finishing a signup): sent once.
_NEW_MAIL = {
    "postgresql": postgresql.insert(outbox).on_conflict_do_nothing(),
    "sqlite": sqlite.insert(outbox).on_conflict_do_nothing(),
}


@dataclass(frozen=True)
class Letter:
    """A message to queue: what it is about, and to whom."""

    kind: str  # license | verify | taken | recovery | reset | again (delivery.py composes each)
    email: str
    ref: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    dedupe: str | None = None
    locale: str | None = None  # the language of the page the person used
    sealed_key: str | None = field(default=None, repr=False)


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
    sealed_key: str | None = field(default=None, repr=False)


class Outbox:
    """The outbox's queries, for the Journal (which shares its engine and clock)."""

    engine: Engine
    clock: Callable[[], float]

    def queue(self, *letters: Letter) -> None:
        with self.engine.begin() as db:
            self._queue(db, letters)

    def queue_in(self, db, *letters: Letter) -> None:
        """Queue in a transaction the caller holds, with the state the letters belong to."""
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
        """Record how a send we hold the lease on went, and let go of the row. A sealed key
        goes with the message's last attempt, sent or not."""
        changes.update(updated_at=self.clock(), lease_owner=None, lease_until=None)
        if changes.get("state") not in (None, MailState.PENDING):
            changes["sealed_key"] = None
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
                "sealed_key": letter.sealed_key,
                "state": MailState.PENDING,
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
                "updated_at": now,
            }
            db.execute(_NEW_MAIL[db.dialect.name], row)


def _mail(row) -> Mail:
    values = dict(row._mapping)
    values["state"] = MailState(values["state"])
    return Mail(**values)
