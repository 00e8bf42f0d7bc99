"""/metrics: what it counts, who may read it, and that gunicorn's workers add up."""

import re
import time
from pathlib import Path

import pytest
import requests
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from app import create_app
from keygen_api import KeygenUnavailable, endpoint_name
from services import services
from support.http import (
    csrf_token_from,
    form_data,
    form_submitter,
    issued_key,
    sign_up_over_http,
)
from support.leaks import PASSWORD, SECRET_KEY, secret
from support.portal import make_settings
from support.processes import free_port
from support.servers import emulator, portal

TOKEN = "metrics-" + "Zq3v9TfB1xWm7Lp2"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def scrape(client, **options) -> str:
    response = client.get("/metrics", **options)
    assert response.status_code == 200, response.status_code
    assert response.mimetype == "text/plain"
    return response.get_data(as_text=True)


def samples(text: str) -> dict[tuple, float]:
    """{(name, (label, value), ...): value} for every sample of a scrape."""
    return {
        (sample.name, *sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def signups(text: str, outcome: str) -> float:
    return samples(text)[("portal_signups_total", ("outcome", outcome))]


def keygen_requests(text: str, endpoint: str, status: str) -> float:
    key = ("portal_keygen_requests_total", ("endpoint", endpoint), ("status", status))
    return samples(text).get(key, 0.0)


@pytest.mark.slow
def test_a_success_a_rejection_and_a_keygen_failure_are_each_counted(keygen):
    # The exact address only: Keygen's own refusal (test_one_person.py: the same mailbox).
    client = create_app(make_settings(keygen, one_account_per_person=False)).test_client()
    sign_up = form_submitter(client)
    before = scrape(client)
    assert all(signups(before, o) == 0 for o in ("issued", "rejected", "try_later", "busy"))

    response = sign_up()
    assert response.status_code == 200
    issued_key(response.get_data(as_text=True))
    taken = sign_up()  # the same email again: Keygen refuses it
    assert taken.status_code == 422
    keygen.emulator.inject("users.create", status=503, times=None)
    failed = sign_up(email="lois@example.com")
    assert failed.status_code == 503

    text = scrape(client)
    assert signups(text, "issued") == 1
    assert signups(text, "rejected") == 1
    assert signups(text, "try_later") == 1
    assert signups(text, "unavailable") == 0
    assert keygen_requests(text, "users.create", "201") == 1
    assert keygen_requests(text, "users.create", "422") == 1
    assert keygen_requests(text, "users.create", "503") == len(
        [c for c in keygen.calls("users.create") if c["status"] == 503]
    )
    assert keygen_requests(text, "users.create", "503") >= 2  # retried within the deadline
    retries = samples(text)
    assert retries[("portal_signup_retries_total", ("when", "now"))] == (
        keygen_requests(text, "users.create", "503") - 1  # the first try is no retry
    )
    assert retries[("portal_signup_retries_total", ("when", "later"))] == 1  # the reconciler's
    assert keygen_requests(text, "licenses.create", "201") == 1
    assert keygen_requests(text, "users.show", "404") >= 1  # looked before resending
    seconds = samples(text)[("portal_keygen_request_seconds_count", ("endpoint", "users.create"))]
    assert seconds == len(keygen.calls("users.create"))
    assert samples(text)[("portal_keygen_breaker_open",)] == 0
    # The failed one is left to the reconciler.
    assert samples(text)[("portal_oldest_unfinished_signup_seconds",)] > 0


def test_keygen_refusing_the_token_counts_as_unavailable_and_no_answer_as_none(keygen):
    token = secret("prod-" + "7" * 64 + "v3")
    settings = make_settings(keygen, keygen_product_token=token, one_account_per_person=False)
    app = create_app(settings)
    client = app.test_client()
    page = client.get("/")
    data = form_data(csrf_token=csrf_token_from(page.get_data(as_text=True)))
    assert client.post("/", data=data).status_code == 503
    text = scrape(client)
    assert signups(text, "unavailable") == 1
    assert keygen_requests(text, "users.create", "401") == 1

    services(app).metrics.keygen_call("me", None, 0.1)
    assert keygen_requests(scrape(client), "me", "none") == 1


def test_rate_limits_and_an_open_breaker_are_shown(keygen, app):
    workflow = services(app).signup
    keygen.emulator.inject("me", retry_after=0)
    with pytest.raises(KeygenUnavailable):  # rate limited
        workflow.keygen.me()
    keygen.emulator.inject("me", status=503, times=None)
    for _ in range(workflow.keygen.breaker.threshold):
        with pytest.raises(KeygenUnavailable):
            workflow.keygen.me()
    text = scrape(app.test_client())
    assert samples(text)[("portal_keygen_rate_limited_total",)] == 1
    assert keygen_requests(text, "me", "429") == 1
    assert keygen_requests(text, "me", "503") == workflow.keygen.breaker.threshold
    assert samples(text)[("portal_keygen_breaker_open",)] == 1


def test_the_oldest_unfinished_signup_is_measured_from_the_journal(app):
    journal = services(app).signup.journal
    journal.claim("nonce-" + "a" * 20, "old@example.com", owner="test", lease=30)
    journal.clock = lambda: time.time() + 120
    age = samples(scrape(app.test_client()))[("portal_oldest_unfinished_signup_seconds",)]
    assert 119 < age < 130


@pytest.mark.parametrize(
    "path",
    [
        ("GET", "me", "me"),
        ("POST", "users", "users.create"),
        ("GET", "users/clark@example.com", "users.show"),
        ("DELETE", "users/0b7c5f0e-7d0e-4c38-9f36-1d1f4c7e2a10", "users.destroy"),
        ("POST", "licenses", "licenses.create"),
        ("GET", "licenses", "licenses.index"),
        ("GET", "licenses/0b7c5f0e-7d0e-4c38-9f36-1d1f4c7e2a10", "licenses.show"),
        ("GET", "policies/0b7c5f0e-7d0e-4c38-9f36-1d1f4c7e2a10", "policies.show"),
    ],
)
def test_endpoints_are_route_names_never_ids_or_emails(path):
    method, url_path, name = path
    assert endpoint_name(method, url_path) == name


# -- Who may read it ------------------------------------------------------------------------------

ELSEWHERE = {"REMOTE_ADDR": "10.0.0.5"}


def test_without_a_token_only_this_machine_may_read_it(client):
    assert client.get("/metrics").status_code == 200
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "::1"}).status_code == 200
    assert client.get("/metrics", environ_base=ELSEWHERE).status_code == 404
    assert client.get("/metrics", environ_base=ELSEWHERE, headers=BEARER).status_code == 404


