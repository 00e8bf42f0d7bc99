"""Readiness: can this instance sign people up right now? Each check is named and explained.

/healthz says only that the process is alive; /readyz (this module) asks the world: Keygen and
the token, the policy (remembered for READINESS_CACHE_SECONDS), the journal's database and the
rate-limit storage (signups are refused while it is down, so an instance without it is not
ready). The mail server is checked too when
email is on, but it is not required: emails wait in the outbox while it is down, and signups go on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from diagnosis import account_problem, permissions_problem, token_problem
from journal import Journal
from keygen_api import Bearer, KeygenClient, KeygenError, KeygenNotFound, needed_permissions
from mailer import Mailer, MailError
from protection import RateLimits

TIMEOUT = (2.0, 3.0)  # a probe must answer well within a load balancer's patience
OK, WARN, ERROR, SKIP = "OK", "WARN", "ERROR", "SKIP"


@dataclass(frozen=True)
class Check:
    """One thing checked, in one sentence that says what is wrong and what to change: OK, WARN
    (works, but unsafe or unusual), ERROR (signups fail) or SKIP (not checked, and why)."""

    name: str
    level: str
    detail: str
    required: bool = True  # False: reported, but the instance can still sign people up

    @property
    def ok(self) -> bool:
        return self.level in (OK, WARN)

    def line(self) -> str:
        return f"{self.level:<5} {self.detail}"


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
            return Check("mail", ERROR, detail, required=False)
        return Check("mail", OK, "the mail server answers and accepts our login", required=False)


class KeygenProbe:
    """What Keygen says of the token and the policy, asked at most once every ``every`` seconds
    (READINESS_CACHE_SECONDS) in this process, whatever the rate of /readyz: each question costs
    the account's Keygen quota, which the signups need.

    One thread asks at a time; the others get the last answer meanwhile (or, before there is
    one, wait for the first), so a burst of requests never becomes a burst of calls."""

    def __init__(
        self,
        keygen: KeygenClient,
        policy_id: str,
        *,
        every: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.keygen = keygen
        self.policy_id = policy_id
        self.every = every
        self.clock = clock
        self._last: tuple[float, list[Check]] | None = None
        self._asking = threading.Lock()

    def checks(self) -> list[Check]:
        last = self._last
        if last is not None and self.clock() - last[0] < self.every:
            return last[1]
        if not self._asking.acquire(blocking=last is None):
            return last[1]  # another thread is asking Keygen right now
        try:
            last = self._last
            if last is None or self.clock() - last[0] >= self.every:
                checks = keygen_checks(self.keygen, self.policy_id, timeout=TIMEOUT)
                last = self._last = (self.clock(), checks)
            return last[1]
        finally:
            self._asking.release()


def readiness(
    keygen: KeygenProbe,
    journal: Journal,
    limits: RateLimits,
    mail: MailProbe | None = None,
) -> list[Check]:
    checks = list(keygen.checks())
    try:
        journal.ping()
        checks.append(Check("database", OK, "the signup journal answers"))
    except Exception as error:  # any driver error means "not ready"; its class says which
        detail = f"the signup journal fails: {type(error).__name__}"
        checks.append(Check("database", ERROR, detail))
    if limits.reachable():
        checks.append(Check("rate_limits", OK, "the rate-limit storage answers"))
    else:
        detail = "the rate-limit storage does not answer; signups are refused until it does"
        checks.append(Check("rate_limits", ERROR, detail))
    if mail is not None:
        checks.append(mail.check())
    return checks


# -- What Keygen says about the settings (also `flask doctor`'s) --------------------------------


def keygen_checks(
    keygen: KeygenClient,
    policy_id: str,
    *,
    timeout: tuple[float, float] = TIMEOUT,
    thorough: bool = False,
    self_service: bool = False,
) -> list[Check]:
    """The token, the policy and (``thorough``: more calls, for the doctor) whether the account
    lets anyone create users and whether the policy's keys can be read again."""
    try:
        bearer = keygen.me(timeout=timeout)
    except KeygenError as error:
        detail = token_problem(keygen, error, timeout, thorough=thorough)
        return [Check("keygen", ERROR, detail), _unchecked("the token")]
    if not bearer.is_product:
        kind = bearer.token_kind or f"a token of {bearer.type}"
        detail = (
            f"KEYGEN_PRODUCT_TOKEN is not a product token (it is {kind}): the portal needs a "
            "product token, which can do only what the portal needs. Create one in Keygen."
        )
        return [Check("keygen", ERROR, detail), _unchecked("the token")]
    needed = needed_permissions(self_service=self_service)
    checks = [
        Check("keygen", OK, _token_fine(bearer, needed)),
        *_permissions_checks(bearer, needed),
        _policy_check(keygen, policy_id, bearer.id, timeout),
    ]
    if thorough:
        checks.append(_protection_check(keygen, timeout))
        checks += _key_scheme_checks(keygen, policy_id, timeout)
    return checks


