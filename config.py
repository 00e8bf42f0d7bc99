"""Every setting of the portal, declared once: its name, type, default and check.

A setting is a field of `Settings`; its environment variable is the field's name in capitals, or
``NAME_FILE`` naming a file that holds the value (Docker secrets). A field without a default is
required. A missing or malformed value stops the start with one message that lists every
problem. No secret has a default. docs/configuration.md explains each one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from urllib.parse import urlsplit

import setting_checks as checks

SPARE_THREADS = 2  # per process, for pages and /healthz while every signup waits on Keygen
CAPTCHA_PROVIDERS = ("none", "turnstile", "hcaptcha", "recaptcha")


class ConfigError(Exception):
    """The settings are unusable; ``problems`` lists each one in plain words."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("The portal cannot start:\n" + "\n".join(f"  - {p}" for p in problems))


# -- The settings --------------------------------------------------------------------------------


def setting(
    default: object = MISSING, *, parse: Callable[[str], object] = checks.stripped, secret=False
):
    """A field of Settings: ``parse`` checks the environment's text and turns it into the value;
    without a default the setting is required; a ``secret`` stays out of the repr."""
    return field(default=default, repr=not secret, metadata={"parse": parse})


@dataclass(frozen=True, kw_only=True)
class Settings:
    # Keygen
    keygen_account_id: str = setting("", parse=checks.account)  # "": see _problems
    keygen_product_token: str = setting(parse=checks.product_token, secret=True)
    keygen_policy_id: str = setting(parse=checks.uuid_text)
    keygen_api_url: str = setting("https://api.keygen.sh", parse=checks.api_url)
    keygen_connect_timeout: float = setting(3.05, parse=checks.positive_float)
    keygen_read_timeout: float = setting(10.0, parse=checks.positive_float)
    keygen_max_rps: int = setting(4, parse=checks.positive_int)

    # The portal
    secret_key: str = setting(parse=checks.secret_key, secret=True)
    product_name: str = setting("")
    password_min_length: int = setting(8, parse=checks.password_min_length)
    signup_deadline: float = setting(20.0, parse=checks.signup_deadline)
    cookie_secure: bool = setting(True, parse=checks.boolean)
    demo_mode: bool = setting(False, parse=checks.boolean)
    log_level: str = setting(
        "INFO", parse=checks.one_of("DEBUG", "INFO", "WARNING", "ERROR", upper=True)
    )
    log_format: str = setting(
        "json", parse=checks.one_of("json", "text")
    )  # unset in the demo: text
    database_url: str = setting(
        "", parse=checks.database_url, secret=True
    )  # "": SQLite in instance/

    # Processes, threads and the background passes
    web_concurrency: int = setting(2, parse=checks.positive_int)  # gunicorn worker processes
    gunicorn_threads: int = setting(16, parse=checks.positive_int)  # threads per worker process
    signup_concurrency: int = setting(14, parse=checks.positive_int)  # unset: threads minus spares
    admission_wait: float = setting(2.0, parse=checks.seconds_or_off)
    admission_backlog: float = setting(60.0, parse=checks.seconds_or_off)
    reconcile_interval: float = setting(30.0, parse=checks.seconds_or_off)
    reconcile_give_up_after: float = setting(86400.0, parse=checks.positive_float)
    stale_signup_after: float = setting(900.0, parse=checks.positive_float)

    # Proxies, abuse protection and metrics
    trusted_proxy_hops: int = setting(0, parse=checks.hops)  # 0: X-Forwarded-* are ignored
    trusted_proxies: tuple[str, ...] = setting(("127.0.0.0/8", "::1/128"), parse=checks.networks)
    trusted_hosts: tuple[str, ...] = setting((), parse=checks.hosts)  # (): any Host
    hsts_seconds: int = setting(63072000, parse=checks.hsts_seconds)  # two years; 0: off
    ratelimit_storage_uri: str = setting("memory://", parse=checks.storage_uri, secret=True)
    ratelimit_per_ip: str = setting("10/minute,50/hour", parse=checks.rates)
    ratelimit_per_email: str = setting("5/hour", parse=checks.rates)
    ratelimit_recovery_per_ip: str = setting("5/minute,20/hour", parse=checks.rates)
    ratelimit_recovery_per_email: str = setting("3/hour", parse=checks.rates)
    min_submit_seconds: float = setting(0.0, parse=checks.seconds_or_off)
    captcha_provider: str = setting("none", parse=checks.one_of(*CAPTCHA_PROVIDERS))
    captcha_site_key: str = setting("")
    captcha_secret_key: str = setting("", secret=True)
    captcha_verify_url: str = setting("", parse=checks.verify_url)  # "": the provider's own
    captcha_timeout: float = setting(5.0, parse=checks.positive_float)
    metrics_token: str = setting("", parse=checks.metrics_token, secret=True)  # "": loopback only
    metrics_port: int = setting(0, parse=checks.port_or_off)  # 0: on the portal's own port

    # Email
    mail_server: str = setting("")  # "": no SMTP (the demo prints mail to the console)
    mail_port: int = setting(587, parse=checks.port)
    mail_use_tls: bool = setting(True, parse=checks.boolean)
    mail_use_ssl: bool = setting(False, parse=checks.boolean)
    mail_username: str = setting("")
    mail_password: str = setting("", parse=str, secret=True)
    mail_default_sender: str = setting("", parse=checks.sender)
    mail_timeout: float = setting(10.0, parse=checks.positive_float)
    mail_give_up_after: float = setting(259200.0, parse=checks.positive_float)
    mail_retry_delay: float = setting(30.0, parse=checks.positive_float)
    outbox_interval: float = setting(5.0, parse=checks.seconds_or_off)
    key_delivery: str = setting("page", parse=checks.one_of("page", "email", "both"))
    public_url: str = setting("", parse=checks.public_url)
    require_email_verification: bool = setting(False, parse=checks.boolean)
    verification_link_lifetime: float = setting(86400.0, parse=checks.positive_float)
    enumeration_safe: bool = setting(False, parse=checks.boolean)

    # Branding and consent (docs/the-page.md): "" means none.
    brand_logo_url: str = setting("", parse=checks.logo_url)
    brand_accent_color: str = setting("", parse=checks.hex_color)  # "#rrggbb"
    support_email: str = setting("", parse=checks.support_email)
    terms_url: str = setting("", parse=checks.page_url)  # the form then asks for consent
    privacy_url: str = setting("", parse=checks.page_url)
    terms_version: str = setting("", parse=checks.terms_version)

    # One trial per person (docs/configuration.md, "One trial per person")
    one_account_per_person: bool = setting(True, parse=checks.boolean)
    block_disposable_email: bool = setting(True, parse=checks.boolean)
    email_domains_allow: tuple[str, ...] = setting((), parse=checks.email_domains)
    email_domains_deny: tuple[str, ...] = setting((), parse=checks.email_domains)
    ratelimit_per_domain: str = setting("20/day", parse=checks.rates_or_off)  # "": off
    # Which Keygen (docs/configuration.md, "Which Keygen"): its API version, its environment.
    keygen_api_version: str = setting(checks.DEFAULT_API_VERSION, parse=checks.api_version)
    keygen_environment: str = setting("", parse=checks.environment)  # "": the global one
    # Self-service after the signup (docs/self-service.md): sign in, licenses, machines.
    self_service: bool = setting(True, parse=checks.boolean)
    self_service_session_minutes: int = setting(30, parse=checks.session_minutes)
    keygen_public_key: str = setting("", parse=checks.keygen_public_key)  # "": no forgot-password
    password_reset_link_lifetime: float = setting(3600.0, parse=checks.reset_link_lifetime)
    ratelimit_sign_in_per_ip: str = setting("10/minute,60/hour", parse=checks.rates)
    ratelimit_sign_in_per_email: str = setting("5/minute,20/hour", parse=checks.rates)
    ratelimit_password_reset_per_ip: str = setting("5/minute,20/hour", parse=checks.rates)
    ratelimit_password_reset_per_email: str = setting("3/hour", parse=checks.rates)
    ratelimit_deactivations: str = setting("5/day", parse=checks.rates)  # per signed-in user
    # Safe in every mode (docs/security.md)
    readiness_cache_seconds: float = setting(30.0, parse=checks.positive_float)
    captcha_action: str = setting("", parse=checks.captcha_action)  # Turnstile's; "": none
    data_retention_days: int = setting(30, parse=checks.positive_int)

    @property
    def mail_enabled(self) -> bool:
        """Whether the portal sends email: through an SMTP server, or the demo's console."""
        transport = bool(self.mail_server) or self.demo_mode
        return transport and bool(self.mail_default_sender and self.public_url)

    @property
    def password_reset_enabled(self) -> bool:
        """Forgot-password needs Keygen's webhooks (verified with the key) and email."""
        return self.self_service and bool(self.keygen_public_key) and self.mail_enabled


