"""REQUIRE_EMAIL_VERIFICATION, email first: the form records the signup and queues the link,
with no Keygen call and no password; the link's page takes the password, and its button creates
the user and the license through the usual run. Part of SignupWorkflow (signup.py).
"""

from __future__ import annotations

import hashlib
import json
import uuid

from admission import turned_away
from journal import UNFINISHED, Signup, State
from outbox import Letter
from outcomes import (
    Applicant,
    CheckInbox,
    Issued,
    LinkUsed,
    Outcome,
    Processing,
    TooBusy,
)


class EmailFirst:
    """SignupWorkflow's steps for a verified address; they use its journal, admission and runs."""

    def request_verification(self, applicant: Applicant, nonce: str) -> Outcome:
        """REQUIRE_EMAIL_VERIFICATION: record the signup and queue the email, and nothing else:
        no Keygen call, no password. The courier finds out whether the address has an account
        when it writes the email (the link, or "you already have an account"), so every address
        gets this same answer. The same form sent again from this session with the same address
        is this signup again; with another address (a typo put right), a new one."""
        signup_id = str(uuid.uuid4())
        letter = Letter(
            kind="verify",
            email=applicant.email,
            ref=signup_id,
            first_name=applicant.first_name,
            last_name=applicant.last_name,
            dedupe=f"verify:{signup_id}",
            locale=applicant.locale,
        )
        self.journal.await_address(
            hashlib.sha256(f"{nonce}\n{applicant.email}".encode()).hexdigest(),
            signup_id=signup_id,
            email=applicant.email,
            expires_at=self.journal.clock() + self.link_lifetime,
            mail=(letter,),
            first_name=applicant.first_name,
            last_name=applicant.last_name,
            locale=applicant.locale,
            consent=json.dumps(applicant.consent) if applicant.consent else None,
        )
        return CheckInbox(applicant.email, "verify")

    def confirm(self, signup_id: str, password: str | None) -> Outcome:
        """The button on a verification link's page (whose signature and age the caller
        checked): create the user with the password chosen there, and the license, exactly once
        however often the link is used. Without a password, only show what the signup came to.
        An address that got an account meanwhile is Rejected, and told so: whoever presses the
        button controls it."""
        owner = self._owner()
        with turned_away(), self.admission.seat() as seated:
            if not seated:
                raise TooBusy("no free slot to issue a verified signup's license")
            started = password is not None and self.journal.start_verified(
                signup_id, owner=owner, lease=self.lease
            )
            if started:
                signup = self.journal.get(signup_id)
                applicant = _applicant(signup, password)
                ends_at = self.clock.monotonic() + self.deadline
                outcome = self._drive(signup, applicant, ends_at, owner, hides_taken=False)
                return self._by_email(outcome)
        signup = self.journal.find(signup_id)
        if signup is None:
            raise LinkUsed(f"signup {signup_id} is not in the journal")
        if signup.state == State.ISSUED:
            # Issued after an earlier click, by the reconciler, and never shown: show it now.
            ends_at = self.clock.monotonic() + self.deadline
            with turned_away():
                outcome = self._present(signup, waited_for_it=False, ends_at=ends_at)
            if isinstance(outcome, Issued):
                return outcome
        elif signup.state in UNFINISHED:
            return Processing(signup.email)
        raise LinkUsed(f"signup {signup.id} is {signup.state}")

    def link_state(self, signup_id: str) -> tuple[str, Signup | None]:
        """What a verification link's page offers, and the signup: "password" (choose it and
        press the button), "press" (the button alone: the signup is being finished, or its key
        waits to be shown), "taken" (the address had an account when the button was pressed),
        "expired" or "used"."""
        signup = self.journal.find(signup_id)
        if signup is None:
            return "used", None
        if signup.verify:
            # An earlier release created this user before the click, with the password the
            # submitter chose: never given a license; deleted at the reconciler's next pass.
            self.journal.retire_soon(signup.id)
            return "expired", signup
        if signup.state == State.ISSUED:
            return ("press" if self.key_on_page and not signup.key_shown else "used"), signup
        passwordless = (State.PENDING_VERIFICATION, State.NEW, State.ABANDONED, State.COMPENSATED)
        state = {
            **dict.fromkeys(passwordless, "password"),
            State.USER_CREATED: "press",
            State.REJECTED: "taken",
            State.EXPIRED: "expired",
        }.get(signup.state, "used")
        return state, signup


def _applicant(signup: Signup, password: str) -> Applicant:
    """A signup that waited for its address, with the password chosen on the link's page."""
    return Applicant(
        email=signup.email,
        password=password,
        first_name=signup.first_name or "",
        last_name=signup.last_name or "",
        consent=json.loads(signup.consent) if signup.consent else {},
        locale=signup.locale,
    )
