"""Keygen's refusals and failures as exceptions named after what the caller should do next.
Part of keygen_api (which re-exports them): the rest of the portal imports them from there.

KeygenUnavailable: no usable answer, try later (a POST may or may not have happened).
KeygenRejected: Keygen answered and refused; the same request will be refused again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import requests


@dataclass(frozen=True)
class Problem:
    """One of Keygen's 422 validation errors, in the portal's terms.

    ``field`` is the attribute or relationship in snake_case ("email", "first_name", "policy");
    ``kind`` is what is wrong with it ("taken", "invalid", "too_short", "too_long", "not_found").
    """

    field: str | None
    kind: str | None


class KeygenError(Exception):
    """Keygen did not do what was asked. Never carries the request body or the token."""

    edition: str | None = None  # "EE" or "CE": the answer's Keygen-Edition header
    permission: str | None = None  # for a 403 "lacks permission": the one the call needed

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        errors: list[dict] | None = None,
        request_id: str | None = None,
    ):
        self.status = status
        self.errors = errors or []
        self.request_id = request_id
        super().__init__(message)

    @property
    def code(self) -> str | None:
        return self.errors[0].get("code") if self.errors else None

    @property
    def pointer(self) -> str | None:
        return _pointer(self.errors[0]) if self.errors else None

    @classmethod
    def from_response(cls, response: requests.Response) -> KeygenError:
        document = json_or_none(response)
        errors = document.get("errors") if isinstance(document, dict) else None
        errors = [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []
        meta = document.get("meta") if isinstance(document, dict) else None
        request_id = (meta or {}).get("id") if isinstance(meta, dict) else None
        request_id = request_id or response.headers.get("X-Request-Id")
        error = cls(
            _describe(response.status_code, errors, request_id),
            status=response.status_code,
            errors=errors,
            request_id=request_id,
        )
        error.edition = response.headers.get("Keygen-Edition")
        return error

    @property
    def detail(self) -> str:
        return str(self.errors[0].get("detail") or "") if self.errors else ""

    @property
    def reason(self) -> str:
        """What Keygen's answer means for an operator, as a fixed word for logs, metrics and
        the doctor (see REASONS)."""
        return reason_of(self.status, self.errors)


class KeygenUnavailable(KeygenError):
    """No usable answer (network, timeout, 5xx, unreadable body). Trying later may work.

    A POST that ended here may or may not have happened: look before resending.
    """


class KeygenRateLimited(KeygenUnavailable):
    """429: wait ``retry_after`` seconds before calling Keygen again."""

    retry_after: float = 60.0

    @classmethod
    def from_response(cls, response: requests.Response) -> KeygenError:
        error = super().from_response(response)
        error.retry_after = seconds_until_quota_resets(response)
        return error


def seconds_until_quota_resets(response: requests.Response) -> float:
    """How long a 429 asks us to wait: Retry-After, or less when X-RateLimit-Reset (the epoch
    second the window ends) comes sooner. Retry-After counts whole seconds from Keygen's whole
    second, so with a 1 s window it always says 1 even when the window ends in 50 ms, and
    waiting it out would skip the next window too. A Reset already past on our clock (clocks
    differ) is ignored."""
    headers = response.headers
    try:
        wait = max(0.0, float(headers.get("Retry-After", "")))
    except ValueError:
        wait = 60.0
    try:
        until_reset = float(headers["X-RateLimit-Reset"]) - time.time()
    except (KeyError, ValueError):
        return wait
    return until_reset if 0.0 < until_reset < wait else wait


class KeygenCircuitOpen(KeygenUnavailable):
    """Keygen failed repeatedly just now, so this call was not even attempted. Fail fast."""


class KeygenRejected(KeygenError):
    """Keygen answered and refused; the same request will be refused again."""


class KeygenInvalid(KeygenRejected):
    """400/422: the data or the request's shape."""

    @property
    def problems(self) -> list[Problem]:
        """Keygen's validation errors (422); empty for a structural 400, which has no codes."""
        return [_problem(error) for error in self.errors if error.get("code")]


class KeygenAccessDenied(KeygenRejected):
    """401/402/403: the token, the policy's product or the plan. An operator must act."""


class KeygenSecondFactorNeeded(KeygenAccessDenied):
    """401 OTP_REQUIRED on signing in: the user has a second factor; ask for its code."""


class KeygenSecondFactorWrong(KeygenAccessDenied):
    """401 OTP_INVALID on signing in: the code was wrong, old or used already."""


class KeygenNotFound(KeygenRejected):
    """404: no such resource (or not visible to this token)."""


class KeygenConflict(KeygenRejected):
    """409, or 422 ID_CONFLICT: the resource already exists. Look it up."""


