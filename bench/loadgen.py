"""Load for the benchmark: the real signup flow, open loop, timed from the scheduled start.

A flow is what a person's browser does: GET the form, read its hidden fields (the CSRF token and
whatever else the form carries) and the session cookie, then POST the filled-in form with them.
`open_loop` starts flows at a fixed arrival rate whatever happened to earlier ones, and times
each from the moment it *should* have started, so a slow server (or a slow load generator) shows
up as latency instead of silently lowering the rate: no coordinated omission.

Outcomes of a flow: "key" (the page shows a license key), "processing" (202), "ok" (another
200 page), the POST's status for other answers ("422", "503", ...), "get_error" (no usable
form), "conn_error", "timeout" (no answer before the flow's or the phase's bound).
"""

from __future__ import annotations

import asyncio
import html
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp

INPUT_TAG = re.compile(r"<input\b[^>]*>", re.IGNORECASE)
ATTRIBUTE = re.compile(r'([a-zA-Z_:][-\w:.]*)\s*=\s*"([^"]*)"')
KEY_MARK = 'id="license-key"'
SUCCESS = ("key", "processing", "ok")
EARLY_WAKE = 0.002  # seconds: more than a short sleep overruns (see _sleep_until)


@dataclass
class Flow:
    scheduled: float  # time.monotonic() when the flow should have started
    outcome: str = "timeout"
    status: int | None = None
    get_seconds: float | None = None  # the GET, from the scheduled start
    done: float | None = None  # time.monotonic() when the POST's answer was read

    @property
    def latency(self) -> float | None:
        return None if self.done is None else self.done - self.scheduled


@dataclass
class Probe:
    scheduled: float
    latency: float | None = None  # None: no answer within the probe's timeout
    status: int | None = None


@dataclass
class Result:
    flows: list[Flow] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0
    max_lag: float = 0.0  # how late the generator started a flow, at worst

    def outcomes(self) -> Counter[str]:
        return Counter(flow.outcome for flow in self.flows)

    def errors(self) -> int:
        """Flows that ended in anything but success: error pages, connection errors, timeouts."""
        return sum(1 for flow in self.flows if flow.outcome not in SUCCESS)

    def issued(self) -> list[Flow]:
        return [flow for flow in self.flows if flow.outcome == "key"]

    def completed_between(self, start: float, end: float, outcome: str = "key") -> int:
        return sum(
            1
            for flow in self.flows
            if flow.outcome == outcome and flow.done is not None and start <= flow.done < end
        )


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


def hidden_fields(page: str) -> dict[str, str]:
    """name -> value of every hidden input of the page (the form has only one form)."""
    fields = {}
    for tag in INPUT_TAG.findall(page):
        attributes = {name.lower(): value for name, value in ATTRIBUTE.findall(tag)}
        if attributes.get("type", "").lower() == "hidden" and attributes.get("name"):
            fields[html.unescape(attributes["name"])] = html.unescape(attributes.get("value", ""))
    return fields


def cookie_header(response: aiohttp.ClientResponse) -> str:
    pairs = [value.split(";", 1)[0].strip() for value in response.headers.getall("Set-Cookie", [])]
    return "; ".join(pair for pair in pairs if "=" in pair)


def new_session(connections: int = 0) -> aiohttp.ClientSession:
    """A client without a cookie jar (flows carry their own cookie). Every request opens its
    own loopback connection, as a crowd of separate browsers would, and no request can meet a
    connection the server is just closing."""
    connector = aiohttp.TCPConnector(limit=connections, force_close=True)
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        headers={"User-Agent": "keygen-portal-bench/1"},
    )


