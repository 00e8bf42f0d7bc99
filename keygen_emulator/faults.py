"""Misbehaviour on purpose: injected faults, rate limits, dropped connections.

A fault (new_fault) makes requests to one route fail, stall, drop or garble their answer.
throttle() is Keygen's Rack::Attack (`config/initializers/rack_attack.rb`): an optional general
limit per (account, client, token), and 5 password attempts a minute per email on POST /tokens.
DropMiddleware closes a connection unanswered when a request asked for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import http
import socket
import time
from collections.abc import Callable
from typing import Any, Protocol

import flask

from keygen_emulator.errors import CONFLICT, Halt, error
from keygen_emulator.formats import basic_pair, token_from


class Emulator(Protocol):
    """What faults and limits need of the emulator's state (state.Emulator)."""

    epoch: int
    rate_limit: tuple[int, int] | None

    def clock(self) -> float: ...

    def count_hit(self, key: tuple, period: int, now: float) -> int: ...


class Call(Protocol):
    """What a fault needs of the request being answered (pipeline.Call)."""

    emu: Emulator
    id: str

    def process(self) -> flask.Response: ...

    def render(self, status: int, document: dict | None) -> flask.Response: ...

    def render_halt(self, halt: Halt) -> flask.Response: ...


ROUTES = (
    "ping",
    "me",
    "users.index",
    "users.create",
    "users.show",
    "users.destroy",
    "licenses.create",
    "licenses.index",
    "licenses.show",
    "licenses.destroy",
    "policies.show",
    "tokens.create",
    "tokens.destroy",
    "machines.index",
    "machines.show",
    "machines.destroy",
    "passwords.reset",
    "users.reset_password",
)
AUTH_LIMIT, AUTH_PERIOD = 5, 60
DROP_KEY = "keygen_emulator.drop"

_THROTTLED = (
    "Throttle limit has been reached for your IP address. Please slow down. "
    "See https://keygen.sh/docs/api/rate-limiting/ for more info."
)
_DEFAULT_DETAILS = {
    409: CONFLICT,  # a unique index's race (application_controller.rb, render_conflict)
    500: "Looks like something went wrong! Our engineers have been notified. "
    "If you continue to have problems, please contact support@keygen.sh.",
    503: "Our services are currently unavailable. Please try again later.",
}


def new_fault(
    route: str,
    *,
    status: int | None = None,
    errors: list | None = None,
    delay: float = 0.0,
    when: str = "before",
    drop: bool = False,
    garbled: bool = False,
    retry_after: int | None = None,
    times: int | None = 1,
) -> dict:
    """A fault for the next `times` requests to `route` (None: all of them).

    `when` says whether the request is handled ("after") or not ("before") before the delay,
    the drop or the `status` answer (with `errors`, or Keygen's default error for it).
    `retry_after` answers 429 as the rate limiter would; `garbled` cuts the body in half.
    """
    if route not in ROUTES:
        raise ValueError(f"unknown route {route!r}; one of {', '.join(ROUTES)}")
    if when not in ("before", "after"):
        raise ValueError("when must be 'before' or 'after'")
    if status is not None and not 100 <= int(status) <= 599:
        raise ValueError("status must be an HTTP status code")
    if times is not None and int(times) < 1:
        raise ValueError("times must be at least 1, or None for ever")
    if float(delay) < 0 or (retry_after is not None and int(retry_after) < 0):
        raise ValueError("delay and retry_after cannot be negative")
    return {
        "status": None if status is None else int(status),
        "errors": errors,
        "delay": float(delay),
        "when": when,
        "drop": bool(drop),
        "garbled": bool(garbled),
        "retry_after": None if retry_after is None else int(retry_after),
        "times": None if times is None else int(times),
    }


class Drop(Exception):
    """Close the client's connection without an answer."""


class Dropped(ConnectionAbortedError):
    """Raised after closing a connection on purpose; werkzeug ignores dropped connections."""


# -- Applying a fault to one request ------------------------------------------------------------


