"""The reconciler: finishes or undoes every signup a request could not finish.

After a crash, a deploy or a Keygen outage, journal rows are left unfinished. The reconciler
leases each due row (so that any number of processes and instances can run it side by side) and
drives it forward with the workflow, or compensates when a license cannot be issued. It also
marks email verifications nobody completed in time expired, and forgets the personal data of
signups and emails older than DATA_RETENTION_DAYS. It runs as a thread in each portal process,
and as `flask reconcile` for operators.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from dataclasses import dataclass, field

import logs
from journal import Journal, Signup, State
from signup import SignupWorkflow

log = logging.getLogger(f"portal.{__name__}")


@dataclass
class Report:
    worked: dict[str, str] = field(default_factory=dict)  # signup id -> state it reached
    skipped: int = 0  # due, but another worker leased it first
    stale: list[Signup] = field(default_factory=list)  # unfinished for too long

    def lines(self) -> list[str]:
        lines = [f"{signup_id}: {state}" for signup_id, state in self.worked.items()]
        for s in self.stale:
            since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(s.created_at))
            lines.append(
                f"STALE {s.id}: {s.state} since {since} "
                f"({s.attempts} attempts; last error: {s.last_error or '-'})"
            )
        return lines


class Reconciler:
    WIPE_EVERY = 600.0  # seconds between sweeps of shown sealed keys

    def __init__(
        self,
        journal: Journal,
        workflow: SignupWorkflow,
        *,
        interval: float = 30.0,
        stale_after: float = 900.0,
        retention: float = 30 * 86400.0,
        sign_ins=None,
    ):
        self.journal = journal
        self.workflow = workflow
        self.interval = interval
        self.stale_after = stale_after
        self.retention = retention  # seconds personal data is kept (DATA_RETENTION_DAYS)
        self.sign_ins = sign_ins  # accounts.SelfService: expired sign-ins end at each pass
        self._forgot_at = -float("inf")
        self.owner = f"reconciler:{workflow.worker_id}:{uuid.uuid4().hex[:6]}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wiped_at = float("-inf")

    def run_once(self, *, dry_run: bool = False) -> Report:
        report = Report(stale=self.journal.unfinished_older_than(self.stale_after))
        for signup in self.journal.due():
            if dry_run:
                report.worked[signup.id] = f"{signup.state} (would {_plan(signup)})"
                continue
            if not self.journal.lease(signup.id, owner=self.owner, lease=self.workflow.lease):
                report.skipped += 1
                continue
            try:
                leased = self.journal.get(signup.id)
                report.worked[signup.id] = self.workflow.resume(leased, owner=self.owner)
            except Exception:
                log.exception("reconciler: signup %s failed unexpectedly", signup.id)
            finally:
                self.journal.release(signup.id, owner=self.owner)
        for signup in [] if dry_run else self.journal.unverified_due():
            # REQUIRE_EMAIL_VERIFICATION: free the address of a verification never completed.
            verifying = (State.PENDING_VERIFICATION,)
            lease = self.workflow.lease
            if not self.journal.lease(signup.id, owner=self.owner, lease=lease, states=verifying):
                report.skipped += 1
                continue
            try:
                leased = self.journal.get(signup.id)
                if leased.state == State.PENDING_VERIFICATION:  # not clicked meanwhile
                    report.worked[signup.id] = self.workflow.expire(leased, owner=self.owner)
            except Exception:
                log.exception("reconciler: signup %s failed unexpectedly", signup.id)
            finally:
                self.journal.release(signup.id, owner=self.owner)
        if not dry_run:
            self.wipe_shown_keys()
            self.forget_old_data()
            if self.sign_ins is not None:
                self.sign_ins.sweep()  # revokes the Keygen token of each expired sign-in
        for signup in report.stale:
            log.warning(
                "reconciler: signup %s is still %s after %.0fs (%d attempts): %s",
                signup.id,
                signup.state,
                self.journal.clock() - signup.created_at,
                signup.attempts,
                signup.last_error or "-",
            )
        return report

    def wipe_shown_keys(self) -> None:
        """Wipe the sealed keys (sealing.py) of signups shown long enough ago that no copy of
        the submission can be waiting to show them again. Every WIPE_EVERY seconds: it reads
        the whole table, where the rest of a pass reads only unfinished rows."""
        now = self.journal.clock()
        if now - self._wiped_at < self.WIPE_EVERY:
            return
        self._wiped_at = now
        self.journal.wipe_shown_keys(older_than=self.workflow.lease)

    FORGET_EVERY = 3600.0  # seconds; retention is counted in days

    def forget_old_data(self) -> None:
        """DATA_RETENTION_DAYS: at most once an hour in this process (any process may do it)."""
        now = self.journal.clock()
        if now - self._forgot_at < self.FORGET_EVERY:
            return
        self._forgot_at = now
        signups, emails = self.journal.forget(before=now - self.retention)
        if signups or emails:
            log.info(
                "reconciler: forgot the addresses and names of %d signup(s) and deleted %d "
                "email(s) older than %.0f days",
                signups,
                emails,
                self.retention / 86400,
            )

    def start(self) -> None:
        """Run in the background until stop(); the first pass comes soon after start."""
        self._thread = threading.Thread(target=self._loop, name="reconciler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        wait = random.uniform(0.5, 2.0)  # processes started together should not run in step
        while not self._stop.wait(wait):
            try:
                with logs.scope("reconcile"):
                    self.run_once()
            except Exception:
                log.exception("reconciler: pass failed; trying again later")
            wait = self.interval * random.uniform(0.8, 1.2)


def _plan(signup: Signup) -> str:
    if signup.state == State.NEW:
        return "look the user up, then issue the license or mark it abandoned"
    return "issue the license, or delete the user if Keygen refuses it"
