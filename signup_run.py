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
import uuid
from typing import Protocol

import email_rules
from admission import CALLS_PER_SIGNUP, Admission, NotNow, Pacer
from diagnosis import what_to_do
from journal import Journal, Signup, State
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
from signup_undo import Undoing


class Workflow(Protocol):
    """What a run needs of the workflow that started it (signup.SignupWorkflow)."""

    keygen: KeygenClient
    journal: Journal
    admission: Admission
    policy_id: str
    key_by_email: bool
    key_on_page: bool
    enumeration_safe: bool
    one_account_per_person: bool
    promises_email: bool
    give_up_after: float

    def on_retry(self, when: str) -> None: ...

    def on_operator_problem(self, reason: str) -> None: ...

    def seal(self, license: License) -> str | None: ...


log = logging.getLogger(f"portal.{__name__}")

# Marks the Keygen users this portal created, and which submission created them.
CREATED_BY = "keygen-signup-portal"


class _SignupLog(logging.LoggerAdapter):
    """Adds the signup id to every line, keeping whatever else a call adds."""

    def process(self, msg, kwargs):
        kwargs["extra"] = {**self.extra, **kwargs.get("extra", {})}
        return msg, kwargs


class SignupRun(Undoing):
    """One pass over one journal row that this run holds the lease on."""

    def __init__(
        self,
        workflow: Workflow,
        signup: Signup,
        *,
        owner: str,
        ends_at: float,
        retries: int,
        shows_key: bool = False,
        turns: int = 0,
        spacing: float = 0.0,
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
        self.looked_up = False  # for the same person (ONE_ACCOUNT_PER_PERSON), in this run
        self.log = _SignupLog(log, {"signup_id": signup.id})
        self.pacer = Pacer(
            workflow.admission,
            ends_at=ends_at,
            timeout=self.keygen.timeout,
            retries=retries,
            turns=turns,  # reserved with the signup's turn: the first calls need no other
            spacing=spacing,
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
        # A key Keygen will not show again goes sealed with what still has to deliver it.
        sealed = self.workflow.seal(license)
        mail: tuple[Letter, ...] = ()
        if self.workflow.key_by_email:
            mail = (self.letter("license", ref=license.id, sealed_key=sealed),)
        kept = {"sealed_key": sealed} if sealed and self.workflow.key_on_page else {}
        if not self.shows_key:
            self.record(state=State.ISSUED, last_error=None, mail=mail, **kept)
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
            **kept,
        )
        self.released = True

    def letter(
        self, kind: str, *, ref: str, dedupe: str | None = None, sealed_key: str | None = None
    ) -> Letter:
        return Letter(
            sealed_key=sealed_key,
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
        if self.workflow.one_account_per_person:
            canonical = email_rules.canonical(applicant.email)
            if not self.journal.hold_person(email_rules.person_key(canonical), self.id):
                self.log.info("signup %s: refused: the same mailbox is signing up now", self.id)
                raise self.taken(refusal="same_person")
            ours = self.same_person(applicant.email, canonical)
            if ours is not None:
                return ours
            metadata[email_rules.METADATA_KEY] = canonical
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
            except KeygenRateLimited as error:  # turned away before anything was created
                self.pacer.pause(error, "creating a user")
            except (KeygenUnavailable, KeygenConflict) as error:
                # The create may have happened (no answer), or two creates for this email
                # raced inside Keygen and one went through (409, a unique index): look before
                # sending it again. If even the lookup fails, resend: Keygen answers EMAIL_TAKEN
                # if the first one landed.
                try:
                    user = self.find_user(applicant.email)
                except NotNow:
                    user = None
                if user is not None:
                    return self.ours_or_taken(applicant.email, user)
                self.pacer.pause(error, "creating a user")
            except KeygenRejected as error:  # token, plan, or a request Keygen cannot parse
                raise self.refused(self.operator_problem("creating a user", error)) from None

    def same_person(self, email: str, canonical: str) -> User | None:
        """Refuse the address if a user of the same mailbox exists (by the canonical form in
        their metadata), as an address Keygen already has; but a user of ours is an earlier
        send of this very submission: returned. Users from before the canonical form are found
        by their exact address, by Keygen's create."""
        while True:
            self.take_turn()
            try:
                users = self.keygen.list_users(
                    metadata={email_rules.METADATA_KEY: canonical}, timeout=self.pacer.timeout()
                )
                break
            except KeygenRejected as error:  # token or permission: fail closed, loudly
                raise self.refused(self.operator_problem("looking up the person", error)) from None
            except KeygenUnavailable as error:  # nothing is created here: just ask again
                self.pacer.pause(error, "looking up the person")
        self.looked_up = True
        ours = next((user for user in users if self.is_ours(user)), None)
        if ours is not None or not users:
            return ours
        exact = any(user.email.lower() == email.lower() for user in users)
        self.log.info("signup %s: refused: user %s has this mailbox", self.id, users[0].id)
        raise self.taken(refusal=None if exact else "same_person")

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

    def taken(self, refusal: str | None = None) -> SignupError:
        """Someone else has this address (or, ``refusal`` "same_person", this mailbox). With
        ENUMERATION_SAFE the person sees what a new address sees, and the address's owner gets
        an email on how to recover their key."""
        rejected = Rejected({"email": EMAIL_TAKEN}, refusal=refusal)
        return self.refused(rejected, mail=self.owed_mail("taken"))

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
            except KeygenConflict as error:
                # Our id is taken: an earlier send of this same request went through (422
                # ID_CONFLICT), or two sends raced inside Keygen (409) and one did. As after a
                # timeout: look, then use it, or send again (a 409's twin may not be committed).
                sent_as = self.signup.license_id
                license = self.existing_license(user_id)
                if license is not None:
                    return license
                if self.signup.license_id != sent_as:
                    continue  # it was keyless, and is replaced: create the new one now
                if error.status != 409:
                    delay = self.pacer.backoff()
                    raise NotNow("license id taken but not readable", delay=delay) from None
                self.pacer.pause(error, "creating a license")
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
        if license.key is None:
            self.replace_keyless(license)
            return None
        return license

    def replace_keyless(self, license: License) -> None:
        """Our license exists, but Keygen's answer to its create, the only one that shows a
        LEGACY_ENCRYPT key, was lost: issue another under a new id, and delete this one."""
        self.take_turn()
        try:
            self.keygen.delete_license(license.id, timeout=self.pacer.timeout())
            fate = "deleted"
        except KeygenNotFound:
            fate = "gone"
        except KeygenError as error:
            fate = f"left in Keygen ({error}): delete it there"
        self.log.error(
            "signup %s: the key of license %s was lost with Keygen's answer, and Keygen shows "
            "it only once: issuing another license; the keyless one is %s",
            self.id,
            license.id,
            fate,
        )
        self.record(license_id=str(uuid.uuid4()))

    # Turns, the journal and errors.

    def take_turn(self, *, final: bool = False) -> None:
        """This call's turn at Keygen. With the password at hand, the rest of the signup may
        wait in the backlog: its calls are reserved together, as a queued signup's are."""
        backlog_calls = 0
        if self.applicant is not None:
            backlog_calls = self.calls_left()
        self.pacer.take_turn(final=final, backlog_calls=backlog_calls)

    def calls_left(self) -> int:
        """The calls of the happy path this run has still to make, the next one included."""
        if self.signup.state != State.NEW:
            return 1
        lookup = self.workflow.one_account_per_person and not self.looked_up
        return CALLS_PER_SIGNUP + (1 if lookup else 0)

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
        """A refusal only an operator can fix (the token, its permissions, the policy, the
        account's plan): one line saying what to do, and never a retry."""
        self.log.error(
            "signup %s: Keygen refused %s: %s. %s.",
            self.id,
            step,
            error,
            what_to_do(error),
            extra={"keygen_request_id": error.request_id, "keygen_reason": error.reason},
        )
        self.workflow.on_operator_problem(error.reason)
        return SignupUnavailable(f"signup {self.id}: {step}: {error}")


def _is_taken(error: KeygenInvalid) -> bool:
    return any(p.field == "email" and p.kind == "taken" for p in error.problems)
