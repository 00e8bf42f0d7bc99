"""Logging: one JSON object per line, carrying the ids that tie a line to a request, a signup
and a Keygen request, with secrets masked. Used for the portal's own lines and for gunicorn's
(gunicorn.conf.py).

Every line has a ``request_id``: the HTTP request's (the proxy's X-Request-ID when well formed),
else the background pass's (``scope()``, e.g. one reconciler pass), else ``pid-N`` for what a
process says about itself (start, stop), so that a line can always be grouped with its kin."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import string
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

PORTAL = "portal"  # the parent of every logger of the portal's own modules

# Attributes a log call may add with extra={...}, copied into the JSON object when present.
CORRELATION = ("signup_id", "keygen_request_id", "keygen_reason")

_scope: contextvars.ContextVar[str | None] = contextvars.ContextVar("log_scope", default=None)


@contextmanager
def scope(kind: str) -> Iterator[str]:
    """Give the lines logged inside (in this thread) one id of their own, ``KIND-xxxxxxxxxxxx``."""
    token = _scope.set(f"{kind}-{uuid.uuid4().hex[:12]}")
    try:
        yield _scope.get()
    finally:
        _scope.reset(token)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": _request_id(record),
        }
        for name in CORRELATION:
            value = getattr(record, name, None)
            if value:
                entry[name] = value
        if record.exc_info or record.exc_text:
            entry["exception"] = record.exc_text or self.formatException(record.exc_info)
        # One line, whatever the message holds: a name with a line break cannot forge a line.
        return json.dumps(entry, ensure_ascii=False, default=str)


def _request_id(record: logging.LogRecord) -> str:
    if getattr(record, "request_id", None):
        return record.request_id
    if record.name == "gunicorn.access" and isinstance(record.args, dict):
        echoed = record.args.get("{x-request-id}o")  # the id the portal echoed
        if echoed and echoed != "-":
            return echoed
    return _current_request_id() or _scope.get() or f"pid-{record.process}"


def _current_request_id() -> str | None:
    try:
        from flask import g, has_request_context
    except ImportError:  # gunicorn's master process logs before Flask is imported
        return None
    return g.get("request_id") if has_request_context() else None


def configure(level: str, *, json_lines: bool = True, secrets: Iterable[str] = ()) -> None:
    """Log to stderr unless the host (pytest) already set up the root logger; mask `secrets`
    and everything that looks like one in every line any root handler writes."""
    remember_secrets(secrets)
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(
            JsonFormatter()
            if json_lines
            else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
        root.addHandler(handler)
    for handler in root.handlers:
        if not any(isinstance(f, RedactSecrets) for f in handler.filters):
            handler.addFilter(RedactSecrets())
    logging.getLogger(PORTAL).setLevel(level)  # every module's logger is a child: portal.<module>


# -- Redaction ---------------------------------------------------------------------------------

MASK = "[redacted]"
_known: set[str] = set()  # this process's own secrets (product token, keys), set by configure()
_known_longest_first: tuple[str, ...] = ()  # _known, longest first (a secret within another)
_known_lock = threading.Lock()

# What a secret looks like, wherever a line came from (a library, an exception, a header dump).
# Each pattern masks what follows its first group (the name), or its whole match when it has no
# group. Beside each, words of which a line must hold one for the pattern to be searched for at
# all: most lines, access lines above all, hold none.
#
# A log line is whatever a client sent, so every pattern runs in one pass over it: no part can
# give back what it took (possessive quantifiers) and a run of characters is entered only at its
# start (a lookbehind, not \b), so "a.a.a.a…" or "a-a-a-…" costs one pass, not one per
# character. The names are matched in a lower-cased copy of the line, which is much faster than
# matching them case-insensitively (tests/test_logs.py times a 16 KiB hostile line).
_NAMED = [
    # Headers, as text ("Cookie: a=b; c=d"), in a dict or in a list of pairs.
    (
        re.compile(
            r"""((?:authorization|proxy-authorization|cookie|set-cookie|x-csrf-token|x-csrftoken)"""
            r"""['"]?\s*+[:=,]\s*+)(?:'[^']*+'|"[^"]*+"|[^\r\n"']+)"""
        ),
        ("authorization", "cookie", "csrf"),
    ),
    # Bearer and Basic credentials, wherever they stand.
    (re.compile(r"((?<![a-z0-9_])(?:bearer|basic)\s++)[a-z0-9._~+/=-]{8,}+"), ("bearer", "basic")),
    # name=value in query strings, form bodies and settings dumps.
    (
        re.compile(
            r"((?:password|passwd|pwd|secret|token|csrf_token|api_key|apikey|secret_key|"
            r"license_key|key|session)=)[^&\s\"',;]++"
        ),
        ("pass", "pwd", "secret", "token", "key", "session"),
    ),
    # "password": "…" in JSON or a repr.
    (
        re.compile(
            r"""(['"](?:password|token|csrf_token|secret|secret_key|key|license_key)['"]\s*+:\s*+)"""
            r"""(?:'[^']*+'|"[^"]*+")"""
        ),
        ("password", "token", "secret", "key"),
    ),
    # A password in a database or Redis URL: scheme://user:PASSWORD@host.
    (re.compile(r"((?<![a-z0-9+.-])[a-z][a-z0-9+.-]*+://[^:/@\s]*+:)[^@\s/]++(?=@)"), ("://",)),
    # A verification link's token (delivery.py): whoever has it may confirm that signup.
    (re.compile(r"(/verify/)[^\s\"'?#/]++"), ("/verify/",)),
    # A password reset link's token (accounts.py): whoever has it may set the password.
    (re.compile(r"(/reset/)[^\s\"'?#/]++"), ("/reset/",)),
]
# Matched in the line as it is: their case is part of what they look like.
_TOKEN_KINDS = ("prod", "admin", "user", "activ", "env", "dev", "sales", "spprt", "read")
_CASED = [
    # Keygen tokens: prod-, admin-, user-, activ-, env-, dev-, sales-, spprt-, read- + hex + v3.
    (
        re.compile(rf"(?<![A-Za-z0-9_])(?:{'|'.join(_TOKEN_KINDS)})-[0-9a-f]{{32,}}+v\d\b"),
        tuple(f"{kind}-" for kind in _TOKEN_KINDS),
    ),
    # License keys: groups of capitals and digits joined by dashes (the emulator's and Keygen's
    # default formats), and Keygen's signed keys ("key/…").
    (re.compile(r"(?<![A-Za-z0-9_])[A-Z0-9]{4,}+(?:-[A-Z0-9]{4,}+){3,}\b"), ("-",)),
    (re.compile(r"(?<![A-Za-z0-9_])key/[A-Za-z0-9+/=._-]{16,}+"), ("key/",)),
    # Signed tokens of itsdangerous (Flask-WTF's CSRF token, Flask's session cookie):
    # payload.timestamp.signature.
    (
        re.compile(
            r"\.?(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{16,}+\.[A-Za-z0-9_-]{4,8}+\.[A-Za-z0-9_-]{20,}+"
        ),
        (".",),
    ),
]
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def remember_secrets(values: Iterable[str]) -> None:
    """Values to mask wherever they appear, such as KEYGEN_PRODUCT_TOKEN and SECRET_KEY."""
    global _known_longest_first
    with _known_lock:
        _known.update(value for value in values if value and len(value) >= 6)
        _known_longest_first = tuple(sorted(_known, key=len, reverse=True))


