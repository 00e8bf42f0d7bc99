"""Logging: one JSON object per line, carrying the ids that tie a line to a request, a signup
and a Keygen request. Used for the portal's own lines and for gunicorn's (gunicorn.conf.py).

Every line has a ``request_id``: the HTTP request's (the proxy's X-Request-ID when well formed),
else the background pass's (``scope()``, e.g. one reconciler pass), else ``pid-N`` for what a
process says about itself (start, stop), so that a line can always be grouped with its kin."""

from __future__ import annotations

import contextvars
import json
import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

# Attributes a log call may add with extra={...}, copied into the JSON object when present.
CORRELATION = ("signup_id", "keygen_request_id")

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
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # One line, whatever the message holds: a name with a line break cannot forge a line.
        return json.dumps(entry, ensure_ascii=False, default=str)


def _request_id(record: logging.LogRecord) -> str:
    if record.name == "gunicorn.access" and isinstance(record.args, dict):
        echoed = record.args.get("{x-request-id}o")  # the id the portal echoed
        if echoed and echoed != "-":
            return echoed
    return (
        getattr(record, "request_id", None)
        or _current_request_id()
        or _scope.get()
        or f"pid-{record.process}"
    )


def _current_request_id() -> str | None:
    try:
        from flask import g, has_request_context
    except ImportError:  # gunicorn's master process logs before Flask is imported
        return None
    return g.get("request_id") if has_request_context() else None


def configure(level: str, *, json_lines: bool = True) -> None:
    """Log to stderr unless the host (pytest) already set up the root logger."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(
            JsonFormatter()
            if json_lines
            else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
        root.addHandler(handler)
    for name in ("app", "signup", "keygen_api", "worker", "journal", "health"):
        logging.getLogger(name).setLevel(level)
