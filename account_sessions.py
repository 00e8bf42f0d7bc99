"""Who is signed in: one row per sign-in, holding the person's Keygen token, encrypted.

The browser's cookie carries only an opaque random id (Flask-Login keeps it in Flask's signed
session cookie); the row is found by that id's SHA-256, so the database alone cannot be turned
into a cookie. The Keygen user token is sealed with Fernet under a key derived from SECRET_KEY
(HKDF, a salt of its own), so a copy of the database holds no usable token either. A row lives
until its expiry (SELF_SERVICE_SESSION_MINUTES after the sign-in); accounts.py revokes the token
at Keygen when the row ends, on sign-out or expiry.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field

from sqlalchemy import Column, Float, String, Table, delete, insert, select

from database import metadata
from journal import Journal
from keygen_api import Token
from sealing import Sealer

account_sessions = Table(
    "account_sessions",
    metadata,
    Column("id", String(64), primary_key=True),  # SHA-256 of the cookie's id, in hex
    Column("user_id", String(36), nullable=False, index=True),
    Column("email", String(255), nullable=False),
    Column("token_id", String(36), nullable=False),
    Column("token", String(1024), nullable=False),  # sealed (Sealer)
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False, index=True),
)


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


@dataclass(frozen=True)
class SignedIn:
    """A signed-in person, as Flask-Login's user object. `session_id` (the cookie's) is known
    only for the request that carries it; background work finds rows by `key`."""

    key: str
    session_id: str = field(repr=False)
    user_id: str
    email: str
    token: Token = field(repr=False)
    created_at: float
    expires_at: float

    # Flask-Login's user interface.
    is_authenticated = True
    is_active = True
    is_anonymous = False

    def get_id(self) -> str:
        return self.session_id


class SessionStore:
    """The rows of account_sessions; the clock is the journal's (tests move it)."""

    def __init__(self, journal: Journal, sealer: Sealer):
        self.journal = journal
        self.engine = journal.engine
        self.sealer = sealer

    def open(self, token: Token, email: str, *, lifetime: float) -> SignedIn:
        """A new sign-in for the person the token belongs to."""
        now = self.journal.clock()
        session_id = secrets.token_urlsafe(32)
        row = {
            "id": _key(session_id),
            "user_id": token.bearer_id or "",
            "email": email,
            "token_id": token.id,
            "token": self.sealer.seal(token.value),
            "created_at": now,
            "expires_at": now + lifetime,
        }
        with self.engine.begin() as db:
            db.execute(insert(account_sessions), row)
        return self._signed_in(row, session_id, token.value)

    def load(self, session_id: str) -> SignedIn | None:
        """The sign-in with this cookie id, expired or not; None if there is none (ended)."""
        query = select(account_sessions).where(account_sessions.c.id == _key(session_id))
        with self.engine.connect() as db:
            row = db.execute(query).mappings().one_or_none()
        return None if row is None else self._from_row(row, session_id)

    def end(self, signed_in: SignedIn) -> bool:
        """Delete the row: True for the one caller that did (and so revokes the token)."""
        statement = delete(account_sessions).where(account_sessions.c.id == signed_in.key)
        with self.engine.begin() as db:
            return db.execute(statement).rowcount == 1

    def expired(self, *, limit: int = 100) -> list[SignedIn]:
        """Sign-ins past their expiry, oldest first, for the sweep."""
        query = (
            select(account_sessions)
            .where(account_sessions.c.expires_at <= self.journal.clock())
            .order_by(account_sessions.c.expires_at)
            .limit(limit)
        )
        with self.engine.connect() as db:
            rows = db.execute(query).mappings().all()
        return [self._from_row(row, "") for row in rows]

    def of_user(self, user_id: str) -> list[SignedIn]:
        query = select(account_sessions).where(account_sessions.c.user_id == user_id)
        with self.engine.connect() as db:
            rows = db.execute(query).mappings().all()
        return [self._from_row(row, "") for row in rows]

    def is_expired(self, signed_in: SignedIn) -> bool:
        return self.journal.clock() >= signed_in.expires_at

    def _from_row(self, row, session_id: str) -> SignedIn:
        # A token sealed under another SECRET_KEY cannot be read: the sign-in is over.
        return self._signed_in(row, session_id, self.sealer.unseal(row["token"]) or "")

    @staticmethod
    def _signed_in(row, session_id: str, value: str) -> SignedIn:
        token = Token.of_user(row["token_id"], value, row["user_id"])
        return SignedIn(
            key=row["id"],
            session_id=session_id,
            user_id=row["user_id"],
            email=row["email"],
            token=token,
            created_at=row["created_at"],
            expires_at=row["expires_at"],
        )
