"""Failing fast while Keygen fails: the circuit breaker, and the gate that keeps every thread
from calling Keygen before the time its last 429 (Retry-After) named. Part of keygen_api, which
re-exports them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from keygen_errors import KeygenCircuitOpen, KeygenRateLimited


class CircuitBreaker:
    """Stops calling Keygen after ``threshold`` failures in a row, for ``cooldown`` seconds.

    Then one probe call is let through (half-open): success closes the circuit, failure opens
    it again. While open, callers fail at once instead of tying up a thread for a timeout.
    """

    def __init__(
        self,
        threshold: int = 5,
        cooldown: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> str:
        with self._lock:
            if self._opened_at is None:
                return "closed"
            if self._clock() - self._opened_at >= self.cooldown:
                return "half-open"
            return "open"

    def before_call(self) -> None:
        with self._lock:
            if self._opened_at is None:
                return
            if self._clock() - self._opened_at < self.cooldown or self._probing:
                raise KeygenCircuitOpen("Keygen is failing; not calling it for now")
            self._probing = True

    def succeeded(self) -> None:
        with self._lock:
            self._failures, self._opened_at, self._probing = 0, None, False

    def failed(self) -> None:
        with self._lock:
            self._failures += 1
            if self._probing or self._failures >= self.threshold:
                self._opened_at = self._clock()
            self._probing = False


class RetryAfterGate:
    """Remembers Keygen's Retry-After, so that no thread calls it again before that time."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._not_before = 0.0
        self._lock = threading.Lock()

    def before_call(self) -> None:
        wait = self._not_before - self._clock()
        if wait > 0:
            error = KeygenRateLimited(f"429 (waiting {wait:.1f}s more as Keygen asked)", status=429)
            error.retry_after = wait
            raise error

    def rate_limited(self, retry_after: float) -> None:
        with self._lock:
            self._not_before = max(self._not_before, self._clock() + retry_after)
