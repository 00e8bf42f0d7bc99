"""Every setting of the portal: its name, default, type and whether it is required.

Each setting is read from the environment variable of the same name, or from the file named by
``NAME_FILE`` (Docker secrets). A missing or malformed value stops the start with one message that
lists every problem. No secret has a default.
"""

from __future__ import annotations

import ipaddress
import os
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

KEYGEN_MIN_PASSWORD = 6  # Keygen refuses shorter passwords (user.rb: length minimum 6)
BCRYPT_MAX_BYTES = 72  # Keygen hashes with bcrypt, which silently ignores bytes past 72

# Prefixes of Keygen tokens that are not product tokens (keygen-contract.md §6.5).
_OTHER_TOKEN_KINDS = {
    "admin": "an admin token",
    "user": "a user token",
    "activ": "a license activation token",
    "env": "an environment token",
    "dev": "a developer token",
    "sales": "a sales-agent token",
    "spprt": "a support-agent token",
    "read": "a read-only token",
}


class ConfigError(Exception):
    """The settings are unusable; ``problems`` lists each one in plain words."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("The portal cannot start:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class Settings:
    keygen_account_id: str
    keygen_product_token: str = field(repr=False)
    keygen_policy_id: str
    secret_key: str = field(repr=False)
    keygen_api_url: str = "https://api.keygen.sh"
    keygen_connect_timeout: float = 3.05
    keygen_read_timeout: float = 10.0
    signup_deadline: float = 20.0
    password_min_length: int = 8
    product_name: str = ""
    cookie_secure: bool = True
    demo_mode: bool = False
    log_level: str = "INFO"
    log_format: str = "json"
    database_url: str = field(default="", repr=False)  # "": SQLite in the instance folder
    web_concurrency: int = 2  # gunicorn worker processes (gunicorn.conf.py)
    gunicorn_threads: int = 16  # threads per worker process (gunicorn.conf.py)
    signup_concurrency: int = 14  # unless set: gunicorn_threads minus SPARE_THREADS
    reconcile_interval: float = 30.0
    reconcile_give_up_after: float = 86400.0
    stale_signup_after: float = 900.0
    test_crash_at: str = ""
    metrics_token: str = field(default="", repr=False)  # "": /metrics for loopback only
    trusted_proxy_hops: int = 0  # 0: X-Forwarded-* are ignored
    trusted_proxies: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    trusted_hosts: tuple[str, ...] = ()  # (): any Host
    ratelimit_storage_uri: str = field(default="memory://", repr=False)  # may hold a password
    ratelimit_per_ip: str = "10/minute,50/hour"
    ratelimit_per_email: str = "5/hour"
    keygen_max_rps: int = 4
    min_submit_seconds: float = 0.0
    metrics_port: int = 0  # 0: /metrics on the portal's own port
    hsts_seconds: int = 63072000  # two years; sent on HTTPS only; 0: off
    captcha_provider: str = "none"  # none, turnstile, hcaptcha or recaptcha
    captcha_site_key: str = ""
    captcha_secret_key: str = field(default="", repr=False)
    captcha_verify_url: str = ""  # "": the provider's own siteverify URL
    captcha_timeout: float = 5.0
    # Key delivery by email (mailer.py, delivery.py).
    mail_server: str = ""  # "": no SMTP (the demo prints mail to the console instead)
    mail_port: int = 587
    mail_use_tls: bool = True
    mail_use_ssl: bool = False
    mail_username: str = ""
    mail_password: str = field(default="", repr=False)
    mail_default_sender: str = ""
    mail_timeout: float = 10.0
    mail_give_up_after: float = 259200.0
    mail_retry_delay: float = 30.0
    outbox_interval: float = 5.0
    key_delivery: str = "page"  # page | email | both
    public_url: str = ""
    require_email_verification: bool = False
    verification_link_lifetime: float = 86400.0
    unverified_user_lifetime: float = 172800.0
    enumeration_safe: bool = False
    ratelimit_recovery_per_ip: str = "5/minute,20/hour"
    ratelimit_recovery_per_email: str = "3/hour"

    # Branding and consent (README "The page"): "" means none.
    brand_logo_url: str = ""
    brand_accent_color: str = ""  # "#rrggbb"
    support_email: str = ""
    terms_url: str = ""  # when set, the form asks for consent and Keygen keeps a record of it
    privacy_url: str = ""
    terms_version: str = ""

    admission_wait: float = 2.0
    admission_backlog: float = 60.0

    @property
    def mail_enabled(self) -> bool:
        """Whether the portal sends email: through an SMTP server, or the demo's console."""
        transport = bool(self.mail_server) or self.demo_mode
        return transport and bool(self.mail_default_sender and self.public_url)

    @property
    def hides_accounts(self) -> bool:
        """New and existing addresses get the same answer (always so with verification)."""
        return self.enumeration_safe or self.require_email_verification


