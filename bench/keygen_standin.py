"""A Keygen stand-in for the benchmark: asyncio (aiohttp), so that it costs little CPU.

It speaks the slice of Keygen's API the portal and the naive baseline use, in Keygen's JSON:API
shapes: POST /users, GET /users?metadata[key]=value, GET and DELETE /users/{id-or-email},
POST /licenses
(a client-chosen data.id, 422 ID_CONFLICT on repeat), GET /licenses/{id-or-key},
GET /licenses?owner=, GET /me. It is written independently of the portal's client (it never
imports keygen_api) and keeps no more rules than a benchmark needs: keygen_emulator/ is the
faithful one.

What it models, each switchable at run time through the control plane:

* a fixed latency per request (``latency``, default 50 ms: network round trip + Keygen's work),
  from the request's arrival to its answer, the stand-in's own work inside it, kept to well
  under a millisecond by a timer that fires on time (``sleep_until``);
* an extra delay on the first request of every new connection (``connect_delay``, default
  40 ms), standing for the TCP and TLS round trips that loopback does not have;
* optional TLS (``--tls-cert``/``--tls-key``), so that handshakes cost real CPU on both ends;
* a Rack::Attack-style quota per (account, client IP, sha256(token)): ``quota_limit`` requests
  per fixed ``quota_period`` window aligned to the epoch, then 429 with Retry-After;
* a stall: for ``stall`` seconds every API request waits, as when Keygen hangs.

It counts requests (by route and status), new connections and 429s. The control plane is plain
HTTP on its own loopback port (``--control-port``) so that the benchmark's own calls are never
counted: GET /stats, POST /reset (counters; ``{"data": true}`` also forgets users and licenses),
POST /config (any of latency, connect_delay, quota_limit, quota_period, stall).

    python bench/keygen_standin.py --port 9001 --control-port 9002 --account ID \\
        --token prod-...v3 --policy ID [--tls-cert cert.pem --tls-key key.pem]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import hashlib
import json
import os
import re
import secrets
import signal
import socket
import ssl
import statistics
import time
import uuid
from collections import Counter, deque
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

MEDIA_TYPE = "application/vnd.api+json"
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
EMAIL_RE = re.compile(r"[^@\s]+@(?:[^@\s.]+\.)+[^@\s.]+")
USER_ATTRIBUTES = {"firstName", "lastName", "email", "password", "metadata"}
THROTTLED = (
    "Throttle limit has been reached for your IP address. Please slow down. "
    "See https://keygen.sh/docs/api/rate-limiting/ for more info."
)


class Halt(Exception):
    """An error response: status, errors[] and extra headers."""

    def __init__(self, status: int, errors: list[dict], headers: dict | None = None):
        self.status = status
        self.errors = errors
        self.headers = headers or {}
        super().__init__(status)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_LIBC = ctypes.CDLL(None, use_errno=True)
_TIMERFD = hasattr(_LIBC, "timerfd_create")  # Linux
CLOCK_MONOTONIC = 1  # time.monotonic()'s clock on Linux
TFD_TIMER_ABSTIME = 1


async def sleep_until(due: float) -> None:
    """Return at `due` (time.monotonic()), not up to a millisecond later: asyncio.sleep rounds
    the selector's timeout up to whole milliseconds, ~0.5 ms of lateness in every answer. A
    timerfd armed for `due` wakes the event loop when it fires, and costs no busy waiting."""
    fd = _LIBC.timerfd_create(CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC) if _TIMERFD else -1
    try:
        seconds = int(due)
        when = _Itimerspec(_Timespec(0, 0), _Timespec(seconds, int((due - seconds) * 1e9)))
        if fd < 0 or _LIBC.timerfd_settime(fd, TFD_TIMER_ABSTIME, ctypes.byref(when), None):
            # not Linux, or out of descriptors: a sleep that may overrun a little
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            return
        loop = asyncio.get_running_loop()
        fired = loop.create_future()
        loop.add_reader(fd, lambda: fired.done() or fired.set_result(None))
        try:
            await fired
        finally:
            loop.remove_reader(fd)
    finally:
        if fd >= 0:
            os.close(fd)


def error(title: str, detail: str, code: str | None = None, pointer: str | None = None) -> dict:
    item: dict[str, Any] = {"title": title, "detail": detail}
    if code:
        item["code"] = code
    if pointer:
        item["source"] = {"pointer": pointer}
    return item


def bad(detail: str, pointer: str) -> Halt:
    return Halt(400, [error("Bad request", detail, pointer=pointer)])


def invalid(detail: str, code: str, pointer: str) -> Halt:
    return Halt(422, [error("Unprocessable resource", detail, code, pointer)])


def not_found(model: str, ident: str) -> Halt:
    detail = f"The requested {model} '{ident}' was not found"
    return Halt(404, [error("Not found", detail, "NOT_FOUND")])


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def license_key() -> str:
    raw = secrets.token_hex(16)[:-2] + "v3"
    return "-".join(raw[i : i + 6] for i in range(0, 32, 6)).upper()


class Keygen:
    """The stand-in's state, counters and settings. One event loop, so no locks."""

    def __init__(self, account: str, token: str, policy: str, product: str | None = None):
        self.account = account
        self.token = token
        self.policy = policy
        self.product = product or str(uuid.uuid4())
        self.token_id = str(uuid.uuid4())
        self.bucket = hashlib.sha256(token.encode()).hexdigest()
        self.latency = 0.05
        self.connect_delay = 0.04
        self.quota_limit: int | None = None
        self.quota_period = 1
        self.stall_until = 0.0
        self.fresh: set = set()  # connections whose first request has not arrived yet
        self.reset(data=True)

    def reset(self, *, data: bool = False) -> None:
        self.requests = 0
        self.new_connections = 0
        self.throttled = 0
        self.routes: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.late: deque[float] = deque(maxlen=10_000)  # how long after it was due each answer left
        self.hits: dict[tuple, int] = {}
        self.cpu_at_reset = time.process_time()
        if data:
            self.users: dict[str, dict] = {}
            self.emails: dict[str, str] = {}
            self.by_metadata: dict[tuple[str, str], set[str]] = {}  # (key, text) -> user ids
            self.licenses: dict[str, dict] = {}
            self.keys: dict[str, str] = {}

    def stats(self) -> dict:
        return {
            "requests": self.requests,
            "new_connections": self.new_connections,
            "throttled": self.throttled,
            "routes": dict(self.routes),
            "statuses": {str(k): v for k, v in self.statuses.items()},
            "users": len(self.users),
            "licenses": len(self.licenses),
            "cpu_seconds": time.process_time() - self.cpu_at_reset,
            "late_p50": statistics.median(self.late) if self.late else None,
            "config": self.config(),
        }

    def config(self) -> dict:
        return {
            "latency": self.latency,
            "connect_delay": self.connect_delay,
            "quota_limit": self.quota_limit,
            "quota_period": self.quota_period,
            "stall_left": max(0.0, self.stall_until - time.monotonic()),
        }

    def configure(self, changes: dict) -> None:
        if "latency" in changes:
            self.latency = max(0.0, float(changes["latency"]))
        if "connect_delay" in changes:
            self.connect_delay = max(0.0, float(changes["connect_delay"]))
        if "quota_limit" in changes:
            limit = changes["quota_limit"]
            self.quota_limit = None if limit is None else max(1, int(limit))
            self.hits.clear()
        if "quota_period" in changes:
            self.quota_period = max(1, int(changes["quota_period"]))
            self.hits.clear()
        if "stall" in changes:
            self.stall_until = time.monotonic() + max(0.0, float(changes["stall"]))

    # -- One API request ---------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.Response:
        # The latency is the whole time Keygen takes to answer, its own work included: the
        # answer leaves `latency` after the request arrived, not `latency` after the work.
        arrived = time.monotonic()
        self.requests += 1
        wait = self.latency
        protocol = request.protocol
        if protocol in self.fresh:
            self.fresh.discard(protocol)
            wait += self.connect_delay
        stalled = max(0.0, self.stall_until - arrived)
        headers = {"X-Request-Id": str(uuid.uuid4()), "Keygen-Version": "1.8"}
        try:
            route, ident = self.route(request)
            self.routes[route] += 1
            headers.update(self.throttle(request))
            body = await request.read()
            if stalled > 0:
                await asyncio.sleep(stalled)  # a hung Keygen does the work once it comes back
            status, document, extra = self.dispatch(request, route, ident, body)
            headers.update(extra)
        except Halt as halt:
            if stalled > 0:
                await asyncio.sleep(stalled)
            status, document = halt.status, {"errors": halt.errors}
            headers.update(halt.headers)
            if status == 429:
                self.throttled += 1
            else:
                document["meta"] = {"id": headers["X-Request-Id"]}
        self.statuses[status] += 1
        if document is None:
            response = web.Response(status=status, headers=headers)
        else:
            response = web.Response(
                status=status,
                body=json.dumps(document).encode(),
                content_type=MEDIA_TYPE,
                charset="utf-8",
                headers=headers,
            )
        due = arrived + stalled + wait
        if due > time.monotonic():
            await sleep_until(due)
        self.late.append(time.monotonic() - due)
        return response

    def route(self, request: web.Request) -> tuple[str, str | None]:
        account = request.match_info["account"]
        if account != self.account:
            raise not_found("account", account)
        tail = request.match_info["tail"].strip("/")
        method = request.method
        first, _, rest = tail.partition("/")
        table = {
            ("GET", "me", False): "me",
            ("POST", "users", False): "users.create",
            ("GET", "users", False): "users.index",
            ("GET", "users", True): "users.show",
            ("DELETE", "users", True): "users.destroy",
            ("POST", "licenses", False): "licenses.create",
            ("GET", "licenses", False): "licenses.index",
            ("GET", "licenses", True): "licenses.show",
            ("DELETE", "licenses", True): "licenses.destroy",
        }
        route = table.get((method, first, bool(rest)))
        if route is None or "/" in rest:
            detail = (
                "The requested endpoint was not found "
                "(check your HTTP method, Accept header, and URL path)"
            )
            raise Halt(404, [error("Not found", detail, "NOT_FOUND")])
        return route, rest or None

    def throttle(self, request: web.Request) -> dict:
        if self.quota_limit is None:
            return {}
        now = time.time()
        period, limit = self.quota_period, self.quota_limit
        window = int(now) // period
        authorization = request.headers.get("Authorization", "")
        token = authorization[7:].strip() if authorization[:7].lower() == "bearer " else ""
        bucket = self.bucket if token == self.token else hashlib.sha256(token.encode()).hexdigest()
        key = (window, request.remote, bucket)
        if len(self.hits) > 10_000:
            self.hits = {k: v for k, v in self.hits.items() if k[0] == window}
        count = self.hits[key] = self.hits.get(key, 0) + 1
        headers = {
            "X-RateLimit-Window": f"{period}s",
            "X-RateLimit-Count": str(count),
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(max(0, limit - count)),
            "X-RateLimit-Reset": str((window + 1) * period),
        }
        if count > limit:
            headers["Retry-After"] = str(period - int(now) % period)
            raise Halt(429, [error("Too many requests", THROTTLED, "TOO_MANY_REQUESTS")], headers)
        return headers

    def authenticate(self, request: web.Request, *, required: bool) -> bool:
        authorization = request.headers.get("Authorization", "")
        if not authorization:
            if required:
                detail = "You must be authenticated to complete the request"
                raise Halt(401, [error("Unauthorized", detail, "TOKEN_MISSING")])
            return False
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or token.strip() != self.token:
            detail = "You must be authenticated to complete the request"
            raise Halt(401, [error("Unauthorized", detail, "TOKEN_INVALID")])
        return True

    def dispatch(self, request, route, ident, body) -> tuple[int, dict | None, dict]:
        self.authenticate(request, required=route != "users.create")
        document = None
        if request.method == "POST":
            try:
                document = json.loads(body or b"null")
            except (ValueError, UnicodeDecodeError):
                detail = (
                    "The request could not be completed because it contains invalid JSON "
                    "(check formatting/encoding)"
                )
                raise Halt(400, [error("Bad request", detail, "JSON_INVALID")]) from None
            if not isinstance(document, dict) or not isinstance(document.get("data"), dict):
                raise bad("is missing", "/data")
        if route == "me":
            return 200, self.me_doc(), {}
        if route == "users.create":
            return self.create_user(document["data"])
        if route == "users.index":
            return 200, {"data": [self.user_doc(user) for user in self.list_users(request)]}, {}
        if route == "users.show":
            return 200, {"data": self.user_doc(self.find_user(ident))}, {}
        if route == "users.destroy":
            user = self.find_user(ident)
            del self.users[user["id"]]
            del self.emails[user["email"]]
            for pair in self.metadata_pairs(user):
                self.by_metadata[pair].discard(user["id"])
            for lic in [lic for lic in self.licenses.values() if lic["owner"] == user["id"]]:
                del self.licenses[lic["id"]]
                del self.keys[lic["key"]]
            return 204, None, {}
        if route == "licenses.create":
            return self.create_license(document["data"])
        if route == "licenses.show":
            return 200, {"data": self.license_doc(self.find_license(ident))}, {}
        if route == "licenses.destroy":
            lic = self.find_license(ident)
            del self.licenses[lic["id"]]
            del self.keys[lic["key"]]
            return 204, None, {}
        owner = (request.query.get("owner") or "").lower()
        found = [
            lic
            for lic in self.licenses.values()
            if not owner
            or lic["owner"] == owner
            or self.users.get(lic["owner"] or "", {}).get("email") == owner
        ]
        limit = int(request.query.get("limit") or 10)
        found.sort(key=lambda lic: lic["created"], reverse=True)
        return 200, {"data": [self.license_doc(lic) for lic in found[:limit]]}, {}

    # -- Users -------------------------------------------------------------------------------

    def create_user(self, data: dict) -> tuple[int, dict, dict]:
        if data.get("type") not in ("user", "users"):
            raise bad("is invalid", "/data/type")
        if "id" in data:
            raise bad("unpermitted parameter", "/data/id")
        attributes = data.get("attributes")
        if not isinstance(attributes, dict):
            raise bad("is missing", "/data/attributes")
        for name in attributes:
            if name not in USER_ATTRIBUTES:
                raise bad("unpermitted parameter", f"/data/attributes/{name}")
        email = attributes.get("email")
        if "email" not in attributes:
            raise bad("is missing", "/data/attributes/email")
        if not isinstance(email, str):
            detail = "cannot be null" if email is None else "type mismatch"
            raise bad(detail, "/data/attributes/email")
        email = email.strip().lower()
        password = attributes.get("password")
        if not email or password == "":
            name = "email" if not email else "password"
            raise bad("cannot be blank", f"/data/attributes/{name}")
        pointer = "/data/attributes/"
        if not EMAIL_RE.fullmatch(email) or ".." in email:
            raise invalid("is invalid", "EMAIL_INVALID", pointer + "email")
        if len(email) > 255:
            detail = "is too long (maximum is 255 characters)"
            raise invalid(detail, "EMAIL_TOO_LONG", pointer + "email")
        if email in self.emails:
            raise invalid("has already been taken", "EMAIL_TAKEN", pointer + "email")
        if password is not None and len(password) < 6:
            detail = "is too short (minimum is 6 characters)"
            raise invalid(detail, "PASSWORD_TOO_SHORT", pointer + "password")
        if password is not None and len(password) > 72:
            detail = "is too long (maximum is 72 characters)"
            raise invalid(detail, "PASSWORD_TOO_LONG", pointer + "password")
        now = time.time()
        user = {
            "id": str(uuid.uuid4()),
            "email": email,
            "first_name": attributes.get("firstName"),
            "last_name": attributes.get("lastName"),
            "password": hashlib.sha256((password or "").encode()).hexdigest(),
            "metadata": attributes.get("metadata") or {},
            "created": now,
        }
        self.users[user["id"]] = user
        self.emails[email] = user["id"]
        for pair in self.metadata_pairs(user):
            self.by_metadata.setdefault(pair, set()).add(user["id"])
        location = f"/v1/accounts/{self.account}/users/{user['id']}"
        return 201, {"data": self.user_doc(user)}, {"Location": location}

    @staticmethod
    def metadata_pairs(user: dict) -> list[tuple[str, str]]:
        return [(k, v) for k, v in user["metadata"].items() if isinstance(v, str)]

    def list_users(self, request: web.Request) -> list[dict]:
        """Users whose metadata has each `metadata[key]=value` of the query (string values),
        newest first, up to `limit` (10)."""
        found: set[str] | None = None
        for name, value in request.query.items():
            if name.startswith("metadata[") and name.endswith("]"):
                ids = self.by_metadata.get((name[9:-1], value), set())
                found = ids if found is None else found & ids
        users = [self.users[i] for i in found] if found is not None else list(self.users.values())
        users.sort(key=lambda user: user["created"], reverse=True)
        return users[: int(request.query.get("limit") or 10)]

    def find_user(self, ident: str) -> dict:
        ident = ident.lower()
        user = self.users.get(ident) or self.users.get(self.emails.get(ident, ""))
        if user is None:
            raise not_found("user", ident)
        return user

    def user_doc(self, user: dict) -> dict:
        base = f"/v1/accounts/{self.account}"
        here = f"{base}/users/{user['id']}"
        first, last = user["first_name"], user["last_name"]
        return {
            "id": user["id"],
            "type": "users",
            "attributes": {
                "fullName": None if first is None or last is None else f"{first} {last}",
                "firstName": first,
                "lastName": last,
                "email": user["email"],
                "status": "ACTIVE",
                "role": "user",
                "metadata": user["metadata"],
                "created": iso(user["created"]),
                "updated": iso(user["created"]),
            },
            "relationships": {
                "account": {
                    "links": {"related": base},
                    "data": {"type": "accounts", "id": self.account},
                },
                "group": {"links": {"related": f"{here}/group"}, "data": None},
                "products": {"links": {"related": f"{here}/products"}},
                "licenses": {"links": {"related": f"{here}/licenses"}},
            },
            "links": {"self": here},
        }

    # -- Licenses ----------------------------------------------------------------------------

    def create_license(self, data: dict) -> tuple[int, dict, dict]:
        if data.get("type") not in ("license", "licenses"):
            raise bad("is invalid", "/data/type")
        license_id = data.get("id")
        if license_id is not None and (
            not isinstance(license_id, str) or not UUID_RE.fullmatch(license_id.lower())
        ):
            raise bad("type mismatch (received string expected UUID string)", "/data/id")
        relationships = data.get("relationships")
        if not isinstance(relationships, dict) or "policy" not in relationships:
            raise bad("is missing", "/data/relationships/policy")
        policy = ((relationships.get("policy") or {}).get("data") or {}).get("id")
        if policy != self.policy:
            detail = (
                "You do not have permission to complete the request "
                "(ensure the token or license is allowed to access all resources)"
            )
            raise Halt(403, [error("Access denied", detail)])
        name = "owner" if "owner" in relationships else "user"
        owner = ((relationships.get(name) or {}).get("data") or {}).get("id")
        if owner is not None and owner not in self.users:
            raise invalid("must exist", "OWNER_NOT_FOUND", f"/data/relationships/{name}")
        license_id = (license_id or str(uuid.uuid4())).lower()
        if license_id in self.licenses:
            detail = "must not conflict with another license"
            raise invalid(detail, "ID_CONFLICT", "/data/id")
        attributes = data.get("attributes") or {}
        now = time.time()
        lic = {
            "id": license_id,
            "key": license_key(),
            "owner": owner,
            "metadata": attributes.get("metadata") or {},
            "created": now,
        }
        self.licenses[license_id] = lic
        self.keys[lic["key"]] = license_id
        location = f"/v1/accounts/{self.account}/licenses/{license_id}"
        return 201, {"data": self.license_doc(lic)}, {"Location": location}

    def find_license(self, ident: str) -> dict:
        lic = self.licenses.get(ident.lower()) or self.licenses.get(self.keys.get(ident, ""))
        if lic is None:
            raise not_found("license", ident)
        return lic

    def license_doc(self, lic: dict) -> dict:
        base = f"/v1/accounts/{self.account}"
        here = f"{base}/licenses/{lic['id']}"
        owner = None if lic["owner"] is None else {"type": "users", "id": lic["owner"]}
        return {
            "id": lic["id"],
            "type": "licenses",
            "attributes": {
                "name": None,
                "key": lic["key"],
                "expiry": None,
                "status": "ACTIVE",
                "uses": 0,
                "suspended": False,
                "scheme": None,
                "encrypted": False,
                "floating": True,
                "protected": False,
                "maxMachines": 3,
                "metadata": lic["metadata"],
                "created": iso(lic["created"]),
                "updated": iso(lic["created"]),
            },
            "relationships": {
                "account": {
                    "links": {"related": base},
                    "data": {"type": "accounts", "id": self.account},
                },
                "product": {
                    "links": {"related": f"{here}/product"},
                    "data": {"type": "products", "id": self.product},
                },
                "policy": {
                    "links": {"related": f"{here}/policy"},
                    "data": {"type": "policies", "id": self.policy},
                },
                "owner": {"links": {"related": f"{here}/owner"}, "data": owner},
            },
            "links": {"self": here},
        }

    def me_doc(self) -> dict:
        base = f"/v1/accounts/{self.account}"
        now = iso(time.time())
        return {
            "data": {
                "id": self.product,
                "type": "products",
                "attributes": {"name": "Benchmark", "metadata": {}, "created": now, "updated": now},
                "relationships": {
                    "account": {
                        "links": {"related": base},
                        "data": {"type": "accounts", "id": self.account},
                    }
                },
                "links": {"self": f"{base}/products/{self.product}"},
            },
            "included": [
                {
                    "id": self.token_id,
                    "type": "tokens",
                    "attributes": {"kind": "product-token", "name": None, "expiry": None},
                }
            ],
        }


