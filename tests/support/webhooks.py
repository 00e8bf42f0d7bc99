"""Webhooks in the tests: a receiver on loopback that keeps what Keygen (the emulator) posts, and
a check of Keygen's signature written from keygen-api's signature_methods.rb, independent of the
portal's own (keygen_webhooks.py)."""

from __future__ import annotations

import base64
import hashlib
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response


@dataclass
class Received:
    path: str
    headers: dict
    body: bytes


@dataclass
class Receiver:
    url: str
    received: list[Received] = field(default_factory=list)

    def wait_for(self, count: int = 1, timeout: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.received) >= count, f"{len(self.received)} of {count} webhooks arrived"
        return self.received


@contextmanager
def webhook_receiver(status: int = 204) -> Iterator[Receiver]:
    receiver: Receiver

    @Request.application
    def app(request: Request) -> Response:
        receiver.received.append(Received(request.full_path, dict(request.headers), request.data))
        return Response(status=status)

    server = make_server("127.0.0.1", 0, app, threaded=True)
    receiver = Receiver(f"http://127.0.0.1:{server.port}/hooks/keygen")
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="receiver")
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def signature_is_valid(public_key_hex: str, url: str, received: Received) -> bool:
    """Keygen-Signature checks out for this URL, the Date and Digest headers and the body."""
    headers = received.headers
    fields = dict(re.findall(r'(\w+)="([^"]*)"', headers["Keygen-Signature"]))
    digest = "sha-256=" + base64.b64encode(hashlib.sha256(received.body).digest()).decode()
    if headers["Digest"] != digest or fields.get("algorithm") != "ed25519":
        return False
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    signing = (
        f"(request-target): post {target}\nhost: {parts.hostname}\n"
        f"date: {headers['Date']}\ndigest: {headers['Digest']}"
    )
    key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key_hex))
    try:
        key.verify(base64.b64decode(fields["signature"]), signing.encode())
    except Exception:
        return False
    return True
