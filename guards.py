"""What every request and response of the portal passes through: the request id, the body
limit, the refusal of cross-site posts, and the security headers."""

from __future__ import annotations

import io
import re
import uuid

from flask import abort, current_app, g, request

# default-src 'self' with no inline script or style; the page must not be framed.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)
MAX_BODY_BYTES = 16 * 1024  # the form is a few hundred bytes; anything bigger is not a signup


def content_security_policy(extra: dict[str, tuple[str, ...]]) -> str:
    """The policy above, plus the origins a configured CAPTCHA widget needs (and only then)."""
    if not extra:
        return CONTENT_SECURITY_POLICY
    parts = [CONTENT_SECURITY_POLICY]
    for directive, origins in extra.items():
        # Naming script-src replaces default-src for scripts: keep our own static/portal.js.
        sources = origins if directive == "frame-src" else ("'self'", *origins)
        parts.append(f"{directive} {' '.join(sources)}")
    return "; ".join(parts)


_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # what deploy/nginx.conf passes on


def assign_request_id() -> None:
    """The proxy's X-Request-ID when it is well formed, so that its log and ours share one id."""
    given = request.headers.get("X-Request-ID", "")
    g.request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex[:16]


class BoundedBody:
    """MAX_BODY_BYTES for a body without a Content-Length (chunked) too.

    Werkzeug reads such a body up to MAX_CONTENT_LENGTH and then stops without a word, so the
    form would be parsed from a body cut short. Here it is read first, one byte past the limit
    at most (memory stays bounded), and either handed on with its length or marked too large."""

    def __init__(self, wsgi_app, limit: int):
        self.wsgi_app = wsgi_app
        self.limit = limit

    def __call__(self, environ, start_response):
        if (
            not environ.get("CONTENT_LENGTH")
            and "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        ):
            body = self._read(environ["wsgi.input"])
            if len(body) > self.limit:
                environ["portal.body_too_large"], body = True, b""
            environ["wsgi.input"], environ["CONTENT_LENGTH"] = io.BytesIO(body), str(len(body))
        return self.wsgi_app(environ, start_response)

    def _read(self, stream) -> bytes:
        body = b""
        while len(body) <= self.limit:
            chunk = stream.read(self.limit + 1 - len(body))
            if not chunk:
                break
            body += chunk
        return body


def refuse_oversized_bodies() -> None:
    if request.environ.get("portal.body_too_large"):
        abort(413)


def refuse_cross_site_posts() -> None:
    """A form posted from another site (Fetch Metadata): 403 before anything reads it. Browsers
    that send no Sec-Fetch-Site still meet the CSRF token and the SameSite cookie."""
    if request.method == "POST" and request.headers.get("Sec-Fetch-Site") == "cross-site":
        abort(403)


def security_headers(content_security_policy: str) -> tuple[tuple[str, str], ...]:
    return (
        ("Content-Security-Policy", content_security_policy),
        ("X-Content-Type-Options", "nosniff"),
        ("X-Frame-Options", "DENY"),
        # same-origin, not no-referrer: Flask-WTF's HTTPS check needs the Referer of our pages.
        ("Referrer-Policy", "same-origin"),
    )


def add_security_headers(response):
    config = current_app.config
    headers = response.headers
    for name, value in config["SECURITY_HEADERS"]:
        headers.setdefault(name, value)
    if request_id := g.get("request_id"):
        headers.setdefault("X-Request-ID", request_id)
    # HTTPS only (after TrustedProxies): over http the header means nothing and would only
    # confuse a demo on localhost.
    if request.is_secure and config["HSTS_SECONDS"]:
        headers.setdefault("Strict-Transport-Security", f"max-age={config['HSTS_SECONDS']}")
    if response.mimetype == "text/html":
        # The form holds a CSRF token and the result page a license key: never store either.
        headers["Cache-Control"] = "no-store"
        response.vary.add("Cookie")
    return response
