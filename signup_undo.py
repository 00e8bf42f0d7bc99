"""Undoing a signup that cannot be completed: deleting the user it created when no license can
be issued (compensation), keeping the row for an operator when Keygen refuses that for good, and
expiring a verification nobody completed (rows of an earlier release had a user to delete).
Part of SignupRun (signup_run.py): these steps share its journal row, its pacing and its log.
"""

from __future__ import annotations

from admission import NotNow, Pacer
from diagnosis import refused_for_good, why_kept
from journal import State
from keygen_api import KeygenError, KeygenNotFound


class Refused(Exception):
    """Keygen refused for good to delete a user (diagnosis.refused_for_good)."""

    def __init__(self, error: KeygenError):
        self.error = error
        super().__init__(str(error))


class Undoing:
    """SignupRun's steps that undo; they use its record, take_turn, pacer, log and keygen."""

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
        except Refused as refused:
            self.kept(refused.error)
            return
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
            if refused_for_good(error):
                raise Refused(error) from None
            delay = self.pacer.backoff()
            raise NotNow(f"cannot remove the unverified user: {error}", delay=delay) from None

    def compensate(self, user_id: str) -> None:
        """Delete the user we created, so their email is free for the next attempt."""
        self.take_turn(final=True)
        try:
            self.keygen.delete_user(user_id, timeout=self.pacer.timeout(final=True))
        except KeygenNotFound:
            pass
        except KeygenError as error:
            if refused_for_good(error):
                self.kept(error)
                return
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

    def kept(self, error: KeygenError) -> None:
        """Keygen will not delete our user, and asking again will not change its mind: keep the
        row (KEPT) for an operator, instead of asking again and again."""
        self.log.error(
            "signup %s: Keygen refused to delete user %s (%s): %s. It stays in Keygen without "
            "a license of this product; delete it there if it should go.",
            self.id,
            self.signup.user_id,
            error,
            why_kept(error),
            extra={"keygen_request_id": error.request_id, "keygen_reason": "delete_refused"},
        )
        self.record(
            state=State.KEPT, last_error=f"Keygen refused to delete the user: {error}"[:500]
        )
        self.workflow.on_operator_problem("delete_refused")
