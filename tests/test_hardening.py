"""Headers and cookies the portal sets itself, in-process: the __Host- session cookie, HSTS only
over HTTPS, debug never on, cross-site posts and unsupported methods refused. The same checks
through gunicorn and nginx with TLS are in test_security.py."""

from __future__ import annotations

import io
from urllib.parse import urlencode

import pytest

from app import create_app
from config import load_settings
from support.http import csrf_token_from, form_data
from support.portal import make_settings

HTTPS = "https://localhost"


def test_with_secure_cookies_the_session_cookie_is_host_prefixed(keygen):
    client = create_app(make_settings(keygen, cookie_secure=True)).test_client()
    cookie = client.get("/", base_url=HTTPS).headers["Set-Cookie"]
    name, _, attributes = cookie.partition("=")
    assert name == "__Host-session"
    parts = {part.strip().split("=")[0].lower() for part in attributes.split(";")}
    assert {"secure", "httponly", "path"} <= parts
    assert "samesite=lax" in cookie.lower() and "path=/;" in cookie.lower() + ";"
    assert "domain" not in parts


def test_on_plain_http_the_cookie_has_no_prefix(client):
    """Browsers drop a __Host- cookie that is not Secure: the http demo keeps a plain name."""
    assert client.get("/").headers["Set-Cookie"].startswith("session=")


def test_hsts_only_over_https(keygen):
    client = create_app(make_settings(keygen, trusted_proxy_hops=1)).test_client()
    assert "Strict-Transport-Security" not in client.get("/").headers
    for response in (
        client.get("/", base_url=HTTPS),
        client.get("/nope", base_url=HTTPS),
        client.get("/", headers={"X-Forwarded-Proto": "https"}),  # from a trusted proxy
    ):
        assert response.headers["Strict-Transport-Security"] == "max-age=63072000"
    untrusted = {"REMOTE_ADDR": "10.9.8.7"}  # the same header from anyone else means nothing
    spoofed = client.get("/", headers={"X-Forwarded-Proto": "https"}, environ_base=untrusted)
    assert "Strict-Transport-Security" not in spoofed.headers


def test_hsts_seconds_is_configurable_and_0_turns_it_off(keygen):
    from support.portal import GOOD

    assert load_settings({**GOOD, "HSTS_SECONDS": "31536000"}).hsts_seconds == 31536000
    off = create_app(make_settings(keygen, hsts_seconds=0)).test_client()
    assert "Strict-Transport-Security" not in off.get("/", base_url=HTTPS).headers


def test_debug_is_never_on(keygen, monkeypatch):
    monkeypatch.setenv("FLASK_DEBUG", "1")
    app = create_app(make_settings(keygen))
    assert app.debug is False

    @app.get("/_boom")
    def boom():
        raise RuntimeError("secret detail")

    page = app.test_client().get("/_boom")
    assert page.status_code == 500
    assert "Traceback" not in page.get_data(as_text=True)
    assert "secret detail" not in page.get_data(as_text=True)


def test_a_cross_site_post_is_403_before_the_form_is_read(client, keygen):
    page = client.get("/").get_data(as_text=True)
    data = {**form_data(), "csrf_token": csrf_token_from(page)}
    refused = client.post("/", data=data, headers={"Sec-Fetch-Site": "cross-site"})
    assert refused.status_code == 403
    assert "This form can only be sent from its own page." in refused.get_data(as_text=True)
    assert keygen.calls() == []
    same = client.post("/", data=data, headers={"Sec-Fetch-Site": "same-origin"})
    assert same.status_code == 200


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_only_get_and_post(client, method):
    response = client.open("/", method=method)
    assert response.status_code == 405
    assert set(response.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS", "POST"}


def chunked(client, body: bytes):
    """A POST with no Content-Length, as gunicorn hands on a chunked request."""
    environ = {
        "wsgi.input": io.BytesIO(body),
        "wsgi.input_terminated": True,
        "CONTENT_TYPE": "application/x-www-form-urlencoded",
        "HTTP_TRANSFER_ENCODING": "chunked",
    }
    return client.post("/", environ_overrides=environ)


def test_a_chunked_body_over_the_limit_is_413_not_cut_short(client, keygen):
    """Werkzeug alone would parse the first 16 KiB and drop the rest without a word."""
    page = client.get("/").get_data(as_text=True)
    fields = {**form_data(), "csrf_token": csrf_token_from(page)}
    body = urlencode(fields).encode()
    assert chunked(client, body + b"&padding=" + b"x" * 1_000_000).status_code == 413
    assert keygen.calls() == []
    assert chunked(client, body).status_code == 200  # a chunked form of normal size is fine
