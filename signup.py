"""The signup workflow: create the Keygen user, then a license for that user, never leave a user
without a license, and say what each of Keygen's refusals means for the person signing up."""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from keygen_api import (
    KeygenClient,
    KeygenConflict,
    KeygenError,
    KeygenInvalid,
    KeygenNotFound,
    KeygenRateLimited,
    KeygenRejected,
    KeygenUnavailable,
    License,
    User,
)

log = logging.getLogger(__name__)

# Marks the Keygen users this portal created, and which submission created them.
CREATED_BY = "keygen-signup-portal"

# (field, kind) from Keygen's 422 -> (form field, what we tell the person).
_MESSAGES: dict[tuple[str | None, str | None], tuple[str, str]] = {
    ("email", "taken"): ("email", "An account with this email already exists."),
    ("email", "invalid"): ("email", "Enter a valid email address, like name@example.com."),
    ("email", "too_long"): ("email", "This email address is too long."),
    ("password", "too_short"): ("password", "This password is too short."),
    ("password", "too_long"): ("password", "This password is too long."),
    ("first_name", "too_long"): ("first_name", "Use at most 255 characters."),
    ("last_name", "too_long"): ("last_name", "Use at most 255 characters."),
}


@dataclass(frozen=True)
class Applicant:
    """A well-formed submission: what the form checked, in the shape Keygen wants."""

    email: str
    password: str = field(repr=False)
    first_name: str
    last_name: str


@dataclass(frozen=True)
class Issued:
    email: str
    user_id: str
    license_id: str
    license_key: str = field(repr=False)
    signup_id: str


class SignupError(Exception):
    """The signup did not complete. Subclasses say what the person can do about it."""


class Rejected(SignupError):
    """The person can fix the submission: ``errors`` maps form fields to messages."""

    def __init__(self, errors: dict[str, str]):
        self.errors = errors
        super().__init__(", ".join(f"{name} rejected" for name in errors))


class TryLater(SignupError):
    """Keygen could not be reached in time. Nothing was left half done; trying again may work."""


class SignupUnavailable(SignupError):
    """The portal or Keygen is misconfigured. An operator must act; the log says what."""


