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
    signup_concurrency: int = 6
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
    admission_wait: float = 2.0
    admission_backlog: float = 60.0


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


# What Flask-Limiter (the limits library) reads: "10/minute", "50 per hour", "3 per 2 seconds".
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
    "ADMISSION_WAIT": ("admission_wait", _seconds_or_off, False),
    "ADMISSION_BACKLOG": ("admission_backlog", _seconds_or_off, False),
}


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read every setting, or raise ConfigError naming every problem at once."""
    environ = os.environ if environ is None else environ
    values: dict[str, object] = {}
    problems: list[str] = []
    for name, (attr, parse, required) in SETTINGS.items():
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
    deadline = values.get("signup_deadline", Settings.signup_deadline)
    read_timeout = values.get("keygen_read_timeout", Settings.keygen_read_timeout)
    if isinstance(deadline, float) and isinstance(read_timeout, float) and deadline < read_timeout:
        problems.append("SIGNUP_DEADLINE must not be shorter than KEYGEN_READ_TIMEOUT")
    if problems:
        raise ConfigError(problems)
    return Settings(**values)  # type: ignore[arg-type]


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
