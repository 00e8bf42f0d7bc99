"""Admission to Keygen: when each signup may call Keygen, and whether it runs in the request,
waits for its turn, or is finished in the background.

A signup reserves its calls (budget.calls_per_signup) in the shared budget (budget.py) before it
starts and learns when it may make them; it waits that long (in the request, or queued in the
background) instead of being refused.

What signup.py sees: ``Admission`` (a signup's ``Ticket``, a ``seat`` to work in, the backlog)
and, for each run over a journal row, a ``Pacer`` (each call's turn, timeout and retry pause).
Both run on one injected ``Clock``, so tests can move time and record pauses.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from budget import CALLS_PER_SIGNUP, BudgetUnavailable, KeygenBudget
from keygen_api import KeygenCircuitOpen, KeygenError, KeygenRateLimited
from outcomes import SignupUnavailable, TooBusy

log = logging.getLogger(f"portal.{__name__}")


class Clock:
    """Time as the portal's workflow sees it: monotonic for deadlines, wall for the journal's
    leases and Keygen's windows, and sleeping. Tests pass one that moves and records."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class Busy(Exception):
    """No turn at Keygen, or no slot to work in, soon enough: the signup is turned away."""


class NotNow(Exception):
    """A call cannot be made in this run (out of attempts, time or turns): the row is left for
    the reconciler, to be looked at again after ``delay`` seconds."""

    def __init__(self, message: str, *, delay: float):
        self.delay = delay
        super().__init__(message)


class Later(Exception):
    """The next call's turn is ``turn`` seconds away, past this run's deadline; ``calls`` calls
    are reserved from then on, and the run may go on in the background."""

    def __init__(self, turn: float, calls: int):
        self.turn = turn
        self.calls = calls
        super().__init__(f"next turn at Keygen in {turn:.1f}s")


# -- What a signup sees --------------------------------------------------------------------------


@dataclass
class Ticket:
    """A signup's turn at Keygen, its calls reserved: ``at`` on the clock's monotonic time."""

    turn: float  # seconds from when it was given; 0 once waited out (or without a budget)
    at: float
    busy: bool = False  # the schedule had no burst left for it: its calls go one interval apart

    @property
    def pending(self) -> bool:
        return self.turn > 0

    def left(self, clock: Clock) -> float:
        return max(0.0, self.at - clock.monotonic())


class Admission:
    """Admits this process's signups: each gets a Ticket (its turn in the shared budget) and a
    seat (one of ``slots`` slots, so that a Keygen that stops answering cannot take every thread
    from the pages and /healthz). A turn within ``queue_wait`` seconds is waited for in the
    request; a later one, up to ``backlog`` seconds away, is finished in the background."""

    def __init__(
        self,
        budget: KeygenBudget | None,
        *,
        slots: int,
        queue_wait: float = 2.0,
        backlog: float = 60.0,
        clock: Clock | None = None,
        calls_per_signup: int = CALLS_PER_SIGNUP,
    ):
        self.budget = budget
        self.calls_per_signup = calls_per_signup  # reserved together by each signup's ticket
        self.slots = Bulkhead(slots)
        self.queue_wait = queue_wait
        self.backlog = backlog
        self.clock = clock or Clock()
        self._backlog = Backlog(slots)
        self._waiting = 0  # slot holders waiting for their turn at Keygen
        self._lock = threading.Lock()

    def ticket(self) -> Ticket:
        """A turn for a signup's calls, at most ``backlog`` seconds away: Busy beyond that,
        BudgetUnavailable when the shared budget does not answer."""
        return self._ticket(self.backlog)

    def must_queue(self, ticket: Ticket) -> bool:
        """Whether the turn is too far off for the request to wait for it."""
        return ticket.turn > self.queue_wait

    @property
    def backlog_full(self) -> bool:
        return self._backlog.full

    @property
    def backlog_idle(self) -> bool:
        """No signup queued or running in the background in this process."""
        return self._backlog.idle

    def run_later(self, job: Callable[[], None], *, starts_in: float) -> None:
        """Run ``job`` in a backlog thread, ``starts_in`` seconds from now (check backlog_full
        first)."""
        starts_at = self.clock.monotonic() + starts_in

        def at_its_turn() -> None:
            self.clock.sleep(max(0.0, starts_at - self.clock.monotonic()))
            job()

        self._backlog.submit(at_its_turn)

    @contextmanager
    def seat(self, ticket: Ticket | None = None) -> Iterator[bool]:
        """A slot to work in (True), waited for until the ticket's turn at most, or while slots
        flow; False when none came. Holding the slot, the rest of the turn is waited out:
        waiting signups must not take every thread from the pages either."""
        pending = ticket is not None and ticket.pending
        within = ticket.left(self.clock) if pending else Bulkhead.FLOWING
        slot = self.slots.acquire(within=within)
        missed = not slot and pending and not self._waiting
        if missed:
            # Every slot is taken by signups calling Keygen: its speed, not its quota, holds
            # them. Wait for a slot as a signup without a turn does, then take a new turn,
            # since this one will have passed.
            slot = self.slots.acquire(within=Bulkhead.FLOWING)
        if not slot:
            yield False
            return
        try:
            if missed:
                renewed = self._ticket(self.queue_wait)
                ticket.turn, ticket.at = renewed.turn, renewed.at
            if ticket is not None and ticket.pending:
                self._wait(ticket.left(self.clock))
                ticket.turn = 0.0
            yield True
        finally:
            self.slots.release()

    def quota_holds_slots(self, ticket: Ticket) -> bool:
        """Whether signups waiting for their turns hold the slots: then Keygen's quota, not its
        speed, is what keeps them busy, and a newcomer with a turn may wait in the backlog."""
        return ticket.pending and self._waiting > 0

    def reserve_call(self, *, within: float) -> float | None:
        """A turn for one call: seconds to wait, or None if none comes within ``within``."""
        if self.budget is None:
            return 0.0
        return self.budget.reserve(1, within=max(0.0, within))

    def _ticket(self, within: float) -> Ticket:
        turn = 0.0
        if self.budget is not None:
            reserved = self.budget.reserve(self.calls_per_signup, within=within)
            if reserved is None:
                raise Busy(f"no turn at Keygen within {within:g} s")
            turn = reserved
        return Ticket(turn, self.clock.monotonic() + turn, busy=turn > 0)

    def spacing(self, ticket: Ticket | None = None) -> float:
        """How far apart a signup's reserved calls go: one interval of the budget when the
        schedule is busy (a queued signup's always is). Back to back, a busy schedule's calls
        would bunch: with 3 calls a signup, four signups' calls could fall in one of Keygen's
        1 s windows (12 for a quota of 10)."""
        busy = ticket is None or ticket.busy
        return self.budget.interval if self.budget is not None and busy else 0.0

    def _wait(self, seconds: float) -> None:
        with self._lock:
            self._waiting += 1
        try:
            self.clock.sleep(seconds)
        finally:
            with self._lock:
                self._waiting -= 1