def test_without_a_token_a_request_through_a_proxy_on_this_machine_is_refused(client):
    proxied = {"X-Forwarded-For": "203.0.113.9"}
    assert client.get("/metrics", headers=proxied).status_code == 404


def test_with_a_token_only_its_bearer_may_read_it(keygen):
    client = create_app(make_settings(keygen, metrics_token=secret(TOKEN))).test_client()
    assert client.get("/metrics", environ_base=ELSEWHERE, headers=BEARER).status_code == 200
    assert client.get("/metrics").status_code == 404  # loopback is not enough any more
    assert client.get("/metrics", environ_base=ELSEWHERE).status_code == 404
    wrong = {"Authorization": f"Bearer {TOKEN}x"}
    assert client.get("/metrics", environ_base=ELSEWHERE, headers=wrong).status_code == 404
    basic = {"Authorization": f"Basic {TOKEN}"}
    assert client.get("/metrics", environ_base=ELSEWHERE, headers=basic).status_code == 404


def test_no_secret_appears_in_the_metrics(keygen, sign_up):
    app = create_app(make_settings(keygen, metrics_token=secret(TOKEN)))
    client = app.test_client()
    page = client.get("/")
    data = form_data(csrf_token=csrf_token_from(page.get_data(as_text=True)))
    key = issued_key(client.post("/", data=data).get_data(as_text=True))
    text = client.get("/metrics", headers=BEARER).get_data(as_text=True)
    assert "portal_signups_total" in text
    for value in (TOKEN, PASSWORD, SECRET_KEY, keygen.token, key, "clark@example.com", "@"):
        assert value not in text
    assert not re.search(r"[0-9a-f]{8}-[0-9a-f]{4}-", text)  # no user, license or policy ids