def redact(text: str) -> str:
    """The text with every known secret and everything that looks like one masked."""
    for value in _known_longest_first:
        if value in text:
            text = text.replace(value, MASK)
    lowered = text.lower()
    if len(lowered) != len(text):  # a few letters lower-case to two: keep the positions
        lowered = text.translate(_ASCII_LOWER)
    spans: list[tuple[int, int]] = []
    for line, patterns in ((lowered, _NAMED), (text, _CASED)):
        for pattern, needs in patterns:
            if any(word in line for word in needs):
                spans += [
                    (m.end(1) if m.re.groups else m.start(), m.end())
                    for m in pattern.finditer(line)
                ]
    return _masked(text, spans) if spans else text


def _masked(text: str, spans: list[tuple[int, int]]) -> str:
    """The text with each stretch that any span covers replaced by one MASK."""
    parts, kept = [], 0
    for start, end in sorted(spans):
        if end <= kept:
            continue
        if start > kept:
            parts += [text[kept:start], MASK]
        elif not parts:
            parts.append(MASK)
        kept = end
    return "".join(parts) + text[kept:]


class RedactSecrets(logging.Filter):
    """Masks secrets in a record before any handler writes it. On the root handlers (and in
    gunicorn's logconfig), so library lines and tracebacks are covered, not only ours."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            if isinstance(record.args, dict) and record.name == "gunicorn.access":
                record.request_id = record.args.get("{x-request-id}o") or None
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True
