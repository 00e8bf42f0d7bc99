"""The application factory: builds the portal from its settings (config.py).

`gunicorn 'app:create_app()'` serves it. The pages are in views.py, the error pages in errors.py,
the operators' commands in commands.py, and what every request passes through in guards.py.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Flask
from flask_wtf.csrf import CSRFProtect

import guards
import keygen_webhooks
import logs
from account_sessions import SessionStore
from account_views import init_account_pages
from accounts import SelfService
from admission import Admission
from branding import Brand
from budget import KeygenBudget, budget_for, calls_per_signup
from captcha import Captcha
from commands import doctor_command, reconcile_command
from config import Settings, check, load_settings
from database import default_url
from delivery import Courier, Links
from email_rules import DomainRules
from errors import register_error_pages
from health import KeygenProbe, MailProbe
from i18n import init_i18n
from journal import Journal
from keygen_api import CircuitBreaker, KeygenClient
from mailer import ConsoleMailer, Mailer, SMTPMailer
from metrics import Metrics
from password_resets import ResetStore
from protection import FillTimer, RateLimits, TrustedProxies
from reset_views import init_reset_pages
from sealing import Sealer
from services import Services
from signup import SignupWorkflow
from views import bp
from worker import Reconciler

csrf = CSRFProtect()


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or load_settings()
    check(settings)  # also those built in code
    app = Flask(__name__)
    brand, captcha = Brand.from_settings(settings), captcha_for(settings)
    configure(app, settings, brand, captcha)
    init_i18n(app)  # before anything renders: pages, errors and form messages are translated
    start_logging(settings)
    guard(app, settings)
    csrf.init_app(app)
    limits = rate_limits(app, settings)
    journal = open_journal(app, settings)
    breaker = CircuitBreaker()
    metrics = Metrics(
        journal,
        breaker=breaker,
        token=settings.metrics_token,
        served_elsewhere=settings.metrics_port > 0,
    )
    # One budget of Keygen calls for every process, kept where the rate limits are.
    calls = calls_per_signup(one_account_per_person=settings.one_account_per_person)
    budget = budget_for(limits.storage, settings.keygen_max_rps, signup_calls=calls)
    keygen = keygen_client(settings, budget, metrics, breaker)
    sealer = Sealer(settings.secret_key, "license-keys")  # keys Keygen shows only once
    signup = signup_workflow(settings, journal, keygen, budget, metrics, sealer)
    accounts = self_service(settings, journal, keygen)
    courier, mail_probe = start_courier(app, settings, journal, keygen, budget, sealer, accounts)
    if courier is not None:
        signup.on_mail = courier.wake  # signups finished in the background queue email too
    Services(
        settings=settings,
        brand=brand,
        captcha=captcha,
        limits=limits,
        fill_timer=FillTimer(settings.secret_key, settings.min_submit_seconds),
        journal=journal,
        keygen=keygen,
        metrics=metrics,
        signup=signup,
        reconciler=start_reconciler(settings, journal, signup, accounts),
        courier=courier,
        mail_probe=mail_probe,
        accounts=accounts,
        keygen_probe=KeygenProbe(
            keygen, settings.keygen_policy_id, every=settings.readiness_cache_seconds
        ),
    ).install(app)
    app.register_blueprint(bp)
    if accounts is not None:
        init_account_pages(app)
        if accounts.resets is not None:
            init_reset_pages(app, csrf)
    app.cli.add_command(reconcile_command)
    app.cli.add_command(doctor_command)
    register_error_pages(app)
    app.after_request(guards.add_security_headers)
    return app


def configure(app: Flask, settings: Settings, brand: Brand, captcha: Captcha) -> None:
    """Flask's settings, and what every template may use."""
    policy = brand.content_security_policy(guards.content_security_policy(captcha.csp()))
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
        PERMANENT_SESSION_LIFETIME=3600,  # the CSRF token, and a sign-in's opaque id
        MAX_CONTENT_LENGTH=guards.MAX_BODY_BYTES,
        TRUSTED_HOSTS=list(settings.trusted_hosts) or None,  # another Host: 400
        HSTS_SECONDS=settings.hsts_seconds,
        SECURITY_HEADERS=guards.security_headers(policy),
        PASSWORD_MIN_LENGTH=settings.password_min_length,  # forms.py
        TERMS_URL=settings.terms_url,  # forms.py: consent is required with terms
        EMAIL_DOMAIN_RULES=DomainRules(  # forms.py and views.py: who may sign up, who is capped
            allow=frozenset(settings.email_domains_allow),
            deny=frozenset(settings.email_domains_deny),
            block_disposable=settings.block_disposable_email,
        ),
    )
    app.jinja_env.globals.update(
        product_name=settings.product_name,
        demo_mode=settings.demo_mode,
        captcha=captcha.widget
        and {"site_key": captcha.site_key, "action": captcha.action, **vars(captcha.widget)},
        key_delivery=settings.key_delivery,
        mail_enabled=settings.mail_enabled,
        verify_first=settings.require_email_verification,
        brand=brand,
        self_service=settings.self_service,
        password_reset=settings.password_reset_enabled,
    )


def captcha_for(settings: Settings) -> Captcha:
    public_host = urlsplit(settings.public_url).hostname if settings.public_url else None
    return Captcha(
        settings.captcha_provider,
        settings.captcha_site_key,
        settings.captcha_secret_key,
        settings.captcha_verify_url,
        settings.captcha_timeout,
        hostnames=tuple(filter(None, (public_host, *settings.trusted_hosts))),
        action=settings.captcha_action,
    )


def start_logging(settings: Settings) -> None:
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


