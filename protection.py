"""Abuse protection for the signup form: who the client is (trusting only our own proxies), how
often it may submit (per address and per email; admission.py queues all signups together), two
bot traps (a honeypot field and a minimum time between serving the form and submitting it).
No Keygen here: everything in this module runs before the workflow and decides whether it runs."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import threading
import time
from collections.abc import Iterable
from contextlib import nullcontext

from flask import Flask
from itsdangerous import Signer
from limits import RateLimitItem, parse_many
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter
from werkzeug.middleware.proxy_fix import ProxyFix

import email_rules

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
    * per email address, once the form is valid (a keyed hash, so the store holds no emails), in
      the form the caller passes (the canonical one with ONE_ACCOUNT_PER_PERSON);
    * per organisation's mail domain, RATELIMIT_PER_DOMAIN, for the domains email_rules caps;
    * per client address and per email address for lost-key requests, buckets of their own.

    All signups together are not refused here but queued for their turn at Keygen
    (admission.py), in the same storage.

    No Flask-Limiter extension: the limits are counted at points inside the views (per email
    only once the form is valid), so nothing else (GET /, /healthz, /readyz, /metrics) is
    counted or touches the storage. Storage errors are never
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
        per_domain: str = "",
        self_service: dict[str, str] | None = None,
    ):
        options = _STORAGE_TIMEOUTS if storage_uri.startswith("redis") else {}
        self.storage = storage_from_string(storage_uri, **options)
        # limits 5.8.0's memory storage can start its expiry timer twice when two threads count
        # at once (RuntimeError; fixed upstream in alisaifee/limits#352, not yet released).
        memory = storage_uri.startswith("memory")
        self._one_at_a_time = threading.Lock() if memory else nullcontext()
        # OWASP: fixed windows allow bursts at their edges.
        self.strategy = MovingWindowRateLimiter(self.storage)
        self.per_ip = parse_many(per_ip)
        self.per_email = parse_many(per_email)
        self.email_key = app.config["SECRET_KEY"].encode()
        self.recovery_per_ip = parse_many(recovery_per_ip)
        self.recovery_per_email = parse_many(recovery_per_email)
        self.per_domain = parse_many(per_domain) if per_domain else []  # "": off
        # Self-service buckets by name (sign-in-ip, sign-in-email, reset-ip, reset-email,
        # deactivation), each counted at its own point in account_views.py.
        self.self_service = {name: parse_many(r) for name, r in (self_service or {}).items()}

    def admit_client(self, address: str | None) -> None:
        """Count one submission from this address, or raise LimitReached."""
        self._hit([("ip", self.per_ip, client_bucket(address))])

    def admit_signup(self, email: str, organisation: str | None = None) -> None:
        """Count one valid signup for this email and, unless None, for this organisation's
        domain, or raise LimitReached. Both are tested before either is counted."""
        buckets = [("email", self.per_email, self._digest(email))]
        if organisation is not None and self.per_domain:
            buckets.append(("domain", self.per_domain, self._digest(organisation)))
            self._test(buckets)
        self._hit(buckets)

    def _digest(self, text: str) -> str:
        return hmac.new(self.email_key, text.encode(), hashlib.sha256).hexdigest()[:32]

    def admit_recovery(self, address: str | None, email: str) -> None:
        """Count one lost-key request from this client and for this email (separate buckets of
        their own), or raise LimitReached. Both are tested before either is counted."""
        buckets = [
            ("recovery-ip", self.recovery_per_ip, client_bucket(address)),
            ("recovery-email", self.recovery_per_email, self._digest(email)),
        ]
        self._test(buckets)
        self._hit(buckets)

    def _test(self, buckets: list[tuple[str, list[RateLimitItem], str]]) -> None:
        for name, limits, key in buckets:
            if not all(self._call("test", limit, name, key) for limit in limits):
                raise LimitReached(name)

    # Self-service: sign-in, forgot-password, freeing machines.

    def email_bucket(self, email: str) -> str:
        """The key of a self-service email bucket: the mailbox (email_rules.canonical), so that
        jane+1@ and j.ane@ share jane@'s attempts; a keyed hash, so the store holds no
        addresses."""
        return self._digest(email_rules.canonical(email))

    def admit(self, *buckets: tuple[str, str]) -> None:
        """Count one request in each named self-service bucket, as (name, key); all are tested
        before any is counted, or LimitReached names the first one full."""
        found = [(name, self.self_service[name], key) for name, key in buckets]
        self._test(found)
        self._hit(found)

    def _hit(self, buckets: list[tuple[str, list[RateLimitItem], str]]) -> None:
        for name, limits, key in buckets:
            if not all(self._call("hit", limit, name, key) for limit in limits):
                raise LimitReached(name)

    def reachable(self) -> bool:
        """Whether the limit storage answers now (memory:// always does)."""
        return bool(self.storage.check())

    def _call(self, method: str, limit: RateLimitItem, name: str, key: str) -> bool:
        try:
            with self._one_at_a_time:
                return getattr(self.strategy, method)(limit, name, key)
        except Exception as error:  # redis, memcached: each storage raises its own errors
            raise LimiterUnavailable(f"rate limit storage failed: {error!r}") from error


def client_bucket(address: str | None) -> str:
    """Whose count a client address adds to: an IPv4 address its own, an IPv6 address its /64.
    One subscriber gets a whole /64 and may use any address in it, so counting each address
    would give one client 2^64 buckets."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return address or "unknown"
    if ip.version == 4:
        return str(ip)
    if ip.ipv4_mapped is not None:  # ::ffff:192.0.2.1 is the IPv4 client 192.0.2.1
        return str(ip.ipv4_mapped)
    return str(ipaddress.ip_network((ip, 64), strict=False))


# -- Bot traps ---------------------------------------------------------------------------------


class FillTimer:
    """A signed note of when a form was served, bound to the form's nonce.

    The note is signed with SECRET_KEY, so a client cannot backdate it, and bound to the nonce,
    so one old note cannot be reused: the nonce makes every copy of a form the same signup."""

    def __init__(self, secret_key: str, minimum: float, clock=time.time):
        # A signature over "nonce.time": the nonce is in the form already, so only the time and
        # the signature go into the note.
        self.signer = Signer(secret_key, salt="portal.form-served")
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
