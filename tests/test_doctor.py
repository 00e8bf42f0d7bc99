"""`flask doctor`: every misconfiguration gets its sentence and the exit code; a good one passes."""

import base64
import contextlib
import secrets
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from sqlalchemy import create_engine

from app import create_app
from keygen_api import PROBE_EMAIL, KeygenClient
from keygen_emulator import Emulator, serve
from keygen_emulator.deployment import PRODUCT_PERMISSIONS
from services import services
from support.leaks import secret
from support.portal import KeygenWorld, make_settings
from support.processes import free_port
from support.proxies import nginx
from support.servers import Portal, portal, redis_server

STRONG_KEY = secret(secrets.token_urlsafe(48))
MISSING_POLICY = "0b7c5f0e-7d0e-4c38-9f36-1d1f4c7e2a10"


@pytest.fixture(scope="module")
def protected_server():
    """A Keygen whose account refuses anonymous user creation, as it should be."""
    emulator = Emulator()
    account = emulator.add_account(protected=True)
    product, token = emulator.add_product(account)
    policy = emulator.add_policy(account, product)
    other_product, _ = emulator.add_product(account, name="Another App")
    other_policy = emulator.add_policy(account, other_product)
    _, admin_token = emulator.add_admin(account, email="admin@example.com")
    server = serve(emulator)
    world = KeygenWorld(
        emulator=emulator,
        url=server.url,
        account=account,
        slug="",
        product=product,
        token=secret(token),
        policy=policy,
        other_policy=other_policy,
    )
    world.admin_token = secret(admin_token)
    yield world
    server.stop()


@pytest.fixture
def protected(protected_server):
    protected_server.emulator.reset()
    return protected_server


def doctor(world, *args, **changes):
    """(exit code, output lines) of `flask doctor [args]` against ``world``."""
    changes.setdefault("secret_key", STRONG_KEY)
    # memory:// rate limits are right for one process; tests that want more say so.
    changes.setdefault("web_concurrency", 1)
    app = create_app(make_settings(world, **changes))
    result = app.test_cli_runner().invoke(args=["doctor", *args])
    return result.exit_code, result.output.splitlines()


def levels(lines: list[str]) -> list[str]:
    return [line.split()[0] for line in lines]


def line_with(lines: list[str], text: str) -> str:
    [line] = [line for line in lines if text in line]
    return line


def test_a_good_configuration_passes(protected):
    code, lines = doctor(protected)
    assert code == 0
    assert levels(lines) == ["OK"] * 6 + ["SKIP", "SKIP", "OK", "SKIP"]
    assert "the token is product" in lines[0]
    assert line_with(lines, "belongs to the token's product")
    assert line_with(lines, "account is protected")
    assert line_with(lines, "SECRET_KEY looks random")
    assert line_with(lines, "database answers")
    assert line_with(lines, "in memory, which is right for one process")
    assert line_with(lines, "Proxy settings not checked: run `flask doctor --url")


def test_an_unprotected_account_is_a_warning_only(keygen):
    code, lines = doctor(keygen)
    assert code == 0
    line = line_with(lines, "not protected")
    assert line.startswith("WARN ")
    assert "anyone can create users directly against Keygen" in line
    assert levels(lines).count("OK") == 6  # the disposable list's line too
    # The probe created nothing, and asked without a token.
    assert keygen.users() == []
    [probe] = keygen.calls("users.create")
    assert (probe["status"], probe["authenticated"]) == (422, False)
    assert probe["json"]["data"]["attributes"] == {"email": PROBE_EMAIL}


def test_the_probe_is_refused_before_validation_on_a_protected_account(protected):
    client = KeygenClient(protected.url, protected.account, protected.token)
    assert client.account_is_protected() is True
    [probe] = protected.calls("users.create")
    assert probe["status"] == 403
    assert protected.emulator.users(protected.account)[0]["role"] == "admin"  # only the seed


def test_an_unprotected_policy_is_an_error(protected):
    """Its licenses' owners could issue themselves more licenses, bypassing the portal."""
    policy = protected.emulator.add_policy(protected.account, protected.product, protected=False)
    code, lines = doctor(protected, keygen_policy_id=policy)
    assert code == 1
    line = line_with(lines, "is not protected")
    assert line.startswith("ERROR ") and "Turn on 'Protected'" in line


