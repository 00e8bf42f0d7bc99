"""The shipped proxy recipes, run for real: deploy/nginx.conf and deploy/Caddyfile in front of the
portal under gunicorn, against an emulator process, all on loopback, with TLS.

Each recipe is the operator's file itself: nginx.conf is rendered the way envsubst does it (only
its ${PORTAL_...} placeholders), the Caddyfile is read by Caddy with its {$PORTAL_...} variables in
the environment. Ports are free loopback ports; the certificate is a self-signed one for localhost.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from doctor import PROBE_HEADER, sign_probe
from guards import CONTENT_SECURITY_POLICY
from support.http import csrf_token_from, issued_key
from support.leaks import KEY_PATTERN, PASSWORD, SECRET_KEY, secret
from support.paths import GUNICORN
from support.processes import free_port, listening_url, process, wait_for_http
from support.proxies import HOST, Proxy, caddy, nginx
from support.servers import Portal, emulator, keygen_state

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

# The portal's access log, with what the proxy passed on (gunicorn.conf.py is left as it is).
ACCESS_LOG_FORMAT = (
    '%(h)s "%(r)s" %(s)s request_id=%({x-request-id}i)s '
    "forwarded_for=%({x-forwarded-for}i)s forwarded_proto=%({x-forwarded-proto}i)s"
)
ONE_YEAR = 31536000


# -- What the proxies stand in front of ------------------------------------------------------


@pytest.fixture(scope="module")
def portal(tmp_path_factory) -> Iterator[Portal]:
    """gunicorn with gunicorn.conf.py, configured like production: secure cookies, behind TLS."""
    with emulator("--slug", "shop") as keygen:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KEYGEN_", "SECRET_KEY"))}
        env.update(
            BIND="127.0.0.1:0",
            WEB_CONCURRENCY="2",
            KEYGEN_API_URL=keygen["url"],
            KEYGEN_ACCOUNT_ID="shop",
            KEYGEN_PRODUCT_TOKEN=keygen["token"],
            KEYGEN_POLICY_ID=keygen["policy"],
            SECRET_KEY=SECRET_KEY,
            COOKIE_SECURE="true",
            TRUSTED_PROXY_HOPS="1",  # behind the proxy, as deploy/ runs it
            RECONCILE_INTERVAL="0",
            DATABASE_URL=f"sqlite:///{tmp_path_factory.mktemp('portal-deploy')}/portal.db",
        )
        args = [GUNICORN, "-c", "gunicorn.conf.py", "--access-logformat", ACCESS_LOG_FORMAT]
        with process("portal", [*args, "app:create_app()"], env) as proc:
            url = listening_url(proc, r"Listening at: (http://127\.0\.0\.1:\d+)")
            wait_for_http(url + "/healthz", process=proc)
            yield Portal(url, url.removeprefix("http://"), keygen, proc.log_path)


# -- The proxies -------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["nginx", "caddy"])
def proxy(request, portal: Portal, certificate) -> Iterator[Proxy]:
    start = {"nginx": nginx, "caddy": caddy}[request.param]
    with start(portal, *certificate) as running:
        yield running


# -- Helpers -----------------------------------------------------------------------------------


def sign_up(proxy: Proxy, email: str, *, referer: str | None = None) -> requests.Response:
    """What a browser does: GET the form, POST it back with the cookie, the token, a Referer."""
    with requests.Session() as browser:
        page = browser.get(proxy.https + "/", verify=str(proxy.cert), timeout=10)
        assert page.status_code == 200
        data = {
            "csrf_token": csrf_token_from(page.text),
            "first_name": "Lois",
            "last_name": "Lane",
            "email": email,
            "password": secret(PASSWORD),
        }
        headers = {"Referer": referer or page.url, "Origin": proxy.https}
        response = browser.post(
            proxy.https + "/", data=data, headers=headers, verify=str(proxy.cert), timeout=30
        )
        for cookie in browser.cookies:  # the session: no log may show it (conftest's scan)
            secret(cookie.value)
        return response


def users_with(portal: Portal, email: str) -> tuple[list[dict], list[dict]]:
    state = keygen_state(portal.keygen["url"])
    users = [user for user in state["users"] if user["email"] == email]
    ids = {user["id"] for user in users}
    return users, [license for license in state["licenses"] if license["owner_id"] in ids]


def portal_line(portal: Portal, marker: str, timeout: float = 5) -> str | None:
    """The portal's access-log line of the request whose path holds `marker`, if it came."""
    deadline = time.monotonic() + timeout
    while True:
        for line in portal.access_lines():
            if marker in line:
                return line
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)