class SignupClient:
    """Runs signup flows against one server (the portal or the naive baseline)."""

    def __init__(self, session: aiohttp.ClientSession, url: str, *, prefix: str, password: str):
        self.session = session
        self.url = url.rstrip("/") + "/"
        self.prefix = prefix
        self.password = password
        self.count = 0

    def next_email(self) -> str:
        self.count += 1
        return f"{self.prefix}-{self.count}@example.com"

    async def flow(self, scheduled: float, timeout: float) -> Flow:
        """One signup, bounded by `timeout` seconds from its scheduled start."""
        flow = Flow(scheduled)
        left = scheduled + timeout - time.monotonic()
        if left <= 0:
            return flow
        try:
            await asyncio.wait_for(self._flow(flow), left)
        except TimeoutError:
            flow.outcome = "timeout"
        except (aiohttp.ClientError, OSError):
            flow.outcome = "conn_error"
        return flow

    async def _flow(self, flow: Flow) -> None:
        async with self.session.get(self.url) as response:
            page = await response.text()
            cookie = cookie_header(response)
            status = response.status
        flow.get_seconds = time.monotonic() - flow.scheduled
        form = hidden_fields(page) if status == 200 else {}
        if "csrf_token" not in form:
            flow.outcome, flow.status = "get_error", status
            flow.done = time.monotonic()
            return
        form.update(
            first_name="Bench",
            last_name="Mark",
            email=self.next_email(),
            password=self.password,
        )
        headers = {"Cookie": cookie, "Referer": self.url} if cookie else {"Referer": self.url}
        async with self.session.post(self.url, data=form, headers=headers) as response:
            page = await response.text()
            flow.status = response.status
        flow.done = time.monotonic()
        if flow.status == 200:
            flow.outcome = "key" if KEY_MARK in page else "ok"
        elif flow.status == 202:
            flow.outcome = "processing"
        else:
            flow.outcome = str(flow.status)


async def _sleep_until(moment: float) -> None:
    """Wake at `moment`, not a millisecond later: the kernel lets a sleep of d seconds overrun
    by d/1000 (timer slack) and the selector rounds up to whole milliseconds, which would put
    ~1 ms of the generator's own lag into every latency at 2 arrivals a second. So sleep to
    just short of it, then yield to the loop until it comes."""
    delay = moment - time.monotonic()
    if delay > EARLY_WAKE:
        await asyncio.sleep(delay - EARLY_WAKE - delay / 1000)
    while time.monotonic() < moment:
        await asyncio.sleep(0)


async def open_loop(
    client: SignupClient,
    *,
    rate: float,
    duration: float,
    timeout: float,
    drain: float,
    start: float | None = None,
) -> Result:
    """Start rate × duration flows at fixed intervals; wait at most `drain` seconds after the
    last arrival for the stragglers (they count as timeouts)."""
    result = Result()
    start = start if start is not None else time.monotonic() + 0.05
    result.started = start
    count = max(1, round(rate * duration))
    tasks: list[asyncio.Task] = []
    for index in range(count):
        scheduled = start + index / rate
        await _sleep_until(scheduled)
        result.max_lag = max(result.max_lag, time.monotonic() - scheduled)
        tasks.append(asyncio.create_task(client.flow(scheduled, timeout)))
    await _gather_bounded(tasks, drain)
    result.flows = [_flow_of(task, start + i / rate) for i, task in enumerate(tasks)]
    result.ended = start + duration
    return result


async def closed_loop(
    client: SignupClient, *, users: int, duration: float, timeout: float, drain: float
) -> Result:
    """`users` people, each starting a new signup as soon as the last one ends."""
    result = Result()
    start = time.monotonic()
    end = start + duration
    result.started, result.ended = start, end

    async def person() -> None:
        while time.monotonic() < end:
            result.flows.append(await client.flow(time.monotonic(), timeout))

    await _gather_bounded([asyncio.create_task(person()) for _ in range(users)], duration + drain)
    return result


async def probe_loop(
    session: aiohttp.ClientSession, url: str, *, rate: float, duration: float, timeout: float
) -> list[Probe]:
    """GET `url` at a fixed rate (open loop), each probe bounded by `timeout`."""
    start = time.monotonic() + 0.01
    probes: list[Probe] = []

    async def one(probe: Probe) -> None:
        try:
            async with asyncio.timeout(timeout):
                async with session.get(url) as response:
                    await response.read()
                    probe.status = response.status
            probe.latency = time.monotonic() - probe.scheduled
        except (TimeoutError, aiohttp.ClientError, OSError):
            probe.latency = None

    tasks = []
    for index in range(max(1, round(rate * duration))):
        probe = Probe(start + index / rate)
        probes.append(probe)
        await _sleep_until(probe.scheduled)
        tasks.append(asyncio.create_task(one(probe)))
    await _gather_bounded(tasks, timeout + 1)
    return probes


async def _gather_bounded(tasks: list[asyncio.Task], seconds: float) -> None:
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=max(0.0, seconds))
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=5)


def _flow_of(task: asyncio.Task, scheduled: float) -> Flow:
    if task.done() and not task.cancelled() and task.exception() is None:
        return task.result()
    return Flow(scheduled, outcome="timeout")


async def run_with(
    factory: Callable[[aiohttp.ClientSession], Awaitable[Result]], connections: int = 0
) -> Result:
    async with new_session(connections) as session:
        return await factory(session)
