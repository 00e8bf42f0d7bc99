"""Seeding an emulator: the fixture of the contract's acceptance cases, and the one account,
product and policy the command line or the environment (EMULATOR_*) asks for."""

from __future__ import annotations

from collections.abc import Mapping

from keygen_emulator.state import CURRENT_API_VERSION, Emulator

CONTRACT_ACCOUNT_ID = "11111111-1111-1111-1111-111111111111"


def seed_contract(emulator: Emulator) -> dict:
    """The fixture tests/test_emulator.py checks the emulator against: two products, an admin."""
    account = emulator.add_account(id=CONTRACT_ACCOUNT_ID, slug="acme")
    product, product_token = emulator.add_product(account, name="P")
    product2, product_token2 = emulator.add_product(account, name="P2")
    admin, admin_token = emulator.add_admin(account, email="admin@example.com")
    return {
        "account": account,
        "slug": "acme",
        "product": product,
        "product_token": product_token,
        "product2": product2,
        "product_token2": product_token2,
        "admin": admin,
        "admin_email": "admin@example.com",
        "admin_token": admin_token,
        "policy": emulator.add_policy(account, product),
        "policy2": emulator.add_policy(account, product2),
    }


def from_environment(env: Mapping[str, str]) -> Emulator:
    """An emulator with one account, product and policy, set by EMULATOR_* variables."""
    emulator = Emulator()
    account = emulator.add_account(
        id=env.get("EMULATOR_ACCOUNT_ID") or None,
        slug=env.get("EMULATOR_ACCOUNT_SLUG") or "demo",
        protected=_truthy(env.get("EMULATOR_PROTECTED")),
        api_version=env.get("EMULATOR_API_VERSION") or CURRENT_API_VERSION,
    )
    if env.get("EMULATOR_NEWEST_API_VERSION"):  # e.g. 1.7: a self-hosted Keygen v1.3 or v1.4
        emulator.configure(newest_version=env["EMULATOR_NEWEST_API_VERSION"])
        emulator.base_deployment = emulator.deployment  # kept by reset()
    token = env.get("EMULATOR_PRODUCT_TOKEN") or None
    product, _ = emulator.add_product(account, name="Demo App", token=token)
    emulator.add_policy(account, product, id=env.get("EMULATOR_POLICY_ID") or None)
    return emulator


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")
