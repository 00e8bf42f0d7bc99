"""Abuse protection: rate limits per address and per email (S33, S37, S39), the
honeypot (S38) and the minimum time to fill in the form. Every refusal calls Keygen zero times."""

from __future__ import annotations

import json
import re
import socket
import sys
import threading
import time
import uuid

import pytest
import redis
import requests
from flask import Flask

from app import create_app
from config import ConfigError, load_settings
from protection import FillTimer, LimiterUnavailable, LimitReached, RateLimits
from services import services
from support.http import csrf_token_from, form_data, hidden
from support.leaks import PASSWORD
from support.paths import ROOT
from support.portal import make_settings
from support.processes import free_port
from support.servers import emulator, keygen_state, portal, redis_server, settings_for

HONEYPOT_PAGE = "We are finishing your signup"
TOO_MANY = "Too many attempts"


def app_with(keygen, **changes):
    return create_app(make_settings(keygen, **changes))


def submit(client, peer: str = "127.0.0.1", **changes):
    """GET the form and POST it back from the address `peer`, with the fields served."""
    environ = {"REMOTE_ADDR": peer}
    page = client.get("/", environ_base=environ).get_data(as_text=True)
    data = form_data(**changes)
    data["csrf_token"] = csrf_token_from(page)
    data.setdefault("nonce", hidden(page, "nonce"))
    data.setdefault("served", hidden(page, "served"))
    return client.post("/", data=data, environ_base=environ)


def emails(n: int) -> list[str]:
    return [f"user{i}-{uuid.uuid4().hex[:6]}@example.com" for i in range(n)]


# -- Rate limits -------------------------------------------------------------------------------


def test_per_address_limit_answers_429_and_calls_keygen_no_more(keygen):
    client = app_with(keygen, ratelimit_per_ip="3/minute").test_client()
    statuses = [submit(client, email=email).status_code for email in emails(5)]
    assert statuses == [200, 200, 200, 429, 429]
    assert len(keygen.calls("users.create")) == 3
    refused = submit(client, email="late@example.com")
    assert TOO_MANY in refused.get_data(as_text=True)
    assert "Retry-After" not in refused.headers  # nothing precise to schedule retries against
    assert "X-RateLimit-Remaining" not in refused.headers


def test_per_email_limit_holds_across_addresses(keygen):
    client = app_with(keygen, ratelimit_per_email="2/hour").test_client()
    first = submit(client, "198.51.100.1", email="lois@example.com")
    second = submit(client, "198.51.100.2", email="Lois@Example.com")  # the same address
    assert (first.status_code, second.status_code) == (200, 422)  # issued, then "taken"
    calls = len(keygen.calls())
    third = submit(client, "198.51.100.3", email="lois@example.com")
    assert third.status_code == 429
    assert len(keygen.calls()) == calls
    assert submit(client, "198.51.100.3", email="jimmy@example.com").status_code == 200


def test_the_buckets_are_separate(keygen):
    client = app_with(keygen, ratelimit_per_ip="1/minute").test_client()
    assert submit(client, "198.51.100.1", email="a@example.com").status_code == 200
    assert submit(client, "198.51.100.1", email="b@example.com").status_code == 429
    assert submit(client, "198.51.100.2", email="b@example.com").status_code == 200


def test_invalid_forms_count_per_address_only(keygen):
    client = app_with(keygen, ratelimit_per_ip="2/minute", keygen_max_rps=1).test_client()
    assert submit(client, "198.51.100.1", email="not-an-email").status_code == 422
    assert submit(client, "198.51.100.2", email="a@example.com").status_code == 200
    assert submit(client, "198.51.100.1", email="also-bad").status_code == 422
    assert submit(client, "198.51.100.1", email="c@example.com").status_code == 429


def test_pages_health_and_metrics_are_not_limited(keygen):
    client = app_with(keygen, ratelimit_per_ip="1/minute").test_client()
    submit(client, email="a@example.com")
    assert submit(client, email="b@example.com").status_code == 429
    for path in ("/", "/healthz", "/metrics", "/", "/healthz", "/metrics"):
        assert client.get(path).status_code == 200, path


def test_a_storage_outage_refuses_submissions_and_calls_nothing(keygen):
    client = app_with(keygen, ratelimit_storage_uri=f"redis://127.0.0.1:{free_port()}/0")
    client = client.test_client()
    refused = submit(client, email="a@example.com")
    assert refused.status_code == 503
    assert "Signup is unavailable right now" in refused.get_data(as_text=True)
    assert keygen.calls() == []
    assert client.get("/").status_code == 200
    assert client.get("/healthz").status_code == 200


