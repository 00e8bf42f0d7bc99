"""One run over one signup's journal row: create the Keygen user, then the license, recording
each step in the journal before the next, exactly once however often the row is run.

Keygen has no idempotency keys, so each step is made safe to repeat by other means. A user
create that got no answer is resolved by looking the user up (our metadata tells ours from
someone else's). The license id was chosen when the row was written, so resending the create
cannot duplicate it. What a run cannot finish (out of time, attempts or turns) is left for the
reconciler with the time it should look again.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from admission import CALLS_PER_SIGNUP, NotNow, Pacer
from journal import Signup, State
from keygen_api import (
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
from outbox import Letter
from outcomes import (
    EMAIL_TAKEN,
    MESSAGES,
    Applicant,
    Rejected,
    SignupError,
    SignupUnavailable,
    TryLater,
)

if TYPE_CHECKING:
    from signup import SignupWorkflow

log = logging.getLogger(f"portal.{__name__}")

# Marks the Keygen users this portal created, and which submission created them.
CREATED_BY = "keygen-signup-portal"


class _SignupLog(logging.LoggerAdapter):
    """Adds the signup id to every line, keeping whatever else a call adds."""

    def process(self, msg, kwargs):
        kwargs["extra"] = {**self.extra, **kwargs.get("extra", {})}
        return msg, kwargs


class SignupRun:
    """One pass over one journal row that this run holds the lease on."""

    def __init__(
        self,
        workflow: SignupWorkflow,
        signup: Signup,
        *,
        owner: str,
        ends_at: float,
        retries: int,
        shows_key: bool = False,
        turns: int = 0,
        hides_taken: bool | None = None,
    ):
        self.workflow = workflow
        self.keygen = workflow.keygen
        self.journal = workflow.journal
        self.signup = signup
        self.owner = owner
        self.shows_key = shows_key  # a request shows the key it issues; the reconciler does not
        # ENUMERATION_SAFE: a taken address ends with an email to its owner, not a page saying
        # so (not after a verification link's button: whoever pressed it owns the address).
        self.hides_taken = workflow.enumeration_safe if hides_taken is None else hides_taken
        self.released = False
        self.applicant: Applicant | None = None  # with it, a late turn waits in the backlog
        self.log = _SignupLog(log, {"signup_id": signup.id})
        self.pacer: Pacer = workflow.admission.pacer(
            ends_at=ends_at,
            timeout=self.keygen.timeout,
            retries=retries,
            turns=turns,  # reserved with the signup's turn: the first calls need no other
            attempts=signup.attempts,
            on_pause=self.paused,
        )

    @property
    def id(self) -> str:
        return self.signup.id

    def drive(self, applicant: Applicant | None) -> License | State | None:
        """The license; PENDING_VERIFICATION for a row whose user an earlier release created
        before its address was confirmed; or None if it will be finished later. Raises
        SignupError, or admission.Later when the next call's turn is past the deadline and the
        password is at hand."""
        self.applicant = applicant
        try:
            user_id = self.signup.user_id
            if self.signup.state == State.NEW:
                user = self.create_user(applicant) if applicant else self.find_our_user()
                user_id = user.id
                if self.signup.verify:
                    return self.retire_unconfirmed(user_id)
                self.record(state=State.USER_CREATED, user_id=user_id)
            license = self.create_license(user_id)
            self.issued(license)
            return license
        except NotNow as pending:
            return self.reschedule(pending, applicant)

    def issued(self, license: License) -> None:
        mail = (self.letter("license", ref=license.id),) if self.workflow.key_by_email else ()
        if not self.shows_key:
            self.record(state=State.ISSUED, last_error=None, mail=mail)
            return
        # One statement: issued, shown by us (no duplicate can claim the showing in between),
        # released, and the key's email queued.
        self.record(
            state=State.ISSUED,
            last_error=None,
            key_shown=True,
            lease_owner=None,
            lease_until=None,
            mail=mail,
        )
        self.released = True

    def retire_unconfirmed(self, user_id: str) -> State:
        """A row of an earlier release, which created the user before its address was
        confirmed, with a password the submitter chose: that user never gets a license. The
        reconciler deletes it at its next pass (expire), freeing the address."""
        self.record(
            state=State.PENDING_VERIFICATION,
            user_id=user_id,
            last_error="its user was created before the address was confirmed",
            next_attempt_at=self.journal.clock(),
            lease_owner=None,
            lease_until=None,
        )
        self.released = True
        return State.PENDING_VERIFICATION

    def expire(self) -> None:
        """A verification nobody completed: EXPIRED. Only rows of an earlier release have a
        user (created before the click) to delete first."""
        try:
            self.delete_unverified_user()
        except NotNow as pending:
            self.log.warning("signup %s: %s; will retry in %.0fs", self.id, pending, pending.delay)
            self.record(
                attempts=self.signup.attempts + 1,
                next_attempt_at=self.journal.clock() + pending.delay,
                last_error=str(pending)[:500],
            )
            return
        self.record(state=State.EXPIRED, last_error="the address was never verified")
        deleted = "; its user was deleted" if self.signup.user_id else ""
        self.log.info("signup %s: never verified%s", self.id, deleted)

    def delete_unverified_user(self) -> None:
        user_id = self.signup.user_id
        if not user_id:
            return
        try:
            self.take_turn()
            user = self.keygen.get_user(user_id, timeout=self.pacer.timeout())
            if not self.is_ours(user):
                return  # not the user this signup created: never ours to delete
            self.take_turn()
            if self.keygen.list_licenses(owner=user_id, timeout=self.pacer.timeout()):
                raise NotNow("the unverified user has a license", delay=Pacer.RESCHEDULE_CAP)
            self.take_turn()
            self.keygen.delete_user(user_id, timeout=self.pacer.timeout())
        except KeygenNotFound:
            pass  # deleted already
        except KeygenError as error:
            delay = self.pacer.backoff()
            raise NotNow(f"cannot remove the unverified user: {error}", delay=delay) from None

    def letter(self, kind: str, *, ref: str, dedupe: str | None = None) -> Letter:
        return Letter(
            kind=kind,
            email=self.signup.email,
            ref=ref,
            first_name=self.signup.first_name,
            last_name=self.signup.last_name,
            dedupe=dedupe or f"{kind}:{ref}",
            locale=self.signup.locale,
        )

    # Step 1: the user.

    def create_user(self, applicant: Applicant) -> User:
        metadata = {"createdBy": CREATED_BY, "portalSignupId": self.id, **applicant.consent}
        while True:
            self.take_turn()
            try:
                return self.keygen.create_user(
                    email=applicant.email,
                    password=applicant.password,
                    first_name=applicant.first_name,
                    last_name=applicant.last_name,
                    metadata=metadata,
                    timeout=self.pacer.timeout(),
                )
            except KeygenInvalid as error:
                only_taken = _is_taken(error) and len(error.problems) == 1
                if only_taken and self.first_send() and self.hides_taken:
                    # Nothing of ours can exist yet, so no lookup: a taken address costs the
                    # same one call as a new one, and its response comes as fast.
                    raise self.taken() from None
                if _is_taken(error):
                    # Ours if an earlier send of this very submission went through.
                    return self.ours_or_taken(applicant.email)
                raise self.refused(self.rejected(error)) from None
            except KeygenConflict:  # two creates for one email raced inside Keygen
                return self.ours_or_taken(applicant.email)
            except KeygenRejected as error:  # token, plan, or a request Keygen cannot parse
                raise self.refused(self.operator_problem("creating a user", error)) from None
            except KeygenRateLimited as error:  # turned away before anything was created
                self.pacer.pause(error, "creating a user")
            except KeygenUnavailable as error:
                # The create may have happened: look before sending it again. If even the
                # lookup fails, resend: Keygen answers EMAIL_TAKEN if the first one landed.
                try:
                    user = self.find_user(applicant.email)
                except NotNow:
                    user = None
                if user is not None:
                    return self.ours_or_taken(applicant.email, user)
                self.pacer.pause(error, "creating a user")

    def find_our_user(self) -> User:
        """Without the password we cannot create the user; we can only learn whether our
        earlier attempt did. If it did not, the person has to submit the form again."""
        user = self.find_user(self.signup.email)
        if user is not None and self.is_ours(user):
            return user
        state = State.REJECTED if user is not None else State.ABANDONED
        mail = self.owed_mail("taken" if user is not None else "again")
        self.record(state=state, last_error="the user was never created by this signup", mail=mail)
        self.log.info("signup %s: %s (no user of ours in Keygen)", self.id, state)
        raise TryLater(f"signup {self.id}: {state}")

    def ours_or_taken(self, email: str, user: User | None = None) -> User:
        user = user or self.find_user(email)
        if user is not None and self.is_ours(user):
            return user
        raise self.taken()

    def first_send(self) -> bool:
        """Whether no earlier create of this submission can have reached Keygen."""
        return self.signup.attempts == 0 and self.pacer.attempt == 0

    def taken(self) -> SignupError:
        """Someone else has this address. With ENUMERATION_SAFE the person sees what a new
        address sees, and the address's owner gets an email on how to recover their key."""
        return self.refused(Rejected({"email": EMAIL_TAKEN}), mail=self.owed_mail("taken"))

    def owed_mail(self, why: str) -> tuple[Letter, ...]:
        """The email a signup that ends without an account owes: "taken" to an address's owner
        when a page may not say it has an account (ENUMERATION_SAFE), and "taken" or "again"
        ("please sign up again") to a person told to wait for an email while the signup was
        finished in the background."""
        if why == "taken" and self.hides_taken:
            return (self.letter("taken", ref=self.id),)
        if self.signup.background and self.workflow.promises_email:
            return (self.letter(why, ref=self.id),)
        return ()

    def is_ours(self, user: User) -> bool:
        return user.metadata.get("portalSignupId") == self.id

    def find_user(self, email: str) -> User | None:
        self.take_turn()
        try:
            return self.keygen.get_user(email, timeout=self.pacer.timeout())
        except KeygenNotFound:
            return None
        except KeygenUnavailable as error:
            # We cannot tell whether the user exists; the reconciler will look again.
            delay = self.pacer.backoff()
            raise NotNow(f"cannot look up the user: {error}", delay=delay) from None
        except KeygenRejected as error:
            # A user of ours may exist: keep the row and look again once an operator fixed it.
            self.operator_problem("looking up a user", error)
            delay = Pacer.RESCHEDULE_CAP
            raise NotNow(f"cannot look up the user: {error}", delay=delay) from None

    # Step 2: the license.

    def create_license(self, user_id: str) -> License:
        metadata = {"createdBy": CREATED_BY, "portalSignupId": self.id}
        while True:
            self.take_turn()
            try:
                return self.keygen.create_license(
                    license_id=self.signup.license_id,
                    policy_id=self.workflow.policy_id,
                    owner_id=user_id,
                    metadata=metadata,
                    timeout=self.pacer.timeout(),
                )
            except KeygenConflict:
                # Our id is taken: an earlier send of this same request went through.
                license = self.existing_license(user_id)
                if license is None:
                    delay = self.pacer.backoff()
                    raise NotNow("license id taken but not readable", delay=delay) from None
                return license
            except KeygenRejected as error:
                problem = self.operator_problem("creating a license", error)
                self.compensate(user_id)
                raise problem from None
            except KeygenRateLimited as error:  # turned away before anything was created
                self.pacer.pause(error, "creating a license")
            except KeygenUnavailable as error:
                license = self.existing_license(user_id) if self.pacer.attempt else None
                if license is not None:
                    return license
                self.pacer.pause(error, "creating a license")

    def existing_license(self, user_id: str) -> License | None:
        """The license we asked for, if Keygen has it, owned by our user under our policy."""
        self.take_turn()
        try:
            license = self.keygen.get_license(self.signup.license_id, timeout=self.pacer.timeout())
        except KeygenNotFound:
            return None
        except KeygenError as error:
            self.log.warning("signup %s: cannot read back the license: %s", self.id, error)
            return None
        if license.owner_id != user_id or license.policy_id != self.workflow.policy_id:
            self.log.error("signup %s: license %s belongs to someone else", self.id, license.id)
            return None
        return license

    def compensate(self, user_id: str) -> None:
        """Delete the user we created, so their email is free for the next attempt."""
        self.take_turn(final=True)
        try:
            self.keygen.delete_user(user_id, timeout=self.pacer.timeout(final=True))
        except KeygenNotFound:
            pass
        except KeygenError as error:
            self.log.error(
                "signup %s: user %s has no license and could not be deleted yet: %s",
                self.id,
                user_id,
                error,
            )
            self.record(last_error=f"compensation failed: {error}"[:500])
            raise NotNow("compensation failed", delay=self.pacer.backoff()) from None
        self.record(state=State.COMPENSATED, mail=self.owed_mail("again"))
        self.log.warning("signup %s: deleted user %s (no license issued)", self.id, user_id)

    # Turns, the journal and errors.

    def take_turn(self, *, final: bool = False) -> None:
        """This call's turn at Keygen. With the password at hand, the rest of the signup may
        wait in the backlog: its calls are reserved together, as a queued signup's are."""
        backlog_calls = 0
        if self.applicant is not None:
            backlog_calls = CALLS_PER_SIGNUP if self.signup.state == State.NEW else 1
        self.pacer.take_turn(final=final, backlog_calls=backlog_calls)

    def paused(self, step: str, error: KeygenError, seconds: float) -> None:
        self.log.warning(
            "signup %s: %s failed (%s); retrying in %.2fs",
            self.id,
            step,
            error,
            seconds,
            extra={"keygen_request_id": error.request_id},
        )
        self.workflow.on_retry("now")

    def reschedule(self, pending: NotNow, applicant: Applicant | None) -> None:
        """Leave the row for the reconciler. Returns None (finished later), or raises TryLater
        when the person must submit again because not even the user exists yet."""
        now = self.journal.clock()
        signup = self.signup
        self.log.warning("signup %s: %s; will retry in %.0fs", self.id, pending, pending.delay)
        self.workflow.on_retry("later")
        if (
            signup.state == State.USER_CREATED
            and now - signup.created_at > self.workflow.give_up_after
        ):
            self.log.error("signup %s: giving up after %.0fs", self.id, now - signup.created_at)
            if self.existing_license(signup.user_id) is None:
                self.compensate(signup.user_id)
                return None
        self.record(
            attempts=signup.attempts + 1,
            next_attempt_at=now + pending.delay,
            last_error=str(pending)[:500],
        )
        if signup.state == State.NEW and applicant is not None:
            raise TryLater(f"signup {self.id}: {pending}")
        return None

    def record(self, *, mail: tuple[Letter, ...] = (), **changes) -> None:
        if not self.journal.record(self.id, owner=self.owner, mail=mail, **changes):
            raise TryLater(f"signup {self.id}: lost the lease (another worker took over)")
        self.signup = dataclasses.replace(self.signup, **changes)

    def refused(self, error: SignupError, *, mail: tuple[Letter, ...] | None = None) -> SignupError:
        """Nothing was created and the submission is done: the person may resubmit."""
        mail = self.owed_mail("again") if mail is None else mail
        self.record(state=State.REJECTED, last_error=str(error)[:500], mail=mail)
        return error

    def rejected(self, error: KeygenInvalid) -> SignupError:
        errors: dict[str, str] = {}
        for problem in error.problems:
            known = MESSAGES.get((problem.field, problem.kind))
            if known is None:
                return self.operator_problem("creating a user", error)
            errors.setdefault(*known)
        if self.hides_taken and len(errors) > 1:
            errors.pop("email", None)  # say nothing about the address; the rest is fixable
        if not errors:
            # A 400 without codes is a request Keygen cannot parse: a bug on our side.
            return self.operator_problem("creating a user", error)
        return Rejected(errors)

    def operator_problem(self, step: str, error: KeygenError) -> SignupUnavailable:
        self.log.error(
            "signup %s: Keygen refused %s: %s. Check KEYGEN_PRODUCT_TOKEN, KEYGEN_POLICY_ID "
            "and the Keygen account's plan.",
            self.id,
            step,
            error,
            extra={"keygen_request_id": error.request_id},
        )
        return SignupUnavailable(f"signup {self.id}: {step}: {error}")


def _is_taken(error: KeygenInvalid) -> bool:
    return any(p.field == "email" and p.kind == "taken" for p in error.problems)
