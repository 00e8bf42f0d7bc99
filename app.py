"""The application factory: builds the portal from config.py, and what every response carries.

`gunicorn 'app:create_app()'` serves it. The pages are in views.py, the error pages in errors.py
and the operators' commands in commands.py.
"""

from __future__ import annotations

import io
import logging
import re
import uuid

from flask import Flask, abort, current_app, g, request
from flask_wtf.csrf import CSRFProtect

import logs
from admission import Admission
from branding import Brand
from budget import budget_for
from captcha import Captcha
from commands import doctor_command, reconcile_command
from config import Settings, check, load_settings
from delivery import Courier, Links
from errors import register_error_pages
from health import MailProbe
from i18n import init_i18n
from journal import Journal, default_url
from keygen_api import CircuitBreaker, KeygenClient
from mailer import ConsoleMailer, Mailer, SMTPMailer
from metrics import Metrics
from protection import FillTimer, RateLimits, TrustedProxies
from signup import SignupWorkflow
from views import bp
from worker import Reconciler

log = logging.getLogger(f"portal.{__name__}")
csrf = CSRFProtect()

# default-src 'self' with no inline script or style; the page must not be framed.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)


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


MAX_BODY_BYTES = 16 * 1024  # the form is a few hundred bytes; anything bigger is not a signup


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or load_settings()
    check(settings)  # also those built in code
    app = Flask(__name__)
    configure(app, settings)
    init_i18n(app)  # before anything renders: pages, errors and form messages are translated
    logs.configure(
        settings.log_level,
        json_lines=settings.log_format == "json",
        secrets=(
            settings.keygen_product_token,
            settings.secret_key,
            settings.metrics_token,
            settings.captcha_secret_key,
        ),
    )
    app.before_request(assign_request_id)  # first, so that every later step can log it
    app.before_request(refuse_cross_site_posts)  # before CSRF's check reads the form
    app.before_request(refuse_oversized_bodies)
    csrf.init_app(app)
    protect(app, settings)
    app.wsgi_app = BoundedBody(app.wsgi_app, MAX_BODY_BYTES)
    journal = open_journal(app, settings)
    breaker = CircuitBreaker()
    metrics = app.extensions["metrics"] = Metrics(
        journal,
        breaker=breaker,
        token=settings.metrics_token,
        served_elsewhere=settings.metrics_port > 0,
    )
    workflow = build_workflow(settings, journal, app.extensions["rate_limits"], metrics, breaker)
    app.extensions["signup"] = workflow
    app.extensions["reconciler"] = start_reconciler(settings, journal, workflow)
    app.extensions["courier"] = start_courier(app, settings, journal, workflow)
    app.register_blueprint(bp)
    app.cli.add_command(reconcile_command)
    app.cli.add_command(doctor_command)
    register_error_pages(app)
    app.after_request(add_security_headers)
    return app


def configure(app: Flask, settings: Settings) -> None:
    app.extensions["settings"] = settings  # for operators' commands (flask doctor)
    captcha = app.extensions["captcha"] = Captcha(
        settings.captcha_provider,
        settings.captcha_site_key,
        settings.captcha_secret_key,
        settings.captcha_verify_url,
        settings.captcha_timeout,
    )
    app.config.update(
        # Never on, whatever FLASK_DEBUG says: the debugger runs code and tracebacks show secrets.
        DEBUG=False,
        SECRET_KEY=settings.secret_key,
        # __Host-: the browser keeps it only if it is Secure, for this host and path / alone, so
        # neither a sibling subdomain nor plain http can set or overwrite it. Plain http (the
        # demo and tests on loopback) cannot use the prefix.
        SESSION_COOKIE_NAME="__Host-session" if settings.cookie_secure else "session",
        SESSION_COOKIE_SECURE=settings.cookie_secure,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_DOMAIN=None,
        SESSION_COOKIE_PATH="/",
        CONTENT_SECURITY_POLICY=content_security_policy(captcha.csp()),
        HSTS_SECONDS=settings.hsts_seconds,
        PERMANENT_SESSION_LIFETIME=3600,  # the session only carries the CSRF token
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        PASSWORD_MIN_LENGTH=settings.password_min_length,
        PRODUCT_NAME=settings.product_name,
        DEMO_MODE=settings.demo_mode,
        TRUSTED_HOSTS=list(settings.trusted_hosts) or None,  # another Host: 400
    )
    app.jinja_env.globals.update(
        product_name=settings.product_name,
        demo_mode=settings.demo_mode,
        captcha=captcha.widget and {"site_key": captcha.site_key, **vars(captcha.widget)},
        key_delivery=settings.key_delivery,
        mail_enabled=settings.mail_enabled,
        verify_first=settings.require_email_verification,
    )
    brand = app.extensions["brand"] = Brand.from_settings(settings)
    app.jinja_env.globals["brand"] = brand
    app.config["TERMS_URL"] = settings.terms_url  # forms.py: consent is required with terms
    app.config["CONTENT_SECURITY_POLICY"] = brand.content_security_policy(
        app.config["CONTENT_SECURITY_POLICY"]  # with the CAPTCHA's origins, if any
    )
    app.config["SECURITY_HEADERS"] = security_headers(app.config["CONTENT_SECURITY_POLICY"])


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
        recovery_per_ip=settings.ratelimit_recovery_per_ip,
        recovery_per_email=settings.ratelimit_recovery_per_email,
    )
    app.extensions["fill_timer"] = FillTimer(settings.secret_key, settings.min_submit_seconds)