def test_a_storage_that_hangs_refuses_submissions_quickly(keygen):
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        uri = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        client = app_with(keygen, ratelimit_storage_uri=uri).test_client()
        started = time.monotonic()
        assert submit(client, email="a@example.com").status_code == 503
        assert time.monotonic() - started < 3
    assert keygen.calls() == []


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("RATELIMIT_PER_IP", "lots", "RATELIMIT_PER_IP must be limits such as"),
        ("RATELIMIT_PER_EMAIL", "5/fortnight", "RATELIMIT_PER_EMAIL must be limits such as"),
        ("RATELIMIT_STORAGE_URI", "mongodb://db", "RATELIMIT_STORAGE_URI must start with"),
        ("KEYGEN_MAX_RPS", "0", "KEYGEN_MAX_RPS must be a whole number of at least 1"),
        ("MIN_SUBMIT_SECONDS", "-1", "MIN_SUBMIT_SECONDS must be a number of seconds"),
    ],
)
def test_bad_protection_settings_refuse_to_start(name, value, problem):
    from support.portal import GOOD

    with pytest.raises(ConfigError) as caught:
        load_settings({**GOOD, name: value})
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


def test_protection_settings_are_parsed():
    from support.portal import GOOD

    settings = load_settings({**GOOD, "RATELIMIT_PER_IP": "5 per minute; 20/hour"})
    assert settings.ratelimit_per_ip == "5 per minute,20/hour"
    assert load_settings(GOOD).ratelimit_storage_uri == "memory://"


# -- Bot traps ---------------------------------------------------------------------------------


def test_the_honeypot_is_hidden_labelled_and_skipped(client):
    page = client.get("/").get_data(as_text=True)
    trap = re.search(r'<div class="trap">(.*?)</div>\s*</div>', page, re.S).group(1)
    assert "Leave this field empty" in trap
    assert 'tabindex="-1"' in trap
    assert 'autocomplete="off"' in trap


def test_a_filled_honeypot_gets_a_real_looking_page_and_creates_nothing(keygen, client, caplog):
    response = submit(client, website="https://spam.example")
    assert response.status_code == 202  # as a real "still processing" outcome
    text = response.get_data(as_text=True)
    assert HONEYPOT_PAGE in text
    assert not re.search(r"[0-9A-F]{6}(-[0-9A-F]{6}){4}", text)  # nothing like a key
    assert keygen.calls() == []
    assert "honeypot" in caplog.text


class FakeClock:
    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def timed_client(keygen, seconds: float = 2.0):
    app = app_with(keygen, min_submit_seconds=seconds)
    clock = services(app).fill_timer.clock = FakeClock()
    return app.test_client(), clock


def test_a_form_sent_too_fast_is_shown_again_and_calls_nothing(keygen):
    client, clock = timed_client(keygen)
    page = client.get("/").get_data(as_text=True)
    data = form_data()
    data.update(
        csrf_token=csrf_token_from(page),
        nonce=hidden(page, "nonce"),
        served=hidden(page, "served"),
    )
    clock.now += 1.5
    early = client.post("/", data=data)
    assert early.status_code == 422
    assert "Please check the form and send it again" in early.get_data(as_text=True)
    assert 'value="Clark"' in early.get_data(as_text=True)  # what was typed is kept
    assert keygen.calls() == []
    clock.now += 1.0  # the same form, a moment later
    assert client.post("/", data=data).status_code == 200


@pytest.mark.parametrize(
    "served",
    ["", "forged", "another form's"],
    ids=["missing", "forged", "of-another-form"],
)
def test_a_missing_or_foreign_timestamp_counts_as_too_fast(keygen, served):
    client, clock = timed_client(keygen)
    page = client.get("/").get_data(as_text=True)
    other = client.get("/").get_data(as_text=True)
    stamps = {"": "", "forged": "WzEsMl0.abc", "another form's": hidden(other, "served")}
    data = form_data()
    data.update(csrf_token=csrf_token_from(page), nonce=hidden(page, "nonce"))
    data["served"] = stamps[served]
    clock.now += 60
    again = client.post("/", data=data)
    assert again.status_code == 422
    assert keygen.calls() == []
    # The form comes back with a stamp of its own, so the next try can succeed.
    data["served"] = hidden(again.get_data(as_text=True), "served")
    clock.now += 3
    assert client.post("/", data=data).status_code == 200


