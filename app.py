"""The application factory: builds the portal from config.py, and what every response carries.

`gunicorn 'app:create_app()'` serves it. The pages are in views.py, the error pages in errors.py
and the operators' commands in commands.py.
"""

from __future__ import annotations

import logging
import re
import uuid
from pathlib import Path

from flask import Flask, g, request
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFProtect

import logs
from admission import KeygenBudget, budget_for
from commands import doctor_command, reconcile_command
from config import Settings, load_settings
from errors import register_error_pages
from journal import Journal
from keygen_api import KeygenClient
from metrics import Metrics
from protection import FillTimer, RateLimits, TrustedProxies
from signup import SignupWorkflow
from views import bp
from worker import Reconciler

log = logging.getLogger(__name__)
csrf = CSRFProtect()

# default-src 'self' with no inline script or style; the page must not be framed.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)
MAX_BODY_BYTES = 16 * 1024  # the form is a few hundred bytes; anything bigger is not a signup


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or load_settings()
    app = Flask(__name__)
    app.session_interface = SessionCookies()
    configure(app, settings)
    logs.configure(settings.log_level, json_lines=settings.log_format == "json")
    app.before_request(assign_request_id)  # first, so that every later step can log it
    csrf.init_app(app)
    protect(app, settings)
    journal = open_journal(app, settings)
    budget = budget_for(app.extensions["rate_limits"].storage, settings.keygen_max_rps)
    workflow = build_workflow(settings, journal, budget)
    app.extensions["signup"] = workflow
    app.extensions["metrics"] = watch(settings, journal, workflow)
    app.extensions["reconciler"] = start_reconciler(settings, journal, workflow)
    app.register_blueprint(bp)
    app.cli.add_command(reconcile_command)
    app.cli.add_command(doctor_command)
    register_error_pages(app)
    app.after_request(add_security_headers)
    return app


def configure(app: Flask, settings: Settings) -> None:
    app.extensions["settings"] = settings  # for operators' commands (flask doctor)
    app.config.update(
        SECRET_KEY=settings.secret_key,
        SESSION_COOKIE_SECURE=settings.cookie_secure,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=3600,  # the session only carries the CSRF token
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        PASSWORD_MIN_LENGTH=settings.password_min_length,
        PRODUCT_NAME=settings.product_name,
        DEMO_MODE=settings.demo_mode,
        TRUSTED_HOSTS=list(settings.trusted_hosts) or None,  # another Host: 400
    )
    app.jinja_env.globals.update(product_name=settings.product_name, demo_mode=settings.demo_mode)


def protect(app: Flask, settings: Settings) -> None:
    """The client's address from trusted proxies only, rate limits and the form's timer."""
    app.wsgi_app = TrustedProxies(
        app.wsgi_app, hops=settings.trusted_proxy_hops, networks=settings.trusted_proxies
    )
    app.extensions["rate_limits"] = RateLimits(
        app,
        storage_uri=settings.ratelimit_storage_uri,
        per_ip=settings.ratelimit_per_ip,
        per_email=settings.ratelimit_per_email,
    )
    app.extensions["fill_timer"] = FillTimer(settings.secret_key, settings.min_submit_seconds)


def open_journal(app: Flask, settings: Settings) -> Journal:
    url = settings.database_url or f"sqlite:///{Path(app.instance_path) / 'portal.db'}"
    journal = Journal(url)
    journal.create_schema()
    return journal


def build_workflow(settings: Settings, journal: Journal, budget: KeygenBudget) -> SignupWorkflow:
    keygen = KeygenClient(
        settings.keygen_api_url,
        settings.keygen_account_id,
        settings.keygen_product_token,
        connect_timeout=settings.keygen_connect_timeout,
        read_timeout=settings.keygen_read_timeout,
        on_quota_used_up=budget.hold_until,
    )
    return SignupWorkflow(
        keygen,
        journal,
        settings.keygen_policy_id,
        deadline=settings.signup_deadline,
        give_up_after=settings.reconcile_give_up_after,
        concurrency=settings.signup_concurrency,
        crash_at=settings.test_crash_at,
        budget=budget,
        # The wait for a turn comes out of the signup's deadline; Keygen's calls need the rest.
        queue_wait=min(settings.admission_wait, settings.signup_deadline / 2),
        backlog=settings.admission_backlog,
    )


def watch(settings: Settings, journal: Journal, workflow: SignupWorkflow) -> Metrics:
    metrics = Metrics(journal, token=settings.metrics_token)
    metrics.watch(workflow.keygen)
    return metrics


def start_reconciler(settings: Settings, journal: Journal, workflow: SignupWorkflow) -> Reconciler:
    """Each process finishes what any process left unfinished; leases keep them apart."""
    reconciler = Reconciler(
        journal,
        workflow,
        interval=settings.reconcile_interval,
        stale_after=settings.stale_signup_after,
    )
    if settings.reconcile_interval > 0:
        reconciler.start()
    return reconciler


# -- Every response -----------------------------------------------------------------------------


_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # what deploy/nginx.conf passes on


def assign_request_id() -> None:
    """The proxy's X-Request-ID when it is well formed, so that its log and ours share one id."""
    given = request.headers.get("X-Request-ID", "")
    g.request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex[:16]


SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # same-origin, not no-referrer: Flask-WTF's HTTPS check needs the Referer of our own pages.
    "Referrer-Policy": "same-origin",
}


def add_security_headers(response):
    headers = response.headers
    if "request_id" in g:
        headers["X-Request-ID"] = g.request_id
    present = {name.lower() for name, _ in headers}  # one pass: werkzeug's lookups are costly
    headers.extend((n, v) for n, v in SECURITY_HEADERS.items() if n.lower() not in present)
    if response.mimetype == "text/html":
        # The form holds a CSRF token and the result page a license key: never store either.
        headers["Cache-Control"] = "no-store"
        vary = headers.get("Vary")
        if not vary:
            headers["Vary"] = "Cookie"
        elif "cookie" not in vary.lower():
            headers["Vary"] = f"{vary}, Cookie"
    return response


class SessionCookies(SecureCookieSessionInterface):
    """Flask's signed-cookie session, with its signing serializer built once per app instead
    of twice per request (to open and to save the session): a tenth of a GET's cost."""

    def get_signing_serializer(self, app: Flask):
        serializer = app.extensions.get("session_serializer")
        if serializer is None:
            serializer = super().get_signing_serializer(app)
            app.extensions["session_serializer"] = serializer
        return serializer
