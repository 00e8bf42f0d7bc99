"""The optional CAPTCHA, against a stand-in siteverify endpoint: a real HTTP server on loopback
that answers as Turnstile, hCaptcha and reCAPTCHA do (success, refusal, outage, silence).
Whatever goes wrong, the form says so and Keygen is never called."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import pytest

from app import CONTENT_SECURITY_POLICY, create_app
from config import ConfigError, load_settings
from support.http import csrf_token_from, form_data
from support.leaks import secret
from support.portal import make_settings

CAPTCHA_SECRET = secret("captcha-secret-0x4AAAAAAABkMYinukE8nzYS")
SITE_KEY = "1x00000000000000000000AA"


class VerifyEndpoint:
    """What the provider's siteverify would say; records every check it was asked for."""

    def __init__(self):
        self.mode = "success"  # success | refuse | error | garbage | hang
        self.checks: list[dict[str, str]] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                fields = parse_qs(self.rfile.read(length).decode())
                endpoint.checks.append({k: v[0] for k, v in fields.items()})
                if endpoint.mode == "hang":
                    time.sleep(3)
                status, body = {
                    "success": (200, {"success": True, "hostname": "localhost"}),
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
        **changes,
    )
    return create_app(settings).test_client()


def submit(client, **fields):
    page = client.get("/").get_data(as_text=True)
    data = form_data(**fields)
    data["csrf_token"] = csrf_token_from(page)
    return client.post("/", data=data, environ_base={"REMOTE_ADDR": "198.51.100.7"})


def test_a_confirmed_answer_signs_up_and_the_check_carries_secret_answer_and_address(
    keygen, verify
):
    client = captcha_app(keygen, verify)
    response = submit(client, **{"cf-turnstile-response": "XXXX.DUMMY.TOKEN.XXXX"})
    assert response.status_code == 200, response.get_data(as_text=True)[-400:]
    assert verify.checks == [
        {
            "secret": CAPTCHA_SECRET,
            "response": "XXXX.DUMMY.TOKEN.XXXX",
            "remoteip": "198.51.100.7",
        }
    ]
    assert len(keygen.users()) == 1


@pytest.mark.parametrize(
    ("mode", "answer", "status", "message"),
    [
        ("refuse", "a-forged-answer", 422, "Please complete the check that you are not a robot"),
        ("success", "", 422, "Please complete the check that you are not a robot"),
        ("error", "an-answer", 503, "We could not check that you are not a robot right now"),
        ("garbage", "an-answer", 503, "We could not check that you are not a robot right now"),
        ("hang", "an-answer", 503, "We could not check that you are not a robot right now"),
    ],
    ids=["refused", "no-answer", "verify-500", "verify-garbage", "verify-timeout"],
)
def test_anything_but_a_confirmed_answer_keeps_the_form_and_calls_no_keygen(
    keygen, verify, mode, answer, status, message
):
    verify.mode = mode
    client = captcha_app(keygen, verify)
    started = time.monotonic()
    response = submit(client, first_name="Lois", **{"cf-turnstile-response": answer})
    page = response.get_data(as_text=True)
    assert response.status_code == status
    assert message in page
    assert 'value="Lois"' in page  # what was typed is kept
    assert keygen.calls() == []
    assert time.monotonic() - started < 2.5  # CAPTCHA_TIMEOUT=1, no retry
    assert len(verify.checks) == (0 if not answer else 1)  # never asked twice


def test_the_verify_endpoint_down_refuses_without_keygen(keygen, verify):
    client = captcha_app(keygen, verify)
    verify.server.shutdown()
    verify.server.server_close()
    response = submit(client, **{"cf-turnstile-response": "an-answer"})
    assert response.status_code == 503
    assert keygen.calls() == []


@pytest.mark.parametrize(
    ("provider", "field", "script", "origin"),
    [
        (
            "turnstile",
            "cf-turnstile-response",
            "https://challenges.cloudflare.com/turnstile/v0/api.js",
            "https://challenges.cloudflare.com",
        ),
        ("hcaptcha", "h-captcha-response", "https://js.hcaptcha.com/1/api.js", "hcaptcha.com"),
        (
            "recaptcha",
            "g-recaptcha-response",
            "https://www.google.com/recaptcha/api.js",
            "https://www.google.com/recaptcha/",
        ),
    ],
)
def test_each_provider_gets_its_widget_field_and_csp_origins(
    keygen, verify, provider, field, script, origin
):
    client = captcha_app(keygen, verify, provider=provider)
    page = client.get("/")
    html = page.get_data(as_text=True)
    assert f'<script src="{script}" async defer></script>' in html
    assert f'data-sitekey="{SITE_KEY}"' in html
    csp = page.headers["Content-Security-Policy"]
    assert csp.startswith(CONTENT_SECURITY_POLICY)
    script_src = next(d for d in csp.split("; ") if d.startswith("script-src "))
    frame_src = next(d for d in csp.split("; ") if d.startswith("frame-src "))
    assert "'self'" in script_src and origin in script_src and origin in frame_src
    assert "unsafe-inline" not in csp
    assert CAPTCHA_SECRET not in html
    assert submit(client, **{field: "ok"}).status_code == 200


def test_without_a_provider_no_widget_no_origin_no_check(client, verify, sign_up):
    page = client.get("/")
    assert page.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "data-sitekey" not in page.get_data(as_text=True)
    assert sign_up().status_code == 200
    assert verify.checks == []


def test_the_honeypot_answers_before_the_captcha_is_asked(keygen, verify):
    client = captcha_app(keygen, verify)
    assert submit(client, website="https://spam.example").status_code == 202
    assert verify.checks == [] and keygen.calls() == []


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"CAPTCHA_PROVIDER": "recaptcha-v9"}, "CAPTCHA_PROVIDER must be none, turnstile"),
        ({"CAPTCHA_PROVIDER": "turnstile"}, "CAPTCHA_SITE_KEY is required when CAPTCHA_PROVIDER"),
        (
            {"CAPTCHA_PROVIDER": "hcaptcha", "CAPTCHA_SITE_KEY": "x"},
            "CAPTCHA_SECRET_KEY is required when CAPTCHA_PROVIDER",
        ),
        ({"CAPTCHA_VERIFY_URL": "http://verify.example/siteverify"}, "CAPTCHA_VERIFY_URL must use"),
        ({"CAPTCHA_TIMEOUT": "0"}, "CAPTCHA_TIMEOUT must be a positive number"),
    ],
)
def test_bad_captcha_settings_refuse_to_start(env, problem):
    from test_config import GOOD

    with pytest.raises(ConfigError) as caught:
        load_settings({**GOOD, **env})
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems
    assert CAPTCHA_SECRET not in str(caught.value)


def test_captcha_settings_are_parsed_and_the_secret_stays_out_of_repr():
    from test_config import GOOD

    settings = load_settings(
        {
            **GOOD,
            "CAPTCHA_PROVIDER": "Turnstile",
            "CAPTCHA_SITE_KEY": SITE_KEY,
            "CAPTCHA_SECRET_KEY": CAPTCHA_SECRET,
        }
    )
    assert (settings.captcha_provider, settings.captcha_verify_url) == ("turnstile", "")
    assert settings.captcha_timeout == 5.0
    assert CAPTCHA_SECRET not in repr(settings)
