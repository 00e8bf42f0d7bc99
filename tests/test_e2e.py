"""The portal as deployed: gunicorn with gunicorn.conf.py, talking over HTTP to an emulator that
runs as a separate process, configured only through environment variables."""

import os
import re
import selectors
import socket
import subprocess
import time
from collections import deque

import pytest
import requests

import http_worker
from support.http import issued_key, sign_up_over_http
from support.leaks import KEY_PATTERN, SECRET_KEY
from support.paths import GUNICORN, LOG_DIR, ROOT
from support.processes import free_port
from support.servers import emulator, keygen_state, portal


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flags", "account_by", "version"),
    [
        (["--slug", "shop", "--protected"], "slug", "1.8"),
        (["--slug", "old-shop", "--api-version", "1.5"], "id", "1.5"),
    ],
    ids=["protected-account-by-slug", "account-pinned-to-1.5"],
)
def test_signup_through_gunicorn_against_a_separate_emulator(flags, account_by, version):
    with emulator(*flags) as keygen:
        account = flags[1] if account_by == "slug" else keygen["account"]
        settings = {
            "KEYGEN_API_URL": keygen["url"],
            "KEYGEN_ACCOUNT_ID": account,
            "KEYGEN_PRODUCT_TOKEN": keygen["token"],
            "KEYGEN_POLICY_ID": keygen["policy"],
            "SECRET_KEY": SECRET_KEY,
        }
        with portal(settings) as url:
            response = sign_up_over_http(url, "Zoe.OHara@Example.com")
            assert response.status_code == 200
            key = issued_key(response.text)
            assert KEY_PATTERN.match(key)
            assert response.headers["Cache-Control"] == "no-store"
            state = keygen_state(keygen["url"])
            [user] = state["users"]
            [license] = state["licenses"]
            assert user["email"] == "zoe.ohara@example.com"
            assert (user["first_name"], user["last_name"]) == ("Zoë", "O'Hara")
            assert license["key"] == key
            assert license["owner_id"] == user["id"]
            assert license["policy_id"] == keygen["policy"]
            # Whatever the account is pinned to, the portal asks for 1.7 on every call.
            assert {r["keygen_version"] for r in state["requests"]} == {"1.7"}

            again = sign_up_over_http(url, "ZOE.OHARA@example.com")
            assert again.status_code == 422
            assert "An account with this email already exists." in again.text
            state = keygen_state(keygen["url"])
            assert (len(state["users"]), len(state["licenses"])) == (1, 1)


def test_an_account_pinned_to_1_5_answers_in_1_5_without_our_header():
    """Proves the emulator fixture above really is pinned: the portal's header is what wins."""
    with emulator("--api-version", "1.5") as keygen:
        headers = {
            "Authorization": f"Bearer {keygen['token']}",
            "Accept": "application/vnd.api+json",
        }
        base = f"{keygen['url']}/v1/accounts/{keygen['account']}"
        response = requests.get(base + "/me", headers=headers, timeout=5)
        assert response.headers["Keygen-Version"] == "1.5"


