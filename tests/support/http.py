"""What a browser does with the portal's form: read its hidden fields and CSRF token, fill it in,
post it back, and read the key off the answer."""

from __future__ import annotations

import re

import requests

from support.leaks import PASSWORD, secret

CSRF_FIELD = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')


def csrf_token_from(html: str) -> str:
    match = CSRF_FIELD.search(html)
    assert match, "the page has no CSRF token"
    return secret(match.group(1))


def hidden(page: str, name: str) -> str:
    return re.search(rf'name="{name}" type="hidden" value="([^"]*)"', page).group(1)


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


def sign_up_over_http(url: str, email: str) -> requests.Response:
    with requests.Session() as browser:
        page = browser.get(url + "/", timeout=10)
        data = {
            "csrf_token": csrf_token_from(page.text),
            "first_name": "Zoë",
            "last_name": "O'Hara",
            "email": email,
            "password": PASSWORD,
        }
        return browser.post(url + "/", data=data, timeout=30)


def form_submitter(client):
    """conftest's `sign_up` for another test client: the real form with a fresh CSRF token."""

    def submit(**changes):
        page = client.get("/")
        data = form_data(**changes)
        data.setdefault("csrf_token", csrf_token_from(page.get_data(as_text=True)))
        return client.post("/", data=data)

    return submit
