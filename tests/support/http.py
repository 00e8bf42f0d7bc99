"""What a browser does with the portal's form: read its hidden fields and CSRF token, fill it in,
post it back, and read the key off the answer."""

from __future__ import annotations

import re

from support.leaks import PASSWORD, secret

CSRF_FIELD = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')


def csrf_token_from(html: str) -> str:
    match = CSRF_FIELD.search(html)
    assert match, "the page has no CSRF token"
    return secret(match.group(1))


def form_data(**changes) -> dict[str, str]:
    data = {
        "first_name": "Clark",
        "last_name": "Kent",
        "email": "clark@example.com",
        "password": PASSWORD,
    }
    data.update(changes)
    if data.get("password"):
        secret(data["password"])
    return {k: v for k, v in data.items() if v is not None}


def issued_key(html: str) -> str:
    match = re.search(r'id="license-key"[^>]*>([^<]+)<', html)
    assert match, "the page shows no license key"
    return secret(match.group(1).strip())
