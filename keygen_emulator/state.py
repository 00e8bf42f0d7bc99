"""The emulator's memory: accounts, products, policies, users, licenses and tokens.

`Emulator` is what tests hold: seeding, inspection, fault injection, rate limits and reset.
`Store` keeps the records, indexed the ways the routes look them up. One RLock, `Emulator.lock`,
guards both; the routes take it around every read and write.
"""

from __future__ import annotations

import itertools
import secrets
import threading
import time
import uuid
from collections.abc import Callable

from keygen_emulator import faults
from keygen_emulator.deployment import (
    ACCOUNT_STATE,
    LEGACY_ENCRYPT,
    PRODUCT_PERMISSIONS,
    Deployment,
    Switches,
)
from keygen_emulator.formats import camel_keys, hash_password, iso, new_id
from keygen_emulator.self_service import SelfServiceState
from keygen_emulator.webhooks import Webhooks

CURRENT_API_VERSION = "1.8"
API_VERSIONS = frozenset(f"1.{minor}" for minor in range(9))
ROLES = ("user", "admin", "developer", "sales_agent", "support_agent", "read_only")
MAX_LOG = 50_000


class Store:
    """Keygen's records of every account. Callers hold `Emulator.lock`."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.accounts: dict[str, dict] = {}
        self.products: dict[str, dict] = {}
        self.policies: dict[str, dict] = {}
        self.users: dict[str, dict] = {}
        self.emails: dict[tuple[str, str], str] = {}  # (account id, email) -> user id
        self.licenses: dict[str, dict] = {}
        self.keys: dict[tuple[str, str], str] = {}  # (account id, key) -> license id
        self.tokens: dict[str, dict] = {}  # token value -> token
        self.token_ids: dict[str, str] = {}  # token id -> token value
        self.environments: dict[str, dict] = {}
        self.jobs: list[tuple[float, dict]] = []  # (when, license): deletions still to come
        self.machines: dict[str, dict] = {}  # machines.py
        self.seq = itertools.count()  # orders licenses created in the same instant

    def find_account(self, ref: str) -> dict | None:
        """By id or slug, as `app/services/resolve_account_service.rb` does."""
        account = self.accounts.get(ref.lower())
        if account is None:
            account = next((a for a in self.accounts.values() if a["slug"] == ref), None)
        return account

    def find_environment(self, account_id: str, ref: str) -> dict | None:
        """By id or code, as `app/services/resolve_environment_service.rb` does."""
        for environment in self.environments.values():
            if environment["account_id"] == account_id and ref in (
                environment["id"],
                environment["code"],
            ):
                return environment
        return None

    def require_account(self, ref: str) -> str:
        account = self.find_account(ref)
        if account is None:
            raise KeyError(f"no account {ref!r}")
        return account["id"]

    def add_user(
        self,
        account_id,
        email,
        password,
        first,
        last,
        role,
        metadata,
        *,
        seeded=False,
        environment_id=None,
    ) -> dict:
        now = self.clock()
        user = {
            "environment_id": environment_id,
            "id": str(uuid.uuid4()),
            "account_id": account_id,
            "email": email,
            "first_name": first,
            "last_name": last,
            "password": None if password is None else hash_password(password),
            "role": role,
            "metadata": metadata,
            "created": now,
            "updated": now,
            "seeded": seeded,  # made by add_admin(), so reset() keeps it
            "banned": False,  # app/models/user.rb, banned_at
            "second_factor": None,  # {"secret", "last"} once enabled (people.py)
            "reset_digest": None,  # the password reset token's hash (passwords.py)
            "reset_sent": None,
        }
        self.users[user["id"]] = user
        self.emails[(account_id, email)] = user["id"]
        return user

    def add_token(
        self,
        account_id,
        value,
        kind,
        bearer_type,
        bearer_id,
        expiry,
        *,
        name=None,
        minted=False,
        environment_id=None,
    ) -> dict:
        token = {
            "environment_id": environment_id,
            "permissions": None,  # None: its bearer's (Switches.set_permissions narrows it)
            "id": str(uuid.uuid4()),
            "value": value,
            "kind": kind,
            "account_id": account_id,
            "bearer_type": bearer_type,
            "bearer_id": bearer_id,
            "expiry": expiry,
            "name": name,
            "created": self.clock(),
            "minted": minted,  # made by POST /tokens, so reset() forgets it
        }
        self.tokens[value] = token
        self.token_ids[token["id"]] = value
        return token

    def add_license(self, lic: dict) -> None:
        self.licenses[lic["id"]] = lic
        self.keys[(lic["account_id"], lic["key"])] = lic["id"]

    def delete_token(self, token: dict) -> None:
        self.tokens.pop(token["value"], None)
        self.token_ids.pop(token["id"], None)

    def delete_license(self, lic: dict) -> None:
        self.licenses.pop(lic["id"], None)
        self.keys.pop((lic["account_id"], lic["key"]), None)
        for machine in [m for m in self.machines.values() if m["license_id"] == lic["id"]]:
            self.machines.pop(machine["id"], None)

    def delete_user(self, user: dict, delay: float | None = None) -> None:
        self.users.pop(user["id"], None)
        self.emails.pop((user["account_id"], user["email"]), None)
        for lic in self.licenses.values():
            if user["id"] in lic["user_ids"]:
                lic["user_ids"].remove(user["id"])
        # Keygen destroys owned licenses and tokens asynchronously (`dependent: :destroy_async`
        # in app/models/user.rb); with no delay it happens at once.
        for lic in [lic for lic in self.licenses.values() if lic["owner_id"] == user["id"]]:
            if delay is None:
                self.delete_license(lic)
            else:
                self.jobs.append((self.clock() + delay, lic))
        for token in [t for t in self.tokens.values() if t["bearer_id"] == user["id"]]:
            self.delete_token(token)

    def run_jobs(self, now: float | None) -> None:
        """The deletions due by ``now`` (None: all of them)."""
        due = [job for job in self.jobs if now is None or job[0] <= now]
        self.jobs = [job for job in self.jobs if job not in due]
        for _, lic in due:
            self.delete_license(lic)

    def forget_unseeded(self) -> None:
        """Drop users, licenses and tokens the API made; keep what the seed helpers made."""
        self.users = {k: u for k, u in self.users.items() if u["seeded"]}
        self.emails = {(u["account_id"], u["email"]): k for k, u in self.users.items()}
        self.licenses.clear()
        self.keys.clear()
        self.jobs.clear()
        self.machines.clear()
        self.tokens = {k: t for k, t in self.tokens.items() if not t["minted"]}
        self.token_ids = {t["id"]: k for k, t in self.tokens.items()}


class Emulator(Switches, SelfServiceState):
    """In-memory Keygen state, thread-safe (one RLock). The deployment's switches (edition,
    versions, hosts, environments, permissions, account states, races) are deployment.Switches';
    machines, second factors, bans and webhook endpoints are self_service.SelfServiceState's.

    `requests` logs every API request it handled except /v1/ping and the /_emulator/ control
    plane: method, path, query, route, status (None when the connection was dropped), the
    Keygen-Version, Keygen-Environment, Accept and Content-Type headers, the parsed JSON body
    and whether a credential was accepted. It never holds the Authorization header.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.requests: list[dict] = []
        self.new_connections = 0
        self.lock = threading.RLock()
        self.store = Store(clock)
        self.rate_limit: tuple[int, int] | None = None  # (requests, seconds)
        self.epoch = 0  # bumped by reset(), so requests from before it cannot write after it
        self.deployment = self.base_deployment = Deployment()
        self.narrowed: set[str] = set()  # tokens whose permissions a test narrowed
        self._faults: dict[str, list[dict]] = {}
        self._hits: dict[tuple, int] = {}
        self.webhooks = Webhooks(clock)  # endpoints and signed events (webhooks.py)
        self.reset_emails: list[str] = []  # Keygen's own reset emails (meta.deliver not false)

    # Seeding

    def add_account(
        self,
        *,
        id: str | None = None,
        slug: str | None = None,
        protected: bool = False,
        api_version: str = CURRENT_API_VERSION,
    ) -> str:
        account_id = new_id(id)
        if api_version not in API_VERSIONS:
            raise ValueError(f"unsupported API version {api_version!r}")
        with self.lock:
            accounts = self.store.accounts
            if account_id in accounts or (slug and self.store.find_account(slug)):
                raise ValueError("an account with this id or slug exists")
            accounts[account_id] = {
                "id": account_id,
                "slug": slug,
                "protected": protected,
                "api_version": api_version,
                **ACCOUNT_STATE,
            }
        return account_id

    def add_product(
        self,
        account: str,
        *,
        name: str = "Product",
        token: str | None = None,
        environment: str | None = None,
        permissions: tuple[str, ...] = PRODUCT_PERMISSIONS,
    ) -> tuple[str, str]:
        """A product and its token, in the global environment or in ``environment`` (code or
        id); the product's role has ``permissions`` (EE)."""
        with self.lock:
            account_id = self.store.require_account(account)
            environment_id = None
            if environment is not None:
                found = self.store.find_environment(account_id, environment)
                if found is None:
                    raise KeyError(f"no environment {environment!r}")
                environment_id = found["id"]
            product_id = str(uuid.uuid4())
            value = token or f"prod-{secrets.token_hex(32)}v3"
            if value in self.store.tokens:
                raise ValueError("a product with this token exists")
            self.store.products[product_id] = {
                "id": product_id,
                "account_id": account_id,
                "name": name,
                "created": self.clock(),
                "environment_id": environment_id,
                "permissions": tuple(permissions),
            }
            self.store.add_token(
                account_id,
                value,
                "product-token",
                "products",
                product_id,
                None,
                environment_id=environment_id,
            )
        return product_id, value

    def add_policy(
        self,
        account: str,
        product: str,
        *,
        id: str | None = None,
        duration: int | None = None,
        protected: bool | None = None,
        scheme: str | None = None,
        name: str | None = None,
    ) -> str:
        """A policy of ``product``; unless told, protected when the account is
        (app/models/policy.rb, before_create). A LEGACY_ENCRYPT ``scheme`` makes it encrypted:
        its licenses' keys are shown only when they are created (license_serializer.rb)."""
        with self.lock:
            account_id = self.store.require_account(account)
            found = self.store.products.get(product.lower())
            if found is None or found["account_id"] != account_id:
                raise KeyError(f"no product {product!r} in account {account!r}")
            policy_id = new_id(id)
            if policy_id in self.store.policies:
                raise ValueError("a policy with this id exists")
            self.store.policies[policy_id] = {
                "id": policy_id,
                "account_id": account_id,
                "product_id": found["id"],
                "environment_id": found["environment_id"],
                "scheme": scheme,
                "encrypted": scheme == LEGACY_ENCRYPT,
                "name": name,
                "duration": duration,
                "protected": self.store.accounts[account_id]["protected"]
                if protected is None
                else protected,
            }
        return policy_id

    def add_admin(self, account: str, *, email: str) -> tuple[str, str]:
        """An admin without a password, and its token."""
        with self.lock:
            account_id = self.store.require_account(account)
            email = email.strip().lower()
            if (account_id, email) in self.store.emails:
                raise ValueError("a user with this email exists")
            user = self.store.add_user(
                account_id, email, None, None, None, "admin", {}, seeded=True
            )
            value = f"admin-{secrets.token_hex(32)}v3"
            self.store.add_token(account_id, value, "admin-token", "users", user["id"], None)
        return user["id"], value

    def delete_policy(self, policy_id: str) -> None:
        with self.lock:
            self.store.policies.pop(policy_id.lower(), None)

    # Inspection

    def users(self, account: str | None = None) -> list[dict]:
        """Copies of the users, oldest first; metadata as the API shows it (camelCase keys)."""
        with self.lock:
            account_id = None if account is None else self.store.require_account(account)
            return [
                {
                    "id": user["id"],
                    "account_id": user["account_id"],
                    "email": user["email"],
                    "first_name": user["first_name"],
                    "last_name": user["last_name"],
                    "role": user["role"].replace("_", "-"),
                    "metadata": camel_keys(user["metadata"]),
                    "has_password": user["password"] is not None,
                    "created": iso(user["created"]),
                }
                for user in self.store.users.values()
                if account_id in (None, user["account_id"])
            ]

    def licenses(self, account: str | None = None) -> list[dict]:
        """Copies of the licenses, oldest first; metadata as the API shows it."""
        with self.lock:
            account_id = None if account is None else self.store.require_account(account)
            return [
                {
                    "id": lic["id"],
                    "account_id": lic["account_id"],
                    "key": lic["key"],
                    "name": lic["name"],
                    "policy_id": lic["policy_id"],
                    "product_id": lic["product_id"],
                    "owner_id": lic["owner_id"],
                    "user_ids": list(lic["user_ids"]),
                    "metadata": camel_keys(lic["metadata"]),
                    "expiry": iso(lic["expiry"]),
                    "created": iso(lic["created"]),
                }
                for lic in self.store.licenses.values()
                if account_id in (None, lic["account_id"])
            ]

    def snapshot(self) -> dict:
        """Everything at once, as GET /_emulator/state shows it."""
        with self.lock:
            return {
                "accounts": [
                    {name: a[name] for name in ("id", "slug", "protected", "api_version")}
                    for a in self.store.accounts.values()
                ],
                "account_states": {
                    a["id"]: {name: a[name] for name in ACCOUNT_STATE}
                    for a in self.store.accounts.values()
                },
                "products": [
                    {"id": p["id"], "account_id": p["account_id"], "name": p["name"]}
                    for p in self.store.products.values()
                ],
                "policies": [dict(p) for p in self.store.policies.values()],
                "users": self.users(),
                "licenses": self.licenses(),
                "requests": [dict(r) for r in self.requests],
                "new_connections": self.new_connections,
                "machines": self.machines(),
                "tokens": self.tokens(),
                "webhook_deliveries": list(self.webhooks.deliveries),
            }

    # Faults, limits, reset

    def inject(self, route: str, **options) -> None:
        """Make the next `times` requests to `route` misbehave; see faults.new_fault()."""
        fault = faults.new_fault(route, **options)
        with self.lock:
            self._faults.setdefault(route, []).append(fault)

    def clear_faults(self) -> None:
        with self.lock:
            self._faults.clear()

    def reset(self) -> None:
        """Forget users, licenses, minted tokens, the request log, faults and rate counters."""
        with self.lock:
            self.epoch += 1
            self.store.forget_unseeded()
            self._restore_switches()
            self.requests.clear()
            self._faults.clear()
            self._hits.clear()
            self.reset_emails.clear()
        self.webhooks.clear()

    def set_rate_limit(self, limit: int | None, period: int = 30) -> None:
        """Throttle each (account, client ip, token) to `limit` requests per `period` seconds."""
        if limit is not None and (int(limit) < 1 or int(period) < 1):
            raise ValueError("limit and period must be positive")
        with self.lock:
            self.rate_limit = None if limit is None else (int(limit), int(period))
            self._hits.clear()

    # For the request pipeline

    def take_fault(self, route: str) -> dict | None:
        """The fault the next request to `route` meets, if any; counts it off."""
        with self.lock:
            queue = self._faults.get(route)
            if not queue:
                return None
            fault = queue[0]
            if fault["times"] is not None:
                fault["times"] -= 1
                if fault["times"] == 0:
                    queue.pop(0)
            return dict(fault)

    def count_hit(self, key: tuple, period: int, now: float) -> int:
        """Count a request in a fixed window aligned to the epoch, as Rack::Attack does."""
        window = int(now) // period
        with self.lock:
            if len(self._hits) > 10_000:
                self._hits = {k: n for k, n in self._hits.items() if (k[-1] + 1) * k[-2] > now}
            bucket = (*key, period, window)
            count = self._hits[bucket] = self._hits.get(bucket, 0) + 1
        return count

    def record(self, entry: dict) -> None:
        with self.lock:
            self.requests.append(entry)
            if len(self.requests) > MAX_LOG:
                del self.requests[: MAX_LOG // 2]