class SignupWorkflow:
    """Creates a user and their license, within a total deadline, without duplicates.

    Keygen has no idempotency keys, so each step is made safe to repeat by other means: a user
    create that got no answer is resolved by looking the user up (our metadata tells ours from
    someone else's); the license id is chosen here, so resending the create cannot duplicate it.
    """

    def __init__(
        self,
        keygen: KeygenClient,
        policy_id: str,
        *,
        deadline: float = 20.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.keygen = keygen
        self.policy_id = policy_id
        self.deadline = deadline
        self._clock = clock
        self._sleep = sleep

    def sign_up(self, applicant: Applicant) -> Issued:
        run = _Run(self, signup_id=str(uuid.uuid4()), license_id=str(uuid.uuid4()))
        user = run.create_user(applicant)
        license = run.create_license(user)
        log.info("signup %s issued license %s to user %s", run.signup_id, license.id, user.id)
        return Issued(
            email=user.email,
            user_id=user.id,
            license_id=license.id,
            license_key=license.key,
            signup_id=run.signup_id,
        )


class _Run:
    """One signup attempt: its ids, its deadline and its retry budget."""

    BACKOFF_BASE = 0.25
    BACKOFF_CAP = 4.0
    MAX_RETRIES = 3  # per step; the deadline usually ends things first

    def __init__(self, workflow: SignupWorkflow, *, signup_id: str, license_id: str):
        self.workflow = workflow
        self.keygen = workflow.keygen
        self.signup_id = signup_id
        self.license_id = license_id
        self.ends_at = workflow._clock() + workflow.deadline
        self.attempt = 0

    # Step 1: the user.

    def create_user(self, applicant: Applicant) -> User:
        metadata = {"createdBy": CREATED_BY, "portalSignupId": self.signup_id}
        while True:
            try:
                return self.keygen.create_user(
                    email=applicant.email,
                    password=applicant.password,
                    first_name=applicant.first_name,
                    last_name=applicant.last_name,
                    metadata=metadata,
                    timeout=self.timeout(),
                )
            except KeygenInvalid as error:
                earlier = self.our_earlier_create(error, applicant.email)
                if earlier is not None:
                    return earlier
                raise self.rejected(error) from None
            except KeygenConflict:
                # Two creates for one email raced inside Keygen; one of them won.
                user = self.find_user(applicant.email)
                if user and self.is_ours(user):
                    return user
                raise Rejected({"email": _MESSAGES[("email", "taken")][1]}) from None
            except KeygenRejected as error:  # token, plan, or a request Keygen cannot parse
                raise self.operator_problem("creating a user", error) from None
            except KeygenUnavailable as error:
                # The create may have happened: look before sending it again.
                user = self.find_user(applicant.email)
                if user is not None:
                    if self.is_ours(user):
                        return user
                    raise Rejected({"email": _MESSAGES[("email", "taken")][1]}) from None
                self.wait_before_retry(error, "creating a user")

    def our_earlier_create(self, error: KeygenInvalid, email: str) -> User | None:
        """EMAIL_TAKEN on a resend can mean our own earlier create went through after all."""
        taken = any(p.field == "email" and p.kind == "taken" for p in error.problems)
        if not taken or self.attempt == 0:
            return None
        user = self.find_user(email)
        return user if user is not None and self.is_ours(user) else None

    def is_ours(self, user: User) -> bool:
        return user.metadata.get("portalSignupId") == self.signup_id

    def find_user(self, email: str) -> User | None:
        try:
            return self.keygen.get_user(email, timeout=self.timeout())
        except KeygenNotFound:
            return None
        except KeygenError as error:
            raise TryLater(f"signup {self.signup_id}: cannot look up the user ({error})") from None

    # Step 2: the license.

    def create_license(self, user: User) -> License:
        metadata = {"createdBy": CREATED_BY, "portalSignupId": self.signup_id}
        self.attempt = 0
        while True:
            try:
                return self.keygen.create_license(
                    license_id=self.license_id,
                    policy_id=self.workflow.policy_id,
                    owner_id=user.id,
                    metadata=metadata,
                    timeout=self.timeout(),
                )
            except KeygenConflict:
                # Our id is taken: an earlier send of this same request went through.
                return self.read_back_license(user)
            except KeygenRejected as error:
                self.compensate(user)
                raise self.operator_problem("creating a license", error) from None
            except KeygenUnavailable as error:
                try:
                    self.wait_before_retry(error, "creating a license")
                except TryLater:
                    existing = self.existing_license(user)
                    if existing is not None:
                        return existing
                    self.compensate(user)
                    raise

    def read_back_license(self, user: User) -> License:
        existing = self.existing_license(user)
        if existing is None:
            self.compensate(user)
            raise TryLater(f"signup {self.signup_id}: license id conflict without a license")
        return existing

    def existing_license(self, user: User) -> License | None:
        """The license we asked for, if Keygen has it, owned by our user under our policy."""
        try:
            license = self.keygen.get_license(self.license_id, timeout=self.timeout(final=True))
        except KeygenNotFound:
            return None
        except KeygenError as error:
            log.warning("signup %s: cannot read back license: %s", self.signup_id, error)
            return None
        if license.owner_id != user.id or license.policy_id != self.workflow.policy_id:
            log.error(
                "signup %s: license %s exists but belongs to another user or policy",
                self.signup_id,
                self.license_id,
            )
            return None
        return license

    def compensate(self, user: User) -> None:
        """Delete the user we created, so their email is free for the next attempt."""
        try:
            self.keygen.delete_user(user.id, timeout=self.timeout(final=True))
            log.warning("signup %s: deleted user %s (no license issued)", self.signup_id, user.id)
        except KeygenNotFound:
            pass
        except KeygenError as error:
            log.error(
                "signup %s: user %s has no license and could not be deleted: %s",
                self.signup_id,
                user.id,
                error,
            )

    # Budget and errors.

    def timeout(self, *, final: bool = False) -> tuple[float, float]:
        """(connect, read) timeouts that fit in what is left of the deadline.

        ``final`` calls (read-backs, compensation) get a short grace period past the deadline:
        skipping them would leave a user without a license.
        """
        connect, read = self.keygen.timeout
        left = self.ends_at - self.workflow._clock()
        if final:
            left = max(left, connect + 2.0)
        if left <= 0:
            raise TryLater(f"signup {self.signup_id}: deadline reached")
        return (min(connect, left), min(read, left))

    def wait_before_retry(self, error: KeygenUnavailable, step: str) -> None:
        """Sleep a capped, fully jittered backoff (or Keygen's Retry-After), if it fits."""
        self.attempt += 1
        if self.attempt > self.MAX_RETRIES:
            raise TryLater(f"signup {self.signup_id}: {step} failed: {error}")
        if isinstance(error, KeygenRateLimited):
            pause = error.retry_after
        else:
            pause = random.uniform(0, min(self.BACKOFF_CAP, self.BACKOFF_BASE * 2**self.attempt))
        left = self.ends_at - self.workflow._clock()
        # Leave room for the call itself after the pause.
        if pause + min(1.0, self.keygen.timeout[0]) > left:
            raise TryLater(f"signup {self.signup_id}: {step} failed: {error}")
        log.warning(
            "signup %s: %s failed (%s); retrying in %.2fs", self.signup_id, step, error, pause
        )
        self.workflow._sleep(pause)

    def rejected(self, error: KeygenInvalid) -> SignupError:
        errors: dict[str, str] = {}
        for problem in error.problems:
            known = _MESSAGES.get((problem.field, problem.kind))
            if known is None:
                return self.operator_problem("creating a user", error)
            errors.setdefault(*known)
        if not errors:
            # A 400 without codes is a request Keygen cannot parse: a bug on our side.
            return self.operator_problem("creating a user", error)
        return Rejected(errors)

    def operator_problem(self, step: str, error: KeygenError) -> SignupUnavailable:
        log.error(
            "signup %s: Keygen refused %s: %s. Check KEYGEN_PRODUCT_TOKEN, KEYGEN_POLICY_ID "
            "and the Keygen account's plan.",
            self.signup_id,
            step,
            error,
        )
        return SignupUnavailable(f"signup {self.signup_id}: {step}: {error}")
