"""The emulator's Keygen for self-service, checked against keygen-api's source: tokens by Basic
email:password with second factors and bans, what a user token may read and delete (machines of
protected and unprotected licenses), password resets and their signed webhooks.

Every test talks to a real emulator over loopback HTTP with plain `requests` and JSON:API
written by hand, never through the portal's Keygen client.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest
import requests

from keygen_emulator import Emulator, seed_contract, serve
from support.otp import totp
from support.webhooks import signature_is_valid, webhook_receiver

JSONAPI = "application/vnd.api+json"
PASSWORD = "kent<3lois"


class Clock:
    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


class Keygen:
    def __init__(self, emulator: Emulator, url: str, fixture: dict, clock: Clock) -> None:
        self.emulator, self.url, self.fx, self.clock = emulator, url, fixture, clock

    def call(self, method, path, body=None, *, token="product", auth=None) -> requests.Response:
        headers = {"Content-Type": JSONAPI, "Accept": JSONAPI}
        token = self.fx["product_token"] if token == "product" else token
        if auth is not None:
            headers["Authorization"] = auth
        elif token is not None:
            headers["Authorization"] = f"Bearer {token}"
        data = None if body is None else json.dumps(body).encode()
        url = f"{self.url}/v1/accounts/acme{path}"
        return requests.request(method, url, data=data, headers=headers, timeout=10)

    def user(self, email: str, token: str = "product") -> str:
        body = {"data": {"type": "users", "attributes": {"email": email, "password": PASSWORD}}}
        response = self.call("POST", "/users", body, token=token)
        assert response.status_code == 201, response.text
        return response.json()["data"]["id"]

    def license(self, owner: str, policy: str | None = None) -> str:
        relationships = {
            "policy": {"data": {"type": "policies", "id": policy or self.fx["policy"]}},
            "owner": {"data": {"type": "users", "id": owner}},
        }
        body = {"data": {"type": "licenses", "relationships": relationships}}
        response = self.call("POST", "/licenses", body, token=self.fx["admin_token"])
        assert response.status_code == 201, response.text
        return response.json()["data"]["id"]

    def sign_in(self, email: str, password: str = PASSWORD, otp: str | None = None):
        pair = base64.b64encode(f"{email}:{password}".encode()).decode()
        body = None if otp is None else {"meta": {"otp": otp}}
        return self.call("POST", "/tokens", body, auth=f"Basic {pair}")

    def token_for(self, email: str) -> str:
        response = self.sign_in(email)
        assert response.status_code == 201, response.text
        return response.json()["data"]["attributes"]["token"]


@pytest.fixture
def kg() -> Iterator[Keygen]:
    clock = Clock()
    emulator = Emulator(clock=clock)
    fixture = seed_contract(emulator)
    with serve(emulator) as server:
        yield Keygen(emulator, server.url, fixture, clock)


def first_error(response: requests.Response) -> dict:
    return response.json()["errors"][0]


# -- Tokens: second factors and bans (app/controllers/concerns/authentication.rb) -------------


def test_a_second_factor_is_asked_before_the_password_and_works_once(kg):
    user = kg.user("clark@example.com")
    secret = kg.emulator.enable_second_factor(user)

    wrong_password = kg.sign_in("clark@example.com", "not the password")
    assert wrong_password.status_code == 401  # the factor first: correctness does not leak
    assert first_error(wrong_password) | {"links": None} == {
        "title": "Unauthorized",
        "detail": "second factor is required",
        "code": "OTP_REQUIRED",
        "source": {"pointer": "/meta/otp"},
        "links": None,
    }
    code = totp(secret, kg.clock.now)
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    assert first_error(kg.sign_in("clark@example.com", otp=wrong))["code"] == "OTP_INVALID"

    assert kg.sign_in("clark@example.com", otp=code).status_code == 201
    assert first_error(kg.sign_in("clark@example.com", otp=code))["code"] == "OTP_INVALID"
    kg.clock.now += 30
    assert kg.sign_in("clark@example.com", otp=totp(secret, kg.clock.now)).status_code == 201


def test_a_code_ten_seconds_old_still_works_and_an_older_one_does_not(kg):
    user = kg.user("clark@example.com")
    secret = kg.emulator.enable_second_factor(user)
    start = 1_900_000_020.0  # a step begins
    kg.clock.now = start + 20
    old = totp(secret, start - 1)  # the step before: 21-50 s old
    assert first_error(kg.sign_in("clark@example.com", otp=old))["code"] == "OTP_INVALID"
    kg.clock.now = start + 35  # 5 s into the next step: the previous step's code is 5-35 s old
    assert kg.sign_in("clark@example.com", otp=totp(secret, start)).status_code == 201


def test_a_banned_user_is_refused_after_the_password_check(kg):
    user = kg.user("clark@example.com")
    token = kg.token_for("clark@example.com")
    kg.emulator.ban_user(user)
    right = kg.sign_in("clark@example.com")
    assert right.status_code == 403
    assert first_error(right)["detail"].endswith("(user is banned)")
    assert first_error(kg.sign_in("clark@example.com", "wrong one"))["code"] == "PASSWORD_INVALID"
    banned_token = kg.call("GET", "/me", token=token)
    assert banned_token.status_code == 403
    assert first_error(banned_token)["code"] == "USER_BANNED"


def test_a_user_revokes_their_own_token(kg):
    kg.user("clark@example.com")
    created = kg.sign_in("clark@example.com").json()["data"]
    token = created["attributes"]["token"]
    assert kg.call("DELETE", f"/tokens/{created['id']}", token=token).status_code == 204
    assert first_error(kg.call("GET", "/me", token=token))["code"] == "TOKEN_INVALID"


# -- What a user token may read (license_policy.rb, policy_policy.rb) -------------------------


def test_a_user_token_reads_its_own_licenses_and_their_policies_only(kg):
    clark = kg.user("clark@example.com")
    lois = kg.user("lois@example.com")
    mine = kg.license(clark)
    other_product = kg.license(clark, kg.fx["policy2"])
    hers = kg.license(lois)
    token = kg.token_for("clark@example.com")

    listed = kg.call("GET", "/licenses?limit=100", token=token).json()["data"]
    assert {item["id"] for item in listed} == {mine, other_product}
    of_product = kg.call("GET", f"/licenses?product={kg.fx['product']}", token=token)
    assert [item["id"] for item in of_product.json()["data"]] == [mine]
    assert kg.call("GET", f"/licenses/{hers}", token=token).status_code == 404
    assert kg.call("GET", f"/policies/{kg.fx['policy']}", token=token).status_code == 200
    kg.emulator.add_policy("acme", kg.fx["product"])
    unused = kg.emulator.add_policy("acme", kg.fx["product"], name="Unused")
    assert kg.call("GET", f"/policies/{unused}", token=token).status_code == 404


# -- Machines (machines_controller.rb, machine_policy.rb) -------------------------------------


def test_machines_are_seen_by_their_license_owner_and_product_only(kg):
    clark, lois = kg.user("clark@example.com"), kg.user("lois@example.com")
    mine, hers = kg.license(clark), kg.license(lois)
    laptop = kg.emulator.add_machine(
        mine,
        name="Laptop",
        platform="macOS",
        hostname="clarks-mbp",
        fingerprint="fp-laptop",
        last_heartbeat="2030-01-01T10:00:00Z",
    )
    theirs = kg.emulator.add_machine(hers, name="Lois's PC", fingerprint="fp-lois")
    token = kg.token_for("clark@example.com")

    listed = kg.call("GET", "/machines?limit=100", token=token).json()["data"]
    assert [m["id"] for m in listed] == [laptop]
    attributes = listed[0]["attributes"]
    assert (attributes["name"], attributes["platform"], attributes["hostname"]) == (
        "Laptop",
        "macOS",
        "clarks-mbp",
    )
    assert attributes["fingerprint"] == "fp-laptop"
    assert attributes["lastHeartbeat"] == "2030-01-01T10:00:00.000Z"
    assert listed[0]["relationships"]["license"]["data"] == {"type": "licenses", "id": mine}
    assert kg.call("GET", "/machines/fp-laptop", token=token).json()["data"]["id"] == laptop
    assert kg.call("GET", f"/machines/{theirs}", token=token).status_code == 404
    assert kg.call("GET", f"/machines/{theirs}").status_code == 200  # the product's
    other_product = kg.fx["product_token2"]
    assert kg.call("GET", f"/machines/{theirs}", token=other_product).status_code == 404


def test_lists_come_in_offset_pages_with_keygens_links(kg):
    """page[number] and page[size] (1 to 100 each, size defaulting to limit), newest first, with
    self/prev/next/first/last links and the count; other shapes of `page` are a 400."""
    clark = kg.user("clark@example.com")
    mine = kg.license(clark)
    made = [kg.emulator.add_machine(mine, name=f"PC {n}", created=1_000 + n) for n in range(5)]
    pages = []
    for number in (1, 2, 3):
        response = kg.call(
            "GET", f"/machines?product={kg.fx['product']}&page[number]={number}&page[size]=2"
        )
        assert response.status_code == 200, response.text
        pages.append(response.json())
    assert [[m["id"] for m in page["data"]] for page in pages] == [
        made[4:2:-1],
        made[2:0:-1],
        made[:1],
    ]
    first, middle, last = (page["links"] for page in pages)
    assert first["prev"] is None and "page%5Bnumber%5D=2" in first["next"]
    assert "page%5Bsize%5D=2" in first["next"] and "product=" in first["next"]
    assert "page%5Bnumber%5D=1" in middle["prev"] and "page%5Bnumber%5D=3" in middle["next"]
    assert last["next"] is None and "page%5Bnumber%5D=3" in last["last"]
    assert last["meta"] == {"pages": 3, "count": 5}
    by_limit = kg.call("GET", "/machines?limit=3&page[number]=2").json()
    assert [m["id"] for m in by_limit["data"]] == made[1::-1]
    assert "links" not in kg.call("GET", "/machines?limit=2").json()
    for query, parameter in [
        ("page[number]=0", "page[number]"),
        ("page[number]=101", "page[number]"),
        ("page[number]=1&page[size]=101", "page[size]"),
        ("page[size]=10", "page"),
    ]:
        refused = kg.call("GET", f"/licenses?{query}")
        assert refused.status_code == 400, query
        assert first_error(refused)["source"] == {"parameter": parameter}, query


@pytest.mark.parametrize("protected", [False, True])
def test_a_user_deletes_a_machine_only_of_an_unprotected_license(kg, protected):
    policy = kg.emulator.add_policy("acme", kg.fx["product"], protected=protected)
    clark = kg.user("clark@example.com")
    machine = kg.emulator.add_machine(kg.license(clark, policy), name="Laptop")
    token = kg.token_for("clark@example.com")
    response = kg.call("DELETE", f"/machines/{machine}", token=token)
    if protected:
        assert response.status_code == 403
        assert first_error(response)["title"] == "Access denied"
        assert kg.call("DELETE", f"/machines/{machine}").status_code == 204  # the product may
    else:
        assert response.status_code == 204
    assert kg.emulator.machines() == []


def test_nobody_deletes_a_machine_they_cannot_see(kg):
    clark, lois = kg.user("clark@example.com"), kg.user("lois@example.com")
    kg.license(clark)
    theirs = kg.emulator.add_machine(kg.license(lois), name="Lois's PC")
    token = kg.token_for("clark@example.com")
    assert kg.call("DELETE", f"/machines/{theirs}", token=token).status_code == 404
    assert (
        kg.call("DELETE", f"/machines/{theirs}", token=kg.fx["product_token2"]).status_code == 404
    )
    assert len(kg.emulator.machines()) == 1


# -- Password resets (passwords_controller.rb, users/actions/password_controller.rb) ----------


def reset_request(email: str, **meta) -> dict:
    return {"meta": {"email": email, **meta}}


def test_a_reset_request_is_204_either_way_and_signals_only_a_known_user(kg):
    kg.user("clark@example.com")
    with webhook_receiver() as receiver:
        endpoint = kg.emulator.add_webhook_endpoint("acme", receiver.url)
        unknown = kg.call("POST", "/passwords", reset_request("nobody@example.com"), token=None)
        known = kg.call(
            "POST", "/passwords", reset_request("Clark@Example.com", deliver=False), token=None
        )
        assert (unknown.status_code, known.status_code) == (204, 204)
        assert unknown.content == known.content == b""
        [event] = receiver.wait_for(1)
        kg.emulator.webhooks.wait()
    assert kg.emulator.reset_emails == []  # deliver: false
    assert signature_is_valid(endpoint["public_key"], receiver.url, event)
    assert event.headers["Content-Type"] == "application/json"
    assert event.headers["Keygen-Version"] == "1.8"
    data = json.loads(event.body)["data"]
    assert data["type"] == "webhook-events"
    assert data["attributes"]["event"] == "user.password-reset"
    assert len(data["meta"]["idempotencyToken"]) == 64
    payload = json.loads(data["attributes"]["payload"])  # a string, parsed a second time
    assert payload["data"]["attributes"]["email"] == "clark@example.com"
    assert payload["meta"]["passwordResetToken"].endswith("v3")


def test_the_accounts_document_carries_its_webhook_key(kg):
    """`meta.keys.ed25519`: base64 of the hex text webhooks verify with; a product token reads
    its own account (account.read), nobody reads it without a token."""
    response = kg.call("GET", "")
    assert response.status_code == 200, response.text
    document = response.json()
    assert document["data"]["type"] == "accounts"
    assert document["data"]["id"] == kg.fx["account"]
    hex_key = base64.b64decode(document["meta"]["keys"]["ed25519"]).decode()
    assert hex_key == kg.emulator.public_key("acme") and len(hex_key) == 64
    assert kg.call("GET", "", token=None).status_code == 401
    kg.emulator.set_permissions(kg.fx["product_token"], ["product.read"])
    assert kg.call("GET", "").status_code == 403


def test_a_tampered_webhook_does_not_verify(kg):
    kg.user("clark@example.com")
    with webhook_receiver() as receiver:
        endpoint = kg.emulator.add_webhook_endpoint("acme", receiver.url)
        kg.call("POST", "/passwords", reset_request("clark@example.com"), token=None)
        [event] = receiver.wait_for(1)
    assert kg.emulator.reset_emails == ["clark@example.com"]  # deliver left out: Keygen emails
    event.body = event.body.replace(b"clark@", b"lois@")
    assert not signature_is_valid(endpoint["public_key"], receiver.url, event)


def test_a_reset_request_needs_an_email(kg):
    response = kg.call("POST", "/passwords", {"meta": {}}, token=None)
    assert response.status_code == 400
    assert first_error(response)["source"] == {"pointer": "/meta/email"}


def reset_token(kg: Keygen, receiver, email: str) -> str:
    count = len(receiver.received)
    kg.call("POST", "/passwords", reset_request(email, deliver=False), token=None)
    event = receiver.wait_for(count + 1)[-1]
    payload = json.loads(json.loads(event.body)["data"]["attributes"]["payload"])
    return payload["meta"]["passwordResetToken"]


def reset_body(token: str, password: str) -> dict:
    return {"meta": {"passwordResetToken": token, "newPassword": password}}


def test_a_reset_sets_the_password_once_and_revokes_every_token(kg):
    clark = kg.user("clark@example.com")
    old_token = kg.token_for("clark@example.com")
    with webhook_receiver() as receiver:
        kg.emulator.add_webhook_endpoint(
            "acme", receiver.url, subscriptions=["user.password-reset"]
        )
        token = reset_token(kg, receiver, "clark@example.com")
    path = f"/users/{clark}/actions/reset-password"

    wrong = kg.call("POST", path, reset_body("x" * 50, "a new password"), token=None)
    assert wrong.status_code == 404
    short = kg.call("POST", path, reset_body(token, "abc"), token=None)
    assert short.status_code == 422
    assert first_error(short)["code"] == "PASSWORD_TOO_SHORT"
    done = kg.call("POST", path, reset_body(token, "a new password"), token=None)
    assert done.status_code == 200
    assert done.json()["data"]["id"] == clark
    assert first_error(kg.call("GET", "/me", token=old_token))["code"] == "TOKEN_INVALID"
    assert kg.sign_in("clark@example.com", "a new password").status_code == 201
    again = kg.call("POST", path, reset_body(token, "another password"), token=None)
    assert again.status_code == 404


def test_a_reset_token_expires_after_a_day(kg):
    clark = kg.user("clark@example.com")
    with webhook_receiver() as receiver:
        kg.emulator.add_webhook_endpoint("acme", receiver.url)
        token = reset_token(kg, receiver, "clark@example.com")
    kg.clock.now += 24 * 3600 + 1
    path = f"/users/{clark}/actions/reset-password"
    response = kg.call("POST", path, reset_body(token, "a new password"), token=None)
    assert response.status_code == 401
    assert first_error(response)["detail"] == "is expired"