def unique_path() -> tuple[str, str]:
    marker = uuid.uuid4().hex
    return marker, f"/healthz?probe={marker}"


# -- Tests -------------------------------------------------------------------------------------


def test_https_serves_the_form_with_the_portals_headers(proxy):
    response = proxy.get("/")
    assert response.status_code == 200
    csrf_token_from(response.text)
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "secure" in response.headers["Set-Cookie"].lower()


def test_hsts_on_every_answer_and_no_version_in_server(proxy):
    for response in (proxy.get("/"), proxy.get("/no-such-page")):
        hsts = response.headers["Strict-Transport-Security"]
        assert int(re.search(r"max-age=(\d+)", hsts).group(1)) >= ONE_YEAR
        assert not re.search(r"\d", response.headers.get("Server", ""))
        assert "X-Powered-By" not in response.headers
    assert response.status_code == 404


def test_tls_1_2_and_1_3_only(proxy):
    port = int(proxy.https.rsplit(":", 1)[1])

    def handshake(low: ssl.TLSVersion, high: ssl.TLSVersion) -> str:
        context = ssl.create_default_context(cafile=str(proxy.cert))
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client offer old versions
        with warnings.catch_warnings():  # TLS 1.0 and 1.1 are deprecated: that is the point
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version, context.maximum_version = low, high
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=HOST) as tls,
        ):
            return tls.version()

    assert handshake(ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
    assert handshake(ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    with pytest.raises(ssl.SSLError, match="ALERT_PROTOCOL_VERSION"):  # the server said no
        handshake(ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1)


def test_a_signup_through_the_proxy_shows_a_key(proxy, portal):
    email = f"lois.{proxy.name}@example.com"
    response = sign_up(proxy, email)
    assert response.status_code == 200, response.text[-500:]
    key = issued_key(response.text)
    assert KEY_PATTERN.match(key)
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "Strict-Transport-Security" in response.headers
    [user], [license] = users_with(portal, email)
    assert (license["key"], license["owner_id"]) == (key, user["id"])


def test_the_portal_sees_https_so_a_foreign_referer_is_refused(proxy, portal):
    """Flask-WTF checks the Referer only on HTTPS: a 400 here proves X-Forwarded-Proto arrives."""
    email = f"eve.{proxy.name}@example.com"
    response = sign_up(proxy, email, referer="https://evil.example/")
    assert response.status_code == 400
    assert users_with(portal, email) == ([], [])


def test_http_redirects_to_https(proxy):
    response = requests.get(proxy.http + "/some/page?x=1", allow_redirects=False, timeout=10)
    assert response.status_code in (301, 308)
    assert response.headers["Location"] == proxy.https + "/some/page?x=1"
    followed = requests.get(proxy.http + "/", verify=str(proxy.cert), timeout=10)
    assert followed.status_code == 200
    assert followed.url == proxy.https + "/"
    assert followed.history and followed.history[0].status_code in (301, 308)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_large_body_is_refused_before_the_portal(proxy, portal, chunked):
    marker, path = unique_path()
    body = b"first_name=" + b"x" * 100_000
    calls = len(keygen_state(portal.keygen["url"])["requests"])
    data = iter([body[i : i + 8192] for i in range(0, len(body), 8192)]) if chunked else body
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    response = requests.post(
        proxy.https + path.replace("/healthz", "/"),
        data=data,
        headers=headers,
        verify=str(proxy.cert),
        timeout=10,
    )
    # A body of unknown length: nginx counts it and stops at 16 KiB; Caddy asks for a length
    # (411), as a browser always gives one for a form.
    assert response.status_code in ((411, 413) if chunked and proxy.name == "caddy" else (413,))
    assert "Strict-Transport-Security" in response.headers
    assert portal_line(portal, marker, timeout=1) is None, "the body reached the portal"
    assert len(keygen_state(portal.keygen["url"])["requests"]) == calls


def test_the_clients_request_id_reaches_the_portal(proxy, portal):
    request_id = "support-" + uuid.uuid4().hex
    marker, path = unique_path()
    response = proxy.get(path, headers={"X-Request-ID": request_id})
    assert response.status_code == 200
    assert f"request_id={request_id} " in portal_line(portal, marker)
    if proxy.name == "nginx":  # and tells the client which id to quote
        assert response.headers["X-Request-ID"] == request_id

    # None, or a malformed one: the proxy makes one up.
    for headers in ({}, {"X-Request-ID": 'bad "id" with spaces'}):
        marker, path = unique_path()
        assert proxy.get(path, headers=headers).status_code == 200
        line = portal_line(portal, marker)
        assert re.search(r"request_id=[0-9a-f-]{32,36} ", line), line


def verification_token() -> str:
    """A made-up one (the test's own HTTP client logs the URLs it asks for: not a secret)."""
    return "WyJ" + uuid.uuid4().hex + ".Sig" + uuid.uuid4().hex[:20]


def logged(proxy: Proxy, marker: str, timeout: float = 5) -> str:
    """The proxy's log (access and error lines) once it holds ``marker``."""
    deadline = time.monotonic() + timeout
    while marker not in proxy.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    return proxy.log.read_text()


def test_a_verification_token_never_reaches_the_proxys_log(proxy):
    token = verification_token()
    proxy.get(f"/verify/{token}?from=mail")  # the portal answers 404: no email is configured
    # A page whose Referer holds a token (a browser that ignores the portal's Referrer-Policy).
    marker, path = unique_path()
    proxy.get(path, headers={"Referer": f"{proxy.https}/verify/{token}?x=1"})
    # A refused body: nginx logs it as an error, with the request line.
    requests.post(
        f"{proxy.https}/verify/{token}", data=b"x" * 100_000, verify=str(proxy.cert), timeout=10
    )
    log = logged(proxy, marker)
    assert "/verify/[redacted]" in log
    assert token not in log


@pytest.mark.parametrize("start", [nginx, caddy], ids=["nginx", "caddy"])
def test_a_verification_token_never_reaches_the_proxys_error_lines(start, certificate):
    """The portal is down: the proxy logs each failed request as an error, naming it, except a
    verification link's token."""
    gone = Portal("http://127.0.0.1:9", f"127.0.0.1:{free_port()}", {}, Path("/dev/null"))
    with start(gone, *certificate) as proxy:
        marker, path = unique_path()
        assert proxy.get(path).status_code == 502
        token = verification_token()
        assert proxy.get(f"/verify/{token}").status_code == 502
        log = logged(proxy, marker)
        time.sleep(0.5)  # the link's line, if any, comes after the marker's
        log = proxy.log.read_text()
    assert marker in log  # the failure of an ordinary request is logged, with its path
    assert token not in log


def test_the_operators_endpoints_are_not_routed_to_the_public(proxy, portal):
    """/readyz may cost Keygen calls and /metrics tells how the business goes: the orchestrator
    and Prometheus ask the portal directly. The doctor's probe passes only when signed."""
    for path in ("/readyz", "/metrics", "/_doctor"):
        marker = uuid.uuid4().hex
        assert proxy.get(f"{path}?probe={marker}").status_code == 404, path
        assert portal_line(portal, marker, timeout=1) is None, f"{path} reached the portal"
    signed = {PROBE_HEADER: sign_probe(SECRET_KEY)}
    assert proxy.get("/_doctor", headers=signed).json()["scheme"] == "https"


def test_the_forwarded_headers_arrive(proxy, portal):
    """Which hop the portal trusts is its own business (TRUSTED_PROXY_HOPS); the proxy's part is
    to append the peer it saw and to say https."""
    marker, path = unique_path()
    assert proxy.get(path, headers={"X-Forwarded-For": "203.0.113.9"}).status_code == 200
    line = portal_line(portal, marker)
    forwarded_for = re.search(r"forwarded_for=(.*) forwarded_proto=", line).group(1)
    assert forwarded_for.split(",")[-1].strip() == "127.0.0.1"
    assert "forwarded_proto=https" in line


def test_no_tls_handshake_for_an_unknown_name(proxy):
    port = int(proxy.https.rsplit(":", 1)[1])
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # only the server decides
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        pytest.raises(ssl.SSLError),
    ):
        context.wrap_socket(raw, server_hostname="evil.example").close()


def test_an_unknown_host_does_not_reach_the_portal(proxy, portal):
    marker, path = unique_path()
    try:
        response = proxy.get(path, headers={"Host": "evil.example"})
    except requests.ConnectionError:
        pass  # nginx: 444, the connection is closed without an answer
    else:
        assert response.status_code != 200 or "ok" not in response.text
    assert portal_line(portal, marker, timeout=1) is None


def test_caddy_with_its_own_ca_and_no_change_to_the_trust_store(portal, certificate):
    """PORTAL_TLS=internal: the same file, Caddy's own CA, and the host's trust store untouched."""
    with caddy(portal, *certificate, tls="internal") as proxy:
        assert proxy.cert.name == "root.crt"
        response = proxy.get("/")
        assert response.status_code == 200
        csrf_token_from(response.text)
        log = proxy.log.read_text(encoding="utf-8", errors="replace")
        assert "trust store installation disabled" in log


def test_nginx_limits_form_submissions_per_address(portal, certificate):
    """A fresh nginx (its own counters): 10 a minute with a burst of 20, then 429 at once."""
    with nginx(portal, *certificate) as proxy:
        statuses = []
        for _ in range(30):
            response = requests.post(
                proxy.https + "/", data={"x": "1"}, verify=str(proxy.cert), timeout=10
            )
            statuses.append(response.status_code)
            if response.status_code == 429:
                assert "Strict-Transport-Security" in response.headers
                break
        assert statuses[-1] == 429, statuses
        assert 20 <= statuses.index(429) <= 22, statuses  # the burst, and maybe one refill
        assert proxy.get("/").status_code == 200  # pages are not counted


def test_the_traefik_recipe_keeps_links_and_operators_endpoints_to_itself():
    """Traefik cannot run here (not in Debian): its recipe is read instead. The operators'
    endpoints match no route; links leave no access-log line; no Referer is logged."""
    from support.paths import ROOT

    static = (ROOT / "deploy" / "traefik.yml").read_text(encoding="utf-8")
    dynamic = (ROOT / "deploy" / "traefik" / "dynamic.yml").read_text(encoding="utf-8")
    portal_rule = re.search(r"portal:\n\s+rule: >-\n((?:\s{8}.*\n)+)", dynamic).group(1)
    for excluded in ("!Path(`/readyz`)", "!Path(`/metrics`)", "!Path(`/_doctor`)"):
        assert excluded in portal_rule
    assert "HeaderRegexp(`X-Portal-Doctor`, `.+`)" in portal_rule
    link_router = dynamic[dynamic.index("portal-verification-link:") :]
    assert "PathPrefix(`/verify/`)" in link_router
    assert re.search(r"observability:\n\s+accessLogs: false", link_router)
    assert "RequestRefererHeader: drop" in static and "Referer: keep" not in static
