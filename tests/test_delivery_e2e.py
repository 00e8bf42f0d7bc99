"""F10 as deployed: gunicorn with two workers (two couriers), SMTP down while a customer signs up,
then back; the key arrives exactly once, sent by the background thread alone."""

from __future__ import annotations

import time

import pytest

from support.http import issued_key, sign_up_over_http
from support.leaks import SECRET_KEY
from support.mail import Recorder, smtp_on, text_of
from support.processes import free_port
from support.servers import emulator, keygen_state, portal

pytestmark = pytest.mark.slow


def wait_until(condition, *, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def test_f10_smtp_down_at_signup_then_back_under_gunicorn():
    smtp_port = free_port()
    with emulator() as keygen:
        settings = {
            "KEYGEN_API_URL": keygen["url"],
            "KEYGEN_ACCOUNT_ID": keygen["account"],
            "KEYGEN_PRODUCT_TOKEN": keygen["token"],
            "KEYGEN_POLICY_ID": keygen["policy"],
            "SECRET_KEY": SECRET_KEY,
            "KEY_DELIVERY": "both",
            "PRODUCT_NAME": "Acme Pro",
            "PUBLIC_URL": "http://127.0.0.1:8000",
            "MAIL_SERVER": "127.0.0.1",
            "MAIL_PORT": str(smtp_port),
            "MAIL_USE_TLS": "false",
            "MAIL_DEFAULT_SENDER": "Acme <keys@portal.example>",
            "MAIL_TIMEOUT": "2",
            "MAIL_RETRY_DELAY": "1",
            "OUTBOX_INTERVAL": "0.3",
        }
        with portal(settings) as url:
            started = time.monotonic()
            response = sign_up_over_http(url, "zoe@example.com")
            took = time.monotonic() - started
            assert response.status_code == 200
            shown = issued_key(response.text)
            [license] = keygen_state(keygen["url"])["licenses"]
            assert license["key"] == shown
            time.sleep(1.0)  # the first attempt fails: nobody listens on the port
            handler = Recorder()
            with smtp_on(smtp_port, handler):
                assert wait_until(lambda: handler.received, timeout=20)
                time.sleep(2.0)  # both workers' couriers keep polling: nothing more arrives
            [received] = handler.received
    message = received.parsed()
    assert message["To"].addresses[0].display_name == "Zoë O'Hara"
    assert shown in text_of(message, "plain") and shown in text_of(message, "html")
    assert took < 5  # SMTP being down cost the signup nothing