# -- gunicorn's two workers ----------------------------------------------------------------------


def issued_per_worker(directory: Path) -> list[float]:
    """Each worker's own count of issued signups, from its file in PROMETHEUS_MULTIPROC_DIR."""
    counts = []
    for path in sorted(directory.glob("counter_*.db")):
        [family] = [
            m for m in MultiProcessCollector.merge([str(path)]) if m.name == "portal_signups"
        ]
        counts.append(sum(s.value for s in family.samples if s.labels == {"outcome": "issued"}))
    return counts


@pytest.mark.slow
def test_every_workers_signups_are_counted_whichever_worker_answers(tmp_path):
    with emulator("--protected") as keygen:
        settings = {
            "KEYGEN_API_URL": keygen["url"],
            "KEYGEN_ACCOUNT_ID": keygen["account"],
            "KEYGEN_PRODUCT_TOKEN": keygen["token"],
            "KEYGEN_POLICY_ID": keygen["policy"],
            "SECRET_KEY": SECRET_KEY,
            "METRICS_TOKEN": secret(TOKEN),
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
            "RATELIMIT_PER_IP": "1000/minute",  # up to 40 signups from one address
            "RATELIMIT_PER_DOMAIN": "1000/day",  # all of them at example.com
            "KEYGEN_MAX_RPS": "1000",
        }
        with portal(settings) as url:
            count = 0

            # Until both workers have issued some (each signup opens new connections).
            def both_workers_issued() -> bool:
                per_worker = issued_per_worker(tmp_path)
                return len(per_worker) == 2 and all(per_worker)

            while count < 4 or (count < 40 and not both_workers_issued()):
                response = sign_up_over_http(url, f"worker{count}@example.com")
                assert response.status_code == 200
                issued_key(response.text)
                count += 1
            per_worker = issued_per_worker(tmp_path)
            assert len(per_worker) == 2 and all(per_worker) and sum(per_worker) == count
            for _ in range(6):  # new connections, so that both workers answer some scrapes
                text = requests.get(url + "/metrics", headers=BEARER, timeout=10).text
                assert signups(text, "issued") == count
                assert keygen_requests(text, "users.create", "201") == count
                assert keygen_requests(text, "licenses.create", "201") == count
                assert samples(text)[("portal_keygen_breaker_open",)] == 0
            assert requests.get(url + "/metrics", timeout=10).status_code == 404


@pytest.mark.slow
def test_with_metrics_port_the_master_serves_them_and_the_public_port_does_not():
    with emulator() as keygen:
        metrics_port = free_port()
        settings = {
            "KEYGEN_API_URL": keygen["url"],
            "KEYGEN_ACCOUNT_ID": keygen["account"],
            "KEYGEN_PRODUCT_TOKEN": keygen["token"],
            "KEYGEN_POLICY_ID": keygen["policy"],
            "SECRET_KEY": SECRET_KEY,
            "METRICS_PORT": str(metrics_port),
        }
        with portal(settings) as url:
            issued_key(sign_up_over_http(url, "port@example.com").text)
            assert sign_up_over_http(url, "port@example.com").status_code == 422
            text = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
            assert signups(text, "issued") == 1
            assert signups(text, "rejected") == 1
            assert keygen_requests(text, "licenses.create", "201") == 1
            assert ("portal_oldest_unfinished_signup_seconds",) in samples(text)
            # Not even this machine reads them on the portal's own port now.
            assert requests.get(url + "/metrics", timeout=10).status_code == 404