def guard(app: Flask, settings: Settings) -> None:
    """What every request passes through before a view: the client's address from trusted
    proxies only, the request id, cross-site posts and oversized bodies refused."""
    app.before_request(guards.assign_request_id)  # first, so that every later step can log it
    app.before_request(guards.refuse_cross_site_posts)  # before CSRF's check reads the form
    app.before_request(guards.refuse_oversized_bodies)
    app.wsgi_app = guards.BoundedBody(app.wsgi_app, guards.MAX_BODY_BYTES)
    app.wsgi_app = TrustedProxies(
        app.wsgi_app, hops=settings.trusted_proxy_hops, networks=settings.trusted_proxies
    )


def rate_limits(app: Flask, settings: Settings) -> RateLimits:
    return RateLimits(
        app,
        storage_uri=settings.ratelimit_storage_uri,
        per_ip=settings.ratelimit_per_ip,
        per_email=settings.ratelimit_per_email,
        recovery_per_ip=settings.ratelimit_recovery_per_ip,
        recovery_per_email=settings.ratelimit_recovery_per_email,
        per_domain=settings.ratelimit_per_domain,
        self_service={
            "sign-in-ip": settings.ratelimit_sign_in_per_ip,
            "sign-in-email": settings.ratelimit_sign_in_per_email,
            "reset-ip": settings.ratelimit_password_reset_per_ip,
            "reset-email": settings.ratelimit_password_reset_per_email,
            "deactivation": settings.ratelimit_deactivations,
        },
    )


def open_journal(app: Flask, settings: Settings) -> Journal:
    journal = Journal(
        settings.database_url or default_url(app.instance_path), threads=settings.gunicorn_threads
    )
    journal.create_schema()
    return journal


def keygen_client(
    settings: Settings, budget: KeygenBudget, metrics: Metrics, breaker: CircuitBreaker
) -> KeygenClient:
    return KeygenClient(
        settings.keygen_api_url,
        settings.keygen_account_id,
        settings.keygen_product_token,
        api_version=settings.keygen_api_version,
        environment=settings.keygen_environment,
        connect_timeout=settings.keygen_connect_timeout,
        read_timeout=settings.keygen_read_timeout,
        breaker=breaker,
        observer=metrics.keygen_call,
        on_quota_used_up=budget.hold_until,  # Keygen said its window is used up
    )


def signup_workflow(
    settings: Settings,
    journal: Journal,
    keygen: KeygenClient,
    budget: KeygenBudget,
    metrics: Metrics,
    sealer: Sealer,
) -> SignupWorkflow:
    admission = Admission(
        budget,
        slots=settings.signup_concurrency,
        # The wait for a turn comes out of the signup's deadline; Keygen's calls need the rest.
        queue_wait=min(settings.admission_wait, settings.signup_deadline / 2),
        backlog=settings.admission_backlog,
        calls_per_signup=budget.signup_calls,
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
        enumeration_safe=settings.enumeration_safe,
        link_lifetime=settings.verification_link_lifetime,
        mail=settings.mail_enabled,
        one_account_per_person=settings.one_account_per_person,
        on_retry=metrics.count_retry,
        sealer=sealer,
        on_operator_problem=metrics.count_operator_problem,
        on_refusal=metrics.count_refusal,
    )


def start_reconciler(
    settings: Settings,
    journal: Journal,
    workflow: SignupWorkflow,
    accounts: SelfService | None,
) -> Reconciler:
    """Each process finishes what any process left unfinished (leases keep them apart), and ends
    the sign-ins whose time is up."""
    reconciler = Reconciler(
        journal,
        workflow,
        interval=settings.reconcile_interval,
        stale_after=settings.stale_signup_after,
        retention=settings.data_retention_days * 86400.0,
        sign_ins=accounts,
    )
    if settings.reconcile_interval > 0:
        reconciler.start()
    return reconciler


def start_courier(
    app: Flask,
    settings: Settings,
    journal: Journal,
    keygen: KeygenClient,
    budget: KeygenBudget,
    sealer: Sealer,
    accounts: SelfService | None = None,
) -> tuple[Courier | None, MailProbe | None]:
    """The outbox's sender and /readyz's probe of it, when email is on: through SMTP, or to
    the console in the demo."""
    if not settings.mail_enabled:
        return None, None
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
        keygen,
        mailer,
        links,
        sender=settings.mail_default_sender,
        product_name=settings.product_name,
        interval=settings.outbox_interval,
        give_up_after=settings.mail_give_up_after,
        backoff_base=settings.mail_retry_delay,
        same_mailbox=settings.one_account_per_person,
        sealer=sealer,
        resets=accounts and accounts.resets,
        self_service=accounts is not None,
        budget=budget,
    )
    if settings.outbox_interval > 0:
        courier.start()
    return courier, MailProbe(mailer)


def self_service(settings: Settings, journal: Journal, keygen: KeygenClient) -> SelfService | None:
    """Sign-in, the account page and (with KEYGEN_PUBLIC_KEY and email) forgot-password."""
    if not settings.self_service:
        return None
    secret = settings.secret_key
    resets, webhooks = None, None
    if settings.password_reset_enabled:
        lifetime = settings.password_reset_link_lifetime
        resets = ResetStore(journal, Sealer(secret, "password-resets"), lifetime=lifetime)
        key = keygen_webhooks.public_key(settings.keygen_public_key)
        webhooks = keygen_webhooks.WebhookVerifier(key)
    accounts = SelfService(
        keygen,
        SessionStore(journal, Sealer(secret, "account-sessions")),
        resets,
        session_minutes=settings.self_service_session_minutes,
        code_sealer=Sealer(secret, "sign-in-codes"),
        webhooks=webhooks,
    )
    return accounts
