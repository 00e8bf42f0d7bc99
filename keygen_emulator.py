"""A stand-in for the Keygen API (keygen.sh), for tests, demos and benchmarks.

It owns an in-memory Keygen (accounts, products, policies, users, licenses, tokens) speaking the
slice of the API the portal uses, as keygen-contract.md pins it down: the order of checks, error
shapes and codes, key casing, API versions 1.0-1.8 and rate limits. On top of that it injects
faults per route (errors, delays, dropped connections, garbled bodies) and serves a small control
plane under /_emulator/ for tests that run it as a separate process.

It must never import the portal's Keygen client: it is here to catch that client's bugs.

    python keygen_emulator.py --port 8001 [--fixture contract]
    flask --app keygen_emulator run --port 8001
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import copy
import hashlib
import http
import io
import itertools
import json
import logging
import os
import re
import secrets
import signal
import socket
import threading
import time
import unicodedata
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import flask
from werkzeug.serving import WSGIRequestHandler, make_server

CURRENT_API_VERSION = "1.8"
API_VERSIONS = frozenset(f"1.{minor}" for minor in range(9))
ROUTES = (
    "ping",
    "me",
    "users.create",
    "users.show",
    "users.destroy",
    "licenses.create",
    "licenses.index",
    "licenses.show",
    "licenses.destroy",
    "policies.show",
    "tokens.create",
    "tokens.destroy",
)
CONTRACT_ACCOUNT_ID = "11111111-1111-1111-1111-111111111111"

ROLES = ("user", "admin", "developer", "sales_agent", "support_agent", "read_only")
_STAFF_READ = frozenset(ROLES[1:])
_STAFF_CREATE = frozenset({"admin", "developer", "sales_agent"})
_STAFF_WRITE = frozenset({"admin", "developer"})
_GROUP_SETTERS = frozenset({"product", "admin", "developer", "sales_agent", "support_agent"})
_TOKEN_PREFIXES = {
    "user": "user",
    "admin": "admin",
    "developer": "dev",
    "sales_agent": "sales",
    "support_agent": "spprt",
    "read_only": "read",
}
USER_TOKEN_TTL = 14 * 24 * 3600
INACTIVE_AFTER = 90 * 24 * 3600
AUTH_LIMIT, AUTH_PERIOD = 5, 60
MAX_BODY = 4 * 1024 * 1024
MAX_LOG = 50_000

_JSONAPI = "application/vnd.api+json"
_JSON_TYPES = frozenset({_JSONAPI, "application/vnd.keygen+json", "application/json"})
_ACCEPTABLE = _JSON_TYPES | {"*/*", "application/*"}
_FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
_MIME_RE = re.compile(r"[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+*-]+")
_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)
_EMAIL_RE = re.compile(r"[^@\s]+@(?:[^@\s.]+\.)+[^@\s.]+")  # the contract's approximation, §4.2
_BASIC_EMAIL_RE = re.compile(r"[^@\s]+@(?:[-a-z0-9]+\.)+[a-z]{2,}", re.I)

_DOCS = "https://keygen.sh/docs/api"
_UNAUTHENTICATED = "You must be authenticated to complete the request"
_DENIED_ANONYMOUS = (
    "You do not have permission to complete the request "
    "(ensure a token or license is present and valid)"
)
_DENIED_BEARER = (
    "You do not have permission to complete the request "
    "(ensure the token or license is allowed to access all resources)"
)
_DENIED_OTHER_PRODUCT = (
    "You do not have permission to complete the request (user cannot belong to another product)"
)
_NO_ENDPOINT = (
    "The requested endpoint was not found (check your HTTP method, Accept header, and URL path)"
)
_THROTTLED = (
    "Throttle limit has been reached for your IP address. Please slow down. "
    "See https://keygen.sh/docs/api/rate-limiting/ for more info."
)
_DEFAULT_DETAILS = {
    500: "Looks like something went wrong! Our engineers have been notified. "
    "If you continue to have problems, please contact support@keygen.sh.",
    503: "Our services are currently unavailable. Please try again later.",
}
_CREDENTIAL_CODES = frozenset(
    {"EMAIL_REQUIRED", "EMAIL_INVALID", "PASSWORD_REQUIRED", "PASSWORD_INVALID"}
    | {"PASSWORD_NOT_SUPPORTED"}
)
_DROP_KEY = "keygen_emulator.drop"


# -- State --------------------------------------------------------------------------------------


class Emulator:
    """In-memory Keygen state, thread-safe (one RLock).

    `requests` logs every API request it handled except /v1/ping and the /_emulator/ control
    plane: method, path, query, route, status (None when the connection was dropped), the
    Keygen-Version, Accept and Content-Type headers, the parsed JSON body and whether a
    credential was accepted. It never holds the Authorization header.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.requests: list[dict] = []
        self.new_connections = 0
        self._lock = threading.RLock()
        self._accounts: dict[str, dict] = {}
        self._products: dict[str, dict] = {}
        self._policies: dict[str, dict] = {}
        self._users: dict[str, dict] = {}
        self._emails: dict[tuple[str, str], str] = {}  # (account id, email) -> user id
        self._licenses: dict[str, dict] = {}
        self._keys: dict[tuple[str, str], str] = {}  # (account id, key) -> license id
        self._tokens: dict[str, dict] = {}  # token value -> token
        self._token_ids: dict[str, str] = {}  # token id -> token value
        self._faults: dict[str, list[dict]] = {}
        self._rate_limit: tuple[int, int] | None = None
        self._hits: dict[tuple, int] = {}
        self._epoch = 0  # bumped by reset(), so requests from before it cannot write after it
        self._seq = itertools.count()

    # Seeding

    def add_account(
        self,
        *,
        id: str | None = None,
        slug: str | None = None,
        protected: bool = False,
        api_version: str = CURRENT_API_VERSION,
    ) -> str:
        account_id = _new_id(id)
        if api_version not in API_VERSIONS:
            raise ValueError(f"unsupported API version {api_version!r}")
        with self._lock:
            if account_id in self._accounts or (slug and self._find_account(slug)):
                raise ValueError("an account with this id or slug exists")
            self._accounts[account_id] = {
                "id": account_id,
                "slug": slug,
                "protected": protected,
                "api_version": api_version,
            }
        return account_id

    def add_product(
        self,
        account: str,
        *,
        id: str | None = None,
        name: str = "Product",
        token: str | None = None,
    ) -> tuple[str, str]:
        with self._lock:
            account_id = self._require_account(account)
            product_id = _new_id(id)
            value = token or f"prod-{secrets.token_hex(32)}v3"
            if product_id in self._products or value in self._tokens:
                raise ValueError("a product with this id or token exists")
            now = self.clock()
            self._products[product_id] = {
                "id": product_id,
                "account_id": account_id,
                "name": name,
                "created": now,
            }
            self._add_token(account_id, value, "product-token", "products", product_id, None)
        return product_id, value

    def add_policy(
        self,
        account: str,
        product: str,
        *,
        id: str | None = None,
        duration: int | None = None,
        protected: bool = False,
    ) -> str:
        with self._lock:
            account_id = self._require_account(account)
            found = self._products.get(product.lower())
            if found is None or found["account_id"] != account_id:
                raise KeyError(f"no product {product!r} in account {account!r}")
            policy_id = _new_id(id)
            if policy_id in self._policies:
                raise ValueError("a policy with this id exists")
            self._policies[policy_id] = {
                "id": policy_id,
                "account_id": account_id,
                "product_id": found["id"],
                "duration": duration,
                "protected": protected,
            }
        return policy_id

    def add_admin(
        self, account: str, *, email: str, password: str | None = None, token: str | None = None
    ) -> tuple[str, str]:
        with self._lock:
            account_id = self._require_account(account)
            email = email.strip().lower()
            value = token or f"admin-{secrets.token_hex(32)}v3"
            if (account_id, email) in self._emails or value in self._tokens:
                raise ValueError("a user with this email, or this token, exists")
            user = self._add_user(account_id, email, password, None, None, "admin", {}, seeded=True)
            self._add_token(account_id, value, "admin-token", "users", user["id"], None)
        return user["id"], value

    def delete_policy(self, policy_id: str) -> None:
        with self._lock:
            self._policies.pop(policy_id.lower(), None)

    # Inspection

    def users(self, account: str | None = None) -> list[dict]:
        """Copies of the users, oldest first; metadata as the API shows it (camelCase keys)."""
        with self._lock:
            account_id = None if account is None else self._require_account(account)
            return [
                {
                    "id": user["id"],
                    "account_id": user["account_id"],
                    "email": user["email"],
                    "first_name": user["first_name"],
                    "last_name": user["last_name"],
                    "role": user["role"].replace("_", "-"),
                    "metadata": _camel_keys(user["metadata"]),
                    "has_password": user["password"] is not None,
                    "created": _iso(user["created"]),
                }
                for user in self._users.values()
                if account_id in (None, user["account_id"])
            ]

    def licenses(self, account: str | None = None) -> list[dict]:
        """Copies of the licenses, oldest first; metadata as the API shows it."""
        with self._lock:
            account_id = None if account is None else self._require_account(account)
            return [
                {
                    "id": lic["id"],
                    "account_id": lic["account_id"],
                    "key": lic["key"],
                    "name": lic["name"],
                    "policy_id": lic["policy_id"],
                    "product_id": lic["product_id"],
                    "owner_id": lic["owner_id"],
                    "metadata": _camel_keys(lic["metadata"]),
                    "expiry": _iso(lic["expiry"]),
                    "created": _iso(lic["created"]),
                }
                for lic in self._licenses.values()
                if account_id in (None, lic["account_id"])
            ]

    # Faults, limits, reset

    def inject(
        self,
        route: str,
        *,
        status: int | None = None,
        errors: list | None = None,
        delay: float = 0.0,
        when: str = "before",
        drop: bool = False,
        garbled: bool = False,
        retry_after: int | None = None,
        times: int | None = 1,
    ) -> None:
        """Make the next `times` requests to `route` misbehave (None: all of them)."""
        if route not in ROUTES:
            raise ValueError(f"unknown route {route!r}; one of {', '.join(ROUTES)}")
        if when not in ("before", "after"):
            raise ValueError("when must be 'before' or 'after'")
        if status is not None and not 100 <= int(status) <= 599:
            raise ValueError("status must be an HTTP status code")
        if times is not None and int(times) < 1:
            raise ValueError("times must be at least 1, or None for ever")
        if float(delay) < 0 or (retry_after is not None and int(retry_after) < 0):
            raise ValueError("delay and retry_after cannot be negative")
        fault = {
            "status": None if status is None else int(status),
            "errors": errors,
            "delay": float(delay),
            "when": when,
            "drop": bool(drop),
            "garbled": bool(garbled),
            "retry_after": None if retry_after is None else int(retry_after),
            "times": None if times is None else int(times),
        }
        with self._lock:
            self._faults.setdefault(route, []).append(fault)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def reset(self) -> None:
        """Forget users, licenses, minted tokens, the request log, faults and rate counters."""
        with self._lock:
            self._epoch += 1
            self._users = {k: u for k, u in self._users.items() if u["seeded"]}
            self._emails = {(u["account_id"], u["email"]): k for k, u in self._users.items()}
            self._licenses.clear()
            self._keys.clear()
            self._tokens = {k: t for k, t in self._tokens.items() if not t["minted"]}
            self._token_ids = {t["id"]: k for k, t in self._tokens.items()}
            self.requests.clear()
            self._faults.clear()
            self._hits.clear()

    def set_rate_limit(self, limit: int | None, period: int = 30) -> None:
        """Throttle each (account, client ip, token) to `limit` requests per `period` seconds."""
        if limit is not None and (int(limit) < 1 or int(period) < 1):
            raise ValueError("limit and period must be positive")
        with self._lock:
            self._rate_limit = None if limit is None else (int(limit), int(period))
            self._hits.clear()

    # Internals (callers hold the lock where it matters)

    def _find_account(self, ref: str) -> dict | None:
        account = self._accounts.get(ref.lower())
        if account is None:
            account = next((a for a in self._accounts.values() if a["slug"] == ref), None)
        return account

    def _require_account(self, ref: str) -> str:
        account = self._find_account(ref)
        if account is None:
            raise KeyError(f"no account {ref!r}")
        return account["id"]

    def _add_user(
        self, account_id, email, password, first, last, role, metadata, *, seeded=False
    ) -> dict:
        now = self.clock()
        user = {
            "id": str(uuid.uuid4()),
            "account_id": account_id,
            "email": email,
            "first_name": first,
            "last_name": last,
            "password": None if password is None else _hash_password(password),
            "role": role,
            "metadata": metadata,
            "created": now,
            "updated": now,
            "seeded": seeded,  # made by add_admin(), so reset() keeps it
        }
        self._users[user["id"]] = user
        self._emails[(account_id, email)] = user["id"]
        return user

    def _add_token(
        self, account_id, value, kind, bearer_type, bearer_id, expiry, *, name=None, minted=False
    ) -> dict:
        now = self.clock()
        token = {
            "id": str(uuid.uuid4()),
            "value": value,
            "kind": kind,
            "account_id": account_id,
            "bearer_type": bearer_type,
            "bearer_id": bearer_id,
            "expiry": expiry,
            "name": name,
            "created": now,
            "minted": minted,  # made by POST /tokens, so reset() forgets it
        }
        self._tokens[value] = token
        self._token_ids[token["id"]] = value
        return token

    def _delete_token(self, token: dict) -> None:
        self._tokens.pop(token["value"], None)
        self._token_ids.pop(token["id"], None)

    def _delete_license(self, lic: dict) -> None:
        self._licenses.pop(lic["id"], None)
        self._keys.pop((lic["account_id"], lic["key"]), None)

    def _delete_user(self, user: dict) -> None:
        self._users.pop(user["id"], None)
        self._emails.pop((user["account_id"], user["email"]), None)
        # Keygen destroys owned licenses and tokens asynchronously; here it happens at once.
        for lic in [lic for lic in self._licenses.values() if lic["owner_id"] == user["id"]]:
            self._delete_license(lic)
        for token in [t for t in self._tokens.values() if t["bearer_id"] == user["id"]]:
            self._delete_token(token)

    def _take_fault(self, route: str) -> dict | None:
        with self._lock:
            queue = self._faults.get(route)
            if not queue:
                return None
            fault = queue[0]
            if fault["times"] is not None:
                fault["times"] -= 1
                if fault["times"] == 0:
                    queue.pop(0)
            return dict(fault)

    def _hit(self, key: tuple, period: int, now: float) -> int:
        """Count a request in a fixed window aligned to the epoch, as Rack::Attack does."""
        window = int(now) // period
        with self._lock:
            if len(self._hits) > 10_000:
                self._hits = {k: n for k, n in self._hits.items() if (k[-1] + 1) * k[-2] > now}
            bucket = (*key, period, window)
            count = self._hits[bucket] = self._hits.get(bucket, 0) + 1
        return count

    def _record(self, entry: dict) -> None:
        with self._lock:
            self.requests.append(entry)
            if len(self.requests) > MAX_LOG:
                del self.requests[: MAX_LOG // 2]

    def _state(self) -> dict:
        with self._lock:
            return {
                "accounts": [dict(a) for a in self._accounts.values()],
                "products": [
                    {"id": p["id"], "account_id": p["account_id"], "name": p["name"]}
                    for p in self._products.values()
                ],
                "policies": [dict(p) for p in self._policies.values()],
                "users": self.users(),
                "licenses": self.licenses(),
                "requests": [dict(r) for r in self.requests],
                "new_connections": self.new_connections,
            }


def seed_contract(emulator: Emulator) -> dict:
    """The fixture of the contract's acceptance cases (§12)."""
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


def _seed(
    emulator: Emulator,
    *,
    account_id: str | None = None,
    slug: str | None = None,
    protected: bool = False,
    api_version: str | None = None,
    product_token: str | None = None,
    policy_id: str | None = None,
) -> None:
    account = emulator.add_account(
        id=account_id,
        slug=slug or "demo",
        protected=protected,
        api_version=api_version or CURRENT_API_VERSION,
    )
    product, _ = emulator.add_product(account, name="Demo App", token=product_token)
    emulator.add_policy(account, product, id=policy_id)


# -- Typed parameters (keygen-sh/typed_params, as Keygen configures it) -------------------------


@dataclass(frozen=True)
class _Param:
    type: str  # object, string, boolean, integer, uuid, time
    optional: bool = False  # optional params also accept null
    nullable: bool = False
    blank: bool = False
    children: dict[str, _Param] | None = None
    one_of: tuple[str, ...] = ()
    depth: int | None = None


_MISSING = object()


def _relation(*types: str, optional: bool = False, nullable: bool = False) -> _Param:
    data = _Param(
        "object",
        nullable=nullable,
        children={"type": _Param("string", one_of=types), "id": _Param("uuid")},
    )
    return _Param("object", optional=optional, nullable=optional, children={"data": data})


def _document(data: _Param) -> _Param:
    return _Param("object", children={"data": data})


def _user_schema(*, role: bool, group: bool) -> _Param:
    attributes = {
        "first_name": _Param("string", optional=True, blank=True),
        "last_name": _Param("string", optional=True, blank=True),
        "email": _Param("string"),
        "password": _Param("string", optional=True),
        "metadata": _Param("object", optional=True, blank=True, depth=2),
    }
    if role:
        values = ROLES + tuple(r.replace("_", "-") for r in ROLES if "_" in r)
        attributes["role"] = _Param("string", optional=True, one_of=values)
    relationships = {"group": _relation("group", "groups", optional=True, nullable=True)}
    return _document(
        _Param(
            "object",
            children={
                "type": _Param("string", one_of=("user", "users")),
                "attributes": _Param("object", children=attributes),
                "relationships": _Param(
                    "object", optional=True, children=relationships if group else {}
                ),
            },
        )
    )


_MAX_ATTRIBUTES = ("max_machines", "max_cores", "max_memory", "max_disk", "max_uses")
_MAX_ATTRIBUTES += ("max_processes", "max_users")


def _license_schema(*, privileged: bool) -> _Param:
    attributes = {
        "name": _Param("string", optional=True, blank=True),
        "key": _Param("string", optional=True),
    }
    if privileged:
        attributes["protected"] = _Param("boolean", optional=True)
        attributes["suspended"] = _Param("boolean", optional=True)
        attributes["expiry"] = _Param("time", optional=True)
        attributes.update({name: _Param("integer", optional=True) for name in _MAX_ATTRIBUTES})
    attributes["metadata"] = _Param("object", optional=True, blank=True, depth=2)
    owner = _relation("user", "users", optional=True, nullable=True)
    data = {"type": _Param("string", one_of=("license", "licenses"))}
    if privileged:
        data["id"] = _Param("uuid", optional=True)
    data["attributes"] = _Param("object", optional=True, children=attributes)
    data["relationships"] = _Param(
        "object",
        children={
            "policy": _relation("policy", "policies"),
            "owner": owner,
            "user": owner,  # Keygen's alias: `param :owner, alias: :user`
            "group": _relation("group", "groups", optional=True, nullable=True),
        },
    )
    return _document(_Param("object", children=data))


_USER_SCHEMAS = {
    (role, group): _user_schema(role=role, group=group)
    for role in (False, True)
    for group in (False, True)
}
_LICENSE_SCHEMAS = {flag: _license_schema(privileged=flag) for flag in (False, True)}
_TOKEN_SCHEMA = _Param(
    "object",
    children={
        "data": _Param(
            "object",
            optional=True,
            children={
                "type": _Param("string", one_of=("token", "tokens")),
                "attributes": _Param(
                    "object",
                    optional=True,
                    children={
                        "expiry": _Param("time", optional=True),
                        "name": _Param("string", optional=True, blank=True),
                    },
                ),
            },
        )
    },
)


def _check_permitted(value: Any, param: _Param, path: list) -> None:
    """Unknown keys first, anywhere in the document, as the Parameterizer runs first."""
    if param.children is None or not isinstance(value, dict):
        return
    for key, child_value in value.items():
        child = param.children.get(key)
        if child is None:
            raise _bad_param("unpermitted parameter", [*path, key])
        _check_permitted(child_value, child, [*path, key])


def _check_valid(value: Any, param: _Param, path: list) -> None:
    """Then presence, null, type, blank and value checks, in schema order; the first one wins."""
    if value is _MISSING:
        if not param.optional:
            raise _bad_param("is missing", path)
        return
    if value is None:
        if not (param.optional or param.nullable):
            raise _bad_param("cannot be null", path)
        return
    if param.children is not None and isinstance(value, dict):
        for key, child in param.children.items():
            _check_valid(value.get(key, _MISSING), child, [*path, key])
    received = _type_name(value)
    if param.type == "uuid":
        if received != "string" or not _UUID_RE.fullmatch(value):
            raise _bad_param(f"type mismatch (received {received} expected UUID string)", path)
    elif param.type == "time":
        if received != "string" or _parse_time(value) is None:
            raise _bad_param(f"failed to coerce {received} to time", path)
    elif received != param.type:
        raise _bad_param(f"type mismatch (received {received} expected {param.type})", path)
    if param.children is None and _is_blank(value) and not param.blank:
        raise _bad_param("cannot be blank", path)
    if param.one_of and value not in param.one_of:
        raise _bad_param("is invalid", path)
    if param.depth is not None:
        too_deep = _depth_error(value, param.depth)
        if too_deep:
            raise _bad_param(f"maximum depth of {param.depth} exceeded", [*path, *too_deep])


def _depth_error(value: Any, maximum: int, depth: int = 0) -> list | None:
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, child in items:
        if not isinstance(child, dict | list):
            continue
        if depth >= maximum:
            return [key]
        deeper = _depth_error(child, maximum, depth + 1)
        if deeper is not None:
            return [key, *deeper]
    return None


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    for kind, name in ((str, "string"), (int, "integer"), (float, "float"), (dict, "object")):
        if isinstance(value, kind):
            return name
    return "array" if isinstance(value, list) else "null"


def _is_blank(value: Any) -> bool:
    if isinstance(value, str):
        return not value.strip()
    return isinstance(value, dict | list) and not value


# -- Keys, dates, passwords ---------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _underscore(key: str) -> str:
    """Rails' `key.underscore.parameterize(separator: '_')`, applied to every incoming key."""
    word = key.replace("::", "/")
    word = re.sub(r"([A-Z0-9]+)([A-Z][a-z])", r"\1_\2", word)
    word = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", word)
    word = word.replace("-", "_").lower()
    word = unicodedata.normalize("NFKD", word).encode("ascii", "ignore").decode()
    word = re.sub(r"[^a-z0-9\-_]+", "_", word)
    return re.sub(r"_{2,}", "_", word).strip("_")


@lru_cache(maxsize=4096)
def _camel(key: str) -> str:
    """Rails' `camelize(:lower)`."""
    first, *rest = key.split("_")
    return first[:1].lower() + first[1:] + "".join(part.capitalize() for part in rest)


def _underscore_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {_underscore(str(k)): _underscore_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_underscore_keys(v) for v in value]
    return value


def _camel_keys(value: Any, *, deep: bool = True) -> Any:
    if isinstance(value, dict):
        return {_camel(k): _camel_keys(v) if deep else copy.deepcopy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_camel_keys(v) for v in value]
    return value


def _pointer(path: list) -> str:
    return "".join(f"/{p}" if isinstance(p, int) else f"/{_camel(p)}" for p in path)


def _new_id(value: str | None) -> str:
    if value is None:
        return str(uuid.uuid4())
    if not _UUID_RE.fullmatch(value):
        raise ValueError(f"not a UUID: {value!r}")
    return value.lower()


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    when = datetime.fromtimestamp(moment, UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _parse_time(text: str) -> float | None:
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _hash_password(password: str) -> tuple[bytes, bytes]:
    # Keygen uses bcrypt, which reads only the first 72 bytes of a password.
    salt = secrets.token_bytes(16)
    return salt, hashlib.sha256(salt + password.encode()[:72]).digest()


def _password_matches(stored: tuple[bytes, bytes], password: str) -> bool:
    salt, digest = stored
    attempt = hashlib.sha256(salt + password.encode()[:72]).digest()
    return secrets.compare_digest(attempt, digest)


def _license_key() -> str:
    """An unencrypted key (§5.2): 16 random bytes in hex, ending in v3, in groups of 6."""
    raw = secrets.token_hex(16)[:-2] + "v3"
    return "-".join(raw[i : i + 6] for i in range(0, len(raw), 6)).upper()


def _version(text: str) -> tuple[int, int]:
    major, minor = text.split(".")
    return int(major), int(minor)


def _basic_pair(credentials: str) -> tuple[str, str] | None:
    try:
        decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    user, _, password = decoded.partition(":")
    return user, password


def _token_from(header: str) -> str:
    """The token in an Authorization header ('' when there is none), §1.2."""
    scheme, _, credentials = header.strip().partition(" ")
    scheme, credentials = scheme.lower(), credentials.strip()
    if scheme in ("bearer", "token"):
        if credentials.startswith("token="):  # Rails also reads `Token token="…"`
            credentials = credentials[6:].split(",")[0].strip().strip('"')
        return credentials
    if scheme == "basic":
        pair = _basic_pair(credentials)
        if pair:
            user, password = pair
            return password if user == "token" else user if password == "" else ""
    if scheme == "license":  # license-key authentication is not emulated: never valid
        return credentials
    return ""


# -- Errors -------------------------------------------------------------------------------------


class _Halt(Exception):
    """Stops a request with a finished error answer."""

    def __init__(self, status: int, errors: list, *, headers=None, middleware=False) -> None:
        super().__init__(status)
        self.status = status
        self.errors = errors
        self.headers = headers or {}
        self.middleware = middleware  # Rack-level: no meta, no Keygen-* headers


class _Drop(Exception):
    """Close the client's connection without an answer."""


class _Dropped(ConnectionAbortedError):
    """Raised after closing a connection on purpose; werkzeug ignores dropped connections."""


def _error(title: str, detail: str | None = None, code: str | None = None, **source) -> dict:
    error: dict[str, Any] = {"title": title}
    if detail:
        error["detail"] = detail
    if code:
        error["code"] = code
    if source:
        error["source"] = source
    return error


def _bad_param(detail: str, path: list) -> _Halt:
    return _Halt(400, [_error("Bad request", detail, pointer=_pointer(path))])


def _bad_request(detail: str, code: str) -> _Halt:
    return _Halt(400, [_error("Bad request", detail, code)], middleware=True)


def _not_found(model: str, ident: str) -> _Halt:
    detail = f"The requested {model} '{ident}' was not found"
    return _Halt(404, [_error("Not found", detail, "NOT_FOUND")])


def _forbidden(detail: str) -> _Halt:
    return _Halt(403, [_error("Access denied", detail)])


def _unauthorized(code: str, detail: str = _UNAUTHENTICATED, **source) -> _Halt:
    error = _error("Unauthorized", detail, code, **source)
    if not source:
        anchor = "" if code == "TOKEN_MISSING" else "#token-authentication"
        error["links"] = {"about": f"{_DOCS}/authentication/{anchor}"}
    return _Halt(401, [error], headers={"WWW-Authenticate": 'Bearer realm="keygen"'})


def _invalid(resource: str, name: str, detail: str, code: str, *, relationship=False) -> dict:
    """A 422 error item; the code is Keygen's `ATTRIBUTE_ERROR` (§3.2)."""
    section, kind = ("relationships", "relationships") if relationship else ("attributes", "attrs")
    pointer = "/data/id" if name == "id" else f"/data/{section}/{_camel(name)}"
    error = _error("Unprocessable resource", detail, code, pointer=pointer)
    error["links"] = {"about": f"{_DOCS}/{resource}/#{resource}-object-{kind}-{_camel(name)}"}
    return error


def _too_long(resource: str, name: str, maximum: int) -> dict:
    detail = f"is too long (maximum is {maximum} characters)"
    return _invalid(resource, name, detail, f"{name.upper()}_TOO_LONG")


def _rate_headers(window: str, count: int, limit: int, period: int, now: float) -> dict:
    start = int(now) - int(now) % period
    return {
        "X-RateLimit-Window": window,
        "X-RateLimit-Count": str(count),
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(max(0, limit - count)),
        "X-RateLimit-Reset": str(start + period),
    }


def _throttled(headers: dict, retry_after: int) -> _Halt:
    errors = [_error("Too many requests", _THROTTLED, "TOO_MANY_REQUESTS")]
    headers = {**headers, "Retry-After": str(retry_after)}
    return _Halt(429, errors, headers=headers, middleware=True)


# -- One API request ----------------------------------------------------------------------------

_ROUTE_TABLE = [
    ("GET", re.compile(r"me"), "me"),
    ("POST", re.compile(r"users"), "users.create"),
    ("GET", re.compile(r"users/(?P<id>[^/]+)"), "users.show"),
    ("DELETE", re.compile(r"users/(?P<id>[^/]+)"), "users.destroy"),
    ("GET", re.compile(r"licenses"), "licenses.index"),
    ("POST", re.compile(r"licenses"), "licenses.create"),
    ("GET", re.compile(r"licenses/(?P<id>[^/]+)"), "licenses.show"),
    ("DELETE", re.compile(r"licenses/(?P<id>[^/]+)"), "licenses.destroy"),
    ("GET", re.compile(r"policies/(?P<id>[^/]+)"), "policies.show"),
    ("POST", re.compile(r"tokens"), "tokens.create"),
    ("DELETE", re.compile(r"tokens/(?P<id>[^/]+)"), "tokens.destroy"),
]
_ACCOUNT_PATH = re.compile(r"/v1/accounts/([^/]+)(?:/(.*))?")


def _match_route(method: str, path: str) -> tuple[str | None, dict, str | None]:
    """(route name, path arguments, account segment) for a request path."""
    path = path.rstrip("/")
    if path == "/v1/ping":
        return ("ping" if method == "GET" else None), {}, None
    found = _ACCOUNT_PATH.fullmatch(path)
    if found:
        account, rest = found[1], found[2] or ""
    elif path.startswith("/v1/"):  # singleplayer style: /v1/users and so on
        account, rest = None, path[4:]
    else:
        return None, {}, None
    for route_method, pattern, name in _ROUTE_TABLE:
        matched = pattern.fullmatch(rest) if route_method == method else None
        if matched:
            return name, matched.groupdict(), account
    return None, {}, account


class _Call:
    """One API request on its way through Keygen's order of checks (contract §2)."""

    def __init__(self, emulator: Emulator, request: flask.Request) -> None:
        self.emu = emulator
        self.request = request
        self.id = str(uuid.uuid4())
        self.route, self.args, self.account_ref = _match_route(request.method, request.path)
        self.account: dict | None = None
        self.version: str | None = None
        self.token: dict | None = None
        self.bearer: dict | None = None
        self.params: dict = {}
        self.mime = ""
        self.prefers_json = False
        self.rate_headers: dict = {}
        self.log = {
            "method": request.method,
            "path": request.path,
            "query": request.query_string.decode("latin-1"),
            "route": self.route,
            "status": None,
            "keygen_version": request.headers.get("Keygen-Version"),
            "accept": request.headers.get("Accept"),
            "content_type": request.headers.get("Content-Type"),
            "json": None,
            "authenticated": False,
        }

    def run(self) -> flask.Response:
        epoch = self.emu._epoch
        if self.route != "ping":  # health probes stay out of the log, like the control plane
            self.emu._record(self.log)
        fault = self.emu._take_fault(self.route) if self.route else None
        try:
            response = self._process() if fault is None else self._with_fault(fault, epoch)
        except _Drop:
            flask.request.environ[_DROP_KEY] = True
            return flask.Response(status=500)  # never sent: the connection is closed instead
        self.log["status"] = response.status_code
        return response

    def _with_fault(self, fault: dict, epoch: int) -> flask.Response:
        before = fault["when"] == "before" or fault["retry_after"] is not None
        if before:
            self._pause(fault["delay"], epoch)
        if fault["retry_after"] is not None:
            now = self.emu.clock()
            headers = _rate_headers("1m", 61, 60, 60, now)
            headers["X-RateLimit-Reset"] = str(int(now) + fault["retry_after"])
            return self._render_halt(_throttled(headers, fault["retry_after"]))
        if before and fault["drop"]:
            raise _Drop
        if before and fault["status"] is not None:
            return self._injected(fault)
        response = self._process()
        if not before:
            self._pause(fault["delay"], None)
            if fault["drop"]:
                raise _Drop
            if fault["status"] is not None:
                return self._injected(fault)
        if fault["garbled"]:
            body = response.get_data()
            response.set_data(body[: len(body) // 2] or b'{"data": {"id": ')
        return response

    def _pause(self, delay: float, epoch: int | None) -> None:
        if delay > 0:
            time.sleep(delay)
            if epoch is not None and epoch != self.emu._epoch:
                raise _Drop  # reset() ran meanwhile: this request belongs to an earlier test

    def _injected(self, fault: dict) -> flask.Response:
        status = fault["status"]
        if status == 429:
            now = self.emu.clock()
            return self._render_halt(_throttled(_rate_headers("1m", 61, 60, 60, now), 60))
        phrase = http.HTTPStatus(status).phrase.capitalize()
        errors = fault["errors"] or [_error(phrase, _DEFAULT_DETAILS.get(status, phrase))]
        return self._render(status, {"meta": {"id": self.id}, "errors": errors})

    def _process(self) -> flask.Response:
        try:
            self._throttle()
            self._parse_body()
            self._check_accept()
            if self.route is None:
                raise _Halt(404, [_error("Not found", _NO_ENDPOINT, "NOT_FOUND")])
            if self.route == "ping":
                return self._render(200, None, middleware=True)
            self._resolve_account()
            self._resolve_version()
            return getattr(self, self.route.replace(".", "_"))()
        except _Halt as halt:
            return self._render_halt(halt)

    # Middleware and scoping

    def _throttle(self) -> None:
        now = self.emu.clock()
        account = self.account_ref or ""
        client = self.request.remote_addr or ""
        authorization = self.request.headers.get("Authorization", "")
        if self.emu._rate_limit:
            limit, period = self.emu._rate_limit
            bucket = hashlib.sha256(_token_from(authorization).encode()).hexdigest()
            count = self.emu._hit(("req", account, client, bucket), period, now)
            window = f"{period // 60}m" if period % 60 == 0 else f"{period}s"
            headers = _rate_headers(window, count, limit, period, now)
            if count > limit:
                raise _throttled(headers, period - int(now) % period)
            self.rate_headers = headers
        if self.route == "tokens.create":
            scheme, _, credentials = authorization.strip().partition(" ")
            pair = _basic_pair(credentials.strip()) if scheme.lower() == "basic" else None
            if pair:
                key = ("auth", account, client, pair[0].lower())
                count = self.emu._hit(key, AUTH_PERIOD, now)
                if count > AUTH_LIMIT:
                    headers = _rate_headers("auth", count, AUTH_LIMIT, AUTH_PERIOD, now)
                    raise _throttled(headers, AUTH_PERIOD - int(now) % AUTH_PERIOD)

    def _parse_body(self) -> None:
        request = self.request
        mime = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        rewritten = not mime or mime in _FORM_TYPES or mime.startswith("text/")
        if request.method in ("POST", "PUT", "PATCH", "DELETE") and rewritten:
            mime = "application/json"  # Keygen's DefaultContentType middleware
        if mime and not _MIME_RE.fullmatch(mime):
            raise _bad_request(
                "The mime type of the request is not acceptable "
                "(check content-type and accept headers)",
                "MIME_TYPE_INVALID",
            )
        self.mime = mime
        raw = request.get_data(cache=False)
        if mime not in _JSON_TYPES or not raw.strip():
            return
        try:
            text = raw.decode("utf-8")
            document = json.loads(text, parse_constant=_reject_constant)
            params = _underscore_keys(document)
        except (ValueError, RecursionError):
            raise _bad_request(
                "The request could not be completed because it contains invalid JSON "
                "(check formatting/encoding)",
                "JSON_INVALID",
            ) from None
        if "\\u0000" in text.lower():
            raise _bad_request(
                "The request could not be completed because it contains an unexpected null "
                "byte (check encoding)",
                "ENCODING_INVALID",
            )
        self.log["json"] = document
        self.params = params if isinstance(params, dict) else {"data": params}

    def _check_accept(self) -> None:
        accept = self.request.headers.get("Accept", "").strip()
        if not accept:  # Rails then takes the request's content type as the accepted one
            types = [self.mime] if self.mime else []
        else:
            types = [part.split(";", 1)[0].strip().lower() for part in accept.split(",")]
            types = ["*/*" if t == "*" else t for t in types]
        acceptable = [t for t in types if t in _ACCEPTABLE]
        if types and not acceptable:
            raise _bad_request(
                "The mime type of the request is not acceptable "
                "(check content-type and accept headers)",
                "MIME_TYPE_INVALID",
            )
        self.prefers_json = bool(acceptable) and acceptable[0] == "application/json"

    def _resolve_account(self) -> None:
        with self.emu._lock:
            if self.account_ref is None:
                accounts = list(self.emu._accounts.values())
                if len(accounts) != 1:
                    raise _Halt(404, [_error("Not found", "account is required", "NOT_FOUND")])
                self.account = accounts[0]
            else:
                self.account = self.emu._find_account(self.account_ref)
        if self.account is None:
            raise _not_found("account", self.account_ref or "")

    def _resolve_version(self) -> None:
        header = self.request.headers.get("Keygen-Version", "").strip()
        version = header or self.account["api_version"]
        if version[:1] in ("v", "V"):
            version = version[1:]
        if version not in API_VERSIONS:
            error = _error(
                "Bad request", "unsupported API version requested", "INVALID_API_VERSION"
            )
            error["links"] = {"about": "https://keygen.sh/docs/api/versioning/"}
            raise _Halt(400, [error])
        self.version = version

    def _authenticate(self, *, required: bool) -> None:
        token = _token_from(self.request.headers.get("Authorization", ""))
        if not token:
            if required:
                raise _unauthorized("TOKEN_MISSING")
            return
        if _UUID_RE.fullmatch(token):
            raise _unauthorized(
                "TOKEN_FORMAT_INVALID",
                "Token format is invalid (make sure that you're providing a token value, "
                "not a token's UUID identifier)",
            )
        with self.emu._lock:
            record = self.emu._tokens.get(token)
            if record is None or record["account_id"] != self.account["id"]:
                raise _unauthorized("TOKEN_INVALID")
            if record["expiry"] is not None and record["expiry"] <= self.emu.clock():
                raise _unauthorized("TOKEN_EXPIRED", "Token is expired")
            owners = self.emu._products if record["bearer_type"] == "products" else self.emu._users
            bearer = owners.get(record["bearer_id"])
        if bearer is None:
            raise _unauthorized("TOKEN_INVALID")
        self.token, self.bearer = record, bearer
        self.log["authenticated"] = True

    def _role(self) -> str | None:
        if self.token is None:
            return None
        return "product" if self.token["bearer_type"] == "products" else self.bearer["role"]

    def _typed(self, schema: _Param) -> Any:
        _check_permitted(self.params, schema, [])
        _check_valid(self.params, schema, [])
        return self.params.get("data")

    # Rendering

    def _render(self, status: int, document: dict | None, *, location=None, middleware=False):
        body = b""
        if document is not None:
            body = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
        response = flask.Response(body, status=status)
        if body:
            kind = "application/json" if self.prefers_json else _JSONAPI
            response.headers["Content-Type"] = f"{kind}; charset=utf-8"
        else:
            del response.headers["Content-Type"]
        if not middleware:
            response.headers.update(self._keygen_headers())
        response.headers.update(self.rate_headers)
        if location:
            base = self.request.host_url.rstrip("/")
            response.headers["Location"] = f"{base}/v1/accounts/{self.account['id']}/{location}"
        return response

    def _render_halt(self, halt: _Halt) -> flask.Response:
        errors = halt.errors
        if self.version is not None:
            errors = [self._migrate(error) for error in errors]
        if halt.middleware:
            self.rate_headers = {}
            response = self._render(halt.status, {"errors": errors}, middleware=True)
        else:
            response = self._render(halt.status, {"meta": {"id": self.id}, "errors": errors})
        response.headers.update(halt.headers)
        return response

    def _migrate(self, error: dict) -> dict:
        """Error changes for old API versions (§1.5)."""
        version = _version(self.version)
        code = error.get("code")
        if code in _CREDENTIAL_CODES and version <= (1, 7):
            return {
                **error,
                "code": "CREDENTIALS_INVALID",
                "detail": "email and password must be valid",
            }
        if code == "OWNER_NOT_FOUND" and version <= (1, 5):
            return _invalid("licenses", "user", "must exist", "USER_NOT_FOUND", relationship=True)
        return error

    def _keygen_headers(self) -> dict:
        old = self.version is not None and _version(self.version) <= (1, 3)
        suffix = "-Id" if old else ""
        headers = {
            "X-Request-Id": self.id,
            "Keygen-Edition": "CE",
            "Keygen-Mode": "multiplayer",
            "Cache-Control": "no-transform, no-store, max-age=0",
        }
        if self.account is not None:
            headers[f"Keygen-Account{suffix}"] = self.account["id"]
        if self.token is not None:
            headers[f"Keygen-Bearer{suffix}"] = self.token["bearer_id"]
            headers[f"Keygen-Token{suffix}"] = self.token["id"]
        if self.version is not None:
            headers["Keygen-Version"] = self.version
        return headers

    def _metadata(self, metadata: dict) -> dict:
        # At 1.4 and below, nested metadata keys come back as stored (snake_case).
        return _camel_keys(metadata, deep=_version(self.version) > (1, 4))

    def _user_doc(self, user: dict) -> dict:
        base = f"/v1/accounts/{user['account_id']}"
        here = f"{base}/users/{user['id']}"
        first, last = user["first_name"], user["last_name"]
        active = self.emu.clock() - user["created"] < INACTIVE_AFTER or any(
            lic["owner_id"] == user["id"] for lic in self.emu._licenses.values()
        )
        return {
            "id": user["id"],
            "type": "users",
            "attributes": {
                "fullName": None if first is None or last is None else f"{first} {last}",
                "firstName": first,
                "lastName": last,
                "email": user["email"],
                "status": "ACTIVE" if active else "INACTIVE",
                "role": user["role"].replace("_", "-"),
                "metadata": self._metadata(user["metadata"]),
                "created": _iso(user["created"]),
                "updated": _iso(user["updated"]),
            },
            "relationships": {
                "account": {
                    "links": {"related": base},
                    "data": {"type": "accounts", "id": user["account_id"]},
                },
                "group": {"links": {"related": f"{here}/group"}, "data": None},
                **{
                    _camel(name): {"links": {"related": f"{here}/{name.replace('_', '-')}"}}
                    for name in ("products", "licenses", "machines", "tokens", "second_factors")
                },
            },
            "links": {"self": here},
        }

    def _license_doc(self, lic: dict) -> dict:
        base = f"/v1/accounts/{lic['account_id']}"
        here = f"{base}/licenses/{lic['id']}"
        now = self.emu.clock()
        expiry = lic["expiry"]
        if lic["suspended"]:
            status = "SUSPENDED"
        elif expiry is not None and expiry <= now:
            status = "EXPIRED"
        elif expiry is not None and expiry - now < 3 * 24 * 3600:
            status = "EXPIRING"
        elif now - lic["created"] >= INACTIVE_AFTER:
            status = "INACTIVE"
        else:
            status = "ACTIVE"
        owner = None if lic["owner_id"] is None else {"type": "users", "id": lic["owner_id"]}
        old = _version(self.version) <= (1, 5)
        owner_name = "user" if old else "owner"

        def related(name: str, data: Any = _MISSING) -> dict:
            item: dict[str, Any] = {"links": {"related": f"{here}/{name}"}}
            if data is not _MISSING:
                item["data"] = data
            return item

        relationships = {
            "account": {
                "links": {"related": base},
                "data": {"type": "accounts", "id": lic["account_id"]},
            },
            "product": related("product", {"type": "products", "id": lic["product_id"]}),
            "policy": related("policy", {"type": "policies", "id": lic["policy_id"]}),
            "group": related("group", None),
            owner_name: related(owner_name, owner),
            "users": {**related("users"), "meta": {"count": 0 if owner is None else 1}},
            "machines": {
                **related("machines"),
                "meta": {"cores": 0, "memory": 0, "disk": 0, "count": 0},
            },
            "tokens": related("tokens"),
            "entitlements": related("entitlements"),
        }
        if old:  # multi-user licenses (the `users` relationship) came with 1.6
            del relationships["users"]
        maxima = {_camel(name): lic[name] for name in _MAX_ATTRIBUTES}
        return {
            "id": lic["id"],
            "type": "licenses",
            "attributes": {
                "name": lic["name"],
                "key": lic["key"],
                "expiry": _iso(expiry),
                "status": status,
                "uses": 0,
                "suspended": lic["suspended"],
                "scheme": None,
                "encrypted": False,
                "strict": False,
                "floating": True,
                "protected": lic["protected"],
                "version": None,
                **maxima,
                "requireHeartbeat": False,
                "requireCheckIn": False,
                "lastValidated": None,
                "lastCheckIn": None,
                "nextCheckIn": None,
                "lastCheckOut": None,
                "metadata": self._metadata(lic["metadata"]),
                "created": _iso(lic["created"]),
                "updated": _iso(lic["updated"]),
            },
            "relationships": relationships,
            "links": {"self": here},
        }

    def _product_doc(self, product: dict) -> dict:
        base = f"/v1/accounts/{product['account_id']}"
        here = f"{base}/products/{product['id']}"
        return {
            "id": product["id"],
            "type": "products",
            "attributes": {
                "name": product["name"],
                "code": None,
                "distributionStrategy": "LICENSED",
                "url": None,
                "platforms": None,
                "metadata": {},
                "created": _iso(product["created"]),
                "updated": _iso(product["created"]),
            },
            "relationships": {
                "account": {
                    "links": {"related": base},
                    "data": {"type": "accounts", "id": product["account_id"]},
                },
                **{
                    name: {"links": {"related": f"{here}/{name}"}}
                    for name in ("policies", "licenses", "machines", "users", "tokens")
                },
            },
            "links": {"self": here},
        }

    def _token_doc(self, token: dict, *, reveal: bool = False) -> dict:
        base = f"/v1/accounts/{token['account_id']}"
        attributes: dict[str, Any] = {"kind": token["kind"]}
        if reveal:
            attributes["token"] = token["value"]
        attributes.update(
            expiry=_iso(token["expiry"]),
            name=token["name"],
            created=_iso(token["created"]),
            updated=_iso(token["created"]),
        )
        bearer = {"type": token["bearer_type"], "id": token["bearer_id"]}
        return {
            "id": token["id"],
            "type": "tokens",
            "attributes": attributes,
            "relationships": {
                "account": {
                    "links": {"related": base},
                    "data": {"type": "accounts", "id": token["account_id"]},
                },
                "bearer": {
                    "links": {"related": f"{base}/{bearer['type']}/{bearer['id']}"},
                    "data": bearer,
                },
            },
            "links": {"self": f"{base}/tokens/{token['id']}"},
        }

    # Visibility (Keygen's authorized scopes)

    def _find_user(self, ident: str) -> dict | None:
        ident = ident.lower()
        account_id = self.account["id"]
        user_id = ident if _UUID_RE.fullmatch(ident) else self.emu._emails.get((account_id, ident))
        user = self.emu._users.get(user_id or "")
        if user is None or user["account_id"] != account_id:
            return None
        role = self._role()
        if role == "product":
            return user if user["role"] == "user" else None
        if role in _STAFF_READ:
            return user
        return user if self.bearer is not None and user["id"] == self.bearer["id"] else None

    def _find_license(self, ident: str) -> dict | None:
        account_id = self.account["id"]
        lic = self.emu._licenses.get(ident.lower()) if _UUID_RE.fullmatch(ident) else None
        if lic is None or lic["account_id"] != account_id:
            lic = self.emu._licenses.get(self.emu._keys.get((account_id, ident), ""))
        return lic if lic is not None and self._sees_license(lic) else None

    def _sees_license(self, lic: dict) -> bool:
        role = self._role()
        if role == "product":
            return lic["product_id"] == self.bearer["id"]
        return role in _STAFF_READ or (role == "user" and lic["owner_id"] == self.bearer["id"])

    # Routes

    def me(self) -> flask.Response:
        self._authenticate(required=True)
        with self.emu._lock:
            if self._role() == "product":
                document = self._product_doc(self.bearer)
            else:
                document = self._user_doc(self.bearer)
            included = [self._token_doc(self.token)]
        return self._render(200, {"data": document, "included": included})

    def users_create(self) -> flask.Response:
        self._authenticate(required=False)
        role = self._role()
        schema = _USER_SCHEMAS[(role in _STAFF_WRITE, role in _GROUP_SETTERS)]
        data = self._typed(schema)
        if role is None and self.account["protected"]:
            raise _forbidden(_DENIED_ANONYMOUS)
        if role is not None and role != "product" and role not in _STAFF_CREATE:
            raise _forbidden(_DENIED_BEARER)
        attributes = data["attributes"]
        email = attributes["email"].strip().lower()
        password = attributes.get("password")
        first, last = attributes.get("first_name"), attributes.get("last_name")
        metadata = attributes.get("metadata") or {}
        new_role = (attributes.get("role") or "user").replace("-", "_")
        group = ((data.get("relationships") or {}).get("group") or {}).get("data")
        account_id = self.account["id"]
        with self.emu._lock:
            errors = []
            if not _EMAIL_RE.fullmatch(email) or ".." in email:
                errors.append(_invalid("users", "email", "is invalid", "EMAIL_INVALID"))
            if len(email) > 255:
                errors.append(_too_long("users", "email", 255))
            if (account_id, email) in self.emu._emails:
                errors.append(_invalid("users", "email", "has already been taken", "EMAIL_TAKEN"))
            if password is not None and len(password) < 6:
                detail = "is too short (minimum is 6 characters)"
                errors.append(_invalid("users", "password", detail, "PASSWORD_TOO_SHORT"))
            if password is not None and len(password) > 72:
                errors.append(_too_long("users", "password", 72))
            for name, value in (("first_name", first), ("last_name", last)):
                if value is not None and len(value) > 255:
                    errors.append(_too_long("users", name, 255))
            if len(metadata) > 64:
                detail = "too many keys (exceeded limit of 64 keys)"
                errors.append(_invalid("users", "metadata", detail, "METADATA_TOO_LONG"))
            if group is not None:
                errors.append(
                    _invalid("users", "group", "must exist", "GROUP_NOT_FOUND", relationship=True)
                )
            if errors:
                raise _Halt(422, errors)
            user = self.emu._add_user(account_id, email, password, first, last, new_role, metadata)
            document = self._user_doc(user)
        return self._render(201, {"data": document}, location=f"users/{user['id']}")

    def users_show(self) -> flask.Response:
        self._authenticate(required=True)
        with self.emu._lock:
            user = self._find_user(self.args["id"])
            if user is None:
                raise _not_found("user", self.args["id"].lower())
            document = self._user_doc(user)
        return self._render(200, {"data": document})

    def users_destroy(self) -> flask.Response:
        self._authenticate(required=True)
        role = self._role()
        with self.emu._lock:
            user = self._find_user(self.args["id"])
            if user is None:
                raise _not_found("user", self.args["id"].lower())
            if role == "product":
                products = {
                    lic["product_id"]
                    for lic in self.emu._licenses.values()
                    if lic["owner_id"] == user["id"]
                }
                if products - {self.bearer["id"]}:
                    raise _forbidden(_DENIED_OTHER_PRODUCT)
            elif role not in _STAFF_WRITE:
                raise _forbidden(_DENIED_BEARER)
            self.emu._delete_user(user)
        return self._render(204, None)

    def licenses_create(self) -> flask.Response:
        self._authenticate(required=True)
        role = self._role()
        data = self._typed(_LICENSE_SCHEMAS[role == "product" or role in _STAFF_CREATE])
        attributes = data.get("attributes") or {}
        relationships = data["relationships"]
        policy_id = relationships["policy"]["data"]["id"].lower()
        owner_relationship = None
        for name, value in relationships.items():  # the last of owner/user wins
            if name in ("owner", "user"):
                owner_relationship = value
        owner_data = (owner_relationship or {}).get("data")
        owner_id = owner_data["id"].lower() if owner_data else None
        group = (relationships.get("group") or {}).get("data")
        license_id = (data.get("id") or "").lower() or None
        key = attributes.get("key")
        metadata = attributes.get("metadata") or {}
        name = attributes.get("name")
        account_id = self.account["id"]
        with self.emu._lock:
            policy = self.emu._policies.get(policy_id)
            if policy is not None and policy["account_id"] != account_id:
                policy = None
            self._authorize_license(role, policy, owner_id)
            owner = self.emu._users.get(owner_id or "")
            missing = []
            if policy is None:  # the product comes from the policy, so it is missing too
                missing += [("policy", "POLICY_NOT_FOUND"), ("product", "PRODUCT_NOT_FOUND")]
            if owner_id and (owner is None or owner["account_id"] != account_id):
                missing.append(("owner", "OWNER_NOT_FOUND"))
            if group is not None:
                missing.append(("group", "GROUP_NOT_FOUND"))
            errors = [
                _invalid("licenses", relation, "must exist", code, relationship=True)
                for relation, code in missing
            ]
            if license_id and license_id in self.emu._licenses:
                detail = "must not conflict with another license"
                errors.append(_invalid("licenses", "id", detail, "ID_CONFLICT"))
            if policy and key and _UUID_RE.fullmatch(key):
                other = self.emu._licenses.get(key.lower())
                if other is not None and other["account_id"] == account_id:
                    detail = "must not conflict with another license's identifier (UUID)"
                    errors.append(_invalid("licenses", "key", detail, "KEY_CONFLICT"))
            if len(metadata) > 64:
                detail = "too many keys (exceeded limit of 64 keys)"
                errors.append(_invalid("licenses", "metadata", detail, "METADATA_TOO_LONG"))
            if key is not None:
                if key in ("action", "actions"):
                    errors.append(_invalid("licenses", "key", "is reserved", "KEY_NOT_ALLOWED"))
                if (account_id, key) in self.emu._keys:
                    detail = "has already been taken"
                    errors.append(_invalid("licenses", "key", detail, "KEY_TAKEN"))
                if len(key) > 102_400:
                    errors.append(_too_long("licenses", "key", 102_400))
                elif len(key) < 6:
                    detail = "is too short (minimum is 6 characters)"
                    errors.append(_invalid("licenses", "key", detail, "KEY_TOO_SHORT"))
            if name is not None and len(name) > 1024:
                errors.append(_too_long("licenses", "name", 1024))
            for attribute in _MAX_ATTRIBUTES:
                value = attributes.get(attribute)
                low = 1 if attribute in ("max_machines", "max_cores") else 0
                if value is not None and not low <= value <= 2_147_483_647:
                    detail = f"must be greater than or equal to {low}"
                    errors.append(
                        _invalid("licenses", attribute, detail, f"{attribute.upper()}_INVALID")
                    )
            if errors:
                raise _Halt(422, errors)
            lic = self._add_license(license_id, key, policy, owner_id, attributes, metadata)
            document = self._license_doc(lic)
        return self._render(201, {"data": document}, location=f"licenses/{lic['id']}")

    def _authorize_license(self, role: str | None, policy: dict | None, owner_id: str | None):
        if role == "product":
            if policy is None or policy["product_id"] != self.bearer["id"]:
                raise _forbidden(_DENIED_BEARER)
        elif role == "user":
            if owner_id != self.bearer["id"] or (policy is not None and policy["protected"]):
                raise _forbidden(_DENIED_BEARER)
        elif role not in _STAFF_CREATE:
            raise _forbidden(_DENIED_BEARER)

    def _add_license(self, license_id, key, policy, owner_id, attributes, metadata) -> dict:
        now = self.emu.clock()
        expiry = attributes.get("expiry")
        expiry = None if expiry is None else _parse_time(expiry)
        if expiry is None and policy["duration"]:
            expiry = now + policy["duration"]
        protected = attributes.get("protected")
        lic = {
            "id": license_id or str(uuid.uuid4()),
            "account_id": self.account["id"],
            "key": key if key is not None else _license_key(),
            "name": attributes.get("name"),
            "policy_id": policy["id"],
            "product_id": policy["product_id"],
            "owner_id": owner_id,
            "metadata": metadata,
            "expiry": expiry,
            "protected": policy["protected"] if protected is None else protected,
            "suspended": bool(attributes.get("suspended")),
            "created": now,
            "updated": now,
            "seq": next(self.emu._seq),
            **{name: attributes.get(name) for name in _MAX_ATTRIBUTES},
        }
        self.emu._licenses[lic["id"]] = lic
        self.emu._keys[(lic["account_id"], lic["key"])] = lic["id"]
        return lic

    def licenses_show(self) -> flask.Response:
        self._authenticate(required=True)
        with self.emu._lock:
            lic = self._find_license(self.args["id"])
            if lic is None:
                raise _not_found("license", self.args["id"])
            document = self._license_doc(lic)
        return self._render(200, {"data": document})

    def policies_show(self) -> flask.Response:
        # Not in keygen-contract.md: Keygen's "Retrieve a policy". A product token sees only
        # its own product's policies (inferred from its authorized scope), so others are a 404.
        self._authenticate(required=True)
        with self.emu._lock:
            policy = self.emu._policies.get(self.args["id"].lower())
            role = self._role()
            visible = policy is not None and policy["account_id"] == self.account["id"]
            if visible and role == "product":
                visible = policy["product_id"] == self.bearer["id"]
            elif visible and role not in _STAFF_READ:
                visible = False
            if not visible:
                raise _not_found("policy", self.args["id"])
            document = self._policy_doc(policy)
        return self._render(200, {"data": document})

    def _policy_doc(self, policy: dict) -> dict:
        base = f"/v1/accounts/{policy['account_id']}"
        here = f"{base}/policies/{policy['id']}"
        return {
            "id": policy["id"],
            "type": "policies",
            "attributes": {
                "duration": policy["duration"],
                "protected": policy["protected"],
                "scheme": None,
                "usePool": False,
                "metadata": {},
            },
            "relationships": {
                "account": {
                    "links": {"related": base},
                    "data": {"type": "accounts", "id": policy["account_id"]},
                },
                "product": {
                    "links": {"related": f"{here}/product"},
                    "data": {"type": "products", "id": policy["product_id"]},
                },
            },
            "links": {"self": here},
        }

    def licenses_destroy(self) -> flask.Response:
        self._authenticate(required=True)
        with self.emu._lock:
            lic = self._find_license(self.args["id"])
            if lic is None:
                raise _not_found("license", self.args["id"])
            if self._role() != "product" and self._role() not in _STAFF_WRITE:
                raise _forbidden(_DENIED_BEARER)
            self.emu._delete_license(lic)
        return self._render(204, None)

    def licenses_index(self) -> flask.Response:
        self._authenticate(required=True)
        query = self.request.args
        limit = 10
        if "limit" in query:
            raw = query["limit"]
            limit = int(raw) if re.fullmatch(r"[+-]?\d{1,9}", raw.strip()) else 0
            if not 1 <= limit <= 100:
                detail = f"limit must be a number between 1 and 100 (got {raw})"
                raise _Halt(400, [_error("Bad request", detail, parameter="limit")])
        filters = [query[name] for name in ("owner", "user") if name in query]
        account_id = self.account["id"]
        with self.emu._lock:
            found = [
                lic
                for lic in self.emu._licenses.values()
                if lic["account_id"] == account_id
                and self._sees_license(lic)
                and all(self._owned_by(lic, value) for value in filters)
            ]
            found.sort(key=lambda lic: (lic["created"], lic["seq"]), reverse=True)
            documents = [self._license_doc(lic) for lic in found[:limit]]
        return self._render(200, {"data": documents})

    def _owned_by(self, lic: dict, value: str) -> bool:
        if lic["owner_id"] is None or not value:
            return False
        if _UUID_RE.fullmatch(value):
            return lic["owner_id"] == value.lower()
        owner = self.emu._users.get(lic["owner_id"])
        return owner is not None and owner["email"] == value  # exact, as Keygen matches it

    def tokens_create(self) -> flask.Response:
        authorization = self.request.headers.get("Authorization", "")
        scheme, _, credentials = authorization.strip().partition(" ")
        data = self._typed(_TOKEN_SCHEMA) or {}
        attributes = data.get("attributes") or {}
        if scheme.lower() == "basic":
            bearer = self._check_password(*(_basic_pair(credentials.strip()) or ("", "")))
            self.log["authenticated"] = True
        else:
            self._authenticate(required=True)
            bearer = self.bearer
        with self.emu._lock:
            if self._role() == "product" and scheme.lower() != "basic":
                kind, prefix, bearer_type, expiry = "product-token", "prod", "products", None
            else:
                role = bearer["role"]
                kind = f"{role.replace('_', '-')}-token"
                prefix, bearer_type = _TOKEN_PREFIXES[role], "users"
                expiry = self.emu.clock() + USER_TOKEN_TTL if role == "user" else None
            if "expiry" in attributes:
                expiry = None if attributes["expiry"] is None else _parse_time(attributes["expiry"])
            value = f"{prefix}-{secrets.token_hex(32)}v3"
            token = self.emu._add_token(
                self.account["id"],
                value,
                kind,
                bearer_type,
                bearer["id"],
                expiry,
                name=attributes.get("name"),
                minted=True,
            )
            document = self._token_doc(token, reveal=True)
        return self._render(201, {"data": document}, location=f"tokens/{token['id']}")

    def _check_password(self, email: str, password: str) -> dict:
        def refuse(code: str, detail: str) -> _Halt:
            return _unauthorized(code, detail, header="Authorization")

        if not _BASIC_EMAIL_RE.fullmatch(email):
            raise refuse("EMAIL_REQUIRED", "email is required")
        with self.emu._lock:
            user_id = self.emu._emails.get((self.account["id"], email.lower()))
            user = self.emu._users.get(user_id or "")
        if user is None:
            raise refuse("EMAIL_INVALID", "email must be valid")
        if user["password"] is None:
            raise refuse("PASSWORD_NOT_SUPPORTED", "password is unsupported")
        if not password:
            raise refuse("PASSWORD_REQUIRED", "password is required")
        if not _password_matches(user["password"], password):
            raise refuse("PASSWORD_INVALID", "password must be valid")
        return user

    def tokens_destroy(self) -> flask.Response:
        self._authenticate(required=True)
        role = self._role()
        with self.emu._lock:
            value = self.emu._token_ids.get(self.args["id"].lower(), "")
            token = self.emu._tokens.get(value)
            visible = token is not None and token["account_id"] == self.account["id"]
            if visible and token["bearer_id"] != self.bearer["id"] and role not in _STAFF_WRITE:
                visible = role == "product" and any(
                    lic["owner_id"] == token["bearer_id"] and lic["product_id"] == self.bearer["id"]
                    for lic in self.emu._licenses.values()
                )
            if not visible:
                raise _not_found("token", self.args["id"])
            self.emu._delete_token(token)
        return self._render(204, None)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


# -- The WSGI app -------------------------------------------------------------------------------

_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def create_app(emulator: Emulator | None = None) -> flask.Flask:
    """The emulator as a WSGI app; without an Emulator, one seeded from EMULATOR_* variables."""
    if emulator is None:
        emulator = _emulator_from(os.environ)
    app = flask.Flask(__name__)
    app.extensions["keygen_emulator"] = emulator
    app.wsgi_app = _DropMiddleware(app.wsgi_app)
    _register_control_plane(app, emulator)

    @app.route("/", defaults={"path": ""}, methods=_METHODS)
    @app.route("/<path:path>", methods=_METHODS)
    def api(path: str) -> flask.Response:
        return _Call(emulator, flask.request).run()

    _silence_access_log()
    return app


def _register_control_plane(app: flask.Flask, emulator: Emulator) -> None:
    """/_emulator/…: state and faults for tests that run the emulator as another process."""

    def body() -> dict:
        data = flask.request.get_json(silent=True)
        return data if isinstance(data, dict) else {}

    def refused(error: Exception) -> tuple[flask.Response, int]:
        return flask.jsonify(error=str(error)), 400

    @app.get("/_emulator/state")
    def state():
        return flask.jsonify(emulator._state())

    @app.post("/_emulator/faults")
    def add_fault():
        fields = body()
        try:
            emulator.inject(fields.pop("route", ""), **fields)
        except (TypeError, ValueError) as error:
            return refused(error)
        return "", 204

    @app.delete("/_emulator/faults")
    def clear_faults():
        emulator.clear_faults()
        return "", 204

    @app.post("/_emulator/reset")
    def reset():
        emulator.reset()
        return "", 204

    @app.post("/_emulator/rate-limit")
    def rate_limit():
        fields = body()
        try:
            emulator.set_rate_limit(fields.get("limit"), int(fields.get("period", 30)))
        except (TypeError, ValueError) as error:
            return refused(error)
        return "", 204

    @app.post("/_emulator/policies")
    def add_policy():
        fields = body()
        try:
            policy = emulator.add_policy(
                str(fields.get("account", "")),
                str(fields.get("product", "")),
                id=fields.get("id"),
                duration=fields.get("duration"),
                protected=bool(fields.get("protected", False)),
            )
        except (KeyError, TypeError, ValueError) as error:
            return refused(error)
        return flask.jsonify(id=policy), 201

    @app.delete("/_emulator/policies/<policy_id>")
    def delete_policy(policy_id: str):
        emulator.delete_policy(policy_id)
        return "", 204


def _emulator_from(env: Mapping[str, str]) -> Emulator:
    emulator = Emulator()
    _seed(
        emulator,
        account_id=env.get("EMULATOR_ACCOUNT_ID") or None,
        slug=env.get("EMULATOR_ACCOUNT_SLUG") or None,
        protected=_truthy(env.get("EMULATOR_PROTECTED")),
        api_version=env.get("EMULATOR_API_VERSION") or None,
        product_token=env.get("EMULATOR_PRODUCT_TOKEN") or None,
        policy_id=env.get("EMULATOR_POLICY_ID") or None,
    )
    return emulator


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


class _DropMiddleware:
    """Closes the client's connection unanswered when a request asked for it (fault injection)."""

    def __init__(self, wsgi_app: Callable) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict, start_response: Callable) -> Any:
        result = self.wsgi_app(environ, start_response)
        if not environ.get(_DROP_KEY):
            return result
        if hasattr(result, "close"):
            result.close()
        connection = environ.get("werkzeug.socket")
        if connection is not None:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()
        raise _Dropped("connection dropped on purpose")


class _AccessLogFilter(logging.Filter):
    """Drops werkzeug's per-request lines: request lines can hold emails."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).rstrip().endswith('"%s" %s %s')


def _silence_access_log() -> None:
    logger = logging.getLogger("werkzeug")
    if not any(isinstance(f, _AccessLogFilter) for f in logger.filters):
        logger.addFilter(_AccessLogFilter())


# -- Serving ------------------------------------------------------------------------------------


class _Connections:
    """The open client connections of one server, so stop() can close them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()

    def add(self, connection: socket.socket) -> None:
        with self._lock:
            self._open.add(connection)

    def discard(self, connection: socket.socket) -> None:
        with self._lock:
            self._open.discard(connection)

    def close_all(self) -> None:
        with self._lock:
            connections, self._open = list(self._open), set()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(WSGIRequestHandler):
    """werkzeug's handler with real keep-alive, a connection count and no access log.

    werkzeug's own run_wsgi always answers `Connection: close`; this one reads each request
    body fully and sends a Content-Length, so one connection can carry many requests.
    """

    protocol_version = "HTTP/1.1"
    timeout = 120  # seconds an idle keep-alive connection stays open
    emulator: Emulator
    connections: _Connections

    def setup(self) -> None:
        super().setup()
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.emulator._lock:
            self.emulator.new_connections += 1
        self.connections.add(self.connection)

    def finish(self) -> None:
        self.connections.discard(self.connection)
        super().finish()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def run_wsgi(self) -> None:
        if self.headers.get("Expect", "").lower().strip() == "100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        environ = self.make_environ()
        try:
            body = self._read_body(environ)
        except (OSError, ValueError):
            self.close_connection = True
            return
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        environ.pop("wsgi.input_terminated", None)
        started: list = []
        chunks: list[bytes] = []

        def start_response(status: str, headers: list, exc_info: Any = None) -> Callable:
            started[:] = [status, headers]
            return chunks.append

        try:
            result = self.server.app(environ, start_response)
            try:
                chunks.extend(result)
            finally:
                if hasattr(result, "close"):
                    result.close()
        except ConnectionError:
            self.close_connection = True
            return
        except Exception:
            logging.getLogger(__name__).exception("the emulator failed on a request")
            started[:] = ["500 INTERNAL SERVER ERROR", [("Content-Type", "text/plain")]]
            chunks[:] = [b"emulator error"]
            self.close_connection = True
        status, headers = started
        payload = b"".join(chunks)
        code_text, _, reason = status.partition(" ")
        code = int(code_text)
        self.send_response(code, reason)
        has_length = False
        for name, value in headers:
            lowered = name.lower()
            if lowered in ("connection", "transfer-encoding", "keep-alive"):
                continue
            has_length = has_length or lowered == "content-length"
            self.send_header(name, value)
        empty = code in (204, 304) or code < 200
        if not has_length and not empty:
            self.send_header("Content-Length", str(len(payload)))
        if self.close_connection:
            self.send_header("Connection", "close")
        # Headers and body in one write: two small writes on a kept-alive connection meet
        # Nagle's algorithm and delayed ACKs, and every answer would wait ~40 ms.
        self._headers_buffer.append(b"\r\n")
        if self.command != "HEAD" and not empty:
            self._headers_buffer.append(payload)
        self.flush_headers()

    def _read_body(self, environ: dict) -> bytes:
        if environ.get("wsgi.input_terminated"):  # chunked
            stream, parts, size = environ["wsgi.input"], [], 0
            while size <= MAX_BODY:
                part = stream.read(65536)
                if not part:
                    return b"".join(parts)
                parts.append(part)
                size += len(part)
            self.close_connection = True
            return b"".join(parts)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if length < 0 or length > MAX_BODY:
            self.close_connection = True  # the rest of the body stays unread
            length = max(0, min(length, MAX_BODY))
        return self.rfile.read(length) if length else b""


class ServerThread:
    """An emulator served on a loopback port from a daemon thread."""

    def __init__(self, server: Any, connections: _Connections) -> None:
        self._server = server
        self._connections = connections
        self._stopped = False
        host = server.host if ":" not in server.host else f"[{server.host}]"
        self.url = f"http://{host}:{server.port}"
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"keygen-emulator:{server.port}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        self._connections.close_all()
        self._thread.join(timeout=5)

    def __enter__(self) -> ServerThread:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def serve(emulator: Emulator, host: str = "127.0.0.1", port: int = 0) -> ServerThread:
    """Serve `emulator` over HTTP/1.1 with keep-alive; port 0 picks a free port."""
    connections = _Connections()
    handler = type("_BoundHandler", (_Handler,), {"emulator": emulator, "connections": connections})
    server = make_server(host, port, create_app(emulator), threaded=True, request_handler=handler)
    return ServerThread(server, connections)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A stand-in Keygen API for tests and demos.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--account-id", help="account UUID (default: EMULATOR_ACCOUNT_ID or new)")
    parser.add_argument("--slug", help="account slug (default: EMULATOR_ACCOUNT_SLUG or demo)")
    parser.add_argument("--protected", action="store_true", help="refuse anonymous sign-ups")
    parser.add_argument("--api-version", help="the account's pinned API version (default 1.8)")
    parser.add_argument("--product-token", help="the product token (default: generated)")
    parser.add_argument("--policy-id", help="the policy UUID (default: generated)")
    parser.add_argument("--fixture", choices=["contract"], help="seed the contract's fixture")
    args = parser.parse_args(argv)

    if args.fixture == "contract":
        emulator = Emulator()
        seed_contract(emulator)
    else:
        env = dict(os.environ)
        flags = {
            "EMULATOR_ACCOUNT_ID": args.account_id,
            "EMULATOR_ACCOUNT_SLUG": args.slug,
            "EMULATOR_PROTECTED": "true" if args.protected else None,
            "EMULATOR_API_VERSION": args.api_version,
            "EMULATOR_PRODUCT_TOKEN": args.product_token,
            "EMULATOR_POLICY_ID": args.policy_id,
        }
        env.update({name: value for name, value in flags.items() if value})
        emulator = _emulator_from(env)

    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    server = serve(emulator, args.host, args.port)
    print(f"keygen emulator listening on {server.url}", flush=True)
    try:
        while not stopping.wait(0.5):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
