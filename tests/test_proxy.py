"""Which client the portal believes it is talking to: X-Forwarded-* only from trusted proxies,
only as many hops as configured, and only the Host names it serves (S33, S34, S36)."""

from __future__ import annotations

import io
import uuid

import pytest
import requests
from flask import request

from app import create_app
from config import ConfigError, load_settings
from support.http import csrf_token_from, form_data
from support.leaks import SECRET_KEY
from support.portal import make_settings
from support.processes import require
from support.proxies import NGINX, nginx
from support.servers import emulator, keygen_state, running_portal

SPOOFED = {"X-Forwarded-For": "6.6.6.6, 203.0.113.7", "X-Forwarded-Proto": "https"}
UNTRUSTED_PEER = {"REMOTE_ADDR": "10.1.2.3"}


def portal_with(keygen, **changes):
    app = create_app(make_settings(keygen, **changes))

    @app.get("/_who")
    def who():
        return {"addr": request.remote_addr, "scheme": request.scheme, "host": request.host}

    return app, app.test_client()


def test_without_hops_forwarded_headers_are_ignored(keygen):
    _, client = portal_with(keygen)
    seen = client.get("/_who", headers=SPOOFED).get_json()
    assert seen["addr"] == "127.0.0.1"
    assert seen["scheme"] == "http"


def test_one_hop_from_a_trusted_peer_takes_the_last_entry(keygen):
    _, client = portal_with(keygen, trusted_proxy_hops=1)
    seen = client.get("/_who", headers=SPOOFED).get_json()
    assert seen["addr"] == "203.0.113.7"  # what our proxy appended, never what the client said
    assert seen["scheme"] == "https"


def test_two_hops_from_a_trusted_network(keygen):
    _, client = portal_with(keygen, trusted_proxy_hops=2, trusted_proxies=("10.0.0.0/8",))
    headers = {"X-Forwarded-For": "6.6.6.6, 198.51.100.4, 10.9.9.9"}
    seen = client.get("/_who", headers=headers, environ_base=UNTRUSTED_PEER).get_json()
    assert seen["addr"] == "198.51.100.4"


def test_an_untrusted_peer_cannot_claim_an_address(keygen):
    _, client = portal_with(keygen, trusted_proxy_hops=1)
    seen = client.get("/_who", headers=SPOOFED, environ_base=UNTRUSTED_PEER).get_json()
    assert seen == {"addr": "10.1.2.3", "scheme": "http", "host": "localhost"}


def test_a_foreign_host_gets_400(keygen):
    _, client = portal_with(keygen, trusted_hosts=("portal.example.com",))
    assert client.get("/", headers={"Host": "evil.example"}).status_code == 400
    assert client.get("/", headers={"Host": "portal.example.com:8443"}).status_code == 200


def test_a_foreign_host_with_another_error_gets_that_status_and_no_page(keygen):
    """An error page builds URLs from the Host: for a foreign one it must not try (it was a 500)."""
    _, client = portal_with(keygen, trusted_hosts=("portal.example.com",))
    chunked = {
        "HTTP_HOST": "evil.example",
        "HTTP_TRANSFER_ENCODING": "chunked",
        "CONTENT_LENGTH": "",
        "wsgi.input": io.BytesIO(b"x" * 100_000),
    }
    big = client.post("/", environ_overrides=chunked)
    assert big.status_code in (400, 413)
    assert big.mimetype == "text/plain"


def test_spoofed_addresses_share_one_bucket_but_real_clients_do_not(keygen):
    _, client = portal_with(keygen, trusted_proxy_hops=1, ratelimit_per_ip="1/minute")

    def post(forwarded_for: str, peer: dict) -> int:
        page = client.get("/")
        data = form_data(email=f"{uuid.uuid4().hex[:8]}@example.com")
        data["csrf_token"] = csrf_token_from(page.get_data(as_text=True))
        headers = {"X-Forwarded-For": forwarded_for}
        return client.post("/", data=data, headers=headers, environ_base=peer).status_code

    trusted = {"REMOTE_ADDR": "127.0.0.1"}
    assert post("198.51.100.1", trusted) == 200
    assert post("198.51.100.2", trusted) == 200  # another client behind our proxy
    assert post("198.51.100.3", UNTRUSTED_PEER) == 200
    assert post("198.51.100.4", UNTRUSTED_PEER) == 429  # the same peer, whatever it claims


