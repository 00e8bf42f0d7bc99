"""Every setting of the portal, declared once: its name, type, default and check.

A setting is a field of `Settings`; its environment variable is the field's name in capitals, or
``NAME_FILE`` naming a file that holds the value (Docker secrets). A field without a default is
required. A missing or malformed value stops the start with one message that lists every
problem. No secret has a default. docs/configuration.md explains each one.
"""

from __future__ import annotations

import ipaddress
import os
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from urllib.parse import urlsplit

from keygen_api import MAX_PASSWORD_BYTES, MIN_PASSWORD_LENGTH, PRODUCT_TOKEN_PREFIX, token_kind

MAX_SIGNUP_DEADLINE = 25.0  # gunicorn.conf.py kills a worker after 30 s
SPARE_THREADS = 2  # per process, for pages and /healthz while every signup waits on Keygen
CAPTCHA_PROVIDERS = ("none", "turnstile", "hcaptcha", "recaptcha")


class ConfigError(Exception):
    """The settings are unusable; ``problems`` lists each one in plain words."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("The portal cannot start:\n" + "\n".join(f"  - {p}" for p in problems))


def is_loopback(host: str | None) -> bool:
    """Whether a host name or address is this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


# -- Checks: each turns the environment's text into a value, or says what is wrong -------------


def _text(value: str) -> str:
    return value.strip()


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def _choice(*choices: str, upper: bool = False) -> Callable[[str], str]:
    said = ", ".join(choices[:-1]) + f" or {choices[-1]}"

    def parse(value: str) -> str:
        value = value.strip().upper() if upper else value.strip().lower()
        if value not in choices:
            raise ValueError(f"must be {said}")
        return value

    return parse


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError("must be a whole number of at least 1")
    return number


def _positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise ValueError("must be a positive number of seconds")
    return number


def _seconds_or_off(value: str) -> float:
    number = float(value)
    if number < 0:
        raise ValueError("must be a number of seconds, or 0 for off")
    return number


def _port(value: str) -> int:
    number = int(value)
    if not 1 <= number <= 65535:
        raise ValueError("must be a TCP port, 1 to 65535")
    return number


def _port_or_off(value: str) -> int:
    number = int(value)
    if not 0 <= number <= 65535:
        raise ValueError("must be a TCP port (1 to 65535), or 0 for off")
    return number


