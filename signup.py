"""The signup workflow: create the Keygen user, then a license for that user, exactly once per
submission, whatever the network, the browser or the process does.

Keygen has no idempotency keys, so each step is made safe to repeat by other means. The journal
row is written first. A user create that got no answer is resolved by looking the user up (our
metadata tells ours from someone else's). The license id is chosen up front, so resending the
create cannot duplicate it. Whatever a request cannot finish, the reconciler (worker.py) finishes
or undoes later from the journal.

Email (KEY_DELIVERY, REQUIRE_EMAIL_VERIFICATION, ENUMERATION_SAFE) is decided here too, but only
queued: the message goes into the journal's outbox in the same transaction as the state it
belongs to, and delivery.py sends it off the request's path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from admission import CALLS_PER_SIGNUP, Backlog, BudgetUnavailable, Bulkhead, KeygenBudget
from journal import RESUBMITTABLE, UNFINISHED, Journal, Letter, Signup, State
from keygen_api import (
    KeygenCircuitOpen,
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


def N_(message: str) -> str:
    """Marks a message for the catalogues (translations/); views.py shows it translated."""
    return message


# Marks the Keygen users this portal created, and which submission created them.
CREATED_BY = "keygen-signup-portal"
EMAIL_TAKEN = N_("An account with this email already exists.")

# (field, kind) from Keygen's 422 -> (form field, what we tell the person).
_MESSAGES: dict[tuple[str | None, str | None], tuple[str, str]] = {
    ("email", "taken"): ("email", EMAIL_TAKEN),
    ("email", "invalid"): ("email", N_("Enter a valid email address, like name@example.com.")),
    ("email", "too_long"): ("email", N_("This email address is too long.")),
    ("password", "too_short"): ("password", N_("This password is too short.")),
    ("password", "too_long"): ("password", N_("This password is too long.")),
    ("first_name", "too_long"): ("first_name", N_("Use at most 255 characters.")),
    ("last_name", "too_long"): ("last_name", N_("Use at most 255 characters.")),
}


@dataclass(frozen=True)
class Applicant:
    """A well-formed submission: what the form checked, in the shape Keygen wants."""

    email: str
    password: str = field(repr=False)
    first_name: str
    last_name: str
    consent: dict[str, str] = field(default_factory=dict)  # kept in the user's metadata
    locale: str | None = None  # the page's language: the emails this signup owes are in it


# What a submission can come to, besides the exceptions below.


@dataclass(frozen=True)
class Issued:
    """Show this key now: it is the one and only time."""

    email: str
    license_key: str = field(repr=False)
    license_id: str
    signup_id: str


@dataclass(frozen=True)
class AlreadyIssued:
    """This submission was completed before, and its key was shown then."""

    email: str


@dataclass(frozen=True)
class Processing:
    """Not finished yet; it will be finished in the background."""

    email: str


@dataclass(frozen=True)
class CheckInbox:
    """The page says "check your inbox" and nothing else: ``about`` is what the email brings
    ("verify": a link to confirm the address; "key": the license key). With ENUMERATION_SAFE
    an address that already has an account gets this same outcome (and an email saying so)."""

    email: str
    about: str


Outcome = Issued | AlreadyIssued | Processing | CheckInbox


class SignupError(Exception):
    """The signup did not complete. Subclasses say what the person can do about it."""


class Rejected(SignupError):
    """The person can fix the submission: ``errors`` maps form fields to messages."""

    def __init__(self, errors: dict[str, str]):
        self.errors = errors
        super().__init__(", ".join(f"{name} rejected" for name in errors))


class TryLater(SignupError):
    """Keygen could not be reached in time, and nothing exists yet. Trying again may work."""


class SignupUnavailable(SignupError):
    """The portal or Keygen is misconfigured. An operator must act; the log says what."""


class TooBusy(SignupError):
    """Every slot for talking to Keygen is taken (Keygen is slow). Nothing was written."""


class LinkUsed(SignupError):
    """A verification link whose signup went on without it: verified before, or expired."""


class _Retry(Exception):
    """A step ran out of attempts or time with an outcome still unknown."""

    def __init__(self, message: str, *, delay: float):
        self.delay = delay
        super().__init__(message)


class _Later(Exception):
    """The next Keygen call's turn is ``turn`` seconds away, past this run's deadline; the run
    holds ``calls`` calls reserved from then on, and goes on in the background."""

    def __init__(self, turn: float, calls: int):
        self.turn = turn
        self.calls = calls
        super().__init__(f"next turn at Keygen in {turn:.1f}s")


class SignupWorkflow:
    """Creates a user and their license, within a total deadline, exactly once per nonce."""

    POLL = 0.1  # how often a duplicate submission looks at the journal while it waits

    def __init__(
        self,
        keygen: KeygenClient,
        journal: Journal,
        policy_id: str,
        *,
        deadline: float = 20.0,
        give_up_after: float = 86400.0,
        concurrency: int = 6,
        crash_at: str = "",
        budget: KeygenBudget | None = None,
        queue_wait: float = 2.0,
        backlog: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        key_delivery: str = "page",
        verify: bool = False,
        hide_accounts: bool = False,
        unverified_lifetime: float = 172800.0,
    ):
        # page: the key is shown once; email: it is only emailed; both.
        self.key_on_page = key_delivery in ("page", "both")
        self.key_by_email = key_delivery in ("email", "both")
        self.verify = verify  # the license waits until the address is confirmed
        self.hide_accounts = hide_accounts  # a taken address gets the same answer as a new one
        self.unverified_lifetime = unverified_lifetime
        self.keygen = keygen
        self.journal = journal
        self.policy_id = policy_id
        self.deadline = deadline
        # Outlives our own work (the deadline plus a compensation's grace period), so that no
        # one takes a row we are still driving.
        self.lease = deadline + keygen.timeout[0] + 3.0
        self.give_up_after = give_up_after
        self._slots = Bulkhead(concurrency)
        self.crash_at = crash_at
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._clock = clock
        self._sleep = sleep
        # Told of each step tried again: "now" (within the request) or "later" (the reconciler).
        self.on_retry: Callable[[str], None] = lambda when: None
        self.budget = budget
        self.queue_wait = queue_wait
        self.backlog = backlog
        self._backlog = Backlog(concurrency)
        self._waiting = 0  # slot holders waiting for their turn at Keygen
        self._lock = threading.Lock()

    def sign_up(self, applicant: Applicant, nonce: str) -> Outcome:
        """Drive this submission to its end, or wait for whoever is driving it already.

        First the signup's turn at Keygen (admission.py): a turn within ``queue_wait`` seconds
        is waited for here; a later one, up to ``backlog`` seconds away, is queued and finished
        in the background while the person sees "we are finishing your signup"; beyond that
        the portal is too busy, and nothing is written.

        Driving takes one of ``concurrency`` slots (a Bulkhead), waiting for one only while
        signups are flowing: while Keygen is slow, signups must not take every thread from the
        pages and /healthz.
        Waiting for a copy of this submission that someone else drives takes no slot.
        """
        try:
            return self._by_email(self._sign_up(applicant, nonce))
        except Rejected as rejection:
            if self.hide_accounts and rejection.errors == {"email": EMAIL_TAKEN}:
                # The run queued an email to the address's owner; the page says what it says
                # to a new address.
                return CheckInbox(applicant.email, "verify" if self.verify else "key")
            raise

    def _sign_up(self, applicant: Applicant, nonce: str) -> Outcome:
        ends_at = self._clock() + self.deadline
        owner = f"{self.worker_id}:{uuid.uuid4().hex[:8]}"  # threads of one process differ
        turn = self._turn()
        if turn > self.queue_wait:
            if self._backlog.full:
                raise TooBusy("the queue of signups waiting for Keygen is full")
            queued = self._queue(applicant, nonce, owner, turn)
            if queued is not None:
                return queued
            turn = 0.0  # a copy of a submission someone else drives needs no turn of its own
        # A signup with a turn at Keygen must call at that turn: a later call would take
        # another signup's place in the quota's schedule. So it waits for a slot only until its
        # turn, and then for what is left of the turn.
        turn_at = time.monotonic() + turn
        waited = False
        while True:
            left = max(0.0, turn_at - time.monotonic())
            slot = self._slots.acquire(within=left if turn > 0 else Bulkhead.FLOWING)
            missed = not slot and turn > 0 and not self._waiting
            if missed:
                # Every slot is taken by signups calling Keygen: its speed, not its quota, is
                # what holds them. Wait for a slot as a signup without a turn does, and take
                # a new turn, since this one will have passed.
                slot = self._slots.acquire(within=Bulkhead.FLOWING)
            if slot:
                try:
                    if missed:
                        turn = self._turn(within=self.queue_wait)
                        turn_at = time.monotonic() + turn
                    # The wait for the turn holds the slot too: waiting signups must not take
                    # every thread from the pages either.
                    if turn > 0:
                        self._wait_for_turn(max(0.0, turn_at - time.monotonic()))
                        turn = 0.0
                    claim = self._claim(applicant, nonce, owner, lease=self.lease)
                    if claim.leased:
                        return self._drive(
                            claim.signup, applicant, ends_at, owner, turns=CALLS_PER_SIGNUP
                        )
                finally:
                    self._slots.release()
                signup = claim.signup
            else:
                found = self.journal.find_nonce(nonce)
                if found is None or found.state in RESUBMITTABLE:
                    # When signups waiting for their turn hold slots, Keygen's quota (not its
                    # speed) is what keeps them busy: finish this one in the background.
                    waiting = turn > 0 and self._waiting > 0
                    left = max(0.0, turn_at - time.monotonic())
                    queued = self._queue(applicant, nonce, owner, left) if waiting else None
                    if queued is not None:
                        return queued
                    raise TooBusy("no free slot for a new signup")
                signup = found
            if signup.state == State.ISSUED:
                return self._present(signup, waited_for_it=waited, ends_at=ends_at)
            if signup.state == State.PENDING_VERIFICATION:
                return CheckInbox(signup.email, "verify")
            if self._clock() + self.POLL >= ends_at:
                return Processing(signup.email)
            time.sleep(self.POLL)  # a double click or a second tab: the first one is working
            waited = True

    def confirm(self, signup_id: str) -> Outcome:
        """The click on a verification link (whose signature and age the caller checked):
        issue the license, exactly once however often the link is used."""
        owner = f"{self.worker_id}:{uuid.uuid4().hex[:8]}"
        if not self._slots.acquire():
            raise TooBusy("no free slot to issue a verified signup's license")
        try:
            if self.journal.start_verified(signup_id, owner=owner, lease=self.lease):
                signup = self.journal.get(signup_id)
                ends_at = self._clock() + self.deadline
                return self._by_email(self._drive(signup, None, ends_at, owner))
        finally:
            self._slots.release()
        signup = self.journal.find(signup_id)
        if signup is None:
            raise LinkUsed(f"signup {signup_id} is not in the journal")
        if signup.state == State.ISSUED:
            # Issued after an earlier click, by the reconciler, and never shown: show it now.
            outcome = self._present(
                signup, waited_for_it=False, ends_at=self._clock() + self.deadline
            )
            if isinstance(outcome, Issued):
                return outcome
        elif signup.state in UNFINISHED:
            return Processing(signup.email)
        raise LinkUsed(f"signup {signup.id} is {signup.state}")

    def link_open(self, signup_id: str) -> bool:
        """Whether pressing a verification link's button can still do something."""
        signup = self.journal.find(signup_id)
        if signup is None:
            return False
        if signup.state == State.ISSUED:
            return self.key_on_page and not signup.key_shown
        return signup.state == State.PENDING_VERIFICATION or signup.state in UNFINISHED

    def expire(self, signup: Signup, *, owner: str) -> State:
        """Delete the user of a verification nobody completed, so the address is free again
        (the reconciler's step). Only a user this signup created, and only without a license."""
        run = _Run(self, signup, owner=owner, ends_at=self._clock() + self.deadline, retries=0)
        with contextlib.suppress(SignupError):
            run.expire()
        return self.journal.get(signup.id).state

    def _by_email(self, outcome: Outcome) -> Outcome:
        """With KEY_DELIVERY=email the key is never on the page: it is in the outbox."""
        if not self.key_on_page and isinstance(outcome, Issued | AlreadyIssued):
            return CheckInbox(outcome.email, "key")
        return outcome

    def _claim(self, applicant: Applicant, nonce: str, owner: str, *, lease: float):
        """The journal row of this submission: new and leased to us, or someone else's."""
        return self.journal.claim(
            nonce,
            applicant.email,
            owner=owner,
            lease=lease,
            first_name=applicant.first_name,
            last_name=applicant.last_name,
            verify=self.verify,
            locale=applicant.locale,
        )

    def _wait_for_turn(self, turn: float) -> None:
        with self._lock:
            self._waiting += 1
        try:
            self._sleep(turn)
        finally:
            with self._lock:
                self._waiting -= 1

    def _queue(self, applicant: Applicant, nonce: str, owner: str, turn: float) -> Outcome | None:
        """Leave the signup to a Backlog thread for its turn: Processing, or None if this
        nonce is someone else's already or the backlog is full."""
        if self._backlog.full:
            return None
        claim = self._claim(applicant, nonce, owner, lease=turn + self.lease)
        if not claim.leased:
            return None
        starts_at = time.monotonic() + turn
        self._backlog.submit(lambda: self._finish_later(claim.signup, applicant, owner, starts_at))
        return Processing(applicant.email)

    def _requeue(self, signup: Signup, applicant: Applicant, owner: str, later: _Later) -> bool:
        """Finish a run in a Backlog thread at its next turn, keeping the row leased till then:
        False if the backlog is full or the row is no longer ours."""
        if self._backlog.full:
            return False
        if not self.journal.lease(signup.id, owner=owner, lease=later.turn + self.lease):
            return False
        starts_at = time.monotonic() + later.turn
        self._backlog.submit(
            lambda: self._finish_later(signup, applicant, owner, starts_at, turns=later.calls)
        )
        return True

    def _read_back(self, signup: Signup, ends_at: float) -> License | None:
        """The issued license, to show its key: one more Keygen call, which waits for its turn
        within the deadline like any other (None: no turn in time). Turned away by Keygen's
        quota, it takes a new turn, after the window's reset."""
        not_before = 0.0
        while True:
            wait = not_before - self._clock()
            if self.budget is not None:
                try:
                    turn = self.budget.reserve(1, within=max(0.0, ends_at - self._clock() - 1.0))
                except BudgetUnavailable as error:
                    raise SignupUnavailable(str(error)) from None
                if turn is None:
                    return None
                wait = max(wait, turn)
            if wait > 0:
                self._sleep(wait)
            try:
                return self.keygen.get_license(signup.license_id)
            except KeygenRateLimited as error:
                if self._clock() + error.retry_after < ends_at:
                    not_before = self._clock() + error.retry_after
                    continue
                problem = error
            except KeygenError as error:
                problem = error
            raise TryLater(f"signup {signup.id}: cannot read the issued license: {problem}")

    def _turn(self, within: float | None = None) -> float:
        """Seconds until this signup may call Keygen; TooBusy if beyond ``within`` seconds (the
        backlog)."""
        if self.budget is None:
            return 0.0
        within = self.backlog if within is None else within
        try:
            turn = self.budget.reserve(CALLS_PER_SIGNUP, within=within)
        except BudgetUnavailable as error:
            raise SignupUnavailable(str(error)) from None
        if turn is None:
            raise TooBusy(f"no turn at Keygen within {within:g} s")
        return turn

    def _finish_later(
        self,
        signup: Signup,
        applicant: Applicant,
        owner: str,
        starts_at: float,
        turns: int = CALLS_PER_SIGNUP,
    ):
        """A queued signup, at its turn (in a Backlog thread). The key is not shown here: the
        person's reload resends the form, and that request shows it (key_shown stays false)."""
        time.sleep(max(0.0, starts_at - time.monotonic()))
        if not self.journal.lease(signup.id, owner=owner, lease=self.lease):
            return  # the person's reload is driving it already
        signup = self.journal.get(signup.id)
        if signup.finished:
            self.journal.release(signup.id, owner=owner)
            return
        run = _Run(
            self,
            signup,
            owner=owner,
            ends_at=self._clock() + self.deadline,
            retries=3,
            turns=turns,  # reserved when the signup was queued: this is their turn
        )
        try:
            with contextlib.suppress(SignupError):  # the run recorded what happened
                run.drive(applicant)
        finally:
            self.journal.release(signup.id, owner=owner)

    def resume(self, signup: Signup, *, owner: str) -> State:
        """Move an unfinished row forward without the password (the reconciler's step)."""
        run = _Run(self, signup, owner=owner, ends_at=self._clock() + self.deadline, retries=0)
        with contextlib.suppress(SignupError):  # the run recorded what happened
            run.drive(None)
        return self.journal.get(signup.id).state

    def _drive(
        self,
        signup: Signup,
        applicant: Applicant | None,
        ends_at: float,
        owner: str,
        *,
        turns: int = 0,
    ) -> Outcome:
        run = _Run(
            self, signup, owner=owner, ends_at=ends_at, retries=3, shows_key=True, turns=turns
        )
        try:
            license = run.drive(applicant)
        finally:
            if not run.released:
                self.journal.release(signup.id, owner=owner)
        if license is None:
            return Processing(signup.email)
        if license == State.PENDING_VERIFICATION:
            return CheckInbox(signup.email, "verify")
        return Issued(signup.email, license.key, license.id, signup.id)

    def _present(self, signup: Signup, *, waited_for_it: bool, ends_at: float) -> Outcome:
        """A finished signup seen again. Its key is shown if it never was, or to a duplicate
        submission that arrived while it was being issued (the browser shows only the last
        response of a double click, so that one must carry the key)."""
        if (signup.key_shown and not waited_for_it) or not self.key_on_page:
            return AlreadyIssued(signup.email)
        license = self._read_back(signup, ends_at)
        if license is None:
            return Processing(signup.email)  # Keygen's quota is taken: the next reload shows it
        if self.journal.mark_key_shown(signup.id) or waited_for_it:
            return Issued(signup.email, license.key, license.id, signup.id)
        return AlreadyIssued(signup.email)