def test_metrics_still_refuses_what_came_through_a_proxy(keygen):
    _, client = portal_with(keygen, trusted_proxy_hops=1)
    assert client.get("/metrics").status_code == 200
    assert client.get("/metrics", headers={"X-Forwarded-For": "127.0.0.1"}).status_code == 404


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("TRUSTED_PROXY_HOPS", "-1", "TRUSTED_PROXY_HOPS must be the number of proxies"),
        ("TRUSTED_PROXIES", "10.0.0.0/33", "TRUSTED_PROXIES must be IP addresses or networks"),
        ("TRUSTED_HOSTS", "portal.example.com:443", "TRUSTED_HOSTS must be host names without"),
    ],
)
def test_bad_proxy_settings_refuse_to_start(name, value, problem):
    from support.portal import GOOD

    with pytest.raises(ConfigError) as caught:
        load_settings({**GOOD, name: value})
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


def test_proxy_settings_are_parsed():
    from support.portal import GOOD

    settings = load_settings(
        {
            **GOOD,
            "TRUSTED_PROXY_HOPS": "1",
            "TRUSTED_PROXIES": "172.16.0.0/12, ::1",
            "TRUSTED_HOSTS": "Portal.Example.com,.example.org",
        }
    )
    assert settings.trusted_proxy_hops == 1
    assert settings.trusted_proxies == ("172.16.0.0/12", "::1/128")
    assert settings.trusted_hosts == ("portal.example.com", ".example.org")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_s33_through_nginx_the_limit_keys_on_the_address_nginx_saw(certificate):
    """Random X-Forwarded-For from the client changes nothing: nginx appends its peer, and the
    portal (one trusted hop) counts that."""
    require(NGINX is not None, "nginx")
    with emulator("--slug", "shop") as keygen:
        env = {
            "KEYGEN_API_URL": keygen["url"],
            "KEYGEN_ACCOUNT_ID": "shop",
            "KEYGEN_PRODUCT_TOKEN": keygen["token"],
            "KEYGEN_POLICY_ID": keygen["policy"],
            "SECRET_KEY": SECRET_KEY,
            "BIND": "127.0.0.1:0",
            "WEB_CONCURRENCY": "1",
            "COOKIE_SECURE": "true",
            "RECONCILE_INTERVAL": "0",
            "TRUSTED_PROXY_HOPS": "1",
            "TRUSTED_HOSTS": "localhost,127.0.0.1",
            "RATELIMIT_PER_IP": "3/minute",
        }
        with running_portal(env, keygen) as portal, nginx(portal, *certificate) as proxy:
            statuses = []
            for n in range(5):
                spoof = {"X-Forwarded-For": f"198.51.100.{n}"}
                with requests.Session() as browser:
                    browser.headers.update(spoof)
                    statuses.append(sign_up_with(browser, proxy, f"s33-{n}@example.com"))
            assert statuses == [200, 200, 200, 429, 429]
            calls = keygen_state(keygen["url"])["requests"]
            assert len([call for call in calls if call["route"] == "users.create"]) == 3


def sign_up_with(browser: requests.Session, proxy, email: str) -> int:
    page = browser.get(proxy.https + "/", verify=str(proxy.cert), timeout=10)
    data = form_data(email=email)
    data["csrf_token"] = csrf_token_from(page.text)
    response = browser.post(
        proxy.https + "/",
        data=data,
        headers={"Referer": page.url},
        verify=str(proxy.cert),
        timeout=30,
    )
    return response.status_code