def _token_fine(bearer: Bearer, needed: dict[str, str]) -> str:
    detail = f"Keygen answers, and the token is product {bearer.id}'s"
    if bearer.permissions is not None and not permissions_problem(bearer, needed):
        detail += ", with every permission the portal needs"  # Keygen EE reports them
    return detail + "."


def _permissions_checks(bearer: Bearer, needed: dict[str, str]) -> list[Check]:
    """A token narrowed to fewer permissions than the portal needs (Keygen EE)."""
    problem = permissions_problem(bearer, needed)
    if problem is None:
        return []
    detail, every_signup = problem
    return [Check("permissions", ERROR, detail, required=every_signup)]


def _key_scheme_checks(
    keygen: KeygenClient, policy_id: str, timeout: tuple[float, float]
) -> list[Check]:
    """A policy whose keys Keygen shows only when it creates them (LEGACY_ENCRYPT)."""
    try:
        policy = keygen.get_policy(policy_id, timeout=timeout)
    except KeygenError:
        return []  # the policy check says why
    if policy.keys_readable_later:
        return []
    detail = (
        f"Policy {policy_id} uses {policy.scheme}: Keygen shows each key only in the answer that "
        "creates it. The portal shows or emails it once (the email's copy is kept encrypted "
        "until sent); a lost key cannot be sent again. Use a policy without LEGACY_ENCRYPT if "
        "customers should be able to recover their keys."
    )
    return [Check("policy_keys", WARN, detail, required=False)]


def _unchecked(reason: str) -> Check:
    return Check("policy", SKIP, f"KEYGEN_POLICY_ID not checked: {reason} does not work.")


def _policy_check(
    keygen: KeygenClient, policy_id: str, product_id: str, timeout: tuple[float, float]
) -> Check:
    try:
        policy = keygen.get_policy(policy_id, timeout=timeout)
    except KeygenNotFound:
        # A product token cannot see other products' policies: both look the same from here.
        detail = (
            f"KEYGEN_POLICY_ID {policy_id} does not exist, or belongs to another product than "
            "the token's: no license can be issued. Use a policy of the token's product."
        )
        return Check("policy", ERROR, detail)
    except KeygenError as error:
        detail = account_problem(error) or f"Keygen would not show policy {policy_id} ({error})."
        return Check("policy", ERROR, detail)
    if policy.product_id != product_id:
        detail = (
            f"KEYGEN_POLICY_ID {policy_id} belongs to product {policy.product_id}, not to the "
            f"token's product {product_id}: no license can be issued."
        )
        return Check("policy", ERROR, detail)
    if policy.protected is False:
        detail = (
            f"Policy {policy_id} is not protected: every user the portal creates can issue "
            "themselves more licenses, and change or delete theirs, with their own password. "
            "Turn on 'Protected' in the policy's settings in Keygen."
        )
        return Check("policy", ERROR, detail)
    if policy.protected is None:
        detail = (
            f"Policy {policy_id} belongs to the token's product, but Keygen did not say whether "
            "it is protected; make sure it is, or users can issue themselves more licenses."
        )
        return Check("policy", WARN, detail)
    return Check(
        "policy", OK, f"Policy {policy_id} exists, belongs to the token's product and is protected."
    )


def _protection_check(keygen: KeygenClient, timeout: tuple[float, float]) -> Check:
    try:
        protected = keygen.account_is_protected(timeout=timeout)
    except KeygenError as error:
        detail = f"Could not tell whether the Keygen account is protected ({error})."
        return Check("account", WARN, detail, required=False)
    if protected:
        detail = "The Keygen account is protected: only tokens can create users."
        return Check("account", OK, detail, required=False)
    detail = (
        "The Keygen account is not protected: anyone can create users directly against "
        "Keygen's API, bypassing the portal. Turn on 'Protected' in the account's settings."
    )
    return Check("account", WARN, detail, required=False)