def answer_with_fault(call: Call, fault: dict, epoch: int) -> flask.Response:
    """The answer to `call` under `fault`; raises Drop when the connection is to be dropped."""
    before = fault["when"] == "before" or fault["retry_after"] is not None
    if before:
        _pause(call.emu, fault["delay"], epoch)
    if fault["retry_after"] is not None:
        now = call.emu.clock()
        headers = rate_headers("1m", 61, 60, 60, now)
        headers["X-RateLimit-Reset"] = str(int(now) + fault["retry_after"])
        return call.render_halt(throttled(headers, fault["retry_after"]))
    if before and fault["drop"]:
        raise Drop
    if before and fault["status"] is not None:
        return _injected(call, fault)
    response = call.process()
    if not before:
        _pause(call.emu, fault["delay"], None)
        if fault["drop"]:
            raise Drop
        if fault["status"] is not None:
            return _injected(call, fault)
    if fault["garbled"]:
        body = response.get_data()
        response.set_data(body[: len(body) // 2] or b'{"data": {"id": ')
    return response


def _pause(emulator: Emulator, delay: float, epoch: int | None) -> None:
    if delay > 0:
        time.sleep(delay)
        if epoch is not None and epoch != emulator.epoch:
            raise Drop  # reset() ran meanwhile: this request belongs to an earlier test


def _injected(call: Call, fault: dict) -> flask.Response:
    status = fault["status"]
    if status == 429:
        now = call.emu.clock()
        return call.render_halt(throttled(rate_headers("1m", 61, 60, 60, now), 60))
    phrase = http.HTTPStatus(status).phrase.capitalize()
    errors = fault["errors"] or [error(phrase, _DEFAULT_DETAILS.get(status, phrase))]
    return call.render(status, {"meta": {"id": call.id}, "errors": errors})


# -- Rate limits --------------------------------------------------------------------------------


def throttle(emulator: Emulator, request: flask.Request, account: str, route: str | None) -> dict:
    """The X-RateLimit-* headers for this request; raises a 429 Halt past a limit."""
    now = emulator.clock()
    client = request.remote_addr or ""
    authorization = request.headers.get("Authorization", "")
    headers: dict = {}
    if emulator.rate_limit:
        limit, period = emulator.rate_limit
        bucket = hashlib.sha256(token_from(authorization).encode()).hexdigest()
        count = emulator.count_hit(("req", account, client, bucket), period, now)
        window = f"{period // 60}m" if period % 60 == 0 else f"{period}s"
        headers = rate_headers(window, count, limit, period, now)
        if count > limit:
            raise throttled(headers, period - int(now) % period)
    if route == "tokens.create":
        scheme, _, credentials = authorization.strip().partition(" ")
        pair = basic_pair(credentials.strip()) if scheme.lower() == "basic" else None
        if pair:
            key = ("auth", account, client, pair[0].lower())
            count = emulator.count_hit(key, AUTH_PERIOD, now)
            if count > AUTH_LIMIT:
                auth_headers = rate_headers("auth", count, AUTH_LIMIT, AUTH_PERIOD, now)
                raise throttled(auth_headers, AUTH_PERIOD - int(now) % AUTH_PERIOD)
    return headers


def rate_headers(window: str, count: int, limit: int, period: int, now: float) -> dict:
    start = int(now) - int(now) % period
    return {
        "X-RateLimit-Window": window,
        "X-RateLimit-Count": str(count),
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(max(0, limit - count)),
        "X-RateLimit-Reset": str(start + period),
    }


def throttled(headers: dict, retry_after: int) -> Halt:
    errors = [error("Too many requests", _THROTTLED, "TOO_MANY_REQUESTS")]
    headers = {**headers, "Retry-After": str(retry_after)}
    return Halt(429, errors, headers=headers, middleware=True)


# -- Dropping connections -----------------------------------------------------------------------


class DropMiddleware:
    """Closes the client's connection unanswered when a request asked for it (fault injection)."""

    def __init__(self, wsgi_app: Callable) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict, start_response: Callable) -> Any:
        result = self.wsgi_app(environ, start_response)
        if not environ.get(DROP_KEY):
            return result
        if hasattr(result, "close"):
            result.close()
        connection = environ.get("werkzeug.socket")
        if connection is not None:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()
        raise Dropped("connection dropped on purpose")