class Pacer:
    """The Keygen calls of one run over a signup: each at its turn in the budget and within the
    run's deadline, with capped, fully jittered pauses between attempts."""

    BACKOFF_BASE = 0.25
    BACKOFF_CAP = 4.0
    RESCHEDULE_CAP = 600.0  # the reconciler tries a row at least every ten minutes

    def __init__(
        self,
        admission: Admission,
        *,
        ends_at: float,
        timeout: tuple[float, float],
        retries: int,
        turns: int = 0,
        attempts: int = 0,
        spacing: float = 0.0,
        on_pause: Callable[[str, KeygenError, float], None] | None = None,
    ):
        self.admission = admission
        self.clock = admission.clock
        self.ends_at = ends_at
        self.connect, self.read = timeout
        self.retries = retries
        # Calls already reserved in the budget, at about now (the signup's turn). Any other call
        # takes a turn of its own: a retry, a lookup, the reconciler's pass.
        self.turns = turns
        self.spacing = spacing  # between reserved calls (Admission.spacing)
        self._reserved_at: float | None = None  # when the next reserved call may go
        self.attempts = attempts  # of earlier runs over the row: how far the reconciler backs off
        self.attempt = 0  # retries in this run
        self.not_before = 0.0  # Keygen's window is used up until then (a 429)
        self.on_pause = on_pause

    def take_turn(self, *, final: bool = False, backlog_calls: int = 0) -> None:
        """Wait for this call's turn in the budget, so that every call the portal makes,
        retries and lookups too, keeps to the quota's schedule. No turn before the deadline:
        NotNow. ``backlog_calls`` (a run holding the password) reserves that many calls
        together and raises Later when their turn is past the deadline. ``final`` calls
        (compensation) get a grace period: skipping them would strand a user."""
        budget = self.admission.budget
        if budget is None:
            wait = self.not_before - self.clock.monotonic()
        elif self.turns:
            self.turns -= 1
            self._reserved_call()
            return
        else:
            left = self.ends_at - self.clock.monotonic() - 1.0
            if final:
                left = max(left, self.connect + 1.0)
            later = backlog_calls > 0 and not final
            calls = backlog_calls if later else 1
            within = max(left, self.admission.backlog) if later else left
            try:
                turn = budget.reserve(calls, within=max(0.0, within))
            except BudgetUnavailable as error:
                raise NotNow(str(error), delay=self.backoff()) from None
            if turn is None:
                raise NotNow("no turn at Keygen before the deadline", delay=self.backoff())
            wait = max(turn, self.not_before - self.clock.monotonic())
            if later and wait > left:
                raise Later(wait, calls)
            if later:  # this call, then the rest of those reserved, each at its place
                self.turns = calls - 1
                self.spacing = self.admission.spacing() if wait > 0 else 0.0
                self._reserved_at = self.clock.monotonic() + max(0.0, wait) + self.spacing
        if wait > 0:
            self.clock.sleep(wait)

    def _reserved_call(self) -> None:
        """Wait for a reserved call's place in the schedule: the first goes at once, each next
        one ``spacing`` after the one before."""
        if not self.spacing:
            return
        now = self.clock.monotonic()
        if self._reserved_at is not None and self._reserved_at > now:
            self.clock.sleep(self._reserved_at - now)
            now = self._reserved_at
        self._reserved_at = now + self.spacing

    def timeout(self, *, final: bool = False) -> tuple[float, float]:
        """(connect, read) timeouts that fit in what is left of the deadline."""
        left = self.ends_at - self.clock.monotonic()
        if final:
            left = max(left, self.connect + 2.0)
        if left <= 0.05:
            raise NotNow("deadline reached", delay=self.backoff())
        return (min(self.connect, left), min(self.read, left))

    def pause(self, error: KeygenError, step: str) -> None:
        """Wait a capped, fully jittered backoff (or Keygen's Retry-After) before the next
        attempt, or raise NotNow when none fits. After a 429 the next attempt takes a turn of
        its own: a call Keygen turned away for its quota must not go at the window's reset
        together with every other one that was (they would use up the new window at once)."""
        self.attempt += 1
        rate_limited = isinstance(error, KeygenRateLimited)
        if rate_limited:
            pause = error.retry_after
        else:
            pause = random.uniform(0, min(self.BACKOFF_CAP, self.BACKOFF_BASE * 2**self.attempt))
        too_late = pause + min(1.0, self.connect) > self.ends_at - self.clock.monotonic()
        if self.attempt > self.retries or too_late or isinstance(error, KeygenCircuitOpen):
            delay = error.retry_after if rate_limited else self.backoff()
            raise NotNow(f"{step} failed: {error}", delay=delay)
        if self.on_pause is not None:
            self.on_pause(step, error, pause)
        self.turns = 0
        if rate_limited:
            self.not_before = self.clock.monotonic() + pause  # take_turn waits for it
        else:
            self.clock.sleep(pause)

    def backoff(self) -> float:
        """When the reconciler should look at the row again: capped, fully jittered."""
        return random.uniform(1.0, min(self.RESCHEDULE_CAP, 2.0 ** (self.attempts + 1)))