def open_journal(app: Flask, settings: Settings) -> Journal:
    journal = Journal(
        settings.database_url or default_url(app.instance_path), threads=settings.gunicorn_threads
    )
    journal.create_schema()
    return journal


def build_workflow(
    settings: Settings,
    journal: Journal,
    limits: RateLimits,
    metrics: Metrics,
    breaker: CircuitBreaker,
) -> SignupWorkflow:
    # One budget of Keygen calls for every process, kept where the rate limits are.
    budget = budget_for(limits.storage, settings.keygen_max_rps)
    keygen = KeygenClient(
        settings.keygen_api_url,
        settings.keygen_account_id,
        settings.keygen_product_token,
        connect_timeout=settings.keygen_connect_timeout,
        read_timeout=settings.keygen_read_timeout,
        breaker=breaker,
        observer=metrics.keygen_call,
        on_quota_used_up=budget.hold_until,
    )
    admission = Admission(
        budget,
        slots=settings.signup_concurrency,
        # The wait for a turn comes out of the signup's deadline; Keygen's calls need the rest.
        queue_wait=min(settings.admission_wait, settings.signup_deadline / 2),
        backlog=settings.admission_backlog,
    )
    return SignupWorkflow(
        keygen,
        journal,
        settings.keygen_policy_id,
        admission=admission,
        deadline=settings.signup_deadline,
        give_up_after=settings.reconcile_give_up_after,
        key_delivery=settings.key_delivery,
        verify=settings.require_email_verification,
        # With verification, a taken address must get the answer a new one gets, too.
        enumeration_safe=settings.enumeration_safe or settings.require_email_verification,
        unverified_lifetime=settings.unverified_user_lifetime,
        on_retry=metrics.count_retry,
    )


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


def start_courier(
    app: Flask, settings: Settings, journal: Journal, workflow: SignupWorkflow
) -> Courier | None:
    """The outbox's sender, when email is on: through SMTP, or to the console in the demo."""
    if not settings.mail_enabled:
        return None
    mailer: Mailer = ConsoleMailer()
    if settings.mail_server:
        mailer = SMTPMailer(
            settings.mail_server,
            settings.mail_port,
            use_tls=settings.mail_use_tls,
            use_ssl=settings.mail_use_ssl,
            username=settings.mail_username or None,
            password=settings.mail_password or None,
            timeout=settings.mail_timeout,
        )
    links = Links(
        settings.public_url, settings.secret_key, lifetime=settings.verification_link_lifetime
    )
    courier = Courier(
        app,
        journal,
        workflow.keygen,
        mailer,
        links,
        sender=settings.mail_default_sender,
        product_name=settings.product_name,
        interval=settings.outbox_interval,
        give_up_after=settings.mail_give_up_after,
        backoff_base=settings.mail_retry_delay,
    )
    if settings.outbox_interval > 0:
        courier.start()
    app.extensions["mail_probe"] = MailProbe(mailer)  # /readyz
    return courier


# -- Every response -----------------------------------------------------------------------------


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
