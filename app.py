"""The web layer: the signup page, the one-time key page, health, error pages and headers.

`gunicorn 'app:create_app()'` serves it. Everything it needs is built here from config.py.
"""

from __future__ import annotations

import logging
import re
import uuid
from pathlib import Path

import click
from flask import Blueprint, Flask, abort, current_app, g, render_template, request
from flask.cli import with_appcontext
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.exceptions import HTTPException, SecurityError

import doctor
import logs
from config import Settings, load_settings
from forms import SignupForm
from health import readiness
from journal import Journal
from keygen_api import KeygenClient
from metrics import Metrics
from protection import FillTimer, LimiterUnavailable, LimitReached, RateLimits, TrustedProxies
from signup import (
    AlreadyIssued,
    Applicant,
    Issued,
    Processing,
    Rejected,
    SignupUnavailable,
    SignupWorkflow,
    TooBusy,
    TryLater,
)
from worker import Reconciler

log = logging.getLogger(__name__)
csrf = CSRFProtect()
bp = Blueprint("portal", __name__)

# default-src 'self' with no inline script or style; the page must not be framed.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)
MAX_BODY_BYTES = 16 * 1024  # the form is a few hundred bytes; anything bigger is not a signup


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or load_settings()
    app = Flask(__name__)
    configure(app, settings)
    logs.configure(settings.log_level, json_lines=settings.log_format == "json")
    app.before_request(assign_request_id)  # first, so that every later step can log it
    csrf.init_app(app)
    protect(app, settings)
    journal = open_journal(app, settings)
    workflow = build_workflow(settings, journal)
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
        max_rps=settings.keygen_max_rps,
    )
    app.extensions["fill_timer"] = FillTimer(settings.secret_key, settings.min_submit_seconds)


def open_journal(app: Flask, settings: Settings) -> Journal:
    url = settings.database_url or f"sqlite:///{Path(app.instance_path) / 'portal.db'}"
    journal = Journal(url)
    journal.create_schema()
    return journal


