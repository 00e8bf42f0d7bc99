"""Secrets: the ones the tests use, every one they see, and the search of the run's logs for them.
conftest.py runs the search when the session ends; one hit fails the run."""

from __future__ import annotations

import re

from support.paths import LOG_DIR

SECRETS: set[str] = set()  # every secret a test used or saw; none may appear in a log

PASSWORD = "kent<3lois-and-krypton"
SECRET_KEY = "test-secret-key-" + "k" * 32
KEY_PATTERN = re.compile(r"^[0-9A-F]{6}(-[0-9A-F]{6}){4}-V3$")


def secret(value: str) -> str:
    """Remember a value that must never appear in a log, and return it."""
    SECRETS.add(value)
    return value


def find_leaks() -> list[tuple[str, str]]:
    """(file, what kind of secret) for every secret found in a log file."""
    leaks = []
    for path in sorted(LOG_DIR.rglob("*")):
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for value in SECRETS:
            if len(value) >= 6 and value in text:
                leaks.append((path.name, describe_secret(value)))
    return leaks


def describe_secret(value: str) -> str:
    if KEY_PATTERN.match(value):
        return "a license key"
    if value.startswith(("prod-", "admin-", "user-")):
        return "a Keygen token"
    return "a password or secret key"
