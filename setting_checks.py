"""What the text of a setting may be: each check turns the environment's text into a value, or
raises ValueError saying in words what is wrong ("must be ..."). config.py names the check of
each setting."""

from __future__ import annotations

import ipaddress
import re
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit

import idna

import keygen_webhooks
from keygen_api import (
    API_VERSION,
    API_VERSIONS,
    CLOUD_DOMAIN,
    MAX_PASSWORD_BYTES,
    MIN_PASSWORD_LENGTH,
    PRODUCT_TOKEN_PREFIX,
    token_kind,
)

MAX_SIGNUP_DEADLINE = 25.0  # gunicorn.conf.py kills a worker after 30 s
DEFAULT_API_VERSION = API_VERSION  # KEYGEN_API_VERSION's default


def is_loopback(host: str | None) -> bool:
    """Whether a host name or address is this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def stripped(value: str) -> str:
    return value.strip()


def boolean(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def one_of(*choices: str, upper: bool = False) -> Callable[[str], str]:
    said = ", ".join(choices[:-1]) + f" or {choices[-1]}"

    def parse(value: str) -> str:
        value = value.strip().upper() if upper else value.strip().lower()
        if value not in choices:
            raise ValueError(f"must be {said}")
        return value

    return parse


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError("must be a whole number of at least 1")
    return number


def positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise ValueError("must be a positive number of seconds")
    return number


def seconds_or_off(value: str) -> float:
    number = float(value)
    if number < 0:
        raise ValueError("must be a number of seconds, or 0 for off")
    return number


def port(value: str) -> int:
    number = int(value)
    if not 1 <= number <= 65535:
        raise ValueError("must be a TCP port, 1 to 65535")
    return number


def port_or_off(value: str) -> int:
    number = int(value)
    if not 0 <= number <= 65535:
        raise ValueError("must be a TCP port (1 to 65535), or 0 for off")
    return number


def comma_items(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def secret_key(value: str) -> str:
    if len(value) < 32:
        raise ValueError("must be at least 32 characters of random data")
    return value


def uuid_text(value: str) -> str:
    try:
        return str(uuid.UUID(value.strip()))
    except ValueError:
        raise ValueError("must be a UUID (Keygen shows it on the policy's page)") from None


def account(value: str) -> str:
    value = value.strip()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", value):
        raise ValueError("must be the account's UUID or slug")
    return value


def product_token(value: str) -> str:
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


def http_url(value: str, *, what: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be {what}")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ValueError("must use https (plain http is only allowed on this machine)")
    return value


def is_keygen_cloud(url: str) -> bool:
    """Whether a Keygen URL is Keygen Cloud's own host (not a custom domain)."""
    host = (urlsplit(url).hostname or "").lower()
    return host == CLOUD_DOMAIN or host.endswith("." + CLOUD_DOMAIN)


def api_version(value: str) -> str:
    value = value.strip().removeprefix("v")
    if value not in API_VERSIONS:
        raise ValueError(f"must be {' or '.join(API_VERSIONS)} (the API versions the portal knows)")
    return value


def environment(value: str) -> str:
    value = value.strip()
    if len(value) > 255 or _CONTROL.search(value):
        raise ValueError("must be an environment's code or id, without spaces")
    return value


def api_url(value: str) -> str:
    value = http_url(value.strip().rstrip("/"), what="an http(s) URL such as https://api.keygen.sh")
    parts = urlsplit(value)
    if parts.path or parts.query or parts.fragment:
        raise ValueError("must be the server's root URL, without a path (the portal adds /v1/...)")
    return value


def public_url(value: str) -> str:
    value = http_url(
        value.strip().rstrip("/"),
        what="the portal's public URL, such as https://licenses.example.com",
    )
    parts = urlsplit(value)
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("must not hold a query, a fragment or credentials")
    return value


def verify_url(value: str) -> str:
    return http_url(value.strip(), what="an https URL such as the provider's siteverify address")


def signup_deadline(value: str) -> float:
    seconds = positive_float(value)
    if seconds > MAX_SIGNUP_DEADLINE:
        raise ValueError(
            f"must be at most {MAX_SIGNUP_DEADLINE:g} seconds (gunicorn's timeout is 30)"
        )
    return seconds


def password_min_length(value: str) -> int:
    number = int(value)
    if not MIN_PASSWORD_LENGTH <= number <= MAX_PASSWORD_BYTES:
        raise ValueError(
            f"must be between {MIN_PASSWORD_LENGTH} (Keygen's minimum) and {MAX_PASSWORD_BYTES}"
        )
    return number


def database_url(value: str) -> str:
    value = value.strip()
    if not value.startswith(("sqlite:///", "postgresql://", "postgresql+psycopg://")):
        raise ValueError("must start with sqlite:/// or postgresql://")
    if value.removeprefix("sqlite:///") in ("", ":memory:"):
        # Each connection would get a database of its own, gone with it.
        raise ValueError("must name a SQLite file, not an in-memory database")
    return value


def metrics_token(value: str) -> str:
    value = value.strip()
    if len(value) < 16 or any(c.isspace() for c in value):
        raise ValueError("must be at least 16 random characters without spaces")
    return value


