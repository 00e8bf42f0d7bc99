"""The portal's settings in the tests: a complete environment for load_settings(), and settings
for a portal built in this process against the in-process Keygen emulator (conftest.py's
`keygen`, `settings`, `app` and `client` fixtures build on these)."""

from __future__ import annotations

from dataclasses import dataclass

from config import Settings
from keygen_emulator import Emulator
from support.leaks import SECRET_KEY
from support.paths import SCRATCH

TOKEN = "prod-" + "ab" * 32 + "v3"
# A complete, valid environment: tests add or break one setting at a time.
GOOD = {
    "KEYGEN_ACCOUNT_ID": "acme",
    "KEYGEN_PRODUCT_TOKEN": TOKEN,
    "KEYGEN_POLICY_ID": "6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f",
    "SECRET_KEY": "s" * 40,
}


@dataclass
class KeygenWorld:
    """The emulator and the ids of what it holds for the portal."""

    emulator: Emulator
    url: str
    account: str
    slug: str
    product: str
    token: str
    policy: str
    other_policy: str  # a policy of another product of the same account

    def users(self) -> list[dict]:
        return self.emulator.users(self.account)

    def licenses(self) -> list[dict]:
        return self.emulator.licenses(self.account)

    def calls(self, route: str | None = None) -> list[dict]:
        return [r for r in self.emulator.requests if route is None or r["route"] == route]


def make_settings(world: KeygenWorld, **changes) -> Settings:
    values = dict(
        keygen_api_url=world.url,
        keygen_account_id=world.account,
        keygen_product_token=world.token,
        keygen_policy_id=world.policy,
        secret_key=SECRET_KEY,
        cookie_secure=False,  # the test client speaks plain http
        keygen_connect_timeout=1.0,
        keygen_read_timeout=2.0,
        signup_deadline=4.0,
        database_url=f"sqlite:///{SCRATCH.folder('journal')}/portal.db",
        reconcile_interval=0.0,  # tests run the reconciler themselves
        keygen_max_rps=1000,  # no pacing of Keygen's calls, unless a test is about it
    )
    values.update(changes)
    return Settings(**values)
