"""What a user may be besides a password: banned, or holding a second factor (TOTP).

Second factors are ROTP's TOTP as `app/models/second_factor.rb` uses it: a base32 secret, six
digits, 30-second steps, codes up to SECOND_FACTOR_DRIFT (10) seconds old accepted, and a code
only if its step comes after the last one accepted (`verify(otp, after: last_verified_at)`), so
a code works once. Bans are `banned_at` in app/models/user.rb.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct

PERIOD = 30
DIGITS = 6
DRIFT_BEHIND = 10


def new_secret() -> str:
    """ROTP::Base32.random: 20 random bytes, 32 base32 characters."""
    return base64.b32encode(secrets.token_bytes(20)).decode()


def code_at(secret: str, step: int) -> str:
    """RFC 6238 with SHA-1 (ROTP's defaults)."""
    digest = hmac.new(base64.b32decode(secret), struct.pack(">Q", step), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    number = struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(number % 10**DIGITS).zfill(DIGITS)


def verify(factor: dict, otp: object, now: float) -> bool:
    """Whether `otp` is a current code of this factor not used before; remembers its step."""
    if not isinstance(otp, str):
        return False
    steps = range(int(now - DRIFT_BEHIND) // PERIOD, int(now) // PERIOD + 1)
    for step in steps:
        if step > factor["last"] and hmac.compare_digest(code_at(factor["secret"], step), otp):
            factor["last"] = step
            return True
    return False


def enable_second_factor(user: dict) -> str:
    """A new enabled second factor for the user; returns its secret (the authenticator's)."""
    user["second_factor"] = {"secret": new_secret(), "last": -1}
    return user["second_factor"]["secret"]
