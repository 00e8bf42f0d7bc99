"""How Keygen spells things: key casing, ids, timestamps, license keys, passwords, credentials.

Pure functions, no state. Incoming keys are underscored and outgoing ones camelCased as
`config/initializers/jsonapi.rb` and the serializers (`app/serializers/*_serializer.rb`) do.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import re
import secrets
import unicodedata
import uuid
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)


@lru_cache(maxsize=4096)
def underscore(key: str) -> str:
    """Rails' `key.underscore.parameterize(separator: '_')`, applied to every incoming key."""
    word = key.replace("::", "/")
    word = re.sub(r"([A-Z0-9]+)([A-Z][a-z])", r"\1_\2", word)
    word = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", word)
    word = word.replace("-", "_").lower()
    word = unicodedata.normalize("NFKD", word).encode("ascii", "ignore").decode()
    word = re.sub(r"[^a-z0-9\-_]+", "_", word)
    return re.sub(r"_{2,}", "_", word).strip("_")


@lru_cache(maxsize=4096)
def camel(key: str) -> str:
    """Rails' `camelize(:lower)`."""
    first, *rest = key.split("_")
    return first[:1].lower() + first[1:] + "".join(part.capitalize() for part in rest)


def underscore_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {underscore(str(k)): underscore_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [underscore_keys(v) for v in value]
    return value


def camel_keys(value: Any, *, deep: bool = True) -> Any:
    if isinstance(value, dict):
        return {camel(k): camel_keys(v) if deep else copy.deepcopy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [camel_keys(v) for v in value]
    return value


def pointer(path: list) -> str:
    """A JSON pointer with lowerCamel keys (`config/initializers/typed_params.rb`)."""
    return "".join(f"/{p}" if isinstance(p, int) else f"/{camel(p)}" for p in path)


def new_id(value: str | None) -> str:
    if value is None:
        return str(uuid.uuid4())
    if not UUID_RE.fullmatch(value):
        raise ValueError(f"not a UUID: {value!r}")
    return value.lower()


def iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    when = datetime.fromtimestamp(moment, UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def parse_time(text: str) -> float | None:
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def version_tuple(text: str) -> tuple[int, int]:
    major, minor = text.split(".")
    return int(major), int(minor)


def hash_password(password: str) -> tuple[bytes, bytes]:
    # Keygen uses bcrypt, which reads only the first 72 bytes of a password.
    salt = secrets.token_bytes(16)
    return salt, hashlib.sha256(salt + password.encode()[:72]).digest()


def password_matches(stored: tuple[bytes, bytes], password: str) -> bool:
    salt, digest = stored
    attempt = hashlib.sha256(salt + password.encode()[:72]).digest()
    return secrets.compare_digest(attempt, digest)


def license_key() -> str:
    """An unencrypted key: 16 random bytes in hex, ending in v3, in groups of 6.

    `License#generate_unencrypted_key!` in `app/models/license.rb`, with `Tokenable#generate_token`.
    """
    raw = secrets.token_hex(16)[:-2] + "v3"
    return "-".join(raw[i : i + 6] for i in range(0, len(raw), 6)).upper()


def legacy_key(license_id: str) -> str:
    """A LEGACY_ENCRYPT key: the license's id without dashes, then random hex, in groups of 32,
    ending in v1 (`License#generate_legacy_encrypted_key!` in app/models/license.rb)."""
    raw = license_id.replace("-", "") + secrets.token_hex(16)
    return "-".join(raw[i : i + 32] for i in range(0, len(raw), 32)) + "v1"


def basic_pair(credentials: str) -> tuple[str, str] | None:
    try:
        decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    user, _, password = decoded.partition(":")
    return user, password


def token_from(header: str) -> str:
    """The token in an Authorization header ('' when there is none).

    The schemes of `app/controllers/concerns/authentication.rb`: Bearer, Token, Basic with
    `token:<tok>` or `<tok>:`, and License (license keys are not emulated: never valid).
    """
    scheme, _, credentials = header.strip().partition(" ")
    scheme, credentials = scheme.lower(), credentials.strip()
    if scheme in ("bearer", "token"):
        if credentials.startswith("token="):  # Rails also reads `Token token="…"`
            credentials = credentials[6:].split(",")[0].strip().strip('"')
        return credentials
    if scheme == "basic":
        pair = basic_pair(credentials)
        if pair:
            user, password = pair
            return password if user == "token" else user if password == "" else ""
    if scheme == "license":
        return credentials
    return ""


def reject_constant(name: str) -> None:
    """For json.loads: NaN and Infinity are not JSON."""
    raise ValueError(f"{name} is not JSON")