def test_gunicorn_refuses_to_start_and_names_every_missing_setting():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEYGEN_", "SECRET_KEY"))}
    env["BIND"] = f"127.0.0.1:{free_port()}"
    result = subprocess.run(
        [GUNICORN, "-c", "gunicorn.conf.py", "app:create_app()"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    for name in ("KEYGEN_ACCOUNT_ID", "KEYGEN_PRODUCT_TOKEN", "KEYGEN_POLICY_ID", "SECRET_KEY"):
        assert re.search(rf"{name} is required but not set", result.stderr)


@pytest.mark.slow
def test_every_portal_log_line_is_json_and_requests_carry_their_id():
    import json

    with emulator() as keygen:
        settings = {
            "KEYGEN_API_URL": keygen["url"],
            "KEYGEN_ACCOUNT_ID": keygen["account"],
            "KEYGEN_PRODUCT_TOKEN": keygen["token"],
            "KEYGEN_POLICY_ID": "00000000-0000-4000-8000-000000000000",  # not the product's
            "SECRET_KEY": SECRET_KEY,
        }
        with portal(settings) as url:
            response = sign_up_over_http(url, "json@example.com")
            assert response.status_code == 503
            request_id = response.headers["X-Request-ID"]
            log_path = max(LOG_DIR.glob("portal-*.log"), key=lambda p: p.stat().st_mtime)
        entries = [json.loads(line) for line in log_path.read_text().splitlines() if line]
    assert {"time", "level", "logger", "message", "request_id"} <= set(entries[0])
    mine = [e for e in entries if e["request_id"] == request_id]
    loggers = {e["logger"] for e in mine}
    assert {"portal.signup_run", "gunicorn.access"} <= loggers
    [refused] = [e for e in mine if e["logger"] == "portal.signup_run" and e["level"] == "ERROR"]
    assert refused["signup_id"] and refused["keygen_request_id"]
    accesses = [e for e in entries if e["logger"] == "gunicorn.access"]
    assert accesses and all(e["request_id"] for e in accesses)
    # Lines no request caused (gunicorn starting, booting workers) carry their process's id.
    assert all(e["request_id"] for e in entries), [e for e in entries if not e["request_id"]]
    starting = next(e for e in entries if e["message"].startswith("Starting gunicorn"))
    assert re.fullmatch(r"pid-\d+", starting["request_id"])


def answered_and_held(url: str, path: str = "/healthz") -> socket.socket:
    """A client that asks to close, reads the whole answer, and keeps its own side open."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    answer = b""
    while chunk := sock.recv(65536):  # the server's FIN ends the answer
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:100]
    return sock


@pytest.mark.slow
def test_clients_that_keep_their_side_open_do_not_hold_up_other_requests():
    """gunicorn's threaded worker waits on its main thread, up to 2 s per connection, for the
    client's close; three such clients stalled the next request of the worker for 6 s."""
    with emulator() as keygen, portal({**portal_settings(keygen), "WEB_CONCURRENCY": "1"}) as url:
        held = [answered_and_held(url) for _ in range(3)]
        started = time.monotonic()
        assert requests.get(url + "/healthz", timeout=10).status_code == 200
        assert time.monotonic() - started < 1.0
        for sock in held:
            sock.close()


@pytest.mark.slow
def test_a_closing_connection_still_drains_what_the_client_sends_then_is_cut_off():
    """The close stays graceful (RFC 9112, section 9.6): bytes the client sends after the
    answer are read and dropped, not answered with a reset; a client that never closes is cut
    off after http_worker.LINGER_SECONDS."""
    with emulator() as keygen, portal(portal_settings(keygen)) as url:
        sock = answered_and_held(url)
        sock.sendall(b"x" * 10_000)
        time.sleep(0.3)
        sock.sendall(b"x" * 10_000)  # no reset came back: the server read and dropped them
        time.sleep(http_worker.LINGER_SECONDS + 0.5)
        sock.sendall(b"x" * 10_000)
        time.sleep(0.3)
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            sock.sendall(b"x" * 10_000)  # the server's socket is gone, and the kernel said so
        sock.close()


def test_a_connection_whose_client_has_closed_is_closed_at_once():
    """The worker's loop is left out when there is nothing to wait for: the client read the
    answer and closed, so the socket closes on the spot, counting against no limit."""
    worker = http_worker.ThreadWorker.__new__(http_worker.ThreadWorker)
    worker.poller, worker.lingering, worker.nr_conns = selectors.DefaultSelector(), deque(), 0
    ours, clients = socket.socketpair()
    clients.close()
    worker.linger(ours)
    assert ours.fileno() == -1
    assert (worker.nr_conns, len(worker.lingering), worker.poller.get_map()) == (0, 0, {})
    ours, client = socket.socketpair()  # a client still open is waited for, as before
    worker.linger(ours)
    assert ours.fileno() != -1 and worker.nr_conns == 1 and len(worker.poller.get_map()) == 1
    assert client.recv(1) == b""  # our FIN went out at once
    client.close()
    worker.lingering[0].drain(ours)
    assert ours.fileno() == -1 and worker.nr_conns == 0


@pytest.mark.slow
def test_closing_connections_count_against_worker_connections():
    """Lingering sockets stay within gunicorn's limit on connections (accepting waits), so
    clients that never close cannot run the worker out of file descriptors."""
    limits = {"WEB_CONCURRENCY": "1", "GUNICORN_CMD_ARGS": "--worker-connections 20"}
    with emulator() as keygen, portal({**portal_settings(keygen), **limits}) as url:
        held = [answered_and_held(url) for _ in range(20)]
        started = time.monotonic()
        assert requests.get(url + "/healthz", timeout=10).status_code == 200
        waited = time.monotonic() - started
        assert 0.5 < waited < http_worker.LINGER_SECONDS + 2.5, waited
        for sock in held:
            sock.close()


def portal_settings(keygen: dict) -> dict[str, str]:
    return {
        "KEYGEN_API_URL": keygen["url"],
        "KEYGEN_ACCOUNT_ID": keygen["account"],
        "KEYGEN_PRODUCT_TOKEN": keygen["token"],
        "KEYGEN_POLICY_ID": keygen["policy"],
        "SECRET_KEY": SECRET_KEY,
    }
