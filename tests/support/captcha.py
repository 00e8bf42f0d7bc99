"""A stand-in for a CAPTCHA provider's siteverify endpoint: a real HTTP server on loopback that
answers as Turnstile, hCaptcha and reCAPTCHA do (success, refusal, outage, silence)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import pytest

from app import create_app
from support.leaks import secret
from support.portal import make_settings

CAPTCHA_SECRET = secret("captcha-secret-0x4AAAAAAABkMYinukE8nzYS")
SITE_KEY = "1x00000000000000000000AA"


class VerifyEndpoint:
    """What the provider's siteverify would say; records every check it was asked for."""

    def __init__(self):
        self.mode = "success"  # success | refuse | error | garbage | hang
        self.checks: list[dict[str, str]] = []
        self.confirms = {"hostname": "localhost"}  # what a success says the answer was given on
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                fields = parse_qs(self.rfile.read(length).decode())
                endpoint.checks.append({k: v[0] for k, v in fields.items()})
                if endpoint.mode == "hang":
                    time.sleep(3)
                status, body = {
                    "success": (200, {"success": True, **endpoint.confirms}),
                    "refuse": (200, {"success": False, "error-codes": ["invalid-input-response"]}),
                    "error": (500, {"success": True}),  # a 5xx is never believed
                    "garbage": (200, "<html>oops</html>"),
                    "hang": (200, {"success": True}),
                }[endpoint.mode]
                payload = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the portal gave up waiting, as it should

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/turnstile/v0/siteverify"


@pytest.fixture
def verify() -> Iterator[VerifyEndpoint]:
    endpoint = VerifyEndpoint()
    thread = threading.Thread(target=endpoint.server.serve_forever, daemon=True)
    thread.start()
    yield endpoint
    endpoint.server.shutdown()
    endpoint.server.server_close()


def captcha_app(keygen, verify: VerifyEndpoint, provider: str = "turnstile", **changes):
    settings = make_settings(
        keygen,
        captcha_provider=provider,
        captcha_site_key=SITE_KEY,
        captcha_secret_key=CAPTCHA_SECRET,
        captcha_verify_url=verify.url,
        captcha_timeout=1.0,
        **{"trusted_hosts": ("localhost",), **changes},  # the test client's Host
    )
    return create_app(settings).test_client()
