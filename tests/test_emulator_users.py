"""The emulator's user list (GET /users), as app/controllers/api/v1/users_controller.rb `index`
answers it: the metadata filter, the roles scope, who sees whom, newest first, `limit`.

Plain `requests` over loopback with hand-written JSON:API bodies, never the portal's client.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
import requests

from keygen_emulator import Emulator, seed_contract, serve
from support.leaks import PASSWORD

JSONAPI = "application/vnd.api+json"


class Keygen:
    def __init__(self, url: str, fixture: dict):
        self.url = url
        self.fx = fixture

    def call(self, method: str, path: str, body=None, *, token: str | None = "product"):
        headers = {"Accept": JSONAPI, "Content-Type": JSONAPI}
        if token is not None:
            value = self.fx["product_token"] if token == "product" else token
            headers["Authorization"] = f"Bearer {value}"
        url = f"{self.url}/v1/accounts/acme{path}"
        return requests.request(method, url, json=body, headers=headers, timeout=10)

    def user(self, email: str, **metadata) -> str:
        attributes = {"email": email, "password": PASSWORD, "metadata": metadata}
        body = {"data": {"type": "users", "attributes": attributes}}
        response = self.call("POST", "/users", body)
        assert response.status_code == 201, response.text
        return response.json()["data"]["id"]

    def listed(self, query: str, **options) -> list[str]:
        response = self.call("GET", f"/users?{query}", **options)
        assert response.status_code == 200, response.text
        return [item["id"] for item in response.json()["data"]]


@pytest.fixture
def kg() -> Iterator[Keygen]:
    emulator = Emulator()
    fixture = seed_contract(emulator)
    server = serve(emulator)
    try:
        yield Keygen(server.url, fixture)
    finally:
        server.stop()


def test_the_metadata_filter_matches_exact_values_under_either_key_spelling(kg):
    jane = kg.user("jane+1@gmail.com", canonicalEmail="jane@gmail.com")
    kg.user("janet@gmail.com", canonicalEmail="janet@gmail.com")
    kg.user("old@example.com")  # created before any canonical form: no such key
    assert kg.listed("metadata[canonicalEmail]=jane@gmail.com") == [jane]
    assert kg.listed("metadata[canonical_email]=jane@gmail.com") == [jane]  # stored underscored
    assert kg.listed("metadata[canonicalEmail]=JANE@gmail.com") == []  # JSON containment: exact
    assert kg.listed("metadata[canonicalEmail]=jane") == []


def test_the_filter_reads_numbers_and_booleans_as_keygen_casts_them(kg):
    number = kg.user("n@example.com", seats=3)
    text = kg.user("t@example.com", seats="3")
    flag = kg.user("f@example.com", trial=True)
    assert sorted(kg.listed("metadata[seats]=3")) == sorted([number, text])
    assert kg.listed("metadata[trial]=true") == [flag]
    assert kg.listed("metadata[seats]=3&metadata[trial]=true") == []  # every filter must hold


def test_newest_first_ten_by_default_and_limit_checked(kg):
    ids = [kg.user(f"u{n}@example.com", batch="b") for n in range(12)]
    assert kg.listed("metadata[batch]=b") == ids[::-1][:10]
    assert kg.listed("metadata[batch]=b&limit=100") == ids[::-1]
    response = kg.call("GET", "/users?limit=101")
    assert response.status_code == 400
    assert response.json()["errors"][0]["source"] == {"parameter": "limit"}


def test_a_product_sees_every_user_with_the_role_user_and_no_admin(kg):
    """`User.accessible_by` gives a product all users with the role user, whoever's licenses
    they hold; the `roles` scope leaves admins out for everyone."""
    jane = kg.user("jane@example.com", tag="x")
    assert kg.listed("metadata[tag]=x", token=kg.fx["product_token2"]) == [jane]
    everyone = kg.listed("limit=100", token=kg.fx["admin_token"])
    assert kg.fx["admin"] not in everyone
    assert jane in everyone


def test_a_user_sees_only_itself_and_no_token_is_a_401(kg):
    jane = kg.user("jane@example.com", tag="x")
    kg.user("john@example.com", tag="x")
    credentials = base64.b64encode(f"jane@example.com:{PASSWORD}".encode()).decode()
    login = requests.post(
        f"{kg.url}/v1/accounts/acme/tokens",
        headers={"Accept": JSONAPI, "Authorization": f"Basic {credentials}"},
        timeout=10,
    )
    assert login.status_code == 201, login.text
    token = login.json()["data"]["attributes"]["token"]
    assert kg.listed("metadata[tag]=x", token=token) == [jane]
    assert kg.call("GET", "/users", token=None).status_code == 401
