"""Self-service after the signup: the person signs in with their own Keygen credentials, sees
their licenses of this product and the machines on them, frees a machine, resets a forgotten
password, and signs out. No Flask request here: account_views.py and reset_views.py are the web
layer, account_sessions.py and password_resets.py the storage.

Everything is read with the person's own token, so they see what Keygen lets them see and no
more; the product token only deletes a machine once the person's token has shown it is theirs
(Keygen refuses a user deleting a machine of a protected license: machine_policy.rb, `destroy?`),
and asks Keygen for a password reset.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from account_sessions import SessionStore, SignedIn
from keygen_api import (
    KeygenAccessDenied,
    KeygenClient,
    KeygenInvalid,
    KeygenNotFound,
    KeygenRateLimited,
    KeygenRejected,
    KeygenSecondFactorNeeded,
    KeygenSecondFactorWrong,
    KeygenUnavailable,
    License,
    Machine,
    Token,
)
from keygen_webhooks import WebhookEvent, WebhookVerifier
from password_resets import ResetStore
from sealing import Sealer

log = logging.getLogger(f"portal.{__name__}")

# Every sign-in answer takes at least this long, so that an unknown address (Keygen answers at
# once) and a wrong password (Keygen hashes it first) cannot be told apart by their timing.
SIGN_IN_FLOOR = 1.2
# The Keygen token outlives the sign-in by this much, so that the sweep can still revoke it
# with itself after the sign-in ended; Keygen ends it then even if the portal is down.
TOKEN_MARGIN = 300.0
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)


class SignInRefused(Exception):
    """A wrong address or password, a locked account, or no customer's account: one answer."""


class CodeNeeded(Exception):
    """The person has a second factor: ask for its code."""


class CodeWrong(Exception):
    """The code was wrong, too old or used before."""


class KeygenDown(Exception):
    """Keygen did not answer usefully; nothing changed. Try again in a minute."""


class TooManyAttempts(Exception):
    """Keygen's own limit on password attempts (5 a minute per address)."""


class SignedOut(Exception):
    """The sign-in is over (expired, or Keygen no longer takes its token)."""


class NotYours(Exception):
    """No machine of the person's licenses of this product has this id."""


class FreeRefused(Exception):
    """Keygen refused to free the machine; ``gone`` if it was freed already."""

    def __init__(self, message: str, *, gone: bool = False, reference: str | None = None):
        super().__init__(message)
        self.gone = gone
        self.reference = reference


class ResetUnusable(Exception):
    """The reset link was used already, has expired, or Keygen no longer takes its token."""


class PasswordRefused(Exception):
    """Keygen refused the new password (its own rules)."""


@dataclass(frozen=True)
class LicenseView:
    license: License = field(repr=False)
    policy_name: str | None
    machines: list[Machine]


