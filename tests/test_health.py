"""/healthz and /readyz: alive is not the same as ready, and not-ready says why."""

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import create_engine

from app import create_app
from keygen_emulator import Emulator, serve
from services import services
from support.leaks import secret
from support.portal import make_settings
from support.processes import free_port


def readyz(app):
    response = app.test_client().get("/readyz")
    return response.status_code, response.get_json()


def failing(body) -> list[str]:
    return sorted(name for name, check in body["checks"].items() if not check["ok"])


def test_ready_when_keygen_the_token_the_policy_and_the_database_are_fine(app):
    status, body = readyz(app)
    assert status == 200
    assert body["status"] == "ready"
    assert sorted(body["checks"]) == ["database", "keygen", "policy", "rate_limits"]
    assert failing(body) == []


def test_keygen_stopped_is_named_and_healthz_stays_up(keygen):
    emulator = Emulator()
    account = emulator.add_account()
    product, token = emulator.add_product(account)
    policy = emulator.add_policy(account, product, protected=True)
    server = serve(emulator)
    app = create_app(
        make_settings(
            keygen,
            keygen_api_url=server.url,
            keygen_account_id=account,
            keygen_product_token=secret(token),
            keygen_policy_id=policy,
        )
    )
    now = [0.0]
    services(app).keygen_probe.clock = lambda: now[0]
    assert readyz(app)[0] == 200
    server.stop()
    assert readyz(app)[0] == 200  # Keygen's last answer stands for READINESS_CACHE_SECONDS
    now[0] += 30
    status, body = readyz(app)
    assert status == 503
    assert failing(body) == ["keygen", "policy"]
    assert "did not answer" in body["checks"]["keygen"]["detail"]
    assert app.test_client().get("/healthz").status_code == 200


def test_a_wrong_token_is_named_without_showing_it(keygen):
    token = secret("prod-" + "4" * 64 + "v3")
    app = create_app(make_settings(keygen, keygen_product_token=token))
    status, body = readyz(app)
    assert status == 503
    assert failing(body) == ["keygen", "policy"]
    assert "refused KEYGEN_PRODUCT_TOKEN" in body["checks"]["keygen"]["detail"]
    assert token not in repr(body)


def test_a_policy_of_another_product_is_named(keygen):
    app = create_app(make_settings(keygen, keygen_policy_id=keygen.other_policy))
    status, body = readyz(app)
    assert status == 503
    assert failing(body) == ["policy"]
    assert "belongs to another product" in body["checks"]["policy"]["detail"]


def test_a_missing_policy_is_named(keygen):
    app = create_app(make_settings(keygen, keygen_policy_id="0b7c5f0e-7d0e-4c38-9f36-1d1f4c7e2a10"))
    assert failing(readyz(app)[1]) == ["policy"]


def test_the_database_down_is_named(app):
    services(app).signup.journal.engine = create_engine(
        "postgresql+psycopg://nobody@127.0.0.1:9/none", connect_args={"connect_timeout": 1}
    )
    status, body = readyz(app)
    assert status == 503
    assert failing(body) == ["database"]
    assert app.test_client().get("/healthz").status_code == 200


def test_the_rate_limit_storage_down_is_named(keygen):
    # Nothing listens there: signups would be refused (fail closed), so the instance is not ready.
    storage = f"redis://127.0.0.1:{free_port()}/0"
    app = create_app(make_settings(keygen, ratelimit_storage_uri=storage))
    status, body = readyz(app)
    assert status == 503
    assert failing(body) == ["rate_limits"]
    assert "does not answer" in body["checks"]["rate_limits"]["detail"]
    assert app.test_client().get("/healthz").status_code == 200


def test_the_mail_server_down_is_named_but_the_instance_stays_ready(keygen):
    """Emails wait in the outbox while SMTP is down (F10): no reason to take the instance out."""
    settings = make_settings(
        keygen,
        mail_server="127.0.0.1",
        mail_port=free_port(),
        mail_use_tls=False,
        mail_default_sender="keys@example.com",
        public_url="http://127.0.0.1:5000",
        key_delivery="both",
        outbox_interval=0,
    )
    status, body = readyz(create_app(settings))
    assert status == 200
    assert body["status"] == "degraded"
    assert failing(body) == ["mail"]
    assert body["checks"]["mail"]["required"] is False
    assert "emails wait in the outbox" in body["checks"]["mail"]["detail"]


def test_an_unprotected_policy_is_not_ready(keygen):
    """Keygen lets the owner of a license under an unprotected policy issue themselves more
    licenses with their own password: the portal would hand out unlimited trials."""
    policy = keygen.emulator.add_policy(keygen.account, keygen.product, protected=False)
    status, body = readyz(create_app(make_settings(keygen, keygen_policy_id=policy)))
    assert status == 503
    assert failing(body) == ["policy"]
    assert "is not protected" in body["checks"]["policy"]["detail"]


def test_keygen_is_asked_once_per_cache_period_whatever_the_rate(keygen):
    app = create_app(make_settings(keygen, readiness_cache_seconds=30))
    now = [1000.0]
    services(app).keygen_probe.clock = lambda: now[0]
    client = app.test_client()
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: client.get("/readyz").status_code, range(40)))
    assert statuses == [200] * 40
    assert [c["route"] for c in keygen.calls()] == ["me", "policies.show"]
    now[0] += 29
    assert client.get("/readyz").status_code == 200
    assert len(keygen.calls()) == 2
    now[0] += 1
    assert client.get("/readyz").status_code == 200
    assert [c["route"] for c in keygen.calls()] == ["me", "policies.show"] * 2


@pytest.mark.parametrize(
    ("headers", "peer"),
    [
        ({}, "203.0.113.9"),  # another machine
        ({"X-Forwarded-For": "203.0.113.9"}, "127.0.0.1"),  # through a proxy on this machine
        ({"Authorization": "Bearer not-the-metrics-token"}, "127.0.0.1"),
    ],
)
def test_only_who_may_read_metrics_sees_the_checks(keygen, headers, peer):
    token = "m" * 24
    app = create_app(
        make_settings(keygen, metrics_token=token if "Authorization" in headers else "")
    )
    answer = app.test_client().get("/readyz", headers=headers, environ_base={"REMOTE_ADDR": peer})
    assert (answer.status_code, answer.get_json()) == (200, {"status": "ready"})
    if "Authorization" in headers:
        allowed = {"Authorization": f"Bearer {token}"}
        full = app.test_client().get("/readyz", headers=allowed).get_json()
        assert full["status"] == "ready" and keygen.policy in full["checks"]["policy"]["detail"]