# -- Threads and slots --------------------------------------------------------------------------


class Backlog:
    """Signups whose turn is further off than a request may wait, finished by a few daemon
    threads. Turns are handed out in order, so first in, first out serves each at its turn.

    Daemon threads: a worker that exits drops what is still queued; those journal rows stay
    NEW until their lease runs out, and the person's reload (which resends the form) drives
    the signup itself. Nothing here is ever written anywhere, so the password stays in memory.
    """

    LIMIT = 500  # queued signups per process; the turns bound them too, but not when unmetered

    def __init__(self, threads: int):
        self.threads = threads
        self._queue: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._started = 0
        self._pending = 0  # submitted and not yet done
        self._lock = threading.Lock()

    @property
    def full(self) -> bool:
        return self._queue.qsize() >= self.LIMIT

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing running."""
        return self._pending == 0

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            while self._started < self.threads:  # started lazily: after gunicorn's fork
                self._started += 1
                name = f"signup-backlog-{self._started}"
                threading.Thread(target=self._work, name=name, daemon=True).start()
            self._pending += 1
        self._queue.put(job)

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            try:
                job()
            except Exception:  # one signup's failure must not stop the others
                log.exception("a queued signup failed")
            finally:
                with self._lock:
                    self._pending -= 1


class Bulkhead:
    """At most ``size`` signups of this process at work at once, so that a Keygen that stops
    answering cannot take every thread from the pages and /healthz.

    A signup that finds every slot taken waits for one only while signups are flowing, that is
    while some slot was given back in the last ``FLOWING`` seconds, or every slot was free
    that recently (a burst after a quiet spell): a slot then frees up within a fraction of a
    second, and the burst is served instead of being told "busy". While Keygen is stuck nobody
    gives a slot back, so a newcomer is answered at once.
    """

    FLOWING = 0.5  # seconds; also the longest a newcomer waits

    def __init__(self, size: int):
        self._size = size
        self._free = size
        self._given_back_at = -float("inf")
        self._busy_since = -float("inf")  # when a slot of an idle bulkhead was last taken
        self._changed = threading.Condition()

    def acquire(self, *, within: float = FLOWING) -> bool:
        """A slot (True), or False if none is free and none comes within ``within`` seconds
        (never longer than FLOWING, and only while slots are flowing)."""
        with self._changed:
            give_up_at = time.monotonic() + min(within, self.FLOWING)
            while self._free == 0:
                moving_at = max(self._given_back_at, self._busy_since)
                left = min(give_up_at, moving_at + self.FLOWING) - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            if self._free == self._size:
                self._busy_since = time.monotonic()
            self._free -= 1
            return True

    def release(self) -> None:
        with self._changed:
            self._free += 1
            self._given_back_at = time.monotonic()
            self._changed.notify()


@contextmanager
def turned_away() -> Iterator[None]:
    """Admission's refusals, as the signup errors the pages know."""
    try:
        yield
    except Busy as error:
        raise TooBusy(str(error)) from None
    except BudgetUnavailable as error:
        raise SignupUnavailable(str(error)) from None
