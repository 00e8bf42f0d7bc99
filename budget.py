"""The budget of Keygen calls that every worker and instance of the portal shares.

Keygen counts every call made with our product token from our address in one bucket
(keygen-api `config/initializers/rack_attack.rb`): in memory when the portal is one process, in
Redis (RATELIMIT_STORAGE_URI) when it is several. Keygen's own answers correct the budget: an
exhausted window (X-RateLimit-Remaining 0, or a 429's Retry-After) holds every turn until the
window resets.

The budget is a GCRA ("generic cell rate algorithm", the leaky bucket as a meter): calls are
spaced 1/rate apart, with a burst of ``burst`` calls. One float of state, the time at which the
schedule is next free, so the Redis version is one small script.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from keygen_api import MAX_QUOTA_WAIT

# A signup makes two Keygen calls (create the user, create the license), and with
# ONE_ACCOUNT_PER_PERSON a third before them (the lookup of the same person). A burst of exactly
# one signup keeps the calls evenly spaced: Keygen's windows are fixed, so any larger burst can
# put more than the quota into one window while the budget is running at its full rate.
CALLS_PER_SIGNUP = 2


def calls_per_signup(*, one_account_per_person: bool) -> int:
    """The Keygen calls of a signup's happy path, each of which takes a turn in the budget."""
    return CALLS_PER_SIGNUP + (1 if one_account_per_person else 0)


class BudgetUnavailable(Exception):
    """The shared budget (Redis) did not answer. Signups stop rather than go unmetered."""


class KeygenBudget:
    """The turns at which Keygen may be called, ``rate`` calls a second, in this process."""

    def __init__(
        self,
        rate: float,
        *,
        burst: int | None = None,
        signup_calls: int = CALLS_PER_SIGNUP,
        clock: Callable[[], float] = time.time,
    ):
        self.interval = 1.0 / rate
        self.signup_calls = signup_calls  # what reserve() takes unless told
        self.burst = signup_calls if burst is None else burst
        self._clock = clock
        self._free_at = 0.0  # when the schedule is next free (GCRA's "theoretical arrival time")
        self._lock = threading.Lock()

    def reserve(self, calls: int | None = None, *, within: float) -> float | None:
        """Reserve ``calls`` calls (a signup's, unless told): the seconds to wait before making
        the first, or None (and nothing reserved) if that wait would be longer than ``within``."""
        calls = self.signup_calls if calls is None else calls
        with self._lock:
            now = self._clock()
            free_at = max(self._free_at, now) + calls * self.interval
            wait = max(0.0, free_at - self.burst * self.interval - now)
            if wait > within:
                return None
            self._free_at = free_at
            return wait

    def hold_until(self, moment: float) -> None:
        """Keygen said its window is used up until ``moment`` (epoch seconds): no turn before."""
        with self._lock:
            self._free_at = max(self._free_at, self._hold(moment))

    def _hold(self, moment: float) -> float:
        moment = min(moment, self._clock() + MAX_QUOTA_WAIT)
        return moment + max(0, self.burst - self.signup_calls) * self.interval


# KEYS[1]: the schedule's key. ARGV: interval, calls, burst, within. Redis's clock (TIME) is the
# only clock, so instances whose clocks disagree still share one schedule. Numbers go back as
# strings: Redis would truncate a Lua number to an integer.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval, calls = tonumber(ARGV[1]), tonumber(ARGV[2])
local burst, within = tonumber(ARGV[3]), tonumber(ARGV[4])
local free_at = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now) + calls * interval
local wait = math.max(0, free_at - burst * interval - now)
if wait > within then return 'none' end
local ttl = math.ceil((free_at - now) * 1000) + 1000
redis.call('SET', KEYS[1], string.format('%.6f', free_at), 'PX', ttl)
return string.format('%.6f', wait)
"""

# KEYS[1]: the schedule's key. ARGV: seconds from Redis's now until the hold ends.
_HOLD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local until_ = now + tonumber(ARGV[1])
if until_ > tonumber(redis.call('GET', KEYS[1]) or '0') then
  redis.call('SET', KEYS[1], string.format('%.6f', until_), 'PX', math.ceil(ARGV[1] * 1000) + 1000)
end
return 1
"""


class RedisKeygenBudget(KeygenBudget):
    """The same schedule, kept in Redis, for every process and instance that shares it."""

    KEY = "portal:keygen-budget"

    def __init__(
        self,
        client,
        rate: float,
        *,
        burst: int | None = None,
        signup_calls: int = CALLS_PER_SIGNUP,
        clock=time.time,
    ):
        super().__init__(rate, burst=burst, signup_calls=signup_calls, clock=clock)
        self._reserve = client.register_script(_RESERVE)
        self._hold_script = client.register_script(_HOLD)

    def reserve(self, calls: int | None = None, *, within: float) -> float | None:
        calls = self.signup_calls if calls is None else calls
        args = [self.interval, calls, self.burst, within]
        answer = self._run(self._reserve, args)
        text = answer.decode() if isinstance(answer, bytes) else str(answer)
        return None if text == "none" else float(text)

    def hold_until(self, moment: float) -> None:
        self._run(self._hold_script, [max(0.0, self._hold(moment) - self._clock())])

    def _run(self, script, args):
        try:
            return script(keys=[self.KEY], args=args)
        except Exception as error:  # redis raises its own errors, or OSError underneath
            raise BudgetUnavailable(f"Keygen budget storage failed: {error!r}") from error


def budget_for(storage, rate: float, *, signup_calls: int = CALLS_PER_SIGNUP) -> KeygenBudget:
    """A budget in the rate-limit storage when it is shared (Redis), otherwise in memory."""
    connection = getattr(storage, "get_connection", None)
    if connection is None:
        return KeygenBudget(rate, signup_calls=signup_calls)
    return RedisKeygenBudget(connection(), rate, signup_calls=signup_calls)