def _text(value: str) -> str:
    return value.strip()


def _secret_key(value: str) -> str:
    if len(value) < 32:
        raise ValueError("must be at least 32 characters of random data")
    return value


def _uuid(value: str) -> str:
    try:
        return str(uuid.UUID(value.strip()))
    except ValueError:
        raise ValueError("must be a UUID (Keygen shows it on the policy's page)") from None


def _account(value: str) -> str:
    value = value.strip()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", value):
        raise ValueError("must be the account's UUID or slug")
    return value


def _product_token(value: str) -> str:
    value = value.strip()
    if not value or any(c.isspace() for c in value):
        raise ValueError("must be a Keygen token without spaces")
    try:
        uuid.UUID(value)
    except ValueError:
        pass
    else:
        raise ValueError("is a token's id; use the token value (it starts with 'prod-')")
    kind = _OTHER_TOKEN_KINDS.get(value.split("-", 1)[0])
    if kind:
        raise ValueError(f"is {kind}; the portal needs a product token (it starts with 'prod-')")
    return value


def _api_url(value: str) -> str:
    value = value.strip().rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http(s) URL such as https://api.keygen.sh")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ValueError("must use https (plain http is only allowed on this machine)")
    if parts.path not in ("",) or parts.query or parts.fragment:
        raise ValueError("must be the server's root URL, without a path (the portal adds /v1/...)")
    return value


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise ValueError("must be a positive number of seconds")
    return number


MAX_SIGNUP_DEADLINE = 25.0  # gunicorn.conf.py kills a worker after 30 s


def _signup_deadline(value: str) -> float:
    seconds = _positive_float(value)
    if seconds > MAX_SIGNUP_DEADLINE:
        raise ValueError(
            f"must be at most {MAX_SIGNUP_DEADLINE:g} seconds (gunicorn's timeout is 30)"
        )
    return seconds


def _password_min_length(value: str) -> int:
    number = int(value)
    if not KEYGEN_MIN_PASSWORD <= number <= BCRYPT_MAX_BYTES:
        raise ValueError(
            f"must be between {KEYGEN_MIN_PASSWORD} (Keygen's minimum) and {BCRYPT_MAX_BYTES}"
        )
    return number


def _log_format(value: str) -> str:
    value = value.strip().lower()
    if value not in ("json", "text"):
        raise ValueError("must be json or text")
    return value


def _database_url(value: str) -> str:
    value = value.strip()
    if not value.startswith(("sqlite:///", "postgresql://", "postgresql+psycopg://")):
        raise ValueError("must start with sqlite:/// or postgresql://")
    if value.removeprefix("sqlite:///") in ("", ":memory:"):
        # Each connection would get a database of its own, gone with it.
        raise ValueError("must name a SQLite file, not an in-memory database")
    return value


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError("must be a whole number of at least 1")
    return number


def _seconds_or_off(value: str) -> float:
    number = float(value)
    if number < 0:
        raise ValueError("must be a number of seconds, or 0 for off")
    return number


def _port_or_off(value: str) -> int:
    number = int(value)
    if not 0 <= number <= 65535:
        raise ValueError("must be a TCP port (1 to 65535), or 0 for off")
    return number


def _metrics_token(value: str) -> str:
    value = value.strip()
    if len(value) < 16 or any(c.isspace() for c in value):
        raise ValueError("must be at least 16 random characters without spaces")
    return value


def _hops(value: str) -> int:
    number = int(value)
    if not 0 <= number <= 5:
        raise ValueError("must be the number of proxies in front of the portal, 0 to 5")
    return number


def _networks(value: str) -> tuple[str, ...]:
    try:
        return tuple(str(ipaddress.ip_network(part.strip())) for part in _items(value))
    except ValueError:
        raise ValueError("must be IP addresses or networks (CIDR), separated by commas") from None


def _hosts(value: str) -> tuple[str, ...]:
    hosts = tuple(part.lower() for part in _items(value))
    if any(not re.fullmatch(r"\.?[a-z0-9-]+(\.[a-z0-9-]+)*|\[[0-9a-f:]+\]", h) for h in hosts):
        raise ValueError("must be host names without a port, separated by commas")
    return hosts


