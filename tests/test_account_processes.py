"""Self-service under gunicorn with two workers against a separate emulator process: the sign-in
limits hold across workers only with Redis, a sign-in made in one worker is known in the other,
and signing out revokes the token at Keygen."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from support.http import csrf_token_from
from support.leaks import PASSWORD, secret
from support.servers import emulator, keygen_state, portal, redis_server, settings_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
TWO_SINGLE_THREADED_WORKERS = {
    "WEB_CONCURRENCY": "2",
    "GUNICORN_THREADS": "1",
    "GUNICORN_CMD_ARGS": "--worker-connections 1",
}


def seed(keygen: dict, email: str) -> str:
    """A user with a license and a machine, made with the product token; returns the user id."""
    base = f"{keygen['url']}/v1/accounts/{keygen['account']}"
    headers = {"Authorization": f"Bearer {keygen['token']}"}
    attributes = {"email": email, "password": PASSWORD}
    user = requests.post(
        base + "/users", json={"data": {"type": "users", "attributes": attributes}}, headers=headers
    ).json()["data"]["id"]
    relationships = {
        "policy": {"data": {"type": "policies", "id": keygen["policy"]}},
        "owner": {"data": {"type": "users", "id": user}},
    }
    body = {"data": {"type": "licenses", "relationships": relationships}}
    license_id = requests.post(base + "/licenses", json=body, headers=headers).json()["data"]["id"]
    machine = {"license": license_id, "name": "Laptop", "fingerprint": "fp-1"}
    requests.post(keygen["url"] + "/_emulator/machines", json=machine, timeout=5)
    keygen_state(keygen["url"])  # the keys are secrets of the run
    return user


def attempt(url: str, email: str, password: str) -> int:
    with requests.Session() as browser:
        page = browser.get(url + "/sign-in", timeout=10)
        data = {"csrf_token": csrf_token_from(page.text), "email": email, "password": password}
        return browser.post(
            url + "/sign-in", data=data, allow_redirects=False, timeout=30
        ).status_code


@pytest.mark.parametrize("storage", ["memory", "redis"])
def test_sign_in_limits_hold_across_two_workers_only_with_redis(storage):
    with redis_server() as redis_url, emulator() as keygen:
        seed(keygen, "clark@example.com")
        uri = {"memory": "memory://", "redis": redis_url}[storage]
        env = settings_for(
            keygen,
            RATELIMIT_STORAGE_URI=uri,
            RATELIMIT_SIGN_IN_PER_EMAIL="3/minute",
            RATELIMIT_SIGN_IN_PER_IP="100/minute",
        )
        with portal({**env, **TWO_SINGLE_THREADED_WORKERS}) as url:
            with ThreadPoolExecutor(6) as pool:
                tries = [pool.submit(attempt, url, "clark@example.com", "wrong") for _ in range(6)]
                statuses = sorted(future.result() for future in tries)
            calls = [
                r for r in keygen_state(keygen["url"])["requests"] if r["route"] == "tokens.create"
            ]
    if storage == "redis":
        assert statuses == [422] * 3 + [429] * 3
        assert len(calls) == 3
    else:  # each worker counts on its own: the test can tell the difference
        assert statuses.count(422) > 3, statuses


def test_a_sign_in_holds_across_workers_and_signing_out_revokes_it_at_keygen():
    with redis_server() as redis_url, emulator() as keygen:
        user = seed(keygen, "clark@example.com")
        env = settings_for(keygen, RATELIMIT_STORAGE_URI=redis_url)
        with portal({**env, **TWO_SINGLE_THREADED_WORKERS}) as url:
            browser = requests.Session()
            page = browser.get(url + "/sign-in", timeout=10)
            data = {"csrf_token": csrf_token_from(page.text), "email": "clark@example.com"}
            signed = browser.post(url + "/sign-in", data={**data, "password": PASSWORD}, timeout=30)
            assert signed.status_code == 200 and "Laptop" in signed.text
            cookie = secret(browser.cookies.get("session"))
            with ThreadPoolExecutor(4) as pool:  # new connections: both workers answer
                pages = list(pool.map(lambda _: _account(url, cookie), range(8)))
            assert all("Laptop" in page for page in pages)
            tokens = [t for t in keygen_state(keygen["url"])["tokens"] if t["bearer_id"] == user]
            assert len(tokens) == 1
            token = csrf_token_from(pages[0])
            out = browser.post(url + "/sign-out", data={"csrf_token": token}, timeout=30)
            assert out.status_code == 200 and "You have signed out." in out.text
            state = keygen_state(keygen["url"])
            assert [t for t in state["tokens"] if t["bearer_id"] == user] == []
            assert _account(url, cookie, follow=False) == "redirect"
            assert not re.search(r"user-[0-9a-f]{64}v3", str(state))


def _account(url: str, cookie: str, *, follow: bool = True) -> str:
    with requests.Session() as other:
        other.cookies.set("session", cookie)
        response = other.get(url + "/account", allow_redirects=follow, timeout=30)
        return "redirect" if response.status_code == 303 else response.text