def test_a_wrong_token_is_an_error_without_showing_it(protected):
    token = secret("prod-" + "5" * 64 + "v3")
    code, lines = doctor(protected, keygen_product_token=token)
    assert code == 1
    # Keygen, then the secret, the database, the rate limits, mail (off), the proxy (not asked),
    # the disposable list and forgot-password's webhook key (off without a key and email)
    assert levels(lines) == ["ERROR", "SKIP", "OK", "OK", "OK", "SKIP", "SKIP", "OK", "SKIP"]
    assert "Keygen refused KEYGEN_PRODUCT_TOKEN" in lines[0]
    assert "401" in lines[0]
    assert token not in "\n".join(lines)


def test_an_admin_token_is_not_a_product_token(protected):
    code, lines = doctor(protected, keygen_product_token=protected.admin_token)
    assert code == 1
    line = line_with(lines, "is not a product token")
    assert line.startswith("ERROR ")
    assert "admin-token" in line
    assert protected.admin_token not in "\n".join(lines)


def test_an_unknown_account_is_named(protected):
    code, lines = doctor(protected, keygen_account_id="no-such-account")
    assert code == 1
    assert "knows no account 'no-such-account'" in line_with(lines, "KEYGEN_ACCOUNT_ID")


@pytest.mark.parametrize(
    "policy", [MISSING_POLICY, "other"], ids=["missing-policy", "another-products-policy"]
)
def test_a_policy_the_token_cannot_use_is_an_error(protected, policy):
    policy = protected.other_policy if policy == "other" else policy
    code, lines = doctor(protected, keygen_policy_id=policy)
    assert code == 1
    line = line_with(lines, "KEYGEN_POLICY_ID")
    assert line.startswith("ERROR ")
    assert f"{policy} does not exist, or belongs to another product" in line
    assert "no license can be issued" in line


def test_keygen_unreachable_is_an_error(keygen):
    emulator = Emulator()
    account = emulator.add_account()
    _, token = emulator.add_product(account)
    server = serve(emulator)
    url = server.url
    server.stop()
    code, lines = doctor(
        keygen, keygen_api_url=url, keygen_account_id=account, keygen_product_token=secret(token)
    )
    assert code == 1
    assert "did not answer usefully" in line_with(lines, "KEYGEN_API_URL")


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("changeme-changeme-changeme-changeme-1234", "placeholder word 'changeme'"),
        ("Your-Secret-Key-" + "x" * 32, "placeholder word 'secret'"),
        ("ab" * 24, "uses only 2 different characters"),
        ("short-but-random-Zq3v9T", "shorter than 32 characters"),
    ],
)
def test_a_weak_secret_key_is_an_error_without_showing_it(protected, key, problem):
    code, lines = doctor(protected, secret_key=secret(key))
    assert code == 1
    line = line_with(lines, "SECRET_KEY")
    assert line.startswith("ERROR ")
    assert problem in line
    assert "forge the form's CSRF tokens" in line
    assert key not in "\n".join(lines)


def test_the_database_down_is_an_error(protected):
    app = create_app(make_settings(protected, secret_key=STRONG_KEY))
    services(app).signup.journal.engine = create_engine(
        "postgresql+psycopg://nobody@127.0.0.1:9/none", connect_args={"connect_timeout": 1}
    )
    result = app.test_cli_runner().invoke(args=["doctor"])
    assert result.exit_code == 1
    line = line_with(result.output.splitlines(), "database")
    assert line.startswith("ERROR ")
    assert "does not answer (OperationalError)" in line
    assert "check DATABASE_URL" in line


# -- Rate-limit storage and proxy ----------------------------------------------------------------


def test_memory_rate_limits_with_several_workers_are_a_warning(protected):
    code, lines = doctor(protected, web_concurrency=4)
    assert code == 0
    line = line_with(lines, "RATELIMIT_STORAGE_URI is memory://")
    assert line.startswith("WARN ")
    assert "each of the 4 gunicorn workers" in line


def test_a_rate_limit_storage_that_does_not_answer_is_an_error(protected):
    uri = f"redis://127.0.0.1:{free_port()}/0"
    code, lines = doctor(protected, ratelimit_storage_uri=uri)
    assert code == 1
    line = line_with(lines, "rate-limit storage")
    assert line.startswith("ERROR ")
    assert "every signup is refused" in line


