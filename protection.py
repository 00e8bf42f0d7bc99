"""Abuse protection for the signup form: who the client is (trusting only our own proxies), how
often it may submit (per address and per email; admission.py queues all signups together), two
bot traps (a honeypot field and a minimum time between serving the form and submitting it), and
the signed tokens the form page hands out (its session cookie and CSRF token).
No Keygen here: everything in this module runs before the workflow and decides whether it runs."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
import threading
import time
import weakref
from collections.abc import Iterable
from typing import ClassVar

from flask import Flask, current_app, g, session
from itsdangerous import Signer, URLSafeTimedSerializer
from itsdangerous.encoding import base64_encode
from itsdangerous.url_safe import URLSafeSerializerMixin
from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import MovingWindowRateLimiter
from werkzeug.middleware.proxy_fix import ProxyFix

# -- The client's address ----------------------------------------------------------------------


class TrustedProxies:
    """Werkzeug's ProxyFix, applied only when the peer is one of our proxies.

    ProxyFix believes any X-Forwarded-For it is given (it has no peer check), so a client that
    reached gunicorn directly could claim any address and escape the per-address limit.
    ``x_for`` and ``x_proto`` take the entry ``hops`` from the end: the one our nearest proxy
    appended or set. ``x_host`` stays off: the recipes in deploy/ pass the public Host (with its
    port) themselves, and nginx would pass a client's own X-Forwarded-Host through untouched.
    """

    def __init__(self, wsgi_app, *, hops: int, networks: Iterable[str]):
        self.direct = wsgi_app
        self.fixed = ProxyFix(wsgi_app, x_for=hops, x_proto=hops) if hops else wsgi_app
        self.networks = [ipaddress.ip_network(network) for network in networks]

    def __call__(self, environ, start_response):
        if self.trusts(environ.get("REMOTE_ADDR")):
            return self.fixed(environ, start_response)
        return self.direct(environ, start_response)

    def trusts(self, peer: str | None) -> bool:
        try:
            address = ipaddress.ip_address(peer or "")
        except ValueError:
            return False  # a Unix socket has no address: only a proxy on this machine uses it
        address = getattr(address, "ipv4_mapped", None) or address
        return any(address in network for network in self.networks)


# -- Rate limits -------------------------------------------------------------------------------


class LimitReached(Exception):
    """Too many submissions; ``bucket`` says which limit (for the log, never for the client)."""

    def __init__(self, bucket: str):
        self.bucket = bucket
        super().__init__(f"rate limit reached: {bucket}")


class LimiterUnavailable(Exception):
    """The limit storage did not answer. Signups stop (fail closed) rather than go unlimited."""


# A Redis that hangs must not hang the form: after a second, the submission gets 503.
_STORAGE_TIMEOUTS = {"socket_connect_timeout": 1, "socket_timeout": 1}


class RateLimits:
    """Separate buckets, in the storage and with the moving-window strategy of `limits`
    (the library under Flask-Limiter):

    * per client address, for every POST that passed the CSRF check;
    * per email address, once the form is valid (a keyed hash, so the store holds no emails);
    * per client address and per email address for lost-key requests, buckets of their own.

    All signups together are not refused here but queued for their turn at Keygen
    (admission.py), in the same storage.

    No Flask-Limiter extension: it would run its hooks on every request (a third of a GET's
    cost) to find the per-view limits the portal does not have. So nothing else (GET /,
    /healthz, /readyz, /metrics) is counted or touches the storage. Storage errors are never
    swallowed and there is no in-memory fallback: a storage outage becomes LimiterUnavailable.
    """

    def __init__(
        self,
        app: Flask,
        *,
        storage_uri: str,
        per_ip: str,
        per_email: str,
        recovery_per_ip: str = "5/minute,20/hour",
        recovery_per_email: str = "3/hour",
    ):
        if storage_uri.startswith("memory://"):
            self.storage = SweptMemoryStorage()
        else:
            options = _STORAGE_TIMEOUTS if storage_uri.startswith("redis") else {}
            self.storage = storage_from_string(storage_uri, **options)
        # OWASP: fixed windows allow bursts at their edges.
        self.strategy = MovingWindowRateLimiter(self.storage)
        self.per_ip = parse_many(per_ip)
        self.per_email = parse_many(per_email)
        self.email_key = app.config["SECRET_KEY"].encode()
        self.recovery_per_ip = parse_many(recovery_per_ip)
        self.recovery_per_email = parse_many(recovery_per_email)

    def admit_client(self, address: str | None) -> None:
        """Count one submission from this address, or raise LimitReached."""
        self._hit([("ip", self.per_ip, address or "unknown")])

    def admit_signup(self, email: str) -> None:
        """Count one valid signup for this email, or raise LimitReached."""
        digest = hmac.new(self.email_key, email.encode(), hashlib.sha256).hexdigest()[:32]
        self._hit([("email", self.per_email, digest)])

    def admit_recovery(self, address: str | None, email: str) -> None:
        """Count one lost-key request from this client and for this email (separate buckets of
        their own), or raise LimitReached. Both are tested before either is counted."""
        digest = hmac.new(self.email_key, email.encode(), hashlib.sha256).hexdigest()[:32]
        buckets = [
            ("recovery-ip", self.recovery_per_ip, address or "unknown"),
            ("recovery-email", self.recovery_per_email, digest),
        ]
        for name, limits, key in buckets:
            if not all(self._call("test", limit, name, key) for limit in limits):
                raise LimitReached(name)
        self._hit(buckets)

    def _hit(self, buckets: list[tuple[str, list[RateLimitItem], str]]) -> None:
        for name, limits, key in buckets:
            if not all(self._call("hit", limit, name, key) for limit in limits):
                raise LimitReached(name)

    def reachable(self) -> bool:
        """Whether the limit storage answers now (memory:// always does)."""
        return bool(self.storage.check())

    def _call(self, method: str, limit: RateLimitItem, name: str, key: str) -> bool:
        try:
            return getattr(self.strategy, method)(limit, name, key)
        except Exception as error:  # redis, memcached: each storage raises its own errors
            raise LimiterUnavailable(f"rate limit storage failed: {error!r}") from error


class SweptMemoryStorage(MemoryStorage):
    """`limits`' in-process storage (memory://), its expired entries swept once a second by one
    thread per process. The library starts a new thread for nearly every hit instead (a timer
    that sweeps once, 10 ms later), which cost 6% of a signup's CPU (bench/README.md). Sweeping
    less often only frees memory later: every check compares the entries' times itself."""

    SWEEP_EVERY = 1.0  # seconds
    _all: ClassVar[weakref.WeakSet[SweptMemoryStorage]] = weakref.WeakSet()
    _sweeper_pid: int | None = None  # threads do not survive gunicorn's fork: one per process
    _lock = threading.Lock()

    def __init__(self):
        super().__init__()
        self._all.add(self)

    def _MemoryStorage__schedule_expiry(self) -> None:  # replaces the library's timer per hit
        if SweptMemoryStorage._sweeper_pid != os.getpid():
            with self._lock:
                if SweptMemoryStorage._sweeper_pid != os.getpid():
                    SweptMemoryStorage._sweeper_pid = os.getpid()
                    sweeper = threading.Thread(target=self._sweep, name="rate-limit-sweeper")
                    sweeper.daemon = True
                    sweeper.start()

    @classmethod
    def _sweep(cls) -> None:
        while True:
            time.sleep(cls.SWEEP_EVERY)
            for storage in list(cls._all):
                storage._MemoryStorage__expire_events()


# -- Signed tokens: the session cookie and the CSRF token --------------------------------------


class SignedTokens(URLSafeTimedSerializer):
    """itsdangerous' URL-safe timed serializer, without its attempt to zlib every payload: the
    session cookie and the CSRF token are some fifty bytes of JSON around hex that never shrink,
    and every attempt set up a fresh deflate state (bench R6). Reading is unchanged, compressed
    payloads included."""

    def dump_payload(self, obj) -> bytes:
        return base64_encode(super(URLSafeSerializerMixin, self).dump_payload(obj))


def csrf_token() -> str:
    """Flask-WTF's generate_csrf(), with its serializer built once per process instead of once
    per token (a tenth of the form page's CPU, bench R6). The same raw token in the session and
    the same signed token in g, which generate_csrf() then returns and CSRFProtect checks."""
    if "csrf_token" not in g:
        if "csrf_token" not in session:
            session["csrf_token"] = secrets.token_hex(20)  # Flask-WTF's shape: 40 hex digits
        g.csrf_token = _csrf_serializer(current_app).dumps(session["csrf_token"])
    return g.csrf_token


def _csrf_serializer(app: Flask) -> SignedTokens:
    serializer = app.extensions.get("csrf_serializer")
    if serializer is None:
        serializer = app.extensions["csrf_serializer"] = SignedTokens(
            app.secret_key,
            salt="wtf-csrf-token",  # Flask-WTF's, so that its check reads these tokens
            signer_kwargs={"digest_method": hashlib.sha1},  # hmac's fast path, the same SHA-1
        )
    return serializer


# -- Bot traps ---------------------------------------------------------------------------------


class FillTimer:
    """A signed note of when a form was served, bound to the form's nonce.

    The note is signed with SECRET_KEY, so a client cannot backdate it, and bound to the nonce,
    so one old note cannot be reused: the nonce makes every copy of a form the same signup."""

    def __init__(self, secret_key: str, minimum: float, clock=time.time):
        # A bare signature over "nonce.time" (the nonce is in the form already): no JSON, no
        # compression, half the cost of a serializer on every GET of the form (bench R6).
        # SHA-1 given as hashlib's own function, for hmac's fast path (the default, a Python
        # wrapper of the same SHA-1, takes the slow one).
        self.signer = Signer(secret_key, salt="portal.form-served", digest_method=hashlib.sha1)
        self.minimum = minimum
        self.clock = clock

    def stamp(self, nonce: str) -> str:
        served = f"{self.clock():.3f}"
        return f"{served}.{self.signer.get_signature(f'{nonce}.{served}').decode()}"

    def age(self, stamp: str | None, nonce: str | None) -> float | None:
        """Seconds since the form was served, or None if the note is missing or not ours."""
        served, _, signature = (stamp or "").rpartition(".")
        if not (served and nonce and self.signer.verify_signature(f"{nonce}.{served}", signature)):
            return None
        try:
            return self.clock() - float(served)
        except ValueError:
            return None

    def too_fast(self, age: float | None) -> bool:
        return self.minimum > 0 and (age is None or age < self.minimum)