_REJECTIONS: dict[int, type[KeygenRejected]] = {
    400: KeygenInvalid,
    422: KeygenInvalid,
    401: KeygenAccessDenied,
    402: KeygenAccessDenied,
    403: KeygenAccessDenied,
    404: KeygenNotFound,
    409: KeygenConflict,
}


def error_for(response: requests.Response) -> KeygenError:
    """The exception for a response that is not the expected success."""
    status = response.status_code
    if status == 429:
        return KeygenRateLimited.from_response(response)
    if status >= 500 or status < 400:
        return KeygenUnavailable.from_response(response)
    error = _REJECTIONS.get(status, KeygenRejected).from_response(response)
    if status == 422 and error.code == "ID_CONFLICT":
        return KeygenConflict.from_response(response)
    return error


# What a refusal means, by KeygenError.reason. Each is an operator's problem except "invalid",
# "not_found" and "conflict" (the data), "rate_limited" and "unavailable" (try later).
REASONS = {
    "api_version": "Keygen does not know the API version asked for",
    "environment_unknown": "Keygen has no such environment",
    "environments_unsupported": "this Keygen (CE) has no environments",
    "token": "Keygen knows no such token (here)",
    "token_expired": "the token has expired",
    "payment_required": "the Keygen account is over its plan's limits",
    "subscription": "the Keygen account's subscription is not active",
    "permission": "the token lacks a permission",
    "host": "Keygen (or a proxy in front of it) does not serve this host name",
    "denied": "Keygen's policies refused the token",
    "no_route": "Keygen serves no such route under this host name",
    "account_required": "Keygen needs the account in the URL",
    "account_invalid": "a self-hosted Keygen serves another account",
    "account_unknown": "Keygen knows no such account",
    "not_found": "no such resource",
    "conflict": "the resource exists already",
    "invalid": "Keygen refused the request's data",
    "rate_limited": "too many requests",
    "unavailable": "no usable answer",
}
_LACKS_PERMISSION = "lacks permission to perform action"  # app/policies/application_policy.rb


def reason_of(status: int | None, errors: list[dict]) -> str:
    """Keygen's refusals told apart by status, code, title and detail, as keygen-api words
    them (app/controllers/application_controller.rb; concerns/current_account_constraints.rb;
    app/services/resolve_{account,environment}_service.rb; application_policy.rb)."""
    first = errors[0] if errors else {}
    code, title = first.get("code"), str(first.get("title") or "")
    detail = str(first.get("detail") or "")
    if status is None or status >= 500 or status < 400:
        return "unavailable"
    if status == 429:
        return "rate_limited"
    if status == 402:
        return "payment_required"
    if status == 409:
        return "conflict"
    by_code = {
        "INVALID_API_VERSION": "api_version",
        "ENVIRONMENT_INVALID": "environment_unknown",
        "ENVIRONMENT_NOT_SUPPORTED": "environments_unsupported",
        "TOKEN_EXPIRED": "token_expired",
    }
    if code in by_code:
        return by_code[code]
    if status == 401:
        return "token"
    if status == 403:
        if not errors:  # Rails' host authorization answers with an empty body
            return "host"
        if title == "Account does not have an active subscription":
            return "subscription"
        return "permission" if _LACKS_PERMISSION in detail else "denied"
    if status == 404:
        if detail.startswith("The requested endpoint was not found"):
            return "no_route"
        if detail == "account is required":
            return "account_required"
        if detail.startswith("account is invalid"):
            return "account_invalid"
        return "account_unknown" if detail.startswith("The requested account") else "not_found"
    return "invalid"


def _describe(status: int, errors: list[dict], request_id: str | None) -> str:
    """'422 EMAIL_TAKEN: has already been taken (request 6f1c…)' — no bodies, no secrets."""
    text = str(status)
    if errors:
        first = errors[0]
        label = first.get("code") or first.get("title") or ""
        text += f" {label}".rstrip()
        # A 404's detail repeats what was looked up (an email, a key): keep it out of logs.
        detail = first.get("detail") if status != 404 else None
        pointer = _pointer(first)
        if detail:
            text += f": {detail}"
        if pointer:
            text += f" at {pointer}"
    if request_id:
        text += f" (request {request_id})"
    return text


def _pointer(error: dict) -> str | None:
    source = error.get("source")
    return source.get("pointer") if isinstance(source, dict) else None


_KINDS = ("TAKEN", "INVALID", "TOO_SHORT", "TOO_LONG", "NOT_FOUND", "NOT_ALLOWED", "MISSING")


def _problem(error: dict) -> Problem:
    pointer = _pointer(error) or ""
    name = pointer.rsplit("/", 1)[-1] if pointer.startswith("/data/") else ""
    field_name = _snake(name) or None
    code = error.get("code") or ""
    kind = next((k.lower() for k in _KINDS if code.endswith("_" + k)), None)
    return Problem(field=field_name, kind=kind)


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name)


def json_or_none(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
