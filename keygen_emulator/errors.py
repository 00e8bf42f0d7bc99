"""Halt, and the error objects Keygen answers with: titles, details, codes, sources, links.

Shapes follow `app/controllers/application_controller.rb` (`render_*`) and, for 422 codes,
`lib/keygen/jsonapi/errors.rb` (`"#{attribute}_#{error_type}".upcase`).
"""

from __future__ import annotations

from typing import Any

from keygen_emulator.formats import camel, pointer

DOCS = "https://keygen.sh/docs/api"
UNAUTHENTICATED = "You must be authenticated to complete the request"
DENIED_ANONYMOUS = (
    "You do not have permission to complete the request "
    "(ensure a token or license is present and valid)"
)
DENIED_BEARER = (
    "You do not have permission to complete the request "
    "(ensure the token or license is allowed to access all resources)"
)
DENIED_OTHER_PRODUCT = (
    "You do not have permission to complete the request (user cannot belong to another product)"
)
CONFLICT = "The request could not be completed because of a conflict"
NO_ENDPOINT = (
    "The requested endpoint was not found (check your HTTP method, Accept header, and URL path)"
)


class Halt(Exception):
    """Stops a request with a finished error answer."""

    def __init__(self, status: int, errors: list, *, headers=None, middleware=False) -> None:
        super().__init__(status)
        self.status = status
        self.errors = errors
        self.headers = headers or {}
        self.middleware = middleware  # Rack-level: no meta, no Keygen-* headers


def error(title: str, detail: str | None = None, code: str | None = None, **source) -> dict:
    item: dict[str, Any] = {"title": title}
    if detail:
        item["detail"] = detail
    if code:
        item["code"] = code
    if source:
        item["source"] = source
    return item


def bad_param(detail: str, path: list) -> Halt:
    return Halt(400, [error("Bad request", detail, pointer=pointer(path))])


def bad_request(detail: str, code: str) -> Halt:
    return Halt(400, [error("Bad request", detail, code)], middleware=True)


def not_found(model: str, ident: str) -> Halt:
    detail = f"The requested {model} '{ident}' was not found"
    return Halt(404, [error("Not found", detail, "NOT_FOUND")])


def forbidden(detail: str) -> Halt:
    return Halt(403, [error("Access denied", detail)])


def forbidden_because(reason: str) -> Halt:
    """A policy's `deny!` with a reason (`rescue ActionPolicy::Unauthorized`)."""
    return forbidden(f"You do not have permission to complete the request ({reason})")


def unauthorized(code: str, detail: str = UNAUTHENTICATED, **source) -> Halt:
    item = error("Unauthorized", detail, code, **source)
    if not source:
        anchor = "" if code == "TOKEN_MISSING" else "#token-authentication"
        item["links"] = {"about": f"{DOCS}/authentication/{anchor}"}
    return Halt(401, [item], headers={"WWW-Authenticate": 'Bearer realm="keygen"'})


def invalid(resource: str, name: str, detail: str, code: str, *, relationship=False) -> dict:
    """A 422 error item, with the docs link Keygen gives each attribute and relationship."""
    section, kind = ("relationships", "relationships") if relationship else ("attributes", "attrs")
    where = "/data/id" if name == "id" else f"/data/{section}/{camel(name)}"
    item = error("Unprocessable resource", detail, code, pointer=where)
    item["links"] = {"about": f"{DOCS}/{resource}/#{resource}-object-{kind}-{camel(name)}"}
    return item


def too_long(resource: str, name: str, maximum: int) -> dict:
    detail = f"is too long (maximum is {maximum} characters)"
    return invalid(resource, name, detail, f"{name.upper()}_TOO_LONG")
