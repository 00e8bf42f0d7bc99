"""One error page for every status, and the handlers that choose it."""

from __future__ import annotations

import logging

from flask import Flask, current_app, g, render_template, request
from flask_babel import lazy_gettext as _l
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException, SecurityError

log = logging.getLogger(f"portal.{__name__}")

ERRORS = {
    400: (
        _l("Something went wrong with that request"),
        _l("Please go back, reload the page and try again."),
    ),
    403: (_l("Not allowed"), _l("This form can only be sent from its own page.")),
    404: (_l("Page not found"), _l("There is nothing at this address.")),
    405: (_l("Not allowed"), _l("This page does not accept that kind of request.")),
    413: (_l("Too much data"), _l("That submission was larger than a signup can be.")),
    429: (_l("Too many attempts"), _l("Please wait a minute before trying again.")),
    500: (_l("Something went wrong on our side"), _l("Please try again in a minute.")),
    503: (
        _l("We could not finish your signup"),
        _l(
            "Our licensing service did not respond in time. Nothing was created; "
            "please try again in a minute."
        ),
    ),
}
UNAVAILABLE = (
    _l("Signup is unavailable right now"),
    _l(
        "We could not create your license because of a problem on our side. "
        "We have been notified; please try again later."
    ),
)
BUSY = (
    _l("We are very busy right now"),
    _l("Too many signups are in progress. Nothing was created; please try again in a minute."),
)
EXPIRED_FORM = (
    _l("This form has expired"),
    _l(
        "For your security, the signup form is only valid for a limited time. "
        "Please go back, reload the page and submit it again."
    ),
)


# Self-service (account_views.py, reset_views.py).
ACCOUNT_UNAVAILABLE = (
    _l("Your account cannot be reached right now"),
    _l(
        "Our licensing service did not respond in time. Nothing was changed; "
        "please try again in a minute."
    ),
)
DEACTIVATIONS = (
    _l("No more devices can be freed today"),
    _l("You have freed as many devices as allowed for now. Please try again tomorrow."),
)


def error_page(code: int, *, kind: str | None = None, retry_after: int | None = None):
    if not _host_is_trusted():
        return _unknown_host(code)
    special = {"unavailable": UNAVAILABLE, "busy": BUSY, "csrf": EXPIRED_FORM}
    special.update(account=ACCOUNT_UNAVAILABLE, deactivations=DEACTIVATIONS)
    title, message = special.get(kind) or ERRORS.get(code, ERRORS[500])
    response = current_app.make_response(
        (
            render_template(
                "error.html", code=code, title=title, message=message, reference=g.get("request_id")
            ),
            code,
        )
    )
    if retry_after:
        response.headers["Retry-After"] = str(retry_after)
    return response


def _host_is_trusted() -> bool:
    try:
        request.host  # noqa: B018 (raises SecurityError for a Host outside TRUSTED_HOSTS)
    except SecurityError:
        return False
    return True


def _unknown_host(code: int):
    # A Host outside TRUSTED_HOSTS: no URL can be built for it, so no page with links, whatever
    # else went wrong with the request (a body too large is seen before the Host is).
    return "Unknown host.\n", code, {"Content-Type": "text/plain; charset=utf-8"}


def register_error_pages(app: Flask) -> None:
    @app.errorhandler(CSRFError)
    def csrf_failed(error: CSRFError):
        log.warning("request %s: CSRF check failed: %s", g.get("request_id"), error.description)
        return error_page(400, kind="csrf")

    @app.errorhandler(SecurityError)
    def untrusted_host(error: SecurityError):
        log.warning("request %s: %s", g.get("request_id"), error.description)
        return _unknown_host(400)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        response = error_page(error.code or 500)
        if getattr(error, "valid_methods", None):  # a 405 says which methods there are
            response.headers["Allow"] = ", ".join(error.valid_methods)
        return response

    @app.errorhandler(Exception)
    def unexpected(error: Exception):
        log.exception("request %s: unexpected error", g.get("request_id"))
        return error_page(500)