def build_workflow(settings: Settings, journal: Journal) -> SignupWorkflow:
    keygen = KeygenClient(
        settings.keygen_api_url,
        settings.keygen_account_id,
        settings.keygen_product_token,
        connect_timeout=settings.keygen_connect_timeout,
        read_timeout=settings.keygen_read_timeout,
    )
    return SignupWorkflow(
        keygen,
        journal,
        settings.keygen_policy_id,
        deadline=settings.signup_deadline,
        give_up_after=settings.reconcile_give_up_after,
        concurrency=settings.signup_concurrency,
        crash_at=settings.test_crash_at,
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


# -- Pages --------------------------------------------------------------------------------------


@bp.get("/")
def signup_form():
    form = SignupForm()
    form.served.data = current_app.extensions["fill_timer"].stamp(form.nonce.data)
    return render_template("signup.html", form=form)


@bp.post("/")
def signup_submit():
    limits = current_app.extensions["rate_limits"]
    try:
        limits.admit_client(request.remote_addr)  # after the CSRF check, before anything else
    except (LimitReached, LimiterUnavailable) as error:
        return turned_away(error)
    form = SignupForm()
    if form.website.data:
        # A bot filled in the field people cannot see: a page like a real outcome, no signup.
        log.info("request %s: honeypot field filled; nothing was created", g.request_id)
        return render_template("processing.html", email=form.email.data), 202
    timer = current_app.extensions["fill_timer"]
    age = timer.age(form.served.data, form.nonce.data)
    if age is None:
        form.served.data = timer.stamp(form.nonce.data)
    if timer.too_fast(age):
        when = "without a valid serve time" if age is None else f"{age:.1f} s after it was served"
        log.info("request %s: form sent too fast, %s", g.request_id, when)
        form.form_errors.append(TOO_FAST)
        return render_template("signup.html", form=form), 422
    if not form.validate():
        return render_template("signup.html", form=form), 422
    try:
        limits.admit_signup(form.email.data)
    except (LimitReached, LimiterUnavailable) as error:
        return turned_away(error)
    applicant = Applicant(
        email=form.email.data,
        password=form.password.data,
        first_name=form.first_name.data,
        last_name=form.last_name.data,
    )
    metrics = current_app.extensions["metrics"]
    try:
        outcome = current_app.extensions["signup"].sign_up(applicant, form.nonce.data)
    except Rejected as rejection:
        metrics.count_signup(rejection)
        for name, message in rejection.errors.items():
            form[name].errors.append(message)
        return render_template("signup.html", form=form), 422
    except TryLater as error:
        metrics.count_signup(error)
        log.warning("request %s: %s", g.request_id, error)
        form.form_errors.append(TRY_LATER)
        response = current_app.make_response((render_template("signup.html", form=form), 503))
        response.headers["Retry-After"] = "60"
        return response
    except SignupUnavailable as error:
        metrics.count_signup(error)
        return error_page(503, kind="unavailable")
    except TooBusy as error:
        metrics.count_signup(error)
        return error_page(503, kind="busy", retry_after=30)
    metrics.count_signup(outcome)
    return show(outcome, first_name=applicant.first_name)


TOO_FAST = "That was quicker than we expected. Please check the form and send it again."


def turned_away(error: LimitReached | LimiterUnavailable):
    if isinstance(error, LimitReached):
        log.warning("request %s: %s", g.request_id, error)
        return error_page(429)
    log.error("request %s: signups refused: %s", g.request_id, error)
    return error_page(503, kind="unavailable")


TRY_LATER = (
    "Our licensing service did not answer in time, so nothing was created. "
    "Please submit the form again in a minute."
)


def show(outcome, *, first_name: str):
    if isinstance(outcome, Issued):
        return render_template("issued.html", issued=outcome, first_name=first_name)
    if isinstance(outcome, AlreadyIssued):
        return render_template("already.html", email=outcome.email)
    assert isinstance(outcome, Processing)
    return render_template("processing.html", email=outcome.email), 202


@bp.get("/healthz")
def healthz():
    """The process is alive. Calls nothing else, so it stays fast while Keygen is slow."""
    return {"status": "ok"}


@bp.get("/readyz")
def readyz():
    """Whether this instance can sign people up now, with every check named."""
    workflow = current_app.extensions["signup"]
    checks = readiness(workflow.keygen, workflow.policy_id, workflow.journal)
    ready = all(check.ok for check in checks)
    body = {
        "status": "ready" if ready else "not ready",
        "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in checks},
    }
    if not ready:
        log.warning("not ready: %s", "; ".join(c.detail for c in checks if not c.ok))
    return body, 200 if ready else 503


@bp.get("/metrics")
def prometheus_metrics():
    """Prometheus metrics, for the holder of METRICS_TOKEN (without one: this machine only)."""
    exporter = current_app.extensions["metrics"]
    if not exporter.may_read(request.headers, request.remote_addr):
        abort(404)  # as if there were nothing here
    body, content_type = exporter.render()
    return body, 200, {"Content-Type": content_type}


# -- Errors -------------------------------------------------------------------------------------

ERRORS = {
    400: (
        "Something went wrong with that request",
        "Please go back, reload the page and try again.",
    ),
    404: ("Page not found", "There is nothing at this address."),
    405: ("Not allowed", "This page does not accept that kind of request."),
    413: ("Too much data", "That submission was larger than a signup can be."),
    429: ("Too many attempts", "Please wait a minute before trying again."),
    500: ("Something went wrong on our side", "Please try again in a minute."),
    503: (
        "We could not finish your signup",
        "Our licensing service did not respond in time. Nothing was created; "
        "please try again in a minute.",
    ),
}
UNAVAILABLE = (
    "Signup is unavailable right now",
    "We could not create your license because of a problem on our side. "
    "We have been notified; please try again later.",
)
BUSY = (
    "We are very busy right now",
    "Too many signups are in progress. Nothing was created; please try again in a minute.",
)
EXPIRED_FORM = (
    "This form has expired",
    "For your security, the signup form is only valid for a limited time. "
    "Please go back, reload the page and submit it again.",
)


def error_page(code: int, *, kind: str | None = None, retry_after: int | None = None):
    special = {"unavailable": UNAVAILABLE, "busy": BUSY, "csrf": EXPIRED_FORM}
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


def register_error_pages(app: Flask) -> None:
    @app.errorhandler(CSRFError)
    def csrf_failed(error: CSRFError):
        log.warning("request %s: CSRF check failed: %s", g.get("request_id"), error.description)
        return error_page(400, kind="csrf")

    @app.errorhandler(SecurityError)
    def untrusted_host(error: SecurityError):
        # A Host outside TRUSTED_HOSTS: no URL can be built for it, so no page with links.
        log.warning("request %s: %s", g.get("request_id"), error.description)
        return "Unknown host.\n", 400, {"Content-Type": "text/plain; charset=utf-8"}

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        return error_page(error.code or 500)

    @app.errorhandler(Exception)
    def unexpected(error: Exception):
        log.exception("request %s: unexpected error", g.get("request_id"))
        return error_page(500)


# -- Operators ----------------------------------------------------------------------------------


@click.command("reconcile")
@click.option("--dry-run", is_flag=True, help="Only list what would be done.")
@with_appcontext
def reconcile_command(dry_run: bool) -> None:
    """Finish or undo every signup left unfinished (after a crash, deploy or Keygen outage)."""
    report = current_app.extensions["reconciler"].run_once(dry_run=dry_run)
    for line in report.lines():
        click.echo(line)
    click.echo(
        f"{len(report.worked)} signup(s) {'due' if dry_run else 'worked on'}, "
        f"{report.skipped} busy elsewhere, {len(report.stale)} stale"
    )


@click.command("doctor")
@with_appcontext
def doctor_command() -> None:
    """Check the settings, Keygen and the database, and say in plain words what is wrong."""
    workflow = current_app.extensions["signup"]
    findings = doctor.examine(current_app.extensions["settings"], workflow.keygen, workflow.journal)
    for finding in findings:
        click.echo(finding.line())
    if any(f.level == doctor.ERROR for f in findings):
        raise SystemExit(1)


# -- Every response -----------------------------------------------------------------------------


_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # what deploy/nginx.conf passes on


def assign_request_id() -> None:
    """The proxy's X-Request-ID when it is well formed, so that its log and ours share one id."""
    given = request.headers.get("X-Request-ID", "")
    g.request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex[:16]


def add_security_headers(response):
    headers = response.headers
    if "request_id" in g:
        headers["X-Request-ID"] = g.request_id
    headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    # same-origin, not no-referrer: Flask-WTF's HTTPS check needs the Referer of our own pages.
    headers.setdefault("Referrer-Policy", "same-origin")
    if response.mimetype == "text/html":
        # The form holds a CSRF token and the result page a license key: never store either.
        headers["Cache-Control"] = "no-store"
        response.vary.add("Cookie")
    return response