def _items(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


_STORAGES = ("memory://", "redis://", "rediss://", "redis+unix://", "redis+sentinel://")


def _storage_uri(value: str) -> str:
    value = value.strip()
    if not value.startswith(_STORAGES):
        raise ValueError("must start with memory:// (one process only) or redis://")
    return value


# What the limits library reads: "10/minute", "50 per hour", "3 per 2 seconds".
_RATE = re.compile(r"\d+\s*(/|per)\s*(\d+\s*)?(second|minute|hour|day)s?", re.IGNORECASE)


def _rates(value: str) -> str:
    parts = [part.strip() for part in re.split(r"[;,]", value) if part.strip()]
    if not parts or not all(_RATE.fullmatch(part) for part in parts):
        raise ValueError("must be limits such as 10/minute,50/hour (comma-separated)")
    return ",".join(parts)


def _crash_point(value: str) -> str:
    value = value.strip()
    if value not in ("after_user_created", "after_license_created"):
        raise ValueError("must be after_user_created or after_license_created (tests only)")
    return value


def _port(value: str) -> int:
    number = int(value)
    if not 1 <= number <= 65535:
        raise ValueError("must be a TCP port, 1 to 65535")
    return number


def _sender(value: str) -> str:
    value = value.strip()
    if not re.fullmatch(r"[^<>@\s]+@[^<>@\s]+|[^<>\x00-\x1f]*<[^<>@\s]+@[^<>@\s]+>", value):
        raise ValueError("must be an address, or a name and an address: Shop <keys@example.com>")
    return value


def _key_delivery(value: str) -> str:
    value = value.strip().lower()
    if value not in ("page", "email", "both"):
        raise ValueError("must be page, email or both")
    return value


def _public_url(value: str) -> str:
    value = value.strip().rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be the portal's public URL, such as https://licenses.example.com")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ValueError("must use https (plain http is only allowed on this machine)")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("must not hold a query, a fragment or credentials")
    return value


def _mail_problems(values: dict[str, object]) -> list[str]:
    """What email delivery needs, once the settings ask for email at all."""

    def get(name: str):
        return values.get(name, getattr(Settings, name))

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
    if verify and get("verification_link_lifetime") > get("unverified_user_lifetime"):
        problems.append("VERIFICATION_LINK_LIFETIME must not exceed UNVERIFIED_USER_LIFETIME")
    return problems


def check_mail(settings: Settings) -> None:
    """The email checks of load_settings(), for Settings built in code (tests, tools)."""
    problems = _mail_problems(
        {name: getattr(settings, name) for name in Settings.__dataclass_fields__}
    )
    if problems:
        raise ConfigError(problems)


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def _log_level(value: str) -> str:
    level = value.strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
    return level


def _hsts_seconds(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError("must be a number of seconds (63072000 is two years), or 0 for off")
    return number


CAPTCHA_PROVIDERS = ("none", "turnstile", "hcaptcha", "recaptcha")


def _captcha_provider(value: str) -> str:
    value = value.strip().lower()
    if value not in CAPTCHA_PROVIDERS:
        raise ValueError("must be none, turnstile, hcaptcha or recaptcha")
    return value


def _verify_url(value: str) -> str:
    value = value.strip()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an https URL such as the provider's siteverify address")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ValueError("must use https (plain http is only allowed on this machine)")
    return value


# -- Branding and consent ------------------------------------------------------------------------


def _page_url(value: str) -> str:
    """A link the page shows: an https URL, or a path on this site."""
    value = value.strip()
    parts = urlsplit(value)
    same_site = value.startswith("/") and not value.startswith("//")
    if not (same_site or (parts.scheme == "https" and parts.hostname)) or _CONTROL.search(value):
        raise ValueError("must be an https:// URL or a path on this site starting with /")
    return value


def _logo_url(value: str) -> str:
    value = _page_url(value)
    if value.startswith("https://") and (urlsplit(value).username or "'" in value):
        raise ValueError("must be an https:// URL without credentials, or a path starting with /")
    return value


def _hex_color(value: str) -> str:
    value = value.strip().lower()
    if re.fullmatch(r"#[0-9a-f]{3}", value):
        value = "#" + "".join(c * 2 for c in value[1:])
    if not re.fullmatch(r"#[0-9a-f]{6}", value):
        raise ValueError("must be a hex colour such as #2251cc")
    return value


def _support_email(value: str) -> str:
    value = value.strip()
    if not re.fullmatch(r"[^@\s<>\"'(),;:]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}", value):
        raise ValueError("must be an email address such as support@example.com")
    return value


def _terms_version(value: str) -> str:
    value = value.strip()
    if len(value) > 64 or _CONTROL.search(value):
        raise ValueError("must be a short label such as 2025-01 (at most 64 characters)")
    return value


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\s]")


# name -> (Settings field, parser, required). Defaults live on Settings.
SETTINGS: dict[str, tuple[str, Callable[[str], object], bool]] = {
    "KEYGEN_API_URL": ("keygen_api_url", _api_url, False),
    "KEYGEN_ACCOUNT_ID": ("keygen_account_id", _account, True),
    "KEYGEN_PRODUCT_TOKEN": ("keygen_product_token", _product_token, True),
    "KEYGEN_POLICY_ID": ("keygen_policy_id", _uuid, True),
    "SECRET_KEY": ("secret_key", _secret_key, True),
    "KEYGEN_CONNECT_TIMEOUT": ("keygen_connect_timeout", _positive_float, False),
    "KEYGEN_READ_TIMEOUT": ("keygen_read_timeout", _positive_float, False),
    "SIGNUP_DEADLINE": ("signup_deadline", _signup_deadline, False),
    "PASSWORD_MIN_LENGTH": ("password_min_length", _password_min_length, False),
    "PRODUCT_NAME": ("product_name", _text, False),
    "COOKIE_SECURE": ("cookie_secure", _bool, False),
    "DEMO_MODE": ("demo_mode", _bool, False),
    "LOG_LEVEL": ("log_level", _log_level, False),
    "LOG_FORMAT": ("log_format", _log_format, False),
    "DATABASE_URL": ("database_url", _database_url, False),
    "WEB_CONCURRENCY": ("web_concurrency", _positive_int, False),
    "GUNICORN_THREADS": ("gunicorn_threads", _positive_int, False),
    "SIGNUP_CONCURRENCY": ("signup_concurrency", _positive_int, False),
    "RECONCILE_INTERVAL": ("reconcile_interval", _seconds_or_off, False),
    "RECONCILE_GIVE_UP_AFTER": ("reconcile_give_up_after", _positive_float, False),
    "STALE_SIGNUP_AFTER": ("stale_signup_after", _positive_float, False),
    "TEST_CRASH_AT": ("test_crash_at", _crash_point, False),
    "METRICS_TOKEN": ("metrics_token", _metrics_token, False),
    "TRUSTED_PROXY_HOPS": ("trusted_proxy_hops", _hops, False),
    "TRUSTED_PROXIES": ("trusted_proxies", _networks, False),
    "TRUSTED_HOSTS": ("trusted_hosts", _hosts, False),
    "RATELIMIT_STORAGE_URI": ("ratelimit_storage_uri", _storage_uri, False),
    "RATELIMIT_PER_IP": ("ratelimit_per_ip", _rates, False),
    "RATELIMIT_PER_EMAIL": ("ratelimit_per_email", _rates, False),
    "KEYGEN_MAX_RPS": ("keygen_max_rps", _positive_int, False),
    "MIN_SUBMIT_SECONDS": ("min_submit_seconds", _seconds_or_off, False),
    "METRICS_PORT": ("metrics_port", _port_or_off, False),
    "HSTS_SECONDS": ("hsts_seconds", _hsts_seconds, False),
    "CAPTCHA_PROVIDER": ("captcha_provider", _captcha_provider, False),
    "CAPTCHA_SITE_KEY": ("captcha_site_key", _text, False),
    "CAPTCHA_SECRET_KEY": ("captcha_secret_key", _text, False),
    "CAPTCHA_VERIFY_URL": ("captcha_verify_url", _verify_url, False),
    "CAPTCHA_TIMEOUT": ("captcha_timeout", _positive_float, False),
    "MAIL_SERVER": ("mail_server", _text, False),
    "MAIL_PORT": ("mail_port", _port, False),
    "MAIL_USE_TLS": ("mail_use_tls", _bool, False),
    "MAIL_USE_SSL": ("mail_use_ssl", _bool, False),
    "MAIL_USERNAME": ("mail_username", _text, False),
    "MAIL_PASSWORD": ("mail_password", str, False),
    "MAIL_DEFAULT_SENDER": ("mail_default_sender", _sender, False),
    "MAIL_TIMEOUT": ("mail_timeout", _positive_float, False),
    "MAIL_GIVE_UP_AFTER": ("mail_give_up_after", _positive_float, False),
    "MAIL_RETRY_DELAY": ("mail_retry_delay", _positive_float, False),
    "OUTBOX_INTERVAL": ("outbox_interval", _seconds_or_off, False),
    "KEY_DELIVERY": ("key_delivery", _key_delivery, False),
    "PUBLIC_URL": ("public_url", _public_url, False),
    "REQUIRE_EMAIL_VERIFICATION": ("require_email_verification", _bool, False),
    "VERIFICATION_LINK_LIFETIME": ("verification_link_lifetime", _positive_float, False),
    "UNVERIFIED_USER_LIFETIME": ("unverified_user_lifetime", _positive_float, False),
    "ENUMERATION_SAFE": ("enumeration_safe", _bool, False),
    "RATELIMIT_RECOVERY_PER_IP": ("ratelimit_recovery_per_ip", _rates, False),
    "RATELIMIT_RECOVERY_PER_EMAIL": ("ratelimit_recovery_per_email", _rates, False),
    "BRAND_LOGO_URL": ("brand_logo_url", _logo_url, False),
    "BRAND_ACCENT_COLOR": ("brand_accent_color", _hex_color, False),
    "SUPPORT_EMAIL": ("support_email", _support_email, False),
    "TERMS_URL": ("terms_url", _page_url, False),
    "PRIVACY_URL": ("privacy_url", _page_url, False),
    "TERMS_VERSION": ("terms_version", _terms_version, False),
    "ADMISSION_WAIT": ("admission_wait", _seconds_or_off, False),
    "ADMISSION_BACKLOG": ("admission_backlog", _seconds_or_off, False),
}


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read every setting, or raise ConfigError naming every problem at once."""
    values, problems = _read(SETTINGS, environ)
    deadline = values.get("signup_deadline", Settings.signup_deadline)
    read_timeout = values.get("keygen_read_timeout", Settings.keygen_read_timeout)
    if isinstance(deadline, float) and isinstance(read_timeout, float) and deadline < read_timeout:
        problems.append("SIGNUP_DEADLINE must not be shorter than KEYGEN_READ_TIMEOUT")
    if values.get("captcha_provider", "none") != "none":
        for name in ("CAPTCHA_SITE_KEY", "CAPTCHA_SECRET_KEY"):
            if not values.get(SETTINGS[name][0]):
                problems.append(f"{name} is required when CAPTCHA_PROVIDER is set")
    if values.get("terms_url") and not values.get("terms_version"):
        problems.append("TERMS_VERSION is required when TERMS_URL is set (each consent names it)")
    if not problems:
        problems.extend(_mail_problems(values))
    if problems:
        raise ConfigError(problems)
    if "signup_concurrency" not in values:
        threads = values.get("gunicorn_threads", Settings.gunicorn_threads)
        values["signup_concurrency"] = signup_slots(threads)  # type: ignore[arg-type]
    return Settings(**values)  # type: ignore[arg-type]


SPARE_THREADS = 2  # per process, for pages and /healthz while every signup waits on Keygen


def signup_slots(threads: int) -> int:
    """SIGNUP_CONCURRENCY's default: every thread but the spare ones (at least one)."""
    return max(1, threads - SPARE_THREADS)


def load_some(*names: str, environ: Mapping[str, str] | None = None) -> dict[str, object]:
    """Only these settings, by field name, defaults included: for gunicorn.conf.py, which runs
    before the portal and must not fail on the others (the portal names those itself)."""
    values, problems = _read({name: SETTINGS[name] for name in names}, environ)
    if problems:
        raise ConfigError(problems)
    defaults = {SETTINGS[name][0]: getattr(Settings, SETTINGS[name][0], None) for name in names}
    return defaults | values


def _read(table, environ) -> tuple[dict[str, object], list[str]]:
    environ = os.environ if environ is None else environ
    values: dict[str, object] = {}
    problems: list[str] = []
    for name, (attr, parse, required) in table.items():
        try:
            raw = _raw(environ, name)
        except ValueError as error:
            problems.append(f"{name}: {error}")
            continue
        if raw is None or raw.strip() == "":
            if required:
                problems.append(f"{name} is required but not set")
            continue
        try:
            values[attr] = parse(raw)
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