def test_a_rate_limit_storage_that_answers_passes(protected):
    with redis_server() as uri:
        code, lines = doctor(protected, ratelimit_storage_uri=uri)
    assert code == 0
    assert line_with(lines, "rate-limit storage answers").startswith("OK ")


@contextmanager
def gunicorn_for(world, hops: str) -> Iterator[Portal]:
    settings = {
        "KEYGEN_API_URL": world.url,
        "KEYGEN_ACCOUNT_ID": world.account,
        "KEYGEN_PRODUCT_TOKEN": world.token,
        "KEYGEN_POLICY_ID": world.policy,
        "SECRET_KEY": STRONG_KEY,
        "TRUSTED_PROXY_HOPS": hops,
        "RECONCILE_INTERVAL": "0",
    }
    with portal(settings) as url:
        yield Portal(url, url.removeprefix("http://"), {}, Path("/dev/null"))


@pytest.mark.parametrize(
    ("hops", "through", "level", "words"),
    [
        ("0", "nginx", "ERROR", "Every client appears as the proxy's address 127.0.0.1"),
        ("0", "nginx", "ERROR", "set TRUSTED_PROXY_HOPS to the number of proxies"),
        ("1", "nginx", "OK", "Reached behind the proxy, the portal sees https, the public Host"),
        ("2", "nginx", "ERROR", "A client can choose its own address"),
        ("1", "direct", "ERROR", "TRUSTED_PROXY_HOPS=1 trusts more proxies than the request"),
        ("0", "direct", "OK", "Reached without a proxy"),
    ],
)
def test_the_probe_through_the_proxy_names_what_is_wrong(
    protected, certificate, monkeypatch, hops, through, level, words
):
    cert, key = certificate
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))  # the probe trusts the test's own CA
    with contextlib.ExitStack() as stack:
        gunicorn = stack.enter_context(gunicorn_for(protected, hops))
        url = gunicorn.url
        if through == "nginx":
            url = stack.enter_context(nginx(gunicorn, cert, key)).https
        code, lines = doctor(protected, "--url", url, trusted_proxy_hops=int(hops))
    line = line_with(lines, words)
    assert line.startswith(f"{level} "), line
    assert code == (1 if level == "ERROR" else 0)


def test_the_probe_endpoint_answers_only_a_signed_probe(protected):
    from doctor import PROBE_HEADER, sign_probe

    client = create_app(make_settings(protected, secret_key=STRONG_KEY)).test_client()
    assert client.get("/_doctor").status_code == 404
    forged = sign_probe("another-" + "k" * 40)
    assert client.get("/_doctor", headers={PROBE_HEADER: forged}).status_code == 404
    stale = sign_probe(STRONG_KEY, now=time.time() - 600)
    assert client.get("/_doctor", headers={PROBE_HEADER: stale}).status_code == 404
    answer = client.get("/_doctor", headers={PROBE_HEADER: sign_probe(STRONG_KEY)})
    assert answer.status_code == 200
    assert answer.get_json()["scheme"] == "http"


@pytest.mark.parametrize(("hops", "scheme"), [("0", "http"), ("1", "https")])
def test_gunicorn_believes_x_forwarded_proto_only_when_the_portal_does(protected, hops, scheme):
    """gunicorn trusts X-Forwarded-Proto from loopback unless told otherwise (forwarded_allow_ips);
    with the default TRUSTED_PROXY_HOPS=0 no forwarded header may count, not even there."""
    from doctor import PROBE_HEADER, sign_probe

    with gunicorn_for(protected, hops) as gunicorn:
        headers = {PROBE_HEADER: sign_probe(STRONG_KEY), "X-Forwarded-Proto": "https"}
        seen = requests.get(gunicorn.url + "/_doctor", headers=headers, timeout=10).json()
    assert seen["scheme"] == scheme


# -- Mail ----------------------------------------------------------------------------------------

MAIL_USER, MAIL_PASSWORD = "portal", secret("Smtp-" + secrets.token_urlsafe(12))


def mail_settings(port: int, password: str = MAIL_PASSWORD) -> dict:
    return dict(
        mail_server="127.0.0.1",
        mail_port=port,
        mail_use_tls=False,  # the test server offers AUTH without TLS
        mail_username=MAIL_USER,
        mail_password=password,
        mail_default_sender="Acme <keys@example.com>",
        public_url="http://127.0.0.1:5000",
        key_delivery="both",
    )


