"""Secrets the portal must keep for a while, sealed: encrypted at rest, each kind under its own key.

Authenticated encryption (Fernet: AES-128-CBC with an HMAC-SHA256) with a key derived from
SECRET_KEY by HKDF for one purpose, so that a copy of the database alone reveals nothing and one
kind of sealed text cannot be passed off as another. The portal seals:

* license keys Keygen shows only in the answer that creates them (LEGACY_ENCRYPT): kept until the
  page has shown them and the courier has sent them, then wiped. Sealed rather than sending the
  email in the request: the outbox's retries survive a mail server that is down;
* a signed-in person's Keygen token (account_sessions.py) and a reset's token
  (password_resets.py), for their short lives;
* the email and password between sign-in's two steps (a second factor), for minutes.
"""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


class Sealer:
    def __init__(self, secret_key: str, purpose: str):
        derived = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=b"portal.sealer", info=purpose.encode()
        ).derive(secret_key.encode())
        self._fernet = Fernet(base64.urlsafe_b64encode(derived))

    def __repr__(self) -> str:
        return "Sealer()"

    def seal(self, text: str) -> str:
        return self._fernet.encrypt(text.encode()).decode("ascii")

    def unseal(self, sealed: str, *, max_age: float | None = None) -> str | None:
        """The text, or None when it was sealed under another SECRET_KEY or purpose, was
        altered, or is older than ``max_age`` seconds."""
        try:
            ttl = None if max_age is None else int(max_age)
            return self._fernet.decrypt(sealed.encode("ascii"), ttl=ttl).decode()
        except (InvalidToken, ValueError):
            return None