def hops(value: str) -> int:
    number = int(value)
    if not 0 <= number <= 5:
        raise ValueError("must be the number of proxies in front of the portal, 0 to 5")
    return number


def networks(value: str) -> tuple[str, ...]:
    try:
        return tuple(str(ipaddress.ip_network(part.strip())) for part in comma_items(value))
    except ValueError:
        raise ValueError("must be IP addresses or networks (CIDR), separated by commas") from None


def hosts(value: str) -> tuple[str, ...]:
    hosts = tuple(part.lower() for part in comma_items(value))
    if any(not re.fullmatch(r"\.?[a-z0-9-]+(\.[a-z0-9-]+)*|\[[0-9a-f:]+\]", h) for h in hosts):
        raise ValueError("must be host names without a port, separated by commas")
    return hosts


_STORAGES = ("memory://", "redis://", "rediss://", "redis+unix://", "redis+sentinel://")


def storage_uri(value: str) -> str:
    value = value.strip()
    if not value.startswith(_STORAGES):
        raise ValueError("must start with memory:// (one process only) or redis://")
    return value


# What the limits library reads: "10/minute", "50 per hour", "3 per 2 seconds".
_RATE = re.compile(r"\d+\s*(/|per)\s*(\d+\s*)?(second|minute|hour|day)s?", re.IGNORECASE)


def rates(value: str) -> str:
    parts = [part.strip() for part in re.split(r"[;,]", value) if part.strip()]
    if not parts or not all(_RATE.fullmatch(part) for part in parts):
        raise ValueError("must be limits such as 10/minute,50/hour (comma-separated)")
    return ",".join(parts)


def sender(value: str) -> str:
    value = value.strip()
    if not re.fullmatch(r"[^<>@\s]+@[^<>@\s]+|[^<>\x00-\x1f]*<[^<>@\s]+@[^<>@\s]+>", value):
        raise ValueError("must be an address, or a name and an address: Shop <keys@example.com>")
    return value


def hsts_seconds(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError("must be a number of seconds (63072000 is two years), or 0 for off")
    return number


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\s]")


def page_url(value: str) -> str:
    """A link the page shows: an https URL, or a path on this site."""
    value = value.strip()
    parts = urlsplit(value)
    same_site = value.startswith("/") and not value.startswith("//")
    if not (same_site or (parts.scheme == "https" and parts.hostname)) or _CONTROL.search(value):
        raise ValueError("must be an https:// URL or a path on this site starting with /")
    return value


def logo_url(value: str) -> str:
    value = page_url(value)
    if value.startswith("https://") and (urlsplit(value).username or "'" in value):
        raise ValueError("must be an https:// URL without credentials, or a path starting with /")
    return value


def hex_color(value: str) -> str:
    value = value.strip().lower()
    if re.fullmatch(r"#[0-9a-f]{3}", value):
        value = "#" + "".join(c * 2 for c in value[1:])
    if not re.fullmatch(r"#[0-9a-f]{6}", value):
        raise ValueError("must be a hex colour such as #2251cc")
    return value


def support_email(value: str) -> str:
    value = value.strip()
    if not re.fullmatch(r"[^@\s<>\"'(),;:]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}", value):
        raise ValueError("must be an email address such as support@example.com")
    return value


def terms_version(value: str) -> str:
    value = value.strip()
    if len(value) > 64 or _CONTROL.search(value):
        raise ValueError("must be a short label such as 2025-01 (at most 64 characters)")
    return value


# -- One trial per person -------------------------------------------------------------------------


def rates_or_off(value: str) -> str:
    """Limits such as 20/day, or "off" (stored as "")."""
    if value.strip().lower() == "off":
        return ""
    try:
        return rates(value)
    except ValueError:
        raise ValueError("must be limits such as 20/day (comma-separated), or off") from None


def email_domains(value: str) -> tuple[str, ...]:
    """Mail domains such as example.com (each covers its subdomains), in their ASCII spelling."""
    found = []
    for part in comma_items(value):
        domain = part.lower().lstrip("@").removeprefix("*.").strip(".")
        try:
            domain = idna.encode(domain, uts46=True).decode("ascii")
        except idna.IDNAError:
            domain = ""
        if "." not in domain:
            raise ValueError("must be mail domains such as example.com, separated by commas")
        found.append(domain)
    return tuple(found)


# -- Self-service (accounts.py) --------------------------------------------------------------


def session_minutes(value: str) -> int:
    number = int(value)
    if not 1 <= number <= 1440:
        raise ValueError("must be a whole number of minutes, 1 to 1440 (a day)")
    return number


def reset_link_lifetime(value: str) -> float:
    """Keygen's reset token works for 24 hours (users/actions/password_controller.rb)."""
    number = float(value)
    if not 60 <= number <= 86400:
        raise ValueError("must be 60 to 86400 seconds (Keygen's reset token lasts a day)")
    return number


def keygen_public_key(value: str) -> str:
    value = value.strip()
    keygen_webhooks.public_key(value)  # raises ValueError in words
    return value


# -- Safe in every mode --------------------------------------------------------------------------


def captcha_action(value: str) -> str:
    """Turnstile's action: up to 32 letters, digits, - and _."""
    value = value.strip()
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", value):
        raise ValueError("must be up to 32 letters, digits, - and _, such as signup")
    return value
