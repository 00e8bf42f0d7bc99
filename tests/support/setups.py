"""A Keygen with the setups a vendor runs, for tests/test_keygen_*.py: one account with the
portal's product and policy, another product, EE environments (`sandbox` with a product of its
own, `staging`), and a LEGACY_ENCRYPT policy; and `flask doctor` run against it."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from app import create_app
from keygen_emulator import Emulator, serve
from support.leaks import SECRETS, secret
from support.portal import KeygenWorld, make_settings

STRONG_KEY = secret(secrets.token_urlsafe(48))


@pytest.fixture(scope="module")
def setups_server() -> Iterator[KeygenWorld]:
    emulator = Emulator()
    account = emulator.add_account(slug="vendor")
    product, token = emulator.add_product(account, name="App")
    policy = emulator.add_policy(account, product, protected=True)
    other_product, other_token = emulator.add_product(account, name="Other App")
    other_policy = emulator.add_policy(account, other_product, protected=True)
    server = serve(emulator)
    world = KeygenWorld(
        emulator=emulator,
        url=server.url,
        account=account,
        slug="vendor",
        product=product,
        token=secret(token),
        policy=policy,
        other_policy=other_policy,
    )
    world.other_token = secret(other_token)
    emulator.add_environment(account, "sandbox")
    emulator.add_environment(account, "staging")
    sandbox_product, sandbox_token = emulator.add_product(account, environment="sandbox")
    world.sandbox_token = secret(sandbox_token)
    world.sandbox_policy = emulator.add_policy(account, sandbox_product, protected=True)
    world.legacy_policy = emulator.add_policy(
        account, product, scheme="LEGACY_ENCRYPT", protected=True
    )
    yield world
    server.stop()


@pytest.fixture
def setups(setups_server: KeygenWorld) -> Iterator[KeygenWorld]:
    """The Keygen above, as Keygen Cloud (reset() restores its switches) and without users."""
    emulator = setups_server.emulator
    emulator.reset()
    yield setups_server
    SECRETS.update(license["key"] for license in emulator.licenses())
    emulator.reset()


def doctor(world: KeygenWorld, **changes) -> tuple[int, list[str]]:
    """(exit code, output lines) of `flask doctor` for the portal's settings against ``world``."""
    changes.setdefault("secret_key", STRONG_KEY)
    changes.setdefault("web_concurrency", 1)
    app = create_app(make_settings(world, **changes))
    result = app.test_cli_runner().invoke(args=["doctor"])
    return result.exit_code, result.output.splitlines()


def line_with(lines: list[str], text: str) -> str:
    [line] = [line for line in lines if text in line]
    return line