# -- Serving ---------------------------------------------------------------------------------


def api_app(keygen: Keygen) -> web.Application:
    app = web.Application(client_max_size=1024 * 1024)
    app.router.add_route("*", "/v1/accounts/{account}/{tail:.*}", keygen.handle)
    app.router.add_get("/v1/ping", lambda request: web.Response(status=204))
    return app


def control_app(keygen: Keygen) -> web.Application:
    async def stats(request: web.Request) -> web.Response:
        return web.json_response(keygen.stats())

    async def reset(request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else {}
        keygen.reset(data=bool(body.get("data")))
        return web.json_response(keygen.stats())

    async def configure(request: web.Request) -> web.Response:
        try:
            keygen.configure(await request.json())
        except (TypeError, ValueError) as problem:
            return web.json_response({"error": str(problem)}, status=400)
        return web.json_response(keygen.config())

    app = web.Application()
    app.router.add_get("/stats", stats)
    app.router.add_post("/reset", reset)
    app.router.add_post("/config", configure)
    return app


async def serve(args: argparse.Namespace) -> None:
    keygen = Keygen(args.account, args.token, args.policy)
    keygen.configure({"latency": args.latency, "connect_delay": args.connect_delay})
    loop = asyncio.get_running_loop()

    api = web.AppRunner(api_app(keygen), access_log=None, keepalive_timeout=75)
    await api.setup()
    handler_factory = api.server
    assert handler_factory is not None

    def new_connection():
        # Called once per accepted connection: count it and remember that its first request
        # pays the handshake delay.
        keygen.new_connections += 1
        handler = handler_factory()
        if len(keygen.fresh) > 50_000:
            keygen.fresh.clear()
        keygen.fresh.add(handler)
        return handler

    context = None
    if args.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_cert, args.tls_key)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    server = await loop.create_server(new_connection, sock=sock, ssl=context, backlog=4096)

    control = web.AppRunner(control_app(keygen), access_log=None)
    await control.setup()
    await web.TCPSite(control, args.host, args.control_port).start()

    scheme = "https" if context else "http"
    print(f"keygen stand-in listening on {scheme}://{args.host}:{args.port}", flush=True)
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    server.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(api.cleanup(), 1)
    await control.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--control-port", type=int, required=True)
    parser.add_argument("--account", required=True, help="the account's UUID")
    parser.add_argument("--token", required=True, help="the product token")
    parser.add_argument("--policy", required=True, help="the policy UUID")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per request")
    parser.add_argument(
        "--connect-delay", type=float, default=0.04, help="seconds per new connection"
    )
    parser.add_argument("--tls-cert", help="PEM certificate (enables TLS)")
    parser.add_argument("--tls-key", help="PEM private key")
    args = parser.parse_args(argv)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