def check_login(server, session, envelope, mechanism, auth_data) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        MAIL_USER.encode(),
        MAIL_PASSWORD.encode(),
    )
    return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535 itself


@contextmanager
def login_server() -> Iterator[int]:
    warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS")  # a test server
    controller = Controller(
        Sink(),
        hostname="127.0.0.1",
        port=free_port(),
        authenticator=check_login,
        auth_required=True,
        auth_require_tls=False,
        # PLAIN alone: a refused LOGIN exchange leaves smtplib waiting for the timeout.
        auth_exclude_mechanism=["LOGIN"],
    )
    controller.start()
    try:
        yield controller.port
    finally:
        controller.stop()


class Sink:
    async def handle_DATA(self, server, session, envelope):
        return "250 OK"


def test_a_mail_server_that_accepts_the_login_passes(protected):
    with login_server() as port:
        code, lines = doctor(protected, **mail_settings(port))
    assert code == 0
    assert line_with(lines, "mail server").startswith("OK ")
    assert "accepts the login" in line_with(lines, "mail server")


def test_a_refused_login_is_an_error_without_showing_the_password(protected):
    wrong = secret("Wrong-" + secrets.token_urlsafe(12))
    with login_server() as port:
        code, lines = doctor(protected, **mail_settings(port, password=wrong))
    assert code == 1
    line = line_with(lines, "mail server")
    assert line.startswith("ERROR ")
    assert "refused us" in line and "MAIL_PASSWORD" in line
    assert wrong not in "\n".join(lines)


def test_an_unreachable_mail_server_is_an_error(protected):
    code, lines = doctor(protected, **mail_settings(free_port()))
    assert code == 1
    line = line_with(lines, "mail server")
    assert line.startswith("ERROR ") and "Could not reach" in line


# -- The webhook key (forgot-password) ------------------------------------------------------------

OTHER_ACCOUNTS_KEY = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"


def forgot_password_doctor(world, public_key: str, **changes):
    """The doctor with forgot-password on: SELF_SERVICE (the default), a key, and email."""
    with login_server() as port:
        return doctor(world, keygen_public_key=public_key, **mail_settings(port), **changes)


def test_the_accounts_own_webhook_key_passes(protected):
    own = protected.emulator.public_key(protected.account)
    code, lines = forgot_password_doctor(protected, own)
    assert code == 0
    assert line_with(lines, "KEYGEN_PUBLIC_KEY").startswith("OK ")
    [read] = protected.calls("accounts.show")
    assert read["status"] == 200


def test_another_accounts_webhook_key_is_an_error(protected):
    """Every reset request would be refused as it arrives: the doctor says so at deploy time."""
    code, lines = forgot_password_doctor(protected, OTHER_ACCOUNTS_KEY)
    assert code == 1
    line = line_with(lines, "KEYGEN_PUBLIC_KEY")
    assert line.startswith("ERROR ") and "not this account's Ed25519 key" in line


def test_the_key_as_the_api_gives_it_passes_too(protected):
    """KEYGEN_PUBLIC_KEY may be pasted from the account's API document (base64 of the hex)."""
    own = protected.emulator.public_key(protected.account)
    code, lines = forgot_password_doctor(protected, base64.b64encode(own.encode()).decode())
    assert code == 0 and line_with(lines, "KEYGEN_PUBLIC_KEY").startswith("OK ")


def test_a_token_that_may_not_read_the_account_is_told_to_compare_by_eye(protected):
    granted = [p for p in PRODUCT_PERMISSIONS if p != "account.read"]
    protected.emulator.set_permissions(protected.token, granted)
    code, lines = forgot_password_doctor(protected, OTHER_ACCOUNTS_KEY)
    assert code == 0  # a warning: the key may well be right
    line = line_with(lines, "KEYGEN_PUBLIC_KEY")
    assert line.startswith("WARN ") and "account.read" in line and "dashboard" in line


def test_without_forgot_password_the_key_is_not_checked(protected):
    code, lines = doctor(protected)
    assert code == 0
    assert line_with(lines, "Forgot-password is off").startswith("SKIP ")
    assert protected.calls("accounts.show") == []