class SelfService:
    def __init__(
        self,
        keygen: KeygenClient,
        sessions: SessionStore,
        resets: ResetStore | None,
        *,
        session_minutes: int,
        code_sealer: Sealer,
        webhooks: WebhookVerifier | None = None,
        floor: float = SIGN_IN_FLOOR,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.keygen = keygen
        self.sessions = sessions
        self.resets = resets  # None: forgot-password is off
        self.code_sealer = code_sealer  # the first step of a sign-in with a second factor
        self.webhooks = webhooks  # checks Keygen's signature (with KEYGEN_PUBLIC_KEY)
        self.lifetime = session_minutes * 60.0
        self.floor = floor
        self.sleep = sleep
        self._product_id: str | None = None

    # -- Signing in and out --------------------------------------------------------------------

    def sign_in(self, email: str, password: str, otp: str | None = None) -> SignedIn:
        """A new sign-in, after at least `floor` seconds whatever the answer."""
        started = time.monotonic()
        try:
            return self._sign_in(email, password, otp)
        finally:
            self.sleep(max(0.0, self.floor - (time.monotonic() - started)))

    def _sign_in(self, email: str, password: str, otp: str | None) -> SignedIn:
        expires_at = self.sessions.journal.clock() + self.lifetime + TOKEN_MARGIN
        try:
            token = self.keygen.create_user_token(email, password, otp=otp, expires_at=expires_at)
        except KeygenSecondFactorNeeded:
            raise CodeNeeded() from None
        except KeygenSecondFactorWrong:
            raise CodeWrong() from None
        except KeygenRateLimited as error:
            raise TooManyAttempts(str(error)) from None
        except KeygenUnavailable as error:
            raise KeygenDown(str(error)) from None
        except KeygenRejected as error:
            log.info("sign-in refused: %s", error)
            raise SignInRefused() from None
        if not token.is_customers:  # staff sign in to Keygen's dashboard, not here
            log.warning("sign-in refused: a %s is not a customer's; revoking it", token.kind)
            self._revoke(token, owner=token.bearer_id)
            raise SignInRefused()
        signed_in = self.sessions.open(token, email, lifetime=self.lifetime)
        log.info("user %s signed in (sign-in %s)", signed_in.user_id, signed_in.key[:12])
        return signed_in

    def signed_in(self, session_id: str) -> SignedIn | None:
        """The sign-in behind a cookie's id, if it is still on; an expired one ends here."""
        found = self.sessions.load(session_id)
        if found is None:
            return None
        if self.sessions.is_expired(found) or not found.token.value:
            self.end(found, "expired")
            return None
        return found

    def sign_out(self, signed_in: SignedIn) -> None:
        self.end(signed_in, "signed out")

    def end(self, signed_in: SignedIn, why: str) -> None:
        """Forget the sign-in and revoke its token at Keygen (once, whoever calls)."""
        if self.sessions.end(signed_in):
            log.info("user %s: sign-in %s ended (%s)", signed_in.user_id, signed_in.key[:12], why)
            self._revoke(signed_in.token, owner=signed_in.user_id)

    def _revoke(self, token: Token, *, owner: str | None) -> bool:
        try:
            self.keygen.revoke_token(token)
        except (KeygenNotFound, KeygenAccessDenied):
            pass  # already gone at Keygen, or expired there
        except KeygenUnavailable as error:
            log.warning(
                "could not revoke token %s of user %s at Keygen (%s); it expires there by itself",
                token.id,
                owner or "-",
                error,
            )
            return False
        return True

    def sweep(self) -> int:
        """End every expired sign-in (revoking its token), and forget old resets."""
        ended = 0
        for signed_in in self.sessions.expired():
            self.end(signed_in, "expired")
            ended += 1
        if self.resets is not None:
            self.resets.sweep()
        return ended

    # -- What the person sees ------------------------------------------------------------------

    def product_id(self) -> str:
        """This portal's product (the product token's own id), asked once per process."""
        if self._product_id is None:
            try:
                self._product_id = self.keygen.me().id
            except KeygenUnavailable as error:
                raise KeygenDown(str(error)) from None
        return self._product_id

    def licenses(self, signed_in: SignedIn) -> list[LicenseView]:
        """Each license of this product the person owns, with its policy's name and machines."""
        token, product = signed_in.token, self.product_id()
        with self._as_person(signed_in):
            owned = [
                lic
                for lic in self.keygen.licenses_of(token, product_id=product)
                if lic.owner_id == signed_in.user_id and lic.product_id == product
            ]
            machines = self.keygen.machines_of(token, product_id=product) if owned else []
            policies = {lic.policy_id for lic in owned}
            names = {pid: self._policy_name(signed_in, pid) for pid in policies}
        return [
            LicenseView(
                lic, names.get(lic.policy_id), [m for m in machines if m.license_id == lic.id]
            )
            for lic in owned
        ]

    def _policy_name(self, signed_in: SignedIn, policy_id: str | None) -> str | None:
        try:
            return self.keygen.policy_as(signed_in.token, policy_id or "").name
        except KeygenNotFound:
            return None

    def machine(self, signed_in: SignedIn, machine_id: str) -> tuple[Machine, License]:
        """A machine of one of the person's licenses of this product, and that license, as the
        person's own token reads them; NotYours for any other id, whatever it is."""
        product = self.product_id()
        if not _UUID.fullmatch(machine_id or ""):  # Keygen would look it up as a fingerprint
            raise NotYours(machine_id)
        with self._as_person(signed_in):
            try:
                machine = self.keygen.machine_as(signed_in.token, machine_id)
                lic = self.keygen.license_as(signed_in.token, machine.license_id or "")
            except KeygenNotFound:
                raise NotYours(machine_id) from None
        theirs = lic.owner_id == signed_in.user_id and lic.product_id == product
        if not theirs or machine.license_id != lic.id:
            raise NotYours(machine_id)
        return machine, lic

    def free_machine(self, signed_in: SignedIn, machine_id: str) -> Machine:
        """Deactivate a machine of the person's: checked with their token, done with the
        product's (which Keygen lets delete machines of protected licenses)."""
        machine, lic = self.machine(signed_in, machine_id)
        try:
            self.keygen.delete_machine(machine.id)
        except KeygenNotFound as error:
            raise FreeRefused(str(error), gone=True) from None
        except KeygenUnavailable as error:
            raise KeygenDown(str(error)) from None
        except KeygenRejected as error:
            log.warning(
                "Keygen refused to free machine %s of license %s for user %s: %s",
                machine.id,
                lic.id,
                signed_in.user_id,
                error,
            )
            raise FreeRefused(str(error), reference=error.request_id) from None
        log.info("user %s freed machine %s of license %s", signed_in.user_id, machine.id, lic.id)
        return machine

    def _as_person(self, signed_in: SignedIn):
        return _PersonCalls(self, signed_in)

    # -- Forgot password -----------------------------------------------------------------------

    def request_reset(self, email: str, locale: str | None) -> None:
        """Ask Keygen for a reset; its webhook comes back to `reset_received`. The same for
        known and unknown addresses, and no sooner than `floor`."""
        started = time.monotonic()
        try:
            assert self.resets is not None
            self.resets.requested(email, locale)
            self.keygen.request_password_reset(email)
        except KeygenUnavailable as error:
            raise KeygenDown(str(error)) from None
        except KeygenRejected as error:
            log.error("Keygen refused a password reset request: %s", error)
            raise KeygenDown(str(error)) from None
        finally:
            self.sleep(max(0.0, self.floor - (time.monotonic() - started)))

    def reset_received(self, event: WebhookEvent) -> str | None:
        """The reset row a verified `user.password-reset` event completes (its email is now
        queued), or None when it matches no request of ours."""
        assert self.resets is not None
        reset_id = self.resets.received(event)
        if reset_id is None:
            log.info("webhook %s: a password reset this portal did not ask for; ignored", event.id)
        else:
            log.info("webhook %s: password reset %s for user %s", event.id, reset_id, event.user_id)
        return reset_id

    def finish_reset(self, reset_id: str, password: str) -> SignedIn | None:
        """Set the new password; then the person is signed in (None if that needs their second
        factor, or fails: they sign in on the page)."""
        assert self.resets is not None
        reset = self.resets.take(reset_id)
        if reset is None:
            raise ResetUnusable(reset_id)
        try:
            self.keygen.reset_password(reset.user_id or "", reset.keygen_token, password)
        except (KeygenNotFound, KeygenAccessDenied) as error:
            log.info("password reset %s: Keygen no longer takes its token (%s)", reset_id, error)
            raise ResetUnusable(reset_id) from None
        except KeygenInvalid as error:
            self.resets.give_back(reset_id)
            raise PasswordRefused(str(error)) from None
        except KeygenUnavailable as error:
            self.resets.give_back(reset_id)
            raise KeygenDown(str(error)) from None
        log.info("password reset %s: user %s set a new password", reset_id, reset.user_id)
        for old in self.sessions.of_user(reset.user_id or ""):
            self.sessions.end(old)  # Keygen revoked every token of the user
        try:
            return self._sign_in(reset.email, password, None)
        except (CodeNeeded, SignInRefused, TooManyAttempts, KeygenDown):
            return None


class _PersonCalls:
    """Around calls made with the person's token: Keygen refusing the token ends the sign-in
    (a password reset revoked it, or it expired there); Keygen down is KeygenDown."""

    def __init__(self, service: SelfService, signed_in: SignedIn):
        self.service, self.signed_in = service, signed_in

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        if isinstance(error, KeygenAccessDenied):
            self.service.end(self.signed_in, f"Keygen refused its token: {error}")
            raise SignedOut() from None
        if isinstance(error, KeygenUnavailable):
            raise KeygenDown(str(error)) from None
        return False
