"""Forgot-password requests, from the request on the portal's page to the one use of the link.

A request becomes a row (REQUESTED) before Keygen is asked; Keygen's `user.password-reset`
webhook then fills the newest open request for that address with the user and Keygen's reset
token (sealed), and queues the portal's email in the same transaction (READY). An event that
matches no request the portal made in the last MATCH_WINDOW is ignored: someone else asked
Keygen directly, and the portal's mail and rate limits are not for them. The link in the email
names the row; opening it and setting a password takes the row once (USED). Keygen keeps only
the newest token of a user, so a newer event supersedes the older rows of that user.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from enum import StrEnum

from sqlalchemy import Column, Float, String, Table, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from database import metadata
from journal import Journal
from keygen_webhooks import WebhookEvent
from outbox import Letter
from sealing import Sealer

MATCH_WINDOW = 900.0  # seconds between a request and Keygen's event for it


class ResetState(StrEnum):
    REQUESTED = "REQUESTED"  # asked Keygen; no event yet (none comes for an unknown address)
    READY = "READY"  # the email with the link is queued or sent
    USED = "USED"  # the password was set with it, or is being set
    SUPERSEDED = "SUPERSEDED"  # a newer reset of the same user replaced it at Keygen


password_resets = Table(
    "password_resets",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("email", String(255), nullable=False, index=True),
    Column("locale", String(16)),
    Column("state", String(16), nullable=False),
    Column("user_id", String(36), index=True),
    Column("event_id", String(64), unique=True),  # Keygen's webhook event: one row per event
    Column("keygen_token", String(1024)),  # sealed
    Column("requested_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False, index=True),
)


@dataclass(frozen=True)
class Reset:
    id: str
    email: str
    user_id: str | None
    keygen_token: str = field(repr=False)
    expires_at: float


class ResetStore:
    def __init__(self, journal: Journal, sealer: Sealer, *, lifetime: float):
        self.journal = journal
        self.engine = journal.engine
        self.sealer = sealer
        self.lifetime = lifetime

    def requested(self, email: str, locale: str | None) -> str:
        now = self.journal.clock()
        row = {
            "id": str(uuid.uuid4()),
            "email": email,
            "locale": locale,
            "state": ResetState.REQUESTED,
            "requested_at": now,
            "expires_at": now + self.lifetime,
        }
        with self.engine.begin() as db:
            db.execute(insert(password_resets), row)
        return row["id"]

    def received(self, event: WebhookEvent) -> str | None:
        """Match a `user.password-reset` event to the newest open request for its address and
        queue the email: the row's id, or None (no such request, or the event seen before)."""
        token, email = event.password_reset_token, (event.email or "").lower()
        if not (token and email and event.user_id):
            return None
        now = self.journal.clock()
        table = password_resets.c
        newest = (
            select(password_resets)
            .where(table.email == email, table.state == ResetState.REQUESTED)
            .where(table.requested_at >= now - MATCH_WINDOW)
            .order_by(table.requested_at.desc())
            .limit(1)
        )
        try:
            with self.engine.begin() as db:
                row = db.execute(newest).mappings().one_or_none()
                if row is None:
                    return None
                older = update(password_resets).where(
                    table.user_id == event.user_id, table.state == ResetState.READY
                )
                db.execute(older.values(state=ResetState.SUPERSEDED))
                filled = update(password_resets).where(
                    table.id == row["id"], table.state == ResetState.REQUESTED
                )
                changes = {
                    "state": ResetState.READY,
                    "user_id": event.user_id,
                    "event_id": event.id,
                    "keygen_token": self.sealer.seal(token),
                }
                if db.execute(filled.values(**changes)).rowcount != 1:
                    return None
                self.journal.queue_in(db, self._letter(row, event))
                return row["id"]
        except IntegrityError:  # this event was delivered before (Keygen retries)
            return None

    def usable(self, reset_id: str) -> bool:
        return self._ready(reset_id) is not None

    def find(self, reset_id: str) -> Reset | None:
        """The reset while it can be used (READY and not expired)."""
        return self._ready(reset_id)

    def take(self, reset_id: str) -> Reset | None:
        """The reset, now USED, for exactly one caller; None if it is not READY or expired."""
        reset = self._ready(reset_id)
        if reset is None:
            return None
        statement = update(password_resets).where(
            password_resets.c.id == reset_id, password_resets.c.state == ResetState.READY
        )
        with self.engine.begin() as db:
            if db.execute(statement.values(state=ResetState.USED)).rowcount != 1:
                return None
        return reset

    def give_back(self, reset_id: str) -> None:
        """Keygen could not be reached, or refused the new password: the link works again."""
        statement = update(password_resets).where(
            password_resets.c.id == reset_id, password_resets.c.state == ResetState.USED
        )
        with self.engine.begin() as db:
            db.execute(statement.values(state=ResetState.READY))

    def sweep(self) -> int:
        """Forget resets a day past their expiry (their tokens are dead at Keygen by then)."""
        statement = delete(password_resets).where(
            password_resets.c.expires_at < self.journal.clock() - 86400
        )
        with self.engine.begin() as db:
            return db.execute(statement).rowcount

    def _ready(self, reset_id: str) -> Reset | None:
        query = select(password_resets).where(
            password_resets.c.id == reset_id,
            password_resets.c.state == ResetState.READY,
            password_resets.c.expires_at > self.journal.clock(),
        )
        with self.engine.connect() as db:
            row = db.execute(query).mappings().one_or_none()
        token = None if row is None else self.sealer.unseal(row["keygen_token"] or "")
        if row is None or token is None:
            return None
        return Reset(row["id"], row["email"], row["user_id"], token, row["expires_at"])

    @staticmethod
    def _letter(row, event: WebhookEvent) -> Letter:
        return Letter(
            kind="reset",
            email=row["email"],
            ref=row["id"],
            first_name=event.first_name,
            last_name=event.last_name,
            dedupe=f"reset:{row['id']}",
            locale=row["locale"],
        )
