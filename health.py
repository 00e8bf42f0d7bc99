"""Readiness: can this instance sign people up right now? Each check is named and explained.

/healthz says only that the process is alive; /readyz (this module) asks the world: Keygen and
the token, the policy, the journal's database and the rate-limit storage (signups are refused
while it is down, so an instance without it is not ready). The mail server is checked too when
email is on, but it is not required: emails wait in the outbox while it is down, and signups go on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from journal import Journal
from keygen_api import KeygenAccessDenied, KeygenClient, KeygenError, KeygenNotFound
from mailer import Mailer, MailError
from protection import RateLimits

TIMEOUT = (2.0, 3.0)  # a probe must answer well within a load balancer's patience


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    required: bool = True  # False: reported, but the instance can still sign people up


class MailProbe:
    """Logs in to the mail server at most once a minute: load balancers ask /readyz every few
    seconds, and relays throttle (or block) clients that log in that often."""

    EVERY = 60.0

    def __init__(self, mailer: Mailer, *, clock: Callable[[], float] = time.monotonic):
        self.mailer = mailer
        self.clock = clock
        self._last: tuple[float, Check] | None = None
        self._lock = threading.Lock()

    def check(self) -> Check:
        with self._lock:
            if self._last is None or self.clock() - self._last[0] >= self.EVERY:
                self._last = (self.clock(), self._ask())
            return self._last[1]

    def _ask(self) -> Check:
        try:
            self.mailer.check()
        except MailError as error:  # its text names the server, never the password
            detail = f"the mail server fails ({error}); emails wait in the outbox"
            return Check("mail", False, detail, required=False)
        return Check("mail", True, "the mail server answers and accepts our login", required=False)


def readiness(
    keygen: KeygenClient,
    policy_id: str,
    journal: Journal,
    limits: RateLimits,
    mail: MailProbe | None = None,
) -> list[Check]:
    checks = keygen_checks(keygen, policy_id)
    try:
        journal.ping()
        checks.append(Check("database", True, "the signup journal answers"))
    except Exception as error:  # any driver error means "not ready"; its class says which
        checks.append(Check("database", False, f"the signup journal fails: {type(error).__name__}"))
    if limits.reachable():
        checks.append(Check("rate_limits", True, "the rate-limit storage answers"))
    else:
        detail = "the rate-limit storage does not answer; signups are refused until it does"
        checks.append(Check("rate_limits", False, detail))
    if mail is not None:
        checks.append(mail.check())
    return checks


def keygen_checks(keygen: KeygenClient, policy_id: str) -> list[Check]:
    try:
        bearer = keygen.me(timeout=TIMEOUT)
    except KeygenAccessDenied as error:
        return [
            Check(
                "keygen", False, f"Keygen refused the token ({error}); check KEYGEN_PRODUCT_TOKEN"
            ),
            Check("policy", False, "not checked: the token does not work"),
        ]
    except KeygenError as error:
        return [
            Check("keygen", False, f"Keygen did not answer usefully: {error}"),
            Check("policy", False, "not checked: Keygen is unreachable"),
        ]
    if not bearer.is_product:
        return [
            Check("keygen", False, f"the token belongs to {bearer.type}, not to a product"),
            Check("policy", False, "not checked: the token is not a product token"),
        ]
    keygen_ok = Check("keygen", True, f"reachable; the token is product {bearer.id}'s")
    try:
        policy = keygen.get_policy(policy_id, timeout=TIMEOUT)
    except KeygenNotFound:
        detail = f"policy {policy_id} does not exist, or belongs to another product"
        return [keygen_ok, Check("policy", False, detail)]
    except KeygenError as error:
        return [keygen_ok, Check("policy", False, f"cannot read policy {policy_id}: {error}")]
    if policy.product_id != bearer.id:
        detail = f"policy {policy_id} belongs to product {policy.product_id}, not {bearer.id}"
        return [keygen_ok, Check("policy", False, detail)]
    return [keygen_ok, Check("policy", True, f"policy {policy_id} belongs to the product")]
