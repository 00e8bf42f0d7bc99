"""`flask doctor`: every misconfiguration gets its sentence and the exit code; a good one passes."""

import secrets

import pytest
from sqlalchemy import create_engine

from app import create_app
from conftest import KeygenWorld, make_settings, secret
from keygen_api import PROBE_EMAIL, KeygenClient
from keygen_emulator import Emulator, serve

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


def doctor(world, **changes):
    """(exit code, output lines) of `flask doctor` against ``world``."""
    changes.setdefault("secret_key", STRONG_KEY)
    app = create_app(make_settings(world, **changes))
    result = app.test_cli_runner().invoke(args=["doctor"])
    return result.exit_code, result.output.splitlines()


def levels(lines: list[str]) -> list[str]:
    return [line.split()[0] for line in lines]


def line_with(lines: list[str], text: str) -> str:
    [line] = [line for line in lines if text in line]
    return line


def test_a_good_configuration_passes(protected):
    code, lines = doctor(protected)
    assert code == 0
    assert levels(lines) == ["OK"] * 5
    assert "the token is product" in lines[0]
    assert line_with(lines, "belongs to the token's product")
    assert line_with(lines, "account is protected")
    assert line_with(lines, "SECRET_KEY looks random")
    assert line_with(lines, "database answers")


def test_an_unprotected_account_is_a_warning_only(keygen):
    code, lines = doctor(keygen)
    assert code == 0
    line = line_with(lines, "not protected")
    assert line.startswith("WARN ")
    assert "anyone can create users directly against Keygen" in line
    assert levels(lines).count("OK") == 4
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


def test_a_wrong_token_is_an_error_without_showing_it(protected):
    token = secret("prod-" + "5" * 64 + "v3")
    code, lines = doctor(protected, keygen_product_token=token)
    assert code == 1
    assert levels(lines) == ["ERROR", "OK", "OK"]  # Keygen, then the secret and the database
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
    app.extensions["signup"].journal.engine = create_engine(
        "postgresql+psycopg://nobody@127.0.0.1:9/none", connect_args={"connect_timeout": 1}
    )
    result = app.test_cli_runner().invoke(args=["doctor"])
    assert result.exit_code == 1
    line = line_with(result.output.splitlines(), "database")
    assert line.startswith("ERROR ")
    assert "does not answer (OperationalError)" in line
    assert "check DATABASE_URL" in line
