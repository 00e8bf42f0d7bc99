"""Keygen's webhooks as the portal receives them: the signature check, and what an event says.
Part of the Keygen client's knowledge (with keygen_api.py and the modules it re-exports).

Keygen posts each event with `Date`, `Digest: sha-256=<base64 of the body's SHA-256>` and
`Keygen-Signature: keyid="<account>", algorithm="ed25519", signature="<base64>",
headers="(request-target) host date digest"`. The signature is over four lines joined by "\\n":
`(request-target): post <path?query>`, `host: <the endpoint URL's host, no port>`,
`date: <Date>`, `digest: <Digest>` (app/workers/webhook_worker.rb,
app/controllers/concerns/signature_methods.rb), made with the account's ed25519 key. The verify
key is `ed25519_public_key` (app/models/account.rb): 32 bytes, shown in hex in Keygen's
dashboard; the account's API document has it base64-encoded (`meta.keys.ed25519`).

The body is a `webhook-events` document whose `payload` attribute is the resource document as a
JSON string (app/workers/create_webhook_events_worker.rb); `user.password-reset` carries the user
and, in the payload's `meta.passwordResetToken`, the reset token
(app/controllers/api/v1/passwords_controller.rb).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

MAX_SKEW = 300.0  # seconds a Date may be from our clock: replays are bounded by it
PASSWORD_RESET = "user.password-reset"  # noqa: S105 (an event name)
_FIELD = re.compile(r'(\w+)="([^"]*)"')
_SIGNED = "(request-target) host date digest"


class WebhookRefused(Exception):
    """Not a genuine, current Keygen event; the message says why (for the log only)."""


def public_key(text: str) -> Ed25519PublicKey:
    """The account's verify key, as the dashboard shows it (64 hex characters) or as the API's
    `meta.keys.ed25519` has it (base64 of those characters). ValueError otherwise."""
    text = text.strip()
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
        try:
            text = base64.b64decode(text, validate=True).decode("ascii")
        except (binascii.Error, UnicodeDecodeError):
            raise ValueError("must be the account's Ed25519 public key (64 hex digits)") from None
        if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
            raise ValueError("must be the account's Ed25519 public key (64 hex digits)")
    return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text))


@dataclass(frozen=True)
class WebhookEvent:
    id: str
    event: str  # "user.password-reset", ...
    idempotency_token: str | None
    payload: dict = field(repr=False)  # the resource document

    @property
    def is_password_reset(self) -> bool:
        return self.event == PASSWORD_RESET

    @property
    def user_id(self) -> str | None:
        data = self.payload.get("data")
        return data.get("id") if isinstance(data, dict) and data.get("type") == "users" else None

    @property
    def email(self) -> str | None:
        return self.attribute("email")

    @property
    def first_name(self) -> str | None:
        return self.attribute("firstName")

    @property
    def last_name(self) -> str | None:
        return self.attribute("lastName")

    def attribute(self, name: str) -> str | None:
        """A text attribute of the resource ("email", "firstName"), if it has one."""
        data = self.payload.get("data")
        attributes = data.get("attributes") if isinstance(data, dict) else None
        value = attributes.get(name) if isinstance(attributes, dict) else None
        return value if isinstance(value, str) else None

    @property
    def password_reset_token(self) -> str | None:
        meta = self.payload.get("meta")
        token = meta.get("passwordResetToken") if isinstance(meta, dict) else None
        return token if isinstance(token, str) and token else None


class WebhookVerifier:
    """Checks Keygen's signature on a delivery with the account's public key."""

    def __init__(self, key: Ed25519PublicKey, *, clock: Callable[[], float] = time.time):
        self.key = key
        self.clock = clock

    def verify(
        self, body: bytes, headers: Mapping[str, str], targets: Iterable[tuple[str, str]]
    ) -> WebhookEvent:
        """The event, if the body is signed by the account for one of `targets` (host, path and
        query as Keygen was told the endpoint's URL) and its Date is current."""
        signature = headers.get("Keygen-Signature")
        if not signature:
            raise WebhookRefused("no Keygen-Signature header")
        fields = dict(_FIELD.findall(signature))
        if fields.get("algorithm") != "ed25519":
            raise WebhookRefused(f"algorithm {fields.get('algorithm')!r}, not ed25519")
        if " ".join(fields.get("headers", "").split()) != _SIGNED:
            raise WebhookRefused("the signature does not cover (request-target) host date digest")
        digest = headers.get("Digest", "")
        expected = "sha-256=" + base64.b64encode(hashlib.sha256(body).digest()).decode()
        if not hmac.compare_digest(digest.encode(), expected.encode()):
            raise WebhookRefused("the Digest does not match the body")
        date = headers.get("Date", "")
        self._check_date(date)
        try:
            raw = base64.b64decode(fields.get("signature", ""), validate=True)
        except binascii.Error:
            raise WebhookRefused("the signature is not base64") from None
        if not any(self._signed(raw, host, target, date, digest) for host, target in targets):
            raise WebhookRefused("the signature does not verify with KEYGEN_PUBLIC_KEY")
        return parse_event(body)

    def _check_date(self, date: str) -> None:
        try:
            sent = parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError, IndexError):
            raise WebhookRefused("no readable Date header") from None
        if abs(self.clock() - sent) > MAX_SKEW:
            raise WebhookRefused(f"Date is {self.clock() - sent:.0f}s away from our clock")

    def _signed(self, raw: bytes, host: str, target: str, date: str, digest: str) -> bool:
        lines = (f"(request-target): post {target}", f"host: {host}", f"date: {date}")
        try:
            self.key.verify(raw, "\n".join((*lines, f"digest: {digest}")).encode())
        except InvalidSignature:
            return False
        return True


def parse_event(body: bytes) -> WebhookEvent:
    """The event in a `webhook-events` document; WebhookRefused if it is not one."""
    try:
        data = json.loads(body)["data"]
        attributes = data["attributes"]
        payload = json.loads(attributes["payload"])  # a JSON string inside the JSON
        event = attributes["event"]
        meta = data.get("meta") or {}
        if data["type"] != "webhook-events" or not isinstance(payload, dict):
            raise ValueError(data["type"])
        return WebhookEvent(data["id"], event, meta.get("idempotencyToken"), payload)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise WebhookRefused("a signed body that is not a webhook event") from None