def _items(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


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
        raise ValueError(
            f"is a token's id; use the token value (it starts with {PRODUCT_TOKEN_PREFIX!r})"
        )
    kind = token_kind(value)
    if kind:
        raise ValueError(
            f"is {kind}; the portal needs a product token (it starts with {PRODUCT_TOKEN_PREFIX!r})"
        )
    return value


def _http_url(value: str, *, what: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be {what}")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ValueError("must use https (plain http is only allowed on this machine)")
    return value


def _api_url(value: str) -> str:
    value = _http_url(
        value.strip().rstrip("/"), what="an http(s) URL such as https://api.keygen.sh"
    )
    parts = urlsplit(value)
    if parts.path or parts.query or parts.fragment:
        raise ValueError("must be the server's root URL, without a path (the portal adds /v1/...)")
    return value


def _public_url(value: str) -> str:
    value = _http_url(
        value.strip().rstrip("/"),
        what="the portal's public URL, such as https://licenses.example.com",
    )
    parts = urlsplit(value)
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("must not hold a query, a fragment or credentials")
    return value


def _verify_url(value: str) -> str:
    return _http_url(value.strip(), what="an https URL such as the provider's siteverify address")


def _signup_deadline(value: str) -> float:
    seconds = _positive_float(value)
    if seconds > MAX_SIGNUP_DEADLINE:
        raise ValueError(
            f"must be at most {MAX_SIGNUP_DEADLINE:g} seconds (gunicorn's timeout is 30)"
        )
    return seconds


def _password_min_length(value: str) -> int:
    number = int(value)
    if not MIN_PASSWORD_LENGTH <= number <= MAX_PASSWORD_BYTES:
        raise ValueError(
            f"must be between {MIN_PASSWORD_LENGTH} (Keygen's minimum) and {MAX_PASSWORD_BYTES}"
        )
    return number


def _database_url(value: str) -> str:
    value = value.strip()
    if not value.startswith(("sqlite:///", "postgresql://", "postgresql+psycopg://")):
        raise ValueError("must start with sqlite:/// or postgresql://")
    if value.removeprefix("sqlite:///") in ("", ":memory:"):
        # Each connection would get a database of its own, gone with it.
        raise ValueError("must name a SQLite file, not an in-memory database")
    return value


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


def _sender(value: str) -> str:
    value = value.strip()
    if not re.fullmatch(r"[^<>@\s]+@[^<>@\s]+|[^<>\x00-\x1f]*<[^<>@\s]+@[^<>@\s]+>", value):
        raise ValueError("must be an address, or a name and an address: Shop <keys@example.com>")
    return value


def _hsts_seconds(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError("must be a number of seconds (63072000 is two years), or 0 for off")
    return number


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\s]")


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


# -- The settings --------------------------------------------------------------------------------


def setting(default: object = MISSING, *, parse: Callable[[str], object] = _text, secret=False):
    """A field of Settings: ``parse`` checks the environment's text and turns it into the value;
    without a default the setting is required; a ``secret`` stays out of the repr."""
    return field(default=default, repr=not secret, metadata={"parse": parse})


@dataclass(frozen=True, kw_only=True)
class Settings:
    # Keygen
    keygen_account_id: str = setting(parse=_account)
    keygen_product_token: str = setting(parse=_product_token, secret=True)
    keygen_policy_id: str = setting(parse=_uuid)
    keygen_api_url: str = setting("https://api.keygen.sh", parse=_api_url)
    keygen_connect_timeout: float = setting(3.05, parse=_positive_float)
    keygen_read_timeout: float = setting(10.0, parse=_positive_float)
    keygen_max_rps: int = setting(4, parse=_positive_int)

    # The portal
    secret_key: str = setting(parse=_secret_key, secret=True)
    product_name: str = setting("")
    password_min_length: int = setting(8, parse=_password_min_length)
    signup_deadline: float = setting(20.0, parse=_signup_deadline)
    cookie_secure: bool = setting(True, parse=_bool)
    demo_mode: bool = setting(False, parse=_bool)
    log_level: str = setting("INFO", parse=_choice("DEBUG", "INFO", "WARNING", "ERROR", upper=True))
    log_format: str = setting("json", parse=_choice("json", "text"))  # unset in the demo: text
    database_url: str = setting("", parse=_database_url, secret=True)  # "": SQLite in instance/

    # Processes, threads and the background passes
    web_concurrency: int = setting(2, parse=_positive_int)  # gunicorn worker processes
    gunicorn_threads: int = setting(16, parse=_positive_int)  # threads per worker process
    signup_concurrency: int = setting(14, parse=_positive_int)  # unset: threads minus spares
    admission_wait: float = setting(2.0, parse=_seconds_or_off)
    admission_backlog: float = setting(60.0, parse=_seconds_or_off)
    reconcile_interval: float = setting(30.0, parse=_seconds_or_off)
    reconcile_give_up_after: float = setting(86400.0, parse=_positive_float)
    stale_signup_after: float = setting(900.0, parse=_positive_float)

    # Proxies, abuse protection and metrics
    trusted_proxy_hops: int = setting(0, parse=_hops)  # 0: X-Forwarded-* are ignored
    trusted_proxies: tuple[str, ...] = setting(("127.0.0.0/8", "::1/128"), parse=_networks)
    trusted_hosts: tuple[str, ...] = setting((), parse=_hosts)  # (): any Host
    hsts_seconds: int = setting(63072000, parse=_hsts_seconds)  # two years; 0: off
    ratelimit_storage_uri: str = setting("memory://", parse=_storage_uri, secret=True)
    ratelimit_per_ip: str = setting("10/minute,50/hour", parse=_rates)
    ratelimit_per_email: str = setting("5/hour", parse=_rates)
    ratelimit_recovery_per_ip: str = setting("5/minute,20/hour", parse=_rates)
    ratelimit_recovery_per_email: str = setting("3/hour", parse=_rates)
    min_submit_seconds: float = setting(0.0, parse=_seconds_or_off)
    captcha_provider: str = setting("none", parse=_choice(*CAPTCHA_PROVIDERS))
    captcha_site_key: str = setting("")
    captcha_secret_key: str = setting("", secret=True)
    captcha_verify_url: str = setting("", parse=_verify_url)  # "": the provider's own
    captcha_timeout: float = setting(5.0, parse=_positive_float)
    metrics_token: str = setting("", parse=_metrics_token, secret=True)  # "": loopback only
    metrics_port: int = setting(0, parse=_port_or_off)  # 0: on the portal's own port

    # Email
    mail_server: str = setting("")  # "": no SMTP (the demo prints mail to the console)
    mail_port: int = setting(587, parse=_port)
    mail_use_tls: bool = setting(True, parse=_bool)
    mail_use_ssl: bool = setting(False, parse=_bool)
    mail_username: str = setting("")
    mail_password: str = setting("", parse=str, secret=True)
    mail_default_sender: str = setting("", parse=_sender)
    mail_timeout: float = setting(10.0, parse=_positive_float)
    mail_give_up_after: float = setting(259200.0, parse=_positive_float)
    mail_retry_delay: float = setting(30.0, parse=_positive_float)
    outbox_interval: float = setting(5.0, parse=_seconds_or_off)
    key_delivery: str = setting("page", parse=_choice("page", "email", "both"))
    public_url: str = setting("", parse=_public_url)
    require_email_verification: bool = setting(False, parse=_bool)
    verification_link_lifetime: float = setting(86400.0, parse=_positive_float)
    unverified_user_lifetime: float = setting(172800.0, parse=_positive_float)
    enumeration_safe: bool = setting(False, parse=_bool)

    # Branding and consent (docs/the-page.md): "" means none.
    brand_logo_url: str = setting("", parse=_logo_url)
    brand_accent_color: str = setting("", parse=_hex_color)  # "#rrggbb"
    support_email: str = setting("", parse=_support_email)
    terms_url: str = setting("", parse=_page_url)  # the form then asks for consent
    privacy_url: str = setting("", parse=_page_url)
    terms_version: str = setting("", parse=_terms_version)

    @property
    def mail_enabled(self) -> bool:
        """Whether the portal sends email: through an SMTP server, or the demo's console."""
        transport = bool(self.mail_server) or self.demo_mode
        return transport and bool(self.mail_default_sender and self.public_url)


# Every setting by its environment variable's name.
SETTINGS = {f.name.upper(): f for f in fields(Settings)}


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read every setting, or raise ConfigError naming every problem at once."""
    values, problems = _read(SETTINGS, environ)
    problems += _problems(values, with_mail=not problems)
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


def _problems(values: Mapping[str, object], *, with_mail: bool) -> list[str]:
    """What is wrong with the settings taken together (each on its own was fine)."""

    def get(name: str):
        return values.get(name, _DEFAULTS[name])

    problems = []
    deadline, read_timeout = get("signup_deadline"), get("keygen_read_timeout")
    if isinstance(deadline, float) and isinstance(read_timeout, float) and deadline < read_timeout:
        problems.append("SIGNUP_DEADLINE must not be shorter than KEYGEN_READ_TIMEOUT")
    if get("captcha_provider") != "none":
        for name in ("CAPTCHA_SITE_KEY", "CAPTCHA_SECRET_KEY"):
            if not get(SETTINGS[name].name):
                problems.append(f"{name} is required when CAPTCHA_PROVIDER is set")
    if get("terms_url") and not get("terms_version"):
        problems.append("TERMS_VERSION is required when TERMS_URL is set (each consent names it)")
    if with_mail and not problems:
        problems += _mail_problems(get)
    return problems


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
