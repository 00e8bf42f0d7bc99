"""The emulator's switches for the Keygens a vendor runs (keygen_emulator/deployment.py): each
answers as keygen-api does in that setup, and the defaults stay Keygen Cloud's.

Plain `requests` with hand-written JSON:API, never the portal's Keygen client.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests

from keygen_emulator import Emulator, serve

JSONAPI = "application/vnd.api+json"


class Kg:
    """One served emulator: an account with a product, its policy, and another product."""

    def __init__(self, emulator: Emulator, url: str):
        self.emulator = emulator
        self.url = url
        self.account = emulator.add_account(slug="acme")
        self.product, self.token = emulator.add_product(self.account, name="P")
        self.policy = emulator.add_policy(self.account, self.product)
        self.product2, self.token2 = emulator.add_product(self.account, name="P2")
        self.policy2 = emulator.add_policy(self.account, self.product2)

    def call(self, method, path, body=None, *, token=None, headers=None, prefix=True):
        sent = {"Content-Type": JSONAPI, "Accept": JSONAPI}
        if token is not False:
            sent["Authorization"] = f"Bearer {token or self.token}"
        sent.update(headers or {})
        base = f"{self.url}/v1/accounts/acme" if prefix else f"{self.url}/v1"
        return requests.request(method, base + path, json=body, headers=sent, timeout=10)

    def create_user(self, email="clark@example.com", **kw):
        body = {"data": {"type": "users", "attributes": {"email": email}}}
        response = self.call("POST", "/users", body, **kw)
        assert response.status_code == 201, response.text
        return response.json()["data"]["id"]

    def create_license(self, owner, policy=None, **kw):
        response = self.call("POST", "/licenses", license_body(policy or self.policy, owner), **kw)
        assert response.status_code == 201, response.text
        return response.json()["data"]


def license_body(policy, owner) -> dict:
    return {
        "data": {
            "type": "licenses",
            "relationships": {
                "policy": {"data": {"type": "policies", "id": policy}},
                "owner": {"data": {"type": "users", "id": owner}},
            },
        }
    }


def first_error(response) -> dict:
    return response.json()["errors"][0]


@pytest.fixture
def kg() -> Iterator[Kg]:
    emulator = Emulator()
    server = serve(emulator)
    yield Kg(emulator, server.url)
    server.stop()


def test_the_defaults_are_keygen_clouds(kg):
    me = kg.call("GET", "/me")
    assert me.status_code == 200
    assert me.headers["Keygen-Edition"] == "EE"
    assert me.headers["Keygen-Mode"] == "multiplayer"
    assert "Keygen-Environment" not in me.headers
    assert "product.read" in me.json()["included"][0]["attributes"]["permissions"]
    # Cloud finds an account by its path, or by a custom domain's Host, never by guessing.
    bare = kg.call("GET", "/me", prefix=False)
    assert bare.status_code == 404
    assert first_error(bare)["detail"] == "account is required"


# -- API versions --------------------------------------------------------------------------------


def test_a_keygen_whose_newest_version_is_1_7_refuses_1_8(kg):
    kg.emulator.configure(newest_version="1.7")
    refused = kg.call("GET", "/me", headers={"Keygen-Version": "1.8"})
    assert refused.status_code == 400
    assert first_error(refused)["code"] == "INVALID_API_VERSION"
    assert first_error(refused)["detail"] == "unsupported API version requested"
    answered = kg.call("GET", "/me", headers={"Keygen-Version": "1.7"})
    assert answered.status_code == 200
    assert answered.headers["Keygen-Version"] == "1.7"


# -- Environments --------------------------------------------------------------------------------


@pytest.fixture
def sandbox(kg):
    """A product and its token in the isolated environment `sandbox`."""
    kg.emulator.add_environment(kg.account, "sandbox")
    kg.emulator.add_environment(kg.account, "staging")
    product, token = kg.emulator.add_product(kg.account, name="S", environment="sandbox")
    return product, token


def test_an_environment_token_is_unknown_without_its_environment(kg, sandbox):
    _, token = sandbox
    for headers in ({}, {"Keygen-Environment": "staging"}):
        refused = kg.call("GET", "/me", token=token, headers=headers)
        assert refused.status_code == 401
        # The same answer as for a revoked token: the lookup is scoped to the environment.
        assert first_error(refused)["code"] == "TOKEN_INVALID"
    answered = kg.call("GET", "/me", token=token, headers={"Keygen-Environment": "sandbox"})
    assert answered.status_code == 200
    assert answered.headers["Keygen-Environment"] == "sandbox"


def test_an_unknown_environment_and_a_ce_keygen_answer_400(kg, sandbox):
    unknown = kg.call("GET", "/me", headers={"Keygen-Environment": "prod"})
    assert unknown.status_code == 400
    assert first_error(unknown) == {
        "title": "Bad request",
        "detail": "environment is invalid",
        "code": "ENVIRONMENT_INVALID",
        "source": {"header": "Keygen-Environment"},
    }
    kg.emulator.configure(edition="CE")
    ce = kg.call("GET", "/me", headers={"Keygen-Environment": "sandbox"})
    assert ce.status_code == 400
    assert first_error(ce)["code"] == "ENVIRONMENT_NOT_SUPPORTED"
    assert "permissions" not in kg.call("GET", "/me").json()["included"][0]["attributes"]


def test_records_stay_in_their_environment(kg, sandbox):
    _, token = sandbox
    inside = {"Keygen-Environment": "sandbox"}
    kg.create_user("lois@example.com", token=token, headers=inside)
    assert kg.call("GET", "/users/lois@example.com", token=token, headers=inside).ok
    assert kg.call("GET", "/users/lois@example.com").status_code == 404  # global token
    kg.emulator.add_environment(kg.account, "shared", isolation="SHARED")
    shared = kg.call("GET", "/me", headers={"Keygen-Environment": "shared"})
    assert shared.status_code == 200  # a shared environment takes global tokens too


# -- Hosts and domains ---------------------------------------------------------------------------


def test_a_self_hosted_keygen_answers_only_its_own_hosts(kg):
    kg.emulator.configure(hosts=("keygen.internal",))
    refused = kg.call("GET", "/me")
    assert refused.status_code == 403
    assert refused.content == b""
    assert "Keygen-Edition" not in refused.headers
    assert kg.call("GET", "/me", headers={"Host": "keygen.internal"}).status_code == 200


def test_account_routes_exist_only_under_keygens_domain(kg):
    kg.emulator.configure(domain="keygen.example")
    elsewhere = kg.call("GET", "/me")
    assert elsewhere.status_code == 404
    assert first_error(elsewhere)["detail"].startswith("The requested endpoint was not found")
    at_home = kg.call("GET", "/me", headers={"Host": "api.keygen.example"})
    assert at_home.status_code == 200


def test_a_custom_domain_serves_its_account_without_the_account_segment(kg):
    kg.emulator.configure(domain="keygen.example", cnames={"licensing.example.com": kg.account})
    host = {"Host": "licensing.example.com"}
    assert kg.call("GET", "/me", headers=host, prefix=False).json()["data"]["id"] == kg.product
    assert kg.call("GET", "/me", headers=host).status_code == 404  # no account routes there


def test_a_singleplayer_keygen_serves_only_its_own_account(kg):
    other = kg.emulator.add_account(slug="other")
    kg.emulator.configure(mode="singleplayer")
    assert kg.call("GET", "/me", prefix=False).status_code == 200
    refused = requests.get(
        f"{kg.url}/v1/accounts/{other}/me",
        headers={"Authorization": f"Bearer {kg.token}", "Accept": JSONAPI},
        timeout=10,
    )
    assert refused.status_code == 404
    assert first_error(refused)["detail"] == f"account is invalid (expected {kg.account})"


# -- Permissions ---------------------------------------------------------------------------------


def test_a_narrowed_token_lacks_permission(kg):
    kg.emulator.set_permissions(kg.token, ["product.read", "user.read"])
    me = kg.call("GET", "/me").json()
    assert me["included"][0]["attributes"]["permissions"] == ["product.read", "user.read"]
    body = {"data": {"type": "users", "attributes": {"email": "clark@example.com"}}}
    refused = kg.call("POST", "/users", body)
    assert refused.status_code == 403
    assert first_error(refused)["detail"] == (
        "You do not have permission to complete the request "
        "(token lacks permission to perform action)"
    )
    assert kg.emulator.users() == []
    kg.emulator.set_permissions(kg.token, ["user.read"])
    assert kg.call("GET", "/me").status_code == 403  # /me needs product.read


def test_a_product_without_a_permission_is_refused_as_the_product(kg):
    product, token = kg.emulator.add_product(kg.account, permissions=("product.read",))
    refused = kg.call("GET", f"/policies/{kg.policy}", token=token)
    assert refused.status_code == 404  # not its policy: 404 comes first
    policy = kg.emulator.add_policy(kg.account, product)
    refused = kg.call("GET", f"/policies/{policy}", token=token)
    assert refused.status_code == 403
    assert "(product lacks permission to perform action)" in first_error(refused)["detail"]


# -- Races, refused deletions, unreadable keys ---------------------------------------------------


def test_a_lost_race_answers_409_without_a_code_and_the_twin_exists(kg):
    kg.emulator.race("users.create")
    body = {"data": {"type": "users", "attributes": {"email": "clark@example.com"}}}
    lost = kg.call("POST", "/users", body)
    assert lost.status_code == 409
    assert lost.json()["errors"] == [
        {"title": "Conflict", "detail": "The request could not be completed because of a conflict"}
    ]
    assert "id" in lost.json()["meta"]
    [user] = kg.emulator.users()
    kg.emulator.race("licenses.create")
    assert kg.call("POST", "/licenses", license_body(kg.policy, user["id"])).status_code == 409
    assert len(kg.emulator.licenses()) == 1


def test_a_product_may_not_delete_a_user_attached_to_another_products_license(kg):
    user = kg.create_user()
    other = kg.create_user("lois@example.com", token=kg.token2)
    lic = kg.create_license(other, kg.policy2, token=kg.token2)
    kg.emulator.attach_user(lic["id"], user)
    refused = kg.call("DELETE", f"/users/{user}")
    assert refused.status_code == 403
    assert "(user cannot belong to another product)" in first_error(refused)["detail"]


def test_owned_licenses_outlive_their_user_for_a_while(kg):
    kg.emulator.configure(delete_delay=60)
    user = kg.create_user()
    lic = kg.create_license(user)
    assert kg.call("DELETE", f"/users/{user}").status_code == 204
    assert kg.call("GET", f"/licenses/{lic['id']}").status_code == 200  # not yet
    kg.emulator.run_jobs()
    assert kg.call("GET", f"/licenses/{lic['id']}").status_code == 404


def test_a_legacy_encrypted_key_is_shown_only_when_it_is_created(kg):
    policy = kg.emulator.add_policy(kg.account, kg.product, scheme="LEGACY_ENCRYPT")
    shown = kg.call("GET", f"/policies/{policy}").json()["data"]["attributes"]
    assert (shown["scheme"], shown["encrypted"]) == ("LEGACY_ENCRYPT", True)
    created = kg.create_license(kg.create_user(), policy)
    assert created["attributes"]["key"].endswith("v1")
    read = kg.call("GET", f"/licenses/{created['id']}").json()["data"]["attributes"]
    assert "key" not in read
    assert (read["scheme"], read["encrypted"]) == ("LEGACY_ENCRYPT", True)


# -- Account states ------------------------------------------------------------------------------


def test_a_used_up_daily_limit_answers_402_where_keygen_checks_the_subscription(kg):
    kg.emulator.set_account_state(kg.account, daily_limit_reached=True)
    body = {"data": {"type": "users", "attributes": {"email": "clark@example.com"}}}
    refused = kg.call("POST", "/users", body)
    assert refused.status_code == 402
    assert first_error(refused)["title"] == "Daily API request limit reached"
    assert kg.call("GET", f"/policies/{kg.policy}").status_code == 402
    assert kg.call("GET", "/me").status_code == 200  # /me checks no subscription


def test_a_lapsed_subscription_answers_403(kg):
    kg.emulator.set_account_state(kg.account, active=False)
    refused = kg.call("GET", f"/policies/{kg.policy}")
    assert refused.status_code == 403
    assert first_error(refused)["title"] == "Account does not have an active subscription"


def test_the_licensed_user_limit_answers_402_on_the_license_past_it(kg):
    kg.emulator.set_account_state(kg.account, licensed_user_limit=1)
    kg.create_license(kg.create_user())
    refused = kg.call("POST", "/licenses", license_body(kg.policy, kg.create_user("l@ex.com")))
    assert refused.status_code == 402
    error = first_error(refused)
    assert error["code"] == "ACCOUNT_ALU_LIMIT_EXCEEDED"
    assert error["source"] == {"pointer": "/data/relationships/account"}
    assert len(kg.emulator.licenses()) == 1


# -- The control plane ---------------------------------------------------------------------------


def test_the_control_plane_sets_the_switches_and_reset_restores_cloud(kg):
    control = kg.url + "/_emulator"
    post = requests.post
    assert post(control + "/deployment", json={"newest_version": "1.7"}, timeout=5).ok
    assert post(control + "/deployment", json={"edition": "XE"}, timeout=5).status_code == 400
    state = {"daily_limit_reached": True}
    assert post(f"{control}/accounts/{kg.account}/state", json=state, timeout=5).ok
    old = {"Keygen-Version": "1.7"}
    assert kg.call("GET", f"/policies/{kg.policy}", headers=old).status_code == 402
    assert kg.call("GET", "/me", headers={"Keygen-Version": "1.8"}).status_code == 400
    assert post(control + "/reset", timeout=5).ok
    assert kg.call("GET", "/me", headers={"Keygen-Version": "1.8"}).status_code == 200
    assert kg.call("GET", f"/policies/{kg.policy}").status_code == 200
    assert post(control + "/deployment", json={"delete_delay": 3600}, timeout=5).ok
    user = kg.create_user()
    lic = kg.create_license(user)
    kg.call("DELETE", f"/users/{user}")
    assert kg.call("GET", f"/licenses/{lic['id']}").status_code == 200
    assert post(control + "/jobs", timeout=5).ok
    assert kg.call("GET", f"/licenses/{lic['id']}").status_code == 404


def test_a_delete_delay_passes_on_its_own(kg):
    kg.emulator.configure(delete_delay=0.2)
    user = kg.create_user()
    lic = kg.create_license(user)
    kg.call("DELETE", f"/users/{user}")
    time.sleep(0.3)
    assert kg.call("GET", f"/licenses/{lic['id']}").status_code == 404