def test_min_submit_seconds_off_by_default(keygen, sign_up):
    assert load_settings(__import__("test_config").GOOD).min_submit_seconds == 0
    assert sign_up().status_code == 200  # sent at once, without the served field


# -- Several processes sharing Redis ---------------------------------------------------------


def sign_up_over_http(url: str, email: str) -> requests.Response:
    """A new browser each time, a new connection for each request."""
    with requests.Session() as browser:
        browser.headers["Connection"] = "close"
        page = browser.get(url + "/", timeout=10)
        data = {
            "csrf_token": csrf_token_from(page.text),
            "first_name": "Lana",
            "last_name": "Lang",
            "email": email,
            "password": PASSWORD,
        }
        return browser.post(url + "/", data=data, timeout=30)


def signups_at_once(url: str, n: int) -> list[int]:
    """n people submit at the same moment; the answers' statuses, sorted."""
    statuses: list[int] = []
    start = threading.Barrier(n)

    def one(email: str) -> None:
        start.wait(timeout=30)
        statuses.append(sign_up_over_http(url, email).status_code)

    threads = [threading.Thread(target=one, args=(email,)) for email in emails(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return sorted(statuses)


# One connection at a time per worker and a slow Keygen: while one worker waits on Keygen, the
# other must take the next request, so both workers count submissions.
TWO_SINGLE_THREADED_WORKERS = {
    "WEB_CONCURRENCY": "2",
    "GUNICORN_THREADS": "1",
    "GUNICORN_CMD_ARGS": "--worker-connections 1",
}
SLOW_KEYGEN = {"route": "users.create", "delay": 0.3, "times": None}


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("storage", ["memory", "redis"])
def test_s37_two_workers_hold_one_limit_only_with_redis(storage):
    with redis_server() as redis_url, emulator() as keygen:
        requests.post(keygen["url"] + "/_emulator/faults", json=SLOW_KEYGEN, timeout=5)
        uri = {"memory": "memory://", "redis": redis_url}[storage]
        env = settings_for(keygen, RATELIMIT_STORAGE_URI=uri, RATELIMIT_PER_IP="4/minute")
        with portal({**env, **TWO_SINGLE_THREADED_WORKERS}) as url:
            statuses = signups_at_once(url, 10)
            created = [r for r in keygen_state(keygen["url"])["requests"]]
            creates = len([r for r in created if r["route"] == "users.create"])
    if storage == "redis":
        assert statuses == [200] * 4 + [429] * 6
        assert creates == 4
    else:  # each worker counts on its own: the test can tell the difference
        assert statuses.count(200) > 4, statuses


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_s39_with_redis_stopped_submissions_get_503_and_keygen_sees_nothing():
    with redis_server() as storage, emulator() as keygen:
        env = settings_for(keygen, RATELIMIT_STORAGE_URI=storage)
        with portal(env) as url:
            assert sign_up_over_http(url, "before@example.com").status_code == 200
            redis.Redis.from_url(storage).shutdown(nosave=True)
            calls = len(keygen_state(keygen["url"])["requests"])
            refused = sign_up_over_http(url, "after@example.com")
            assert refused.status_code == 503
            assert "Signup is unavailable right now" in refused.text
            assert len(keygen_state(keygen["url"])["requests"]) == calls
            assert requests.get(url + "/healthz", timeout=5).status_code == 200
            assert requests.get(url + "/", timeout=5).status_code == 200


def test_the_in_process_limits_refuse_past_the_limit_and_forget_after_the_window():
    flask_app = Flask(__name__)
    flask_app.config["SECRET_KEY"] = "a test key"
    limits = RateLimits(flask_app, storage_uri="memory://", per_ip="3/second", per_email="5/hour")
    for _ in range(3):
        limits.admit_client("192.0.2.1")
    with pytest.raises(LimitReached):
        limits.admit_client("192.0.2.1")
    limits.admit_client("192.0.2.2")  # another address has its own bucket
    time.sleep(1.1)  # the window has passed
    limits.admit_client("192.0.2.1")


@pytest.mark.slow
def test_the_in_process_limits_count_from_many_threads_at_once():
    """gunicorn's threads share one memory:// storage: counting at the same moment must never
    fail (the storage once started its expiry timer twice: a 503 for that signup). Each round,
    32 threads count at once, after the storage's 10 ms timer has ended."""
    flask_app = Flask(__name__)
    flask_app.config["SECRET_KEY"] = "a test key"
    limits = RateLimits(
        flask_app, storage_uri="memory://", per_ip="10000/minute", per_email="1/hour"
    )
    failures = []
    together = threading.Barrier(32)

    def count() -> None:
        for attempt in range(200):
            together.wait()
            try:
                limits.admit_client(f"192.0.2.{attempt % 5}")
            except LimiterUnavailable as error:
                failures.append(error)
            time.sleep(0.015)

    threads = [threading.Thread(target=count) for _ in range(32)]
    usual = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch anywhere, as on a busy server
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(usual)
    assert failures == []


def test_a_serve_time_note_is_bound_to_its_form_and_cannot_be_backdated():
    now = [1_000.0]
    timer = FillTimer("a test key", minimum=3, clock=lambda: now[0])
    stamp = timer.stamp("nonce-of-this-form")
    now[0] += 5
    assert timer.age(stamp, "nonce-of-this-form") == pytest.approx(5)
    assert timer.age(stamp, "nonce-of-another-form") is None
    served, _, signature = stamp.rpartition(".")
    assert timer.age(f"{float(served) - 60:.3f}.{signature}", "nonce-of-this-form") is None
    assert timer.age("", "nonce-of-this-form") is None
    assert timer.age(stamp, None) is None
    assert FillTimer("another key", 3).age(stamp, "nonce-of-this-form") is None


@pytest.mark.parametrize("way", ["form", "lost-key"])
def test_ipv6_clients_are_counted_per_64(way):
    """A subscriber may use any address of its /64: one bucket for all of them, and one bucket
    for an IPv4 client however it is written."""
    flask_app = Flask(__name__)
    flask_app.config["SECRET_KEY"] = "a test key"
    limits = RateLimits(
        flask_app,
        storage_uri="memory://",
        per_ip="2/minute",
        per_email="50/hour",
        recovery_per_ip="2/minute",
        recovery_per_email="50/hour",
    )

    def admit(address: str) -> None:
        if way == "form":
            limits.admit_client(address)
        else:
            limits.admit_recovery(address, f"{uuid.uuid4().hex}@example.com")

    admit("2001:db8:1:2::1")
    admit("2001:db8:1:2:ffff:ffff:ffff:fffe")
    with pytest.raises(LimitReached):
        admit("2001:db8:1:2:abcd::9")  # the same /64
    admit("2001:db8:1:3::1")  # the next /64 is another subscriber
    admit("192.0.2.7")
    admit("::ffff:192.0.2.7")
    with pytest.raises(LimitReached):
        admit("192.0.2.7")


# -- The compose file's Redis ---------------------------------------------------------------


def compose_redis_options() -> list[str]:
    """The options deploy/compose.yaml starts redis-server with."""
    text = (ROOT / "deploy" / "compose.yaml").read_text(encoding="utf-8")
    [command] = re.findall(r'\[\s*"redis-server",([^\]]*)\]', text)
    return json.loads("[" + command + "]")


def test_the_compose_files_redis_is_bounded_and_evicts_rather_than_refuses():
    options = compose_redis_options()
    assert re.fullmatch(r"\d+(mb|gb)", options[options.index("--maxmemory") + 1])
    assert options[options.index("--maxmemory-policy") + 1] in ("allkeys-lru", "volatile-lru")


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["compose", "noeviction"])
def test_a_full_redis_with_the_compose_files_policy_still_admits_everyone(policy):
    """Filled to its bound by many clients' counters: with compose.yaml's policy old counters
    go and submissions are still counted; with Redis's default every write, so every signup,
    would be refused."""
    options = compose_redis_options()
    options[options.index("--maxmemory") + 1] = "2mb"  # full after a few thousand clients
    if policy == "noeviction":
        options[options.index("--maxmemory-policy") + 1] = "noeviction"
    flask_app = Flask(__name__)
    flask_app.config["SECRET_KEY"] = "a test key"
    with redis_server(*options) as url:
        limits = RateLimits(flask_app, storage_uri=url, per_ip="5/minute", per_email="5/hour")
        refused = 0
        for n in range(40_000):
            try:
                limits.admit_client(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}")
            except LimiterUnavailable:
                refused += 1
                if policy == "noeviction":
                    break
        evicted = redis.Redis.from_url(url).info("stats")["evicted_keys"]
    if policy == "compose":
        assert (refused, evicted > 0) == (0, True)
    else:
        assert refused == 1