class _SignupLog(logging.LoggerAdapter):
    """Adds the signup id to every line, keeping whatever else a call adds."""

    def process(self, msg, kwargs):
        kwargs["extra"] = {**self.extra, **kwargs.get("extra", {})}
        return msg, kwargs


class _Run:
    """One pass over one journal row: its deadline and retry budget."""

    BACKOFF_BASE = 0.25
    BACKOFF_CAP = 4.0
    RESCHEDULE_CAP = 600.0  # the reconciler tries a row at least every ten minutes

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
    ):
        self.workflow = workflow
        self.keygen = workflow.keygen
        self.journal = workflow.journal
        self.signup = signup
        self.owner = owner
        self.ends_at = ends_at
        self.retries = retries
        self.shows_key = shows_key  # a request shows the key it issues; the reconciler does not
        self.released = False
        self.attempt = 0
        # Keygen calls already reserved in the budget, at about now (the signup's turn). Any
        # other call takes a turn of its own: a retry, a lookup, the reconciler's pass.
        self.turns = turns
        self.not_before = 0.0  # Keygen's window is used up until then (a 429)
        self.applicant: Applicant | None = None  # with it, a late turn is waited for in the Backlog
        self.log = _SignupLog(log, {"signup_id": signup.id})

    @property
    def id(self) -> str:
        return self.signup.id

    def drive(self, applicant: Applicant | None) -> License | State | None:
        """The license; PENDING_VERIFICATION if it waits for the address to be confirmed; or
        None if it will be finished later. Raises SignupError otherwise."""
        self.applicant = applicant
        try:
            user_id = self.signup.user_id
            if self.signup.state == State.NEW:
                user = self.create_user(applicant) if applicant else self.find_our_user()
                user_id = user.id
                self.crash_point("after_user_created")  # Keygen has the user; we don't know
                if self.signup.verify:
                    return self.await_verification(user_id)
                self.record(state=State.USER_CREATED, user_id=user_id)
            license = self.create_license(user_id)
            self.crash_point("after_license_created")  # Keygen has the license; we don't know
            mail = (self.letter("license", ref=license.id),) if self.workflow.key_by_email else ()
            if self.shows_key:
                # One statement: issued, shown by us (no duplicate can claim the showing in
                # between), released, and the key's email queued.
                self.record(
                    state=State.ISSUED,
                    last_error=None,
                    key_shown=True,
                    lease_owner=None,
                    lease_until=None,
                    mail=mail,
                )
                self.released = True
            else:
                self.record(state=State.ISSUED, last_error=None, mail=mail)
            return license
        except _Retry as pending:
            return self.reschedule(pending, applicant)
        except _Later as later:
            # The person sees "we are finishing your signup"; a reload shows the key.
            if self.workflow._requeue(self.signup, applicant, self.owner, later):
                self.log.info("signup %s: %s; finishing it in the background", self.id, later)
                self.released = True  # the Backlog thread holds the row now
                return None
            return self.reschedule(_Retry(str(later), delay=later.turn), applicant)

    def await_verification(self, user_id: str) -> State:
        """The user exists; the license waits for the click on the link we email now."""
        now = self.journal.clock()
        self.record(
            state=State.PENDING_VERIFICATION,
            user_id=user_id,
            last_error=None,
            next_attempt_at=now + self.workflow.unverified_lifetime,  # then: expire()
            lease_owner=None,
            lease_until=None,
            mail=(self.letter("verify", ref=self.id, dedupe=f"verify:{self.id}:{user_id}"),),
        )
        self.released = True
        return State.PENDING_VERIFICATION

    def expire(self) -> None:
        try:
            self.delete_unverified_user()
        except _Retry as pending:
            self.log.warning("signup %s: %s; will retry in %.0fs", self.id, pending, pending.delay)
            self.record(
                attempts=self.signup.attempts + 1,
                next_attempt_at=self.journal.clock() + pending.delay,
                last_error=str(pending)[:500],
            )
            return
        self.record(state=State.EXPIRED, last_error="the address was never verified")
        self.log.info("signup %s: never verified; its user was deleted", self.id)

    def delete_unverified_user(self) -> None:
        user_id = self.signup.user_id
        if not user_id:
            return
        try:
            self.take_turn()
            user = self.keygen.get_user(user_id, timeout=self.timeout())
            if not self.is_ours(user):
                return  # not the user this signup created: never ours to delete
            self.take_turn()
            if self.keygen.list_licenses(owner=user_id, timeout=self.timeout()):
                raise _Retry("the unverified user has a license", delay=self.RESCHEDULE_CAP)
            self.take_turn()
            self.keygen.delete_user(user_id, timeout=self.timeout())
        except KeygenNotFound:
            pass  # deleted already
        except KeygenError as error:
            delay = self.backoff()
            raise _Retry(f"cannot remove the unverified user: {error}", delay=delay) from None

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
                    timeout=self.timeout(),
                )
            except KeygenInvalid as error:
                only_taken = _is_taken(error) and len(error.problems) == 1
                if only_taken and self.first_send() and self.workflow.hide_accounts:
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
                self.pause(error, "creating a user")
            except KeygenUnavailable as error:
                # The create may have happened: look before sending it again. If even the
                # lookup fails, resend: Keygen answers EMAIL_TAKEN if the first one landed.
                try:
                    user = self.find_user(applicant.email)
                except _Retry:
                    user = None
                if user is not None:
                    return self.ours_or_taken(applicant.email, user)
                self.pause(error, "creating a user")

    def find_our_user(self) -> User:
        """Without the password we cannot create the user; we can only learn whether our
        earlier attempt did. If it did not, the person has to submit the form again."""
        user = self.find_user(self.signup.email)
        if user is not None and self.is_ours(user):
            return user
        state = State.REJECTED if user is not None else State.ABANDONED
        self.record(state=state, last_error="the user was never created by this signup")
        self.log.info("signup %s: %s (no user of ours in Keygen)", self.id, state)
        raise TryLater(f"signup {self.id}: {state}")

    def ours_or_taken(self, email: str, user: User | None = None) -> User:
        user = user or self.find_user(email)
        if user is not None and self.is_ours(user):
            return user
        raise self.taken()

    def first_send(self) -> bool:
        """Whether no earlier create of this submission can have reached Keygen."""
        return self.signup.attempts == 0 and self.attempt == 0

    def taken(self) -> SignupError:
        """Someone else has this address. With ENUMERATION_SAFE the person sees what a new
        address sees, and the address's owner gets an email on how to recover their key."""
        mail = ()
        if self.workflow.hide_accounts:
            mail = (self.letter("taken", ref=self.id),)
        return self.refused(Rejected({"email": EMAIL_TAKEN}), mail=mail)

    def is_ours(self, user: User) -> bool:
        return user.metadata.get("portalSignupId") == self.id

    def find_user(self, email: str) -> User | None:
        self.take_turn()
        try:
            return self.keygen.get_user(email, timeout=self.timeout())
        except KeygenNotFound:
            return None
        except KeygenUnavailable as error:
            # We cannot tell whether the user exists; the reconciler will look again.
            raise _Retry(f"cannot look up the user: {error}", delay=self.backoff()) from None
        except KeygenRejected as error:
            # A user of ours may exist: keep the row and look again once an operator fixed it.
            self.operator_problem("looking up a user", error)
            raise _Retry(f"cannot look up the user: {error}", delay=self.RESCHEDULE_CAP) from None

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
                    timeout=self.timeout(),
                )
            except KeygenConflict:
                # Our id is taken: an earlier send of this same request went through.
                license = self.existing_license(user_id)
                if license is None:
                    raise _Retry(
                        "license id taken but not readable", delay=self.backoff()
                    ) from None
                return license
            except KeygenRejected as error:
                problem = self.operator_problem("creating a license", error)
                self.compensate(user_id)
                raise problem from None
            except KeygenRateLimited as error:  # turned away before anything was created
                self.pause(error, "creating a license")
            except KeygenUnavailable as error:
                license = self.existing_license(user_id) if self.attempt else None
                if license is not None:
                    return license
                self.pause(error, "creating a license")

    def existing_license(self, user_id: str) -> License | None:
        """The license we asked for, if Keygen has it, owned by our user under our policy."""
        self.take_turn()
        try:
            license = self.keygen.get_license(self.signup.license_id, timeout=self.timeout())
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
            self.keygen.delete_user(user_id, timeout=self.timeout(final=True))
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
            raise _Retry("compensation failed", delay=self.backoff()) from None
        self.record(state=State.COMPENSATED)
        self.log.warning("signup %s: deleted user %s (no license issued)", self.id, user_id)

    # Budget, journal and errors.

    def timeout(self, *, final: bool = False) -> tuple[float, float]:
        """(connect, read) timeouts that fit in what is left of the deadline. ``final`` calls
        (compensation) get a short grace period: skipping them would strand a user."""
        connect, read = self.keygen.timeout
        left = self.ends_at - self.workflow._clock()
        if final:
            left = max(left, connect + 2.0)
        if left <= 0.05:
            raise _Retry("deadline reached", delay=self.backoff())
        return (min(connect, left), min(read, left))

    def take_turn(self, *, final: bool = False) -> None:
        """Wait for this call's turn in the Keygen budget (admission.py), so that every call
        the portal makes, retries and lookups too, keeps to the quota's schedule. No turn before
        the deadline: the row is left for later."""
        budget = self.workflow.budget
        clock = self.workflow._clock
        if budget is None:
            wait = self.not_before - clock()
        elif self.turns:
            self.turns -= 1
            return
        else:
            left = self.ends_at - clock() - 1.0
            if final:
                left = max(left, self.keygen.timeout[0] + 1.0)
            # With the password at hand, the rest of the signup may wait in the Backlog: its
            # calls are reserved together, as a queued signup's are.
            later = self.applicant is not None and not final
            calls = CALLS_PER_SIGNUP if self.signup.state == State.NEW else 1
            within = max(left, self.workflow.backlog) if later else left
            try:
                turn = budget.reserve(calls if later else 1, within=max(0.0, within))
            except BudgetUnavailable as error:
                raise _Retry(str(error), delay=self.backoff()) from None
            if turn is None:
                raise _Retry("no turn at Keygen before the deadline", delay=self.backoff())
            wait = max(turn, self.not_before - clock())
            if later and wait > left:
                raise _Later(wait, calls)
            if later:
                self.turns = calls - 1
        if wait > 0:
            self.workflow._sleep(wait)

    def pause(self, error: KeygenUnavailable, step: str) -> None:
        """Wait a capped, fully jittered backoff (or Keygen's Retry-After) if it fits. The next
        attempt takes a turn of its own: the turns reserved for this run were for calls made on
        time, and a call Keygen turned away for its quota must not go at the window's reset
        together with every other one that was (they would use up the new window at once)."""
        self.attempt += 1
        if isinstance(error, KeygenRateLimited):
            pause = error.retry_after
        else:
            pause = random.uniform(0, min(self.BACKOFF_CAP, self.BACKOFF_BASE * 2**self.attempt))
        left = self.ends_at - self.workflow._clock()
        too_late = pause + min(1.0, self.keygen.timeout[0]) > left
        if self.attempt > self.retries or too_late or isinstance(error, KeygenCircuitOpen):
            delay = error.retry_after if isinstance(error, KeygenRateLimited) else self.backoff()
            raise _Retry(f"{step} failed: {error}", delay=delay)
        self.log.warning(
            "signup %s: %s failed (%s); retrying in %.2fs",
            self.id,
            step,
            error,
            pause,
            extra={"keygen_request_id": error.request_id},
        )
        self.workflow.on_retry("now")
        self.turns = 0
        if isinstance(error, KeygenRateLimited):
            self.not_before = self.workflow._clock() + pause  # take_turn waits for it
        else:
            self.workflow._sleep(pause)

    def backoff(self) -> float:
        """When the reconciler should look at this row again: capped, fully jittered."""
        attempts = self.signup.attempts + 1
        return random.uniform(1.0, min(self.RESCHEDULE_CAP, 2.0**attempts))

    def reschedule(self, pending: _Retry, applicant: Applicant | None) -> None:
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

    def refused(self, error: SignupError, *, mail: tuple[Letter, ...] = ()) -> SignupError:
        """Nothing was created and the submission is done: the person may resubmit."""
        self.record(state=State.REJECTED, last_error=str(error)[:500], mail=mail)
        return error

    def crash_point(self, name: str) -> None:
        if self.workflow.crash_at == name:  # tests only: a process dying at the worst moment
            self.log.warning("signup %s: crashing at %s (TEST_CRASH_AT)", self.id, name)
            logging.shutdown()
            os._exit(70)

    def rejected(self, error: KeygenInvalid) -> SignupError:
        errors: dict[str, str] = {}
        for problem in error.problems:
            known = _MESSAGES.get((problem.field, problem.kind))
            if known is None:
                return self.operator_problem("creating a user", error)
            errors.setdefault(*known)
        if self.workflow.hide_accounts and len(errors) > 1:
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