# Every setting by its environment variable's name.
SETTINGS = {f.name.upper(): f for f in fields(Settings)}


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read every setting, or raise ConfigError naming every problem at once."""
    values, problems = _read(SETTINGS, environ)
    problems += _problems(values, with_mail=not problems, earlier=problems)
    if problems:
        raise ConfigError(problems)
    return Settings(**_derive(values, given=set(values), wanted=set(_DEFAULTS)))


def check(settings: Settings) -> None:
    """The checks across settings of load_settings(), for Settings built in code."""
    problems = _problems(asdict(settings), with_mail=True)
    if problems:
        raise ConfigError(problems)


def load_some(*names: str, environ: Mapping[str, str] | None = None) -> dict[str, object]:
    """Only these settings, by field name, defaults included: for gunicorn.conf.py, which runs
    before the portal and must not fail on the others (the portal names those itself)."""
    values, problems = _read({name: SETTINGS[name] for name in names}, environ)
    if problems:
        raise ConfigError(problems)
    wanted = {SETTINGS[name].name for name in names}
    return _derive({n: _DEFAULTS[n] for n in wanted} | values, given=set(values), wanted=wanted)


_DEFAULTS = {f.name: f.default for f in fields(Settings)}


def _derive(values: dict[str, object], *, given: set[str], wanted: set[str]) -> dict:
    """Defaults that depend on other settings, for those the environment did not set."""
    if "signup_concurrency" in wanted and "signup_concurrency" not in given:
        threads = values.get("gunicorn_threads", _DEFAULTS["gunicorn_threads"])
        values["signup_concurrency"] = max(1, threads - SPARE_THREADS)
    if "log_format" in wanted and "log_format" not in given and values.get("demo_mode"):
        values["log_format"] = "text"  # the demo is read in a terminal
    return values


def _problems(
    values: Mapping[str, object], *, with_mail: bool, earlier: list[str] | None = None
) -> list[str]:
    """What is wrong with the settings taken together (each on its own was fine; ``earlier``
    names those that were not)."""

    def get(name: str):
        return values.get(name, _DEFAULTS[name])

    malformed = {problem.split(" ", 1)[0] for problem in earlier or []}
    problems = [] if malformed & {"KEYGEN_ACCOUNT_ID", "KEYGEN_API_URL"} else _keygen_problems(get)
    deadline, read_timeout = get("signup_deadline"), get("keygen_read_timeout")
    if isinstance(deadline, float) and isinstance(read_timeout, float) and deadline < read_timeout:
        problems.append("SIGNUP_DEADLINE must not be shorter than KEYGEN_READ_TIMEOUT")
    if get("captcha_provider") != "none":
        for name in ("CAPTCHA_SITE_KEY", "CAPTCHA_SECRET_KEY"):
            if not get(SETTINGS[name].name):
                problems.append(f"{name} is required when CAPTCHA_PROVIDER is set")
        if not (get("public_url") or get("trusted_hosts")):
            problems.append(
                "CAPTCHA_PROVIDER needs PUBLIC_URL or TRUSTED_HOSTS: an answer counts only if it "
                "was given on this portal's host name"
            )
    if get("captcha_action") and get("captcha_provider") != "turnstile":
        problems.append(
            "CAPTCHA_ACTION is Turnstile's: set it only with CAPTCHA_PROVIDER=turnstile"
        )
    if get("terms_url") and not get("terms_version"):
        problems.append("TERMS_VERSION is required when TERMS_URL is set (each consent names it)")
    api_url = get("keygen_api_url")
    if get("demo_mode") and isinstance(api_url, str) and not checks.is_loopback(_host(api_url)):
        problems.append(
            "DEMO_MODE is for the built-in Keygen emulator on this machine (its console mailer "
            "prints keys and links): with a KEYGEN_API_URL elsewhere, turn DEMO_MODE off"
        )
    if with_mail and not problems:
        problems += _mail_problems(get)
    return problems


def _keygen_problems(get: Callable[[str], object]) -> list[str]:
    """KEYGEN_ACCOUNT_ID may be left empty only where Keygen finds the account without it: a
    custom domain of Keygen Cloud, or a self-hosted Keygen (`flask doctor` says if it cannot)."""
    api_url = str(get("keygen_api_url"))
    if get("keygen_account_id") or not checks.is_keygen_cloud(api_url):
        return []
    return [
        f"KEYGEN_ACCOUNT_ID is required but not set: Keygen Cloud ({api_url}) needs it; only a "
        "custom domain or a self-hosted Keygen can do without"
    ]


def _host(url: str) -> str | None:
    return urlsplit(url).hostname


def _mail_problems(get: Callable[[str], object]) -> list[str]:
    """What email delivery needs, once the settings ask for email at all."""
    problems = []
    if get("mail_use_tls") and get("mail_use_ssl"):
        problems.append("MAIL_USE_TLS and MAIL_USE_SSL exclude each other; set one to false")
    if bool(get("mail_username")) != bool(get("mail_password")):
        problems.append("MAIL_USERNAME and MAIL_PASSWORD must be set together")
    wants = []
    if get("key_delivery") != "page":
        wants.append(f"KEY_DELIVERY={get('key_delivery')}")
    if get("require_email_verification"):
        wants.append("REQUIRE_EMAIL_VERIFICATION")
    if get("enumeration_safe"):
        wants.append("ENUMERATION_SAFE")
    if get("mail_server"):
        wants.append("MAIL_SERVER")
    if get("self_service") and get("keygen_public_key"):
        wants.append("KEYGEN_PUBLIC_KEY")  # forgot-password emails the reset link
    if not wants and not get("demo_mode"):
        return problems
    reason = " and ".join(wants) or "DEMO_MODE"
    if not get("mail_server") and not get("demo_mode"):
        problems.append(f"{reason} needs MAIL_SERVER (the SMTP server that sends the email)")
    if not get("mail_default_sender") and wants:
        problems.append(f"{reason} needs MAIL_DEFAULT_SENDER (the From address of the email)")
    if not get("public_url") and wants:
        problems.append(f"{reason} needs PUBLIC_URL (links in emails are built from it)")
    verify = get("require_email_verification")
    if get("enumeration_safe") and not verify and get("key_delivery") != "email":
        problems.append(
            "ENUMERATION_SAFE without REQUIRE_EMAIL_VERIFICATION needs KEY_DELIVERY=email "
            "(a key shown on the page would tell a new address from a known one)"
        )
    return problems


def _read(table: Mapping[str, object], environ) -> tuple[dict[str, object], list[str]]:
    environ = os.environ if environ is None else environ
    values: dict[str, object] = {}
    problems: list[str] = []
    for name, spec in table.items():
        try:
            raw = _raw(environ, name)
        except ValueError as error:
            problems.append(f"{name}: {error}")
            continue
        if raw is None or raw.strip() == "":
            if spec.default is MISSING:
                problems.append(f"{name} is required but not set")
            continue
        try:
            values[spec.name] = spec.metadata["parse"](raw)
        except ValueError as error:
            problems.append(f"{name} {_explain(error)}")
    return values, problems


def _explain(error: ValueError) -> str:
    """Our parsers speak in full sentences; int() and float() do not."""
    message = str(error)
    if message.startswith(("must", "is ")):
        return message
    return "must be a number"


def _raw(environ: Mapping[str, str], name: str) -> str | None:
    """The value of NAME, or the contents of the file named by NAME_FILE."""
    direct = environ.get(name)
    path = environ.get(f"{name}_FILE")
    if path:
        if direct:
            raise ValueError(f"set either {name} or {name}_FILE, not both")
        try:
            with open(path, encoding="utf-8") as handle:
                return handle.read().rstrip("\r\n")
        except OSError as error:
            raise ValueError(f"cannot read {name}_FILE ({error.strerror})") from None
    return direct
