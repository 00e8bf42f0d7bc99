"""Durability of the deployed portal: processes killed at the worst moments, 50 copies of one
form at once, two instances sharing PostgreSQL, and Keygen stalling (F9, F13, F14, F15, F17)."""

import re
import threading
import time

import pytest
import requests

from support import servers
from support.http import csrf_token_from, issued_key
from support.leaks import KEY_PATTERN, PASSWORD
from support.servers import emulator, keygen_state, new_postgres_database, portal

pytestmark = pytest.mark.slow


def settings_for(keygen: dict, **changes: str) -> dict[str, str]:
    """Short timeouts, and no per-client limits: these tests send many forms from one address at
    once (the limits are tested elsewhere)."""
    quick = {
        "KEYGEN_CONNECT_TIMEOUT": "1",
        "KEYGEN_READ_TIMEOUT": "2",
        "SIGNUP_DEADLINE": "2",
        "RATELIMIT_PER_IP": "1000/minute",
        "RATELIMIT_PER_EMAIL": "1000/minute",
        "RATELIMIT_PER_DOMAIN": "off",
        "KEYGEN_MAX_RPS": "1000",
    }
    return servers.settings_for(keygen, **{**quick, **changes})


class Browser:
    """One person's browser: a cookie jar, and the form as it was served to them."""

    def __init__(self, url: str, email: str = "lana@example.com"):
        self.session = requests.Session()
        page = self.session.get(url + "/", timeout=10)
        self.form = {
            "csrf_token": csrf_token_from(page.text),
            "nonce": re.search(r'name="nonce" type="hidden" value="([^"]+)"', page.text).group(1),
            "first_name": "Lana",
            "last_name": "Lang",
            "email": email,
            "password": PASSWORD,
        }

    def submit(self, url: str) -> requests.Response:
        """Send the same form again, as a reload or the back button does."""
        return self.session.post(url + "/", data=self.form, timeout=30)


def wait_until(predicate, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def one_user_and_license(keygen: dict) -> tuple[dict, dict]:
    state = keygen_state(keygen["url"])
    assert len(state["users"]) == 1, state["users"]
    assert len(state["licenses"]) == 1, state["licenses"]
    [user], [license] = state["users"], state["licenses"]
    assert license["owner_id"] == user["id"]
    assert license["policy_id"] == keygen["policy"]
    return user, license


@pytest.mark.parametrize("crash_after", ["create_user", "create_license"])
def test_f13_f14_a_killed_process_is_finished_after_restart_and_no_key_is_lost(
    crash_after, tmp_path
):
    database = {"DATABASE_URL": f"sqlite:///{tmp_path}/portal.db", "WEB_CONCURRENCY": "1"}
    with emulator() as keygen:
        crashing = settings_for(keygen, PORTAL_TEST_CRASH_AFTER=crash_after, **database)
        with portal(crashing, app="support.crashing:create_app()") as url:
            browser = Browser(url)
            with pytest.raises(requests.ConnectionError):
                browser.submit(url)  # the worker died mid-request
            state = keygen_state(keygen["url"])
            assert len(state["users"]) == 1
            assert len(state["licenses"]) == (1 if crash_after == "create_license" else 0)

        restarted = settings_for(keygen, RECONCILE_INTERVAL="0.5", **database)
        with portal(restarted) as url:
            # The dead request's lease runs out, then the reconciler finishes the signup.
            wait_until(
                lambda: _issued(tmp_path), timeout=30, what="the reconciler to issue the license"
            )
            _, license = one_user_and_license(keygen)
            # The person reloads the page: the key nobody has seen yet is shown, once.
            again = browser.submit(url)
            assert again.status_code == 200
            assert issued_key(again.text) == license["key"]
            third = browser.submit(url)
            assert "Your signup is already complete" in third.text
            assert license["key"] not in third.text
            one_user_and_license(keygen)


def _issued(tmp_path) -> bool:
    from journal import Journal, State

    journal = Journal(f"sqlite:///{tmp_path}/portal.db")
    try:
        return [row.state for row in journal.all()] == [State.ISSUED]
    finally:
        journal.engine.dispose()


def test_fifty_copies_of_one_form_at_once_create_one_user_and_license(tmp_path):
    with emulator() as keygen, portal(settings_for(keygen, SIGNUP_DEADLINE="10")) as url:
        browser = Browser(url)
        responses: list = []
        start = threading.Barrier(50)

        def post():
            start.wait(timeout=30)
            responses.append(browser.submit(url))

        threads = [threading.Thread(target=post) for _ in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        _, license = one_user_and_license(keygen)
        assert len(responses) == 50
        statuses = sorted({r.status_code for r in responses})
        assert statuses == [200], statuses
        shown = {issued_key(r.text) for r in responses if 'id="license-key"' in r.text}
        assert shown == {license["key"]}


def test_f17_two_instances_sharing_postgresql_create_once(postgres_server):
    shared = {"DATABASE_URL": new_postgres_database(postgres_server), "SIGNUP_DEADLINE": "10"}
    with emulator() as keygen:
        keygen_latency = {"route": "users.create", "delay": 0.5}
        requests.post(keygen["url"] + "/_emulator/faults", json=keygen_latency, timeout=5)
        with (
            portal(settings_for(keygen, **shared)) as first,
            portal(settings_for(keygen, **shared)) as second,
        ):
            browser = Browser(first)
            responses = {}
            threads = [
                threading.Thread(target=lambda u=u: responses.update({u: browser.submit(u)}))
                for u in (first, second)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
            _, license = one_user_and_license(keygen)
            assert {r.status_code for r in responses.values()} == {200}
            for response in responses.values():
                assert KEY_PATTERN.match(issued_key(response.text))
                assert issued_key(response.text) == license["key"]


def test_f9_a_stalled_keygen_neither_hangs_signups_nor_the_pages():
    with emulator() as keygen:
        for route in ("users.create", "users.show"):
            stall = {"route": route, "delay": 5, "times": None}
            requests.post(keygen["url"] + "/_emulator/faults", json=stall, timeout=5)
        with portal(settings_for(keygen, WEB_CONCURRENCY="1")) as url:
            browsers = [Browser(url, f"u{n}@example.com") for n in range(8)]
            timings: list[float] = []

            statuses: list[int] = []

            def stuck(browser):
                started = time.monotonic()
                statuses.append(browser.submit(url).status_code)
                timings.append(time.monotonic() - started)

            threads = [threading.Thread(target=stuck, args=(b,)) for b in browsers]
            for thread in threads:
                thread.start()
            time.sleep(0.5)  # every signup thread is now waiting on Keygen
            for _ in range(5):
                started = time.monotonic()
                assert requests.get(url + "/healthz", timeout=5).status_code == 200
                assert requests.get(url + "/", timeout=5).status_code == 200
                assert time.monotonic() - started < 1.0
            for thread in threads:
                thread.join(timeout=60)
            # The deadline (2 s) plus the grace for undoing, never gunicorn's 30 s kill.
            assert statuses == [503] * 8  # "try again" or "busy", never a hang or an error
            assert len(timings) == 8
            assert max(timings) < 8
