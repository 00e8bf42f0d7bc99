"""Webhook endpoints and the signed events Keygen posts to them.

Registered through the control plane (Keygen's dashboard, here). An event goes to every endpoint
of the account subscribed to it, as `app/services/broadcast_webhook_service.rb`,
`app/workers/create_webhook_events_worker.rb` and `app/workers/webhook_worker.rb` send it: a
`webhook-events` document whose `payload` is the resource document as a JSON string, posted off
the request's thread, with `Date`, `Digest` and a `Keygen-Signature` that is ed25519 over
`(request-target) host date digest` (`app/controllers/concerns/signature_methods.rb`), signed
with the account's key. The verify key is the account's `ed25519_public_key`: 32 bytes in hex.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import uuid
from email.utils import formatdate
from urllib.parse import urlsplit

import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from keygen_emulator.formats import iso

USER_AGENT = "Keygen/{version} (+https://keygen.sh/docs/api/webhooks/)"
TIMEOUT = 15  # webhook_worker.rb: open, read and write timeouts


class Webhooks:
    """Endpoints, signing keys and what was delivered. Callers need no lock: this has its own."""

    def __init__(self, clock) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self.keys: dict[str, Ed25519PrivateKey] = {}  # account id -> signing key
        self.endpoints: list[dict] = []
        self.deliveries: list[dict] = []
        self._threads: list[threading.Thread] = []

    def public_key(self, account_id: str) -> str:
        """The account's ed25519 verify key, in hex as Keygen's dashboard shows it."""
        raw = self._key(account_id).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return raw.hex()

    def add_endpoint(self, account_id: str, url: str, *, subscriptions=("*",), api_version="1.8"):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("the endpoint must be an http(s) URL")
        endpoint = {
            "id": str(uuid.uuid4()),
            "account_id": account_id,
            "url": url,
            "subscriptions": list(subscriptions),
            "api_version": api_version,
        }
        with self.lock:
            self.endpoints.append(endpoint)
        return endpoint

    def clear(self) -> None:
        self.wait()
        with self.lock:
            self.endpoints.clear()
            self.deliveries.clear()

    def broadcast(self, account_id: str, event: str, payload: dict) -> None:
        """Post `event` with `payload` (the resource document) to each subscribed endpoint."""
        with self.lock:
            chosen = [
                e
                for e in self.endpoints
                if e["account_id"] == account_id
                and ("*" in e["subscriptions"] or event in e["subscriptions"])
            ]
        for endpoint in chosen:
            body = self._envelope(endpoint, event, payload)
            thread = threading.Thread(
                target=self._deliver, args=(endpoint, event, body), daemon=True, name="webhook"
            )
            with self.lock:
                self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()

    def wait(self, timeout: float = 20.0) -> None:
        """Until every delivery under way has ended (for tests)."""
        with self.lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout)

    def signed_headers(self, account_id: str, url: str, body: bytes, api_version: str) -> dict:
        """The headers webhook_worker.rb sends with `body` to `url`."""
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        date = formatdate(self.clock(), usegmt=True)
        digest = "sha-256=" + base64.b64encode(hashlib.sha256(body).digest()).decode()
        lines = (
            f"(request-target): post {target}",
            f"host: {parts.hostname}",
            f"date: {date}",
            f"digest: {digest}",
        )
        signing = "\n".join(lines)
        signature = base64.b64encode(self._key(account_id).sign(signing.encode())).decode()
        return {
            "User-Agent": USER_AGENT.format(version=api_version),
            "Content-Type": "application/json",
            "Date": date,
            "Digest": digest,
            "Keygen-Date": date,
            "Keygen-Digest": digest,
            "Keygen-Signature": (
                f'keyid="{account_id}", algorithm="ed25519", signature="{signature}", '
                'headers="(request-target) host date digest"'
            ),
            "Keygen-Version": api_version,
        }

    def _key(self, account_id: str) -> Ed25519PrivateKey:
        with self.lock:
            return self.keys.setdefault(account_id, Ed25519PrivateKey.generate())

    def _envelope(self, endpoint: dict, event: str, payload: dict) -> bytes:
        now = iso(self.clock())
        event_id = str(uuid.uuid4())
        account = endpoint["account_id"]
        document = {
            "data": {
                "id": event_id,
                "type": "webhook-events",
                "attributes": {
                    "endpoint": endpoint["url"],
                    "apiVersion": endpoint["api_version"],
                    "payload": json.dumps(payload, separators=(",", ":")),
                    "event": event,
                    "status": "DELIVERING",
                    "lastResponseCode": None,
                    "lastResponseBody": None,
                    "created": now,
                    "updated": now,
                },
                "relationships": {
                    "account": {
                        "links": {"related": f"/v1/accounts/{account}"},
                        "data": {"type": "accounts", "id": account},
                    }
                },
                "links": {"self": f"/v1/accounts/{account}/webhook-events/{event_id}"},
                "meta": {"idempotencyToken": secrets.token_hex(32)},
            }
        }
        return json.dumps(document, separators=(",", ":")).encode()

    def _deliver(self, endpoint: dict, event: str, body: bytes) -> None:
        headers = self.signed_headers(
            endpoint["account_id"], endpoint["url"], body, endpoint["api_version"]
        )
        try:
            response = requests.post(endpoint["url"], data=body, headers=headers, timeout=TIMEOUT)
            status = response.status_code
        except requests.RequestException as error:
            status = type(error).__name__
        with self.lock:
            self.deliveries.append({"event": event, "url": endpoint["url"], "status": status})
