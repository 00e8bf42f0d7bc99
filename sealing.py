"""License keys the portal must keep for a while, sealed: encrypted at rest.

A key is normally never stored: the page shows it from Keygen's answer and the courier fetches it
again by the license's id when it sends the email. Under a policy whose keys Keygen shows only
in the answer that creates them (LEGACY_ENCRYPT), there is nothing to fetch later, so the key is
kept until it has been shown and sent: encrypted (Fernet: AES-128-CBC with an HMAC-SHA256) with a
key derived from SECRET_KEY, so that a copy of the database alone reveals no key, and wiped once
delivered. Sealed rather than sending the email in the request: the outbox's retries survive a
mail server that is down, and the request does not wait for SMTP.
"""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PURPOSE = b"portal.sealed-license-key"  # keeps this key apart from SECRET_KEY's other uses


class Sealer:
    def __init__(self, secret_key: str):
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=PURPOSE)
        key = derived.derive(secret_key.encode())
        self._fernet = Fernet(base64.urlsafe_b64encode(key))

    def __repr__(self) -> str:
        return "Sealer()"

    def seal(self, text: str) -> str:
        return self._fernet.encrypt(text.encode()).decode("ascii")

    def open(self, sealed: str) -> str | None:
        """The text, or None when it was sealed under another SECRET_KEY (or altered)."""
        try:
            return self._fernet.decrypt(sealed.encode("ascii")).decode()
        except (InvalidToken, ValueError):
            return None
