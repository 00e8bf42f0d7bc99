"""The signup workflow: claim the submission's journal row, create the Keygen user, then the
license, and record it, exactly once per submission, whatever the network, the browser or the
process does.

A submission first gets its turn at Keygen and a slot to work in (admission.py). Then the journal
row is claimed by the form's nonce, before Keygen is called; a copy of a submission someone else
is driving (a double click, a second tab) waits for it instead. The Keygen steps are a
SignupRun's (signup_run.py). Whatever a request cannot finish, the reconciler (worker.py)
finishes or undoes later from the journal.

Email (KEY_DELIVERY, REQUIRE_EMAIL_VERIFICATION, ENUMERATION_SAFE) is decided here too, but only
queued: the message goes into the journal's outbox in the same transaction as the state it
belongs to, and delivery.py sends it off the request's path. With REQUIRE_EMAIL_VERIFICATION the
form only records the signup and queues the link: the user and the license are created when
whoever controls the address has chosen the password on the link's page (confirm). With
ENUMERATION_SAFE the answer leaves before Keygen is asked anything, and a backlog thread does
the work.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable

from admission import Admission, Later, NotNow, Ticket, turned_away
from journal import RESUBMITTABLE, Claim, Journal, Signup, State
from keygen_api import KeygenClient, KeygenError, KeygenRateLimited, License
from outcomes import (
    AlreadyIssued,
    Applicant,
    CheckInbox,
    Issued,
    Outcome,
    Processing,
    Rejected,
    SignupError,
    TooBusy,
    TryLater,
)
from sealing import Sealer
from signup_run import SignupRun
from verification import EmailFirst

log = logging.getLogger(f"portal.{__name__}")


class SignupWorkflow(EmailFirst):
    """Creates a user and their license, within a total deadline, exactly once per nonce."""

    POLL = 0.1  # how often a copy of a submission looks at the journal while it waits

    def __init__(
        self,
        keygen: KeygenClient,
        journal: Journal,
        policy_id: str,
        *,
        admission: Admission | None = None,
        deadline: float = 20.0,
        give_up_after: float = 86400.0,
        key_delivery: str = "page",
        verify: bool = False,
        enumeration_safe: bool = False,
        one_account_per_person: bool = False,
        link_lifetime: float = 86400.0,
        mail: bool = False,
        on_retry: Callable[[str], None] | None = None,
        sealer: Sealer | None = None,
        on_operator_problem: Callable[[str], None] | None = None,
        on_refusal: Callable[[str], None] | None = None,
    ):
        self.keygen = keygen
        self.journal = journal
        self.policy_id = policy_id
        self.admission = admission or Admission(None, slots=6)
        self.clock = self.admission.clock
        self.deadline = deadline
        self.give_up_after = give_up_after
        # page: the key is shown once; email: it is only emailed; both.
        self.key_on_page = key_delivery in ("page", "both")
        self.key_by_email = key_delivery in ("email", "both")
        self.verify = verify  # the account waits until the address is confirmed
        self.enumeration_safe = enumeration_safe  # a taken address answered like a new one
        # A mailbox, not an address, is a person: looked up by its canonical form (email_rules).
        self.one_account_per_person = one_account_per_person
        self.link_lifetime = link_lifetime  # VERIFICATION_LINK_LIFETIME
        # Whether a signup finished in the background tells the person by email how it ended
        # (the page told them to wait for the key's email).
        self.promises_email = mail and not self.key_on_page
        self.on_mail: Callable[[], None] = lambda: None  # the courier's wake, set by app.py
        # Told of each step tried again: "now" (within the request) or "later" (the reconciler).
        self.on_retry: Callable[[str], None] = on_retry or (lambda when: None)
        # Keeps a key Keygen shows only once until it is delivered (sealing.py).
        self.sealer = sealer
        # Told the reason of each Keygen refusal only an operator can fix ("payment_required").
        self.on_operator_problem: Callable[[str], None] = on_operator_problem or (lambda _: None)
        # Told the reason of a refusal to keep to one trial per person ("same_person") that a
        # background signup met after its page had been answered.
        self.on_refusal: Callable[[str], None] = on_refusal or (lambda _: None)
        # Outlives our own work (the deadline plus a compensation's grace period), so that no
        # one takes a row we are still driving.
        self.lease = deadline + keygen.timeout[0] + 3.0
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._settled = threading.Condition()  # told whenever a run of this process ends

    # -- A submission ------------------------------------------------------------------------------

    def sign_up(self, applicant: Applicant, nonce: str) -> Outcome:
        """Drive this submission to its end, or wait for whoever is driving it already.
        ``nonce`` is the form's nonce bound to the browser session (forms.bound_nonce).

        Its turn at Keygen within ADMISSION_WAIT is waited for here; a later one, within
        ADMISSION_BACKLOG, is queued and finished in the background while the person sees "we
        are finishing your signup"; beyond that the portal is too busy, and nothing is written.
        """
        if self.verify:
            return self.request_verification(applicant, nonce)
        with turned_away():
            if self.enumeration_safe:
                return self._in_background(applicant, nonce)
            return self._by_email(self._sign_up(applicant, nonce))

    def _in_background(self, applicant: Applicant, nonce: str) -> Outcome:
        """ENUMERATION_SAFE: "check your inbox" at once, before Keygen is asked anything, so
        that neither the answer nor its time tells a new address from a registered one. A
        backlog thread creates the user and the license at the signup's turn, the password in
        memory only; the person gets the key by email, or "you already have an account", or
        (if this process stops first: worker.py) an email saying to sign up again."""
        ticket = self.admission.ticket()
        if self.admission.backlog_full:
            raise TooBusy("the queue of signups waiting for Keygen is full")
        queued = self._queue(applicant, nonce, self._owner(), ticket.turn)
        if queued is None and self.admission.backlog_full:
            raise TooBusy("the queue of signups waiting for Keygen is full")
        return CheckInbox(applicant.email, "key")  # a copy of a queued form: the same answer

    def _sign_up(self, applicant: Applicant, nonce: str) -> Outcome:
        ends_at = self.clock.monotonic() + self.deadline
        owner = self._owner()
        ticket = self.admission.ticket()
        if self.admission.must_queue(ticket):
            if self.admission.backlog_full:
                raise TooBusy("the queue of signups waiting for Keygen is full")
            queued = self._queue(applicant, nonce, owner, ticket.turn)
            if queued is not None:
                return queued
            ticket.turn = 0.0  # a copy of a submission someone else drives needs no turn
        waited = False
        while True:
            found = self._take_part(applicant, nonce, owner, ticket, ends_at)
            if not isinstance(found, Signup):
                return found  # we drove it, or queued it
            outcome = self._seen_again(found, waited=waited, ends_at=ends_at)
            if outcome is not None:
                return outcome
            with self._settled:  # a double click or a second tab: the first one is working
                self._settled.wait(self.POLL)
            waited = True

    def _take_part(
        self, applicant: Applicant, nonce: str, owner: str, ticket: Ticket, ends_at: float
    ) -> Outcome | Signup:
        """Drive the submission in a seat (its outcome), or find its row driven by someone
        else (the row). A copy waiting for someone else's run takes no seat."""
        with self.admission.seat(ticket) as seated:
            if seated:
                claim = self._claim(applicant, nonce, owner, lease=self.lease)
                if not claim.leased:
                    return claim.signup
                turns = self.admission.calls_per_signup
                spacing = self.admission.spacing(ticket)
                return self._drive(
                    claim.signup, applicant, ends_at, owner, turns=turns, spacing=spacing
                )
        found = self.journal.find_nonce(nonce)
        if found is not None and found.state not in RESUBMITTABLE:
            return found
        if self.admission.quota_holds_slots(ticket):
            # The slots are held by signups waiting for their turns (Keygen's quota, not its
            # speed): finish this one in the background.
            queued = self._queue(applicant, nonce, owner, ticket.left(self.clock))
            if queued is not None:
                return queued
        raise TooBusy("no free slot for a new signup")

    def _seen_again(self, signup: Signup, *, waited: bool, ends_at: float) -> Outcome | None:
        """What a copy of a submission shows, or None while its first run is still working."""
        if signup.state == State.ISSUED:
            return self._present(signup, waited_for_it=waited, ends_at=ends_at)
        if signup.state == State.PENDING_VERIFICATION:
            return CheckInbox(signup.email, "verify")
        if self.clock.monotonic() + self.POLL >= ends_at:
            return Processing(signup.email)
        return None

    # -- The reconciler's steps --------------------------------------------------------------------

    def resume(self, signup: Signup, *, owner: str) -> State:
        """Move an unfinished row forward without the password."""
        run = self._run(signup, owner=owner, retries=0)
        with contextlib.suppress(SignupError):  # the run recorded what happened
            run.drive(None)
        return self.journal.get(signup.id).state

    def expire(self, signup: Signup, *, owner: str) -> State:
        """Mark a verification nobody completed EXPIRED. A row of an earlier release that
        created the user before the click has its user deleted, so the address is free again:
        only a user this signup created, and only without a license."""
        run = self._run(signup, owner=owner, retries=0)
        with contextlib.suppress(SignupError):
            run.expire()
        return self.journal.get(signup.id).state

    # -- Driving a row -----------------------------------------------------------------------------

    def _run(
        self, signup: Signup, *, owner: str, retries: int, ends_at: float | None = None, **options
    ) -> SignupRun:
        if ends_at is None:
            ends_at = self.clock.monotonic() + self.deadline
        return SignupRun(self, signup, owner=owner, ends_at=ends_at, retries=retries, **options)

    def _drive(
        self,
        signup: Signup,
        applicant: Applicant | None,
        ends_at: float,
        owner: str,
        *,
        turns: int = 0,
        **options,
    ) -> Outcome:
        run = self._run(
            signup, owner=owner, retries=3, ends_at=ends_at, shows_key=True, turns=turns, **options
        )
        try:
            license = self._go(run, applicant)
        finally:
            if not run.released:
                self.journal.release(signup.id, owner=owner)
            with self._settled:
                self._settled.notify_all()
        if not isinstance(license, License):
            return Processing(signup.email)
        return Issued(signup.email, license.key, license.id, signup.id)

    def _go(self, run: SignupRun, applicant: Applicant | None) -> License | State | None:
        """The run's result; a run whose next turn is past its deadline goes on in the
        backlog, or is left for the reconciler when the backlog cannot take it."""
        try:
            return run.drive(applicant)
        except Later as later:
            # The person sees "we are finishing your signup"; a reload shows the key.
            if applicant is not None and self._requeue(run.signup, applicant, run.owner, later):
                run.log.info("signup %s: %s; finishing it in the background", run.id, later)
                run.released = True  # the backlog thread holds the row now
                return None
            return run.reschedule(NotNow(str(later), delay=later.turn), applicant)

    def _claim(
        self, applicant: Applicant, nonce: str, owner: str, *, lease: float, background=False
    ) -> Claim:
        """The journal row of this submission: new and leased to us, or someone else's."""
        return self.journal.claim(
            nonce,
            applicant.email,
            owner=owner,
            lease=lease,
            first_name=applicant.first_name,
            last_name=applicant.last_name,
            locale=applicant.locale,
            background=background,
        )

    def _queue(self, applicant: Applicant, nonce: str, owner: str, turn: float) -> Outcome | None:
        """Leave the signup to a backlog thread for its turn: Processing, or None if this
        nonce is someone else's already or the backlog is full."""
        if self.admission.backlog_full:
            return None
        claim = self._claim(applicant, nonce, owner, lease=turn + self.lease, background=True)
        if not claim.leased:
            return None
        signup = claim.signup
        self.admission.run_later(
            lambda: self._finish_later(signup, applicant, owner), starts_in=turn
        )
        return Processing(applicant.email)

    def _requeue(self, signup: Signup, applicant: Applicant, owner: str, later: Later) -> bool:
        """Finish a run in a backlog thread at its next turn, keeping the row leased till then:
        False if the backlog is full or the row is no longer ours."""
        if self.admission.backlog_full:
            return False
        lease = later.turn + self.lease
        if not self.journal.lease(signup.id, owner=owner, lease=lease, background=True):
            return False
        self.admission.run_later(
            lambda: self._finish_later(signup, applicant, owner, turns=later.calls),
            starts_in=later.turn,
        )
        return True

    def _finish_later(
        self, signup: Signup, applicant: Applicant, owner: str, turns: int | None = None
    ) -> None:
        """A queued signup, at its turn (in a backlog thread). The key is not shown here: the
        person's reload resends the form, and that request shows it (key_shown stays false)."""
        if not self.journal.lease(signup.id, owner=owner, lease=self.lease):
            return  # the person's reload is driving it already
        signup = self.journal.get(signup.id)
        if signup.finished:
            self.journal.release(signup.id, owner=owner)
            return
        # The calls reserved when the signup was queued: this is their turn.
        if turns is None:
            turns = self.admission.calls_per_signup
        # Queued: its turn came from a busy schedule, so its calls go one interval apart.
        spacing = self.admission.spacing()
        run = self._run(signup, owner=owner, retries=3, turns=turns, spacing=spacing)
        try:
            self._go(run, applicant)
        except Rejected as rejection:  # the run recorded it; the page was answered already
            if rejection.refusal:
                self.on_refusal(rejection.refusal)
        except SignupError:
            pass  # the run recorded what happened
        finally:
            if not run.released:
                self.journal.release(signup.id, owner=owner)
            self.on_mail()  # the key, or why there is none, goes out now

    # -- Showing the key ---------------------------------------------------------------------------

    def _by_email(self, outcome: Outcome) -> Outcome:
        """With KEY_DELIVERY=email the key is never on the page: it is in the outbox."""
        if not self.key_on_page and isinstance(outcome, Issued | AlreadyIssued):
            return CheckInbox(outcome.email, "key")
        return outcome

    def _present(self, signup: Signup, *, waited_for_it: bool, ends_at: float) -> Outcome:
        """A finished signup seen again. Its key is shown if it never was, or to a copy of the
        submission that arrived while it was being issued (the browser shows only the last
        response of a double click, so that one must carry the key)."""
        if (signup.key_shown and not waited_for_it) or not self.key_on_page:
            return AlreadyIssued(signup.email)
        key = self.sealer.unseal(signup.sealed_key) if self.sealer and signup.sealed_key else None
        if key is None:
            license = self._read_back(signup, ends_at)
            if license is None:
                return Processing(signup.email)  # Keygen's quota is taken: a reload shows it
            if license.key is None:  # shown once, and no sealed copy is left
                log.error(
                    "signup %s: Keygen shows the key of license %s only once, and no sealed "
                    "copy is left: it cannot be shown again",
                    signup.id,
                    signup.license_id,
                )
                return AlreadyIssued(signup.email)
            key = license.key
        if self.journal.mark_key_shown(signup.id):
            if signup.sealed_key:
                self.journal.wipe_sealed_key(signup.id)  # shown: no one will show it again
            return Issued(signup.email, key, signup.license_id, signup.id)
        if waited_for_it:
            return Issued(signup.email, key, signup.license_id, signup.id)
        return AlreadyIssued(signup.email)

    def seal(self, license: License) -> str | None:
        """A sealed copy of a key Keygen will not show again, for whatever still has to show
        or email it; None for a key Keygen shows on every read."""
        if license.key_readable_later or not license.key:
            return None
        if self.sealer is None:
            log.warning(
                "license %s: its key cannot be read again, and nothing seals it", license.id
            )
            return None
        return self.sealer.seal(license.key)

    def _read_back(self, signup: Signup, ends_at: float) -> License | None:
        """The issued license, to show its key: one more Keygen call, which waits for its turn
        within the deadline like any other (None: no turn in time). Turned away by Keygen's
        quota, it takes a new turn, after the window's reset."""
        not_before = 0.0
        while True:
            now = self.clock.monotonic()
            turn = self.admission.reserve_call(within=ends_at - now - 1.0)
            if turn is None:
                return None
            wait = max(not_before - now, turn)
            if wait > 0:
                self.clock.sleep(wait)
            try:
                return self.keygen.get_license(signup.license_id)
            except KeygenRateLimited as error:
                if self.clock.monotonic() + error.retry_after < ends_at:
                    not_before = self.clock.monotonic() + error.retry_after
                    continue
                problem: KeygenError = error
            except KeygenError as error:
                problem = error
            raise TryLater(f"signup {signup.id}: cannot read the issued license: {problem}")

    def _owner(self) -> str:
        return f"{self.worker_id}:{uuid.uuid4().hex[:8]}"  # threads of one process differ
