"""The Keygen emulator against the contract's acceptance cases
(docs/reference/keygen-contract.md §12).

Every test talks to a real emulator over loopback HTTP with plain `requests` and JSON:API
payloads written by hand from the contract, never through the portal's Keygen client.
"""

from __future__ import annotations

import base64
import json
import logging
import queue
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import pytest
import requests

from keygen_emulator import Emulator, create_app, seed_contract, serve

ROOT = Path(__file__).resolve().parent.parent
ACCOUNT = "11111111-1111-1111-1111-111111111111"
JSONAPI = "application/vnd.api+json"
DATE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
KEY = re.compile(r"^[0-9A-F]{6}(-[0-9A-F]{6}){4}-V3$")
JSON_INVALID = {
    "title": "Bad request",
    "detail": "The request could not be completed because it contains invalid JSON "
    "(check formatting/encoding)",
    "code": "JSON_INVALID",
}
PASSWORD = "kent<3lois"
OMIT = object()
PRODUCT = object()  # "the default token": the product token PT


class Keygen:
    """A served emulator with the §12 fixture, and a tiny hand-written HTTP client."""

    def __init__(self, emulator: Emulator, url: str, fixture: dict) -> None:
        self.emulator = emulator
        self.url = url
        self.fx = fixture

    def call(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        token: object = PRODUCT,
        headers: dict | None = None,
        raw: bytes | None = None,
        account: str = "acme",
        timeout: float = 10,
    ) -> requests.Response:
        sent = {"Content-Type": JSONAPI, "Accept": JSONAPI}
        token = self.fx["product_token"] if token is PRODUCT else token
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        sent.update(headers or {})
        sent = {name: value for name, value in sent.items() if value is not None}
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        url = self.url + (path if path.startswith("/v1") else f"/v1/accounts/{account}{path}")
        return requests.request(method, url, data=data, headers=sent, timeout=timeout)

    def create_user(self, **changes) -> dict:
        response = self.call("POST", "/users", user_body(**changes))
        assert response.status_code == 201, response.text
        return response.json()["data"]

    def create_license(self, owner: str | None, *, policy=None, token=PRODUCT, **kw) -> dict:
        body = license_body(policy or self.fx["policy"], owner, **kw)
        response = self.call("POST", "/licenses", body, token=token)
        assert response.status_code == 201, response.text
        return response.json()["data"]

    def login(self, email: str = "clark@example.com", password: str = PASSWORD) -> dict:
        response = self.call("POST", "/tokens", headers={"Authorization": basic(email, password)})
        assert response.status_code == 201, response.text
        return response.json()["data"]


def user_body(**changes) -> dict:
    attributes = {
        "firstName": "Clark",
        "lastName": "Kent",
        "email": "clark@example.com",
        "password": PASSWORD,
    }
    for name, value in changes.items():
        if value is OMIT:
            attributes.pop(name, None)
        else:
            attributes[name] = value
    return {"data": {"type": "users", "attributes": attributes}}


def license_body(policy, owner, *, relationship="owner", attributes=None, **data) -> dict:
    relationships = {"policy": {"data": {"type": "policies", "id": policy}}}
    if owner is not OMIT and owner is not None:
        relationships[relationship] = {"data": {"type": "users", "id": owner}}
    body = {"type": "licenses", "relationships": relationships, **data}
    if attributes is not None:
        body["attributes"] = attributes
    return {"data": body}


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def errors_of(response: requests.Response) -> list[dict]:
    return response.json()["errors"]


def moment(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@contextmanager
def served(emulator: Emulator) -> Iterator[Keygen]:
    fixture = seed_contract(emulator)
    server = serve(emulator)
    try:
        yield Keygen(emulator, server.url, fixture)
    finally:
        server.stop()


@pytest.fixture
def kg() -> Iterator[Keygen]:
    with served(Emulator()) as keygen:
        yield keygen


# -- §12 Transport, headers, versioning ---------------------------------------------------------


def test_case_01_truncated_json_is_json_invalid_without_meta(kg):
    response = kg.call("POST", "/users", raw=b'{"data":')
    assert response.status_code == 400
    assert errors_of(response)[0] == JSON_INVALID
    assert "meta" not in response.json()
    assert "Keygen-Account" not in response.headers


def test_case_02_json_is_parsed_before_authentication(kg):
    response = kg.call("POST", "/users", raw=b'{"data":', token="garbage")
    assert response.status_code == 400
    assert errors_of(response)[0]["code"] == "JSON_INVALID"


def test_case_03_accept_html_is_mime_type_invalid(kg):
    response = kg.call("GET", "/users/clark@example.com", headers={"Accept": "text/html"})
    assert response.status_code == 400
    assert errors_of(response)[0]["code"] == "MIME_TYPE_INVALID"


def test_case_04_form_content_type_is_read_as_json(kg):
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    response = kg.call("POST", "/users", user_body(), headers=headers)
    assert response.status_code == 201


def test_case_05_form_encoded_body_is_json_invalid(kg):
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    response = kg.call("POST", "/users", raw=b"email=a%40b.com", headers=headers)
    assert response.status_code == 400
    assert errors_of(response)[0] == JSON_INVALID


def test_case_06_unknown_api_version_is_refused(kg):
    response = kg.call("GET", "/me", headers={"Keygen-Version": "9.9"})
    assert response.status_code == 400
    error = errors_of(response)[0]
    assert error["code"] == "INVALID_API_VERSION"
    assert error["detail"] == "unsupported API version requested"


def test_case_07_leading_v_is_stripped_from_the_version(kg):
    response = kg.call("GET", "/me", headers={"Keygen-Version": "v1.8"})
    assert response.status_code == 200
    assert response.headers["Keygen-Version"] == "1.8"


def test_case_08_unknown_account_is_not_found(kg):
    response = kg.call("GET", "/me", account="nope")
    assert response.status_code == 404
    error = errors_of(response)[0]
    assert error["code"] == "NOT_FOUND"
    assert error["detail"] == "The requested account 'nope' was not found"


def test_case_09_account_by_uuid_or_slug(kg):
    by_id = kg.call("GET", "/me", account=ACCOUNT)
    by_slug = kg.call("GET", "/me", account="acme")
    assert by_id.status_code == by_slug.status_code == 200
    assert by_id.json()["data"]["id"] == by_slug.json()["data"]["id"] == kg.fx["product"]
    body = by_slug.json()
    assert body["data"]["type"] == "products"
    assert body["included"][0]["type"] == "tokens"
    assert body["included"][0]["attributes"]["kind"] == "product-token"
    assert kg.fx["product_token"] not in by_slug.text
    assert by_slug.headers["Keygen-Account"] == ACCOUNT


def test_case_10_unknown_endpoint_is_not_found(kg):
    response = kg.call("GET", "/nonexistent-thing")
    assert response.status_code == 404
    error = errors_of(response)[0]
    assert error["code"] == "NOT_FOUND"
    assert error["detail"] == (
        "The requested endpoint was not found (check your HTTP method, Accept header, and URL path)"
    )


# -- §12 POST /users ----------------------------------------------------------------------------


def test_case_11_create_user(kg):
    response = kg.call("POST", "/users", user_body())
    assert response.status_code == 201
    data = response.json()["data"]
    assert data["type"] == "users"
    attributes = data["attributes"]
    assert (
        attributes
        | {
            "firstName": "Clark",
            "lastName": "Kent",
            "fullName": "Clark Kent",
            "email": "clark@example.com",
            "role": "user",
            "status": "ACTIVE",
            "metadata": {},
        }
        == attributes
    )
    assert DATE.match(attributes["created"])
    assert "password" not in attributes
    assert PASSWORD not in response.text
    assert data["relationships"]["account"]["data"] == {"type": "accounts", "id": ACCOUNT}
    assert data["links"]["self"] == f"/v1/accounts/{ACCOUNT}/users/{data['id']}"
    assert response.headers["Location"].endswith(f"/users/{data['id']}")
    assert response.headers["Content-Type"].startswith(JSONAPI)


def test_case_12_email_is_normalised(kg):
    data = kg.create_user(email="  Clark.Kent@Example.COM ")
    assert data["attributes"]["email"] == "clark.kent@example.com"


def test_case_13_email_taken_case_insensitive(kg):
    kg.create_user()
    response = kg.call("POST", "/users", user_body(email="CLARK@example.com"))
    assert response.status_code == 422
    error = errors_of(response)[0]
    assert (
        error
        | {
            "title": "Unprocessable resource",
            "detail": "has already been taken",
            "code": "EMAIL_TAKEN",
            "source": {"pointer": "/data/attributes/email"},
        }
        == error
    )
    assert uuid.UUID(response.json()["meta"]["id"])


def test_case_14_email_without_at_is_invalid(kg):
    response = kg.call("POST", "/users", user_body(email="foo.com"))
    assert response.status_code == 422
    error = errors_of(response)[0]
    assert (error["detail"], error["code"]) == ("is invalid", "EMAIL_INVALID")
    assert error["source"] == {"pointer": "/data/attributes/email"}


def test_case_15_email_without_dot_in_domain_is_invalid(kg):
    response = kg.call("POST", "/users", user_body(email="foo@bar"))
    assert response.status_code == 422
    assert errors_of(response)[0]["code"] == "EMAIL_INVALID"


def test_case_16_short_password(kg):
    response = kg.call("POST", "/users", user_body(password="short"))
    assert response.status_code == 422
    error = errors_of(response)[0]
    assert error["detail"] == "is too short (minimum is 6 characters)"
    assert error["code"] == "PASSWORD_TOO_SHORT"
    assert error["source"] == {"pointer": "/data/attributes/password"}


def test_case_17_long_password(kg):
    response = kg.call("POST", "/users", user_body(password="a" * 73))
    assert response.status_code == 422
    error = errors_of(response)[0]
    assert error["code"] == "PASSWORD_TOO_LONG"
    assert error["detail"] == "is too long (maximum is 72 characters)"


def test_case_17_password_length_counts_characters_not_bytes(kg):
    response = kg.call("POST", "/users", user_body(password="é" * 72))
    assert response.status_code == 201


def test_case_18_several_validation_errors_in_attribute_order(kg):
    response = kg.call("POST", "/users", user_body(email="foo.com", password="short"))
    assert response.status_code == 422
    codes = [error["code"] for error in errors_of(response)]
    assert codes == ["EMAIL_INVALID", "PASSWORD_TOO_SHORT"]


def test_case_19_missing_email_is_one_typed_params_error(kg):
    response = kg.call("POST", "/users", user_body(email=OMIT))
    assert response.status_code == 400
    assert errors_of(response) == [
        {
            "title": "Bad request",
            "detail": "is missing",
            "source": {"pointer": "/data/attributes/email"},
        }
    ]


def test_case_20_blank_email(kg):
    response = kg.call("POST", "/users", user_body(email=""))
    assert response.status_code == 400
    error = errors_of(response)[0]
    assert error["detail"] == "cannot be blank"
    assert error["source"] == {"pointer": "/data/attributes/email"}


def test_case_21_email_of_the_wrong_type(kg):
    response = kg.call("POST", "/users", user_body(email=42))
    assert response.status_code == 400
    error = errors_of(response)[0]
    assert error["detail"] == "type mismatch (received integer expected string)"
    assert error["source"] == {"pointer": "/data/attributes/email"}


def test_case_22_blank_password(kg):
    response = kg.call("POST", "/users", user_body(password=""))
    assert response.status_code == 400
    error = errors_of(response)[0]
    assert error["detail"] == "cannot be blank"
    assert error["source"] == {"pointer": "/data/attributes/password"}


def test_case_23_null_password_makes_a_user_without_password(kg):
    kg.create_user(password=None)
    auth = {"Authorization": basic("clark@example.com", "anything")}
    response = kg.call("POST", "/tokens", headers=auth)
    assert response.status_code == 401
    assert errors_of(response)[0]["code"] == "PASSWORD_NOT_SUPPORTED"


def test_case_24_unknown_attribute_is_unpermitted(kg):
    response = kg.call("POST", "/users", user_body(phone="123"))
    assert response.status_code == 400
    error = errors_of(response)[0]
    assert error["detail"] == "unpermitted parameter"
    assert error["source"] == {"pointer": "/data/attributes/phone"}


def test_case_25_role_is_unpermitted_for_a_product(kg):
    response = kg.call("POST", "/users", user_body(role="user"))
    assert response.status_code == 400
    error = errors_of(response)[0]
    assert error["detail"] == "unpermitted parameter"
    assert error["source"] == {"pointer": "/data/attributes/role"}


def test_case_26_null_names(kg):
    attributes = kg.create_user(firstName=None, lastName=None)["attributes"]
    assert attributes["firstName"] is None
    assert attributes["lastName"] is None
    assert attributes["fullName"] is None


def test_case_27_snake_case_keys(kg):
    body = user_body(firstName=OMIT, lastName=OMIT, first_name="Clark", last_name="Kent")
    response = kg.call("POST", "/users", body)
    assert response.status_code == 201
    assert response.json()["data"]["attributes"]["firstName"] == "Clark"


def test_case_28_metadata_keys_come_back_camel_cased(kg):
    data = kg.create_user(metadata={"external_id": "x", "Plan Tier": "pro"})
    assert data["attributes"]["metadata"] == {"externalId": "x", "planTier": "pro"}
    [snapshot] = [u for u in kg.emulator.users() if u["id"] == data["id"]]
    assert snapshot["metadata"] == {"externalId": "x", "planTier": "pro"}


def test_case_29_metadata_deeper_than_two(kg):
    response = kg.call("POST", "/users", user_body(metadata={"a": {"b": {"c": {"d": 1}}}}))
    assert response.status_code == 400
    error = errors_of(response)[0]
    assert error["detail"] == "maximum depth of 2 exceeded"
    assert error["source"]["pointer"].startswith("/data/attributes/metadata/")


def test_case_30_wrong_data_type(kg):
    body = user_body()
    body["data"]["type"] = "licenses"
    response = kg.call("POST", "/users", body)
    assert response.status_code == 400
    error = errors_of(response)[0]
    assert error["detail"] == "is invalid"
    assert error["source"] == {"pointer": "/data/type"}


def test_case_31_empty_body(kg):
    response = kg.call("POST", "/users", {})
    assert response.status_code == 400
    error = errors_of(response)[0]
    assert error["detail"] == "is missing"
    assert error["source"] == {"pointer": "/data"}


def test_case_32_bad_token(kg):
    response = kg.call("POST", "/users", user_body(), token="not-a-real-token")
    assert response.status_code == 401
    error = errors_of(response)[0]
    assert (
        error
        | {
            "title": "Unauthorized",
            "detail": "You must be authenticated to complete the request",
            "code": "TOKEN_INVALID",
        }
        == error
    )
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="keygen"'


def test_case_33_token_uuid_instead_of_value(kg):
    token = "852da78f-1444-4462-8863-d7b9fff9e003"
    response = kg.call("POST", "/users", user_body(), token=token)
    assert response.status_code == 401
    assert errors_of(response)[0]["code"] == "TOKEN_FORMAT_INVALID"


def test_case_34_anonymous_signup_on_an_unprotected_account(kg):
    response = kg.call("POST", "/users", user_body(), token=None)
    assert response.status_code == 201
    assert response.json()["data"]["attributes"]["role"] == "user"


def test_case_35_anonymous_signup_on_a_protected_account(kg):
    account = kg.emulator.add_account(slug="locked", protected=True)
    response = kg.call("POST", "/users", user_body(), token=None, account="locked")
    assert response.status_code == 403
    errors = errors_of(response)
    assert len(errors) == 1
    assert errors[0]["title"] == "Access denied"
    assert kg.emulator.users(account) == []


def test_case_36_product_signup_on_a_protected_account(kg):
    account = kg.emulator.add_account(slug="locked", protected=True)
    _, token = kg.emulator.add_product(account)
    response = kg.call("POST", "/users", user_body(), token=token, account="locked")
    assert response.status_code == 201


# -- §12 POST /licenses -------------------------------------------------------------------------


def test_case_37_create_license(kg):
    user = kg.create_user()["id"]
    response = kg.call("POST", "/licenses", license_body(kg.fx["policy"], user))
    assert response.status_code == 201
    data = response.json()["data"]
    attributes, relationships = data["attributes"], data["relationships"]
    assert KEY.match(attributes["key"])
    assert (
        attributes
        | {
            "status": "ACTIVE",
            "uses": 0,
            "suspended": False,
            "protected": False,
            "scheme": None,
            "expiry": None,
            "metadata": {},
        }
        == attributes
    )
    assert relationships["owner"]["data"] == {"type": "users", "id": user}
    assert relationships["owner"]["links"]["related"].endswith(f"/licenses/{data['id']}/owner")
    assert relationships["policy"]["data"]["id"] == kg.fx["policy"]
    assert relationships["product"]["data"]["id"] == kg.fx["product"]
    assert relationships["users"]["meta"]["count"] == 1
    assert data["links"]["self"].endswith(f"/licenses/{data['id']}")
    assert response.headers["Location"].endswith(f"/licenses/{data['id']}")


def test_case_38_user_is_an_alias_of_owner(kg):
    user = kg.create_user()["id"]
    relationships = kg.create_license(user, relationship="user")["relationships"]
    assert relationships["owner"]["data"]["id"] == user
    assert "user" not in relationships


def test_case_39_version_1_5_answers_with_user(kg):
    user = kg.create_user()["id"]
    body = license_body(kg.fx["policy"], user, relationship="user")
    response = kg.call("POST", "/licenses", body, headers={"Keygen-Version": "1.5"})
    assert response.status_code == 201
    relationships = response.json()["data"]["relationships"]
    assert relationships["user"]["data"]["id"] == user
    assert "owner" not in relationships
    assert relationships["user"]["links"]["related"].endswith("/user")


def test_case_40_unknown_owner(kg):
    body = license_body(kg.fx["policy"], "4796e950-0dcf-4bab-9443-8b406889356e")
    response = kg.call("POST", "/licenses", body)
    assert response.status_code == 422
    error = errors_of(response)[0]
    assert error["detail"] == "must exist"
    assert error["code"] == "OWNER_NOT_FOUND"
    assert error["source"] == {"pointer": "/data/relationships/owner"}


def test_case_41_unknown_owner_at_version_1_5(kg):
    body = license_body(
        kg.fx["policy"], "4796e950-0dcf-4bab-9443-8b406889356e", relationship="user"
    )
    response = kg.call("POST", "/licenses", body, headers={"Keygen-Version": "1.5"})
    assert response.status_code == 422
    error = errors_of(response)[0]
    assert error["code"] == "USER_NOT_FOUND"
    assert error["source"] == {"pointer": "/data/relationships/user"}


def test_case_42_policy_of_another_product(kg):
    user = kg.create_user()["id"]
    response = kg.call("POST", "/licenses", license_body(kg.fx["policy2"], user))
    assert response.status_code == 403
    assert errors_of(response)[0]["title"] == "Access denied"
    assert kg.emulator.licenses() == []


def test_case_43_unknown_policy(kg):
    user = kg.create_user()["id"]
    body = license_body("fb00afb8-38a6-48e5-b22a-b041a4e6d843", user)
    assert kg.call("POST", "/licenses", body).status_code == 403
    response = kg.call("POST", "/licenses", body, token=kg.fx["admin_token"])
    assert response.status_code == 422
    error = errors_of(response)[0]
    assert error["detail"] == "must exist"
    assert error["code"] == "POLICY_NOT_FOUND"
    assert error["source"] == {"pointer": "/data/relationships/policy"}


def test_case_44_missing_policy(kg):
    user = kg.create_user()["id"]
    body = license_body(kg.fx["policy"], user)
    del body["data"]["relationships"]["policy"]
    response = kg.call("POST", "/licenses", body)
    assert response.status_code == 400
    error = errors_of(response)[0]
    assert error["detail"] == "is missing"
    assert error["source"] == {"pointer": "/data/relationships/policy"}


def test_case_45_policy_id_not_a_uuid(kg):
    user = kg.create_user()["id"]
    response = kg.call("POST", "/licenses", license_body("abc", user))
    assert response.status_code == 400
    error = errors_of(response)[0]
    assert error["detail"] == "type mismatch (received string expected UUID string)"
    assert error["source"] == {"pointer": "/data/relationships/policy/data/id"}


def test_case_46_empty_owner_is_missing_data_null_owner_is_ownerless(kg):
    body = license_body(kg.fx["policy"], OMIT)
    body["data"]["relationships"]["owner"] = {}
    response = kg.call("POST", "/licenses", body)
    assert response.status_code == 400
    error = errors_of(response)[0]
    assert error["detail"] == "is missing"
    assert error["source"] == {"pointer": "/data/relationships/owner/data"}

    body["data"]["relationships"]["owner"] = None
    response = kg.call("POST", "/licenses", body)
    assert response.status_code == 201
    relationships = response.json()["data"]["relationships"]
    assert relationships["owner"]["data"] is None
    assert relationships["users"]["meta"]["count"] == 0


def test_case_47_license_needs_a_token(kg):
    body = license_body(kg.fx["policy"], OMIT)
    response = kg.call("POST", "/licenses", body, token=None)
    assert response.status_code == 401
    error = errors_of(response)[0]
    assert error["detail"] == "You must be authenticated to complete the request"
    assert error["code"] == "TOKEN_MISSING"


def test_case_48_chosen_keys(kg):
    def create(key: str) -> requests.Response:
        body = license_body(kg.fx["policy"], OMIT, attributes={"key": key})
        return kg.call("POST", "/licenses", body)

    response = create("a-license-key")
    assert response.status_code == 201
    assert response.json()["data"]["attributes"]["key"] == "a-license-key"

    response = create("a-license-key")
    assert response.status_code == 422
    error = errors_of(response)[0]
    assert error["code"] == "KEY_TAKEN"
    assert error["detail"] == "has already been taken"
    assert error["source"] == {"pointer": "/data/attributes/key"}

    response = create("short")
    assert response.status_code == 422
    assert errors_of(response)[0]["code"] == "KEY_TOO_SHORT"

    response = create("actions")
    assert response.status_code == 422
    error = errors_of(response)[0]
    assert (error["code"], error["detail"]) == ("KEY_NOT_ALLOWED", "is reserved")


def test_case_49_policy_duration_sets_the_expiry(kg):
    policy = kg.emulator.add_policy(ACCOUNT, kg.fx["product"], duration=2_592_000)
    attributes = kg.create_license(None, policy=policy)["attributes"]
    expected = moment(attributes["created"]) + 2_592_000
    assert abs(moment(attributes["expiry"]) - expected) <= 5


def test_case_50_name_and_metadata_echo_and_user_tokens_cannot_set_expiry(kg):
    user = kg.create_user()["id"]
    attributes = {"metadata": {"orderId": "A-1"}, "name": "Clark's license"}
    echoed = kg.create_license(user, attributes=attributes)["attributes"]
    assert echoed["metadata"] == {"orderId": "A-1"}
    assert echoed["name"] == "Clark's license"

    token = kg.login()["attributes"]["token"]
    body = license_body(kg.fx["policy"], user, attributes={"expiry": "2030-01-01T00:00:00Z"})
    response = kg.call("POST", "/licenses", body, token=token)
    assert response.status_code == 400
    error = errors_of(response)[0]
    assert error["detail"] == "unpermitted parameter"
    assert error["source"] == {"pointer": "/data/attributes/expiry"}


# -- §12 Lookups, compensation, password check --------------------------------------------------


def test_case_51_user_by_email_is_case_insensitive(kg):
    kg.create_user()
    response = kg.call("GET", "/users/CLARK@Example.com")
    assert response.status_code == 200
    assert response.json()["data"]["attributes"]["email"] == "clark@example.com"


def test_case_52_unknown_user(kg):
    response = kg.call("GET", "/users/nobody@example.com")
    assert response.status_code == 404
    error = errors_of(response)[0]
    assert (
        error
        | {
            "title": "Not found",
            "detail": "The requested user 'nobody@example.com' was not found",
            "code": "NOT_FOUND",
        }
        == error
    )


def test_case_53_admins_are_invisible_to_products(kg):
    path = f"/users/{kg.fx['admin_email']}"
    assert kg.call("GET", path).status_code == 404
    response = kg.call("GET", path, token=kg.fx["admin_token"])
    assert response.status_code == 200
    assert response.json()["data"]["attributes"]["role"] == "admin"


def test_case_54_list_licenses_by_owner_or_user(kg):
    user = kg.create_user()["id"]
    lic = kg.create_license(user)["id"]
    response = kg.call("GET", f"/licenses?owner={user}")
    assert response.status_code == 200
    data = response.json()["data"]
    assert [(item["type"], item["id"]) for item in data] == [("licenses", lic)]
    by_email = kg.call("GET", "/licenses?user=clark@example.com")
    assert by_email.json()["data"] == data
    response = kg.call("GET", f"/licenses?owner={user}&limit=101")
    assert response.status_code == 400
    assert errors_of(response)[0]["source"] == {"parameter": "limit"}


def test_case_55_delete_user(kg):
    user = kg.create_user()["id"]
    response = kg.call("DELETE", f"/users/{user}")
    assert response.status_code == 204
    assert response.content == b""
    assert kg.call("GET", f"/users/{user}").status_code == 404


def test_case_56_deleting_a_user_deletes_their_licenses(kg):
    user = kg.create_user()["id"]
    lic = kg.create_license(user)["id"]
    assert kg.call("DELETE", f"/users/{user}").status_code == 204
    assert kg.call("GET", f"/licenses/{lic}").status_code == 404


def test_case_57_product_cannot_delete_another_products_user(kg):
    user = kg.create_user()["id"]
    kg.create_license(user, policy=kg.fx["policy2"], token=kg.fx["product_token2"])
    response = kg.call("DELETE", f"/users/{user}")
    assert response.status_code == 403
    assert "user cannot belong to another product" in errors_of(response)[0]["detail"]
    assert len(kg.emulator.users(ACCOUNT)) == 2  # Clark and the admin


def test_case_58_password_check_mints_a_revocable_user_token(kg):
    user = kg.create_user()["id"]
    response = kg.call(
        "POST", "/tokens", headers={"Authorization": basic("clark@example.com", PASSWORD)}
    )
    assert response.status_code == 201
    data = response.json()["data"]
    attributes = data["attributes"]
    assert attributes["kind"] == "user-token"
    assert re.fullmatch(r"user-[0-9a-f]{64}v3", attributes["token"])
    assert abs(moment(attributes["expiry"]) - (time.time() + 14 * 86400)) < 60
    assert data["relationships"]["bearer"]["data"] == {"type": "users", "id": user}

    me = kg.call("GET", "/me", token=attributes["token"])
    assert me.status_code == 200
    assert me.json()["data"]["type"] == "users"

    revoke = kg.call("DELETE", f"/tokens/{data['id']}", token=attributes["token"])
    assert revoke.status_code == 204
    assert kg.call("GET", "/me", token=attributes["token"]).status_code == 401


def test_case_59_wrong_password_and_its_1_7_code(kg):
    kg.create_user()
    auth = {"Authorization": basic("clark@example.com", "wrong password")}
    response = kg.call("POST", "/tokens", headers=auth)
    assert response.status_code == 401
    error = errors_of(response)[0]
    assert (
        error
        | {
            "detail": "password must be valid",
            "code": "PASSWORD_INVALID",
            "source": {"header": "Authorization"},
        }
        == error
    )
    response = kg.call("POST", "/tokens", headers={**auth, "Keygen-Version": "1.7"})
    error = errors_of(response)[0]
    assert (error["detail"], error["code"]) == (
        "email and password must be valid",
        "CREDENTIALS_INVALID",
    )


def test_case_60_unknown_email_and_empty_password(kg):
    kg.create_user()
    auth = {"Authorization": basic("nobody@example.com", "whatever")}
    response = kg.call("POST", "/tokens", headers=auth)
    assert response.status_code == 401
    error = errors_of(response)[0]
    assert (error["code"], error["detail"]) == ("EMAIL_INVALID", "email must be valid")
    response = kg.call("POST", "/tokens", headers={"Authorization": basic("clark@example.com", "")})
    assert response.status_code == 401
    assert errors_of(response)[0]["code"] == "PASSWORD_REQUIRED"


def test_case_61_password_checks_are_throttled_per_email():
    clock = lambda: 1_746_100_823.0  # noqa: E731
    with served(Emulator(clock=clock)) as kg:
        kg.create_user()
        auth = {"Authorization": basic("Clark@Example.com", PASSWORD)}
        statuses = [kg.call("POST", "/tokens", headers=auth).status_code for _ in range(6)]
        assert statuses == [201] * 5 + [429]
        response = kg.call("POST", "/tokens", headers=auth)
    body = response.json()
    assert "meta" not in body
    error = body["errors"][0]
    assert (error["title"], error["code"]) == ("Too many requests", "TOO_MANY_REQUESTS")
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert response.headers["Retry-After"] == str(60 - 1_746_100_823 % 60)
    assert response.headers["X-RateLimit-Window"] == "auth"
    assert response.headers["X-RateLimit-Limit"] == "5"
    assert response.headers["X-RateLimit-Remaining"] == "0"


# -- Beyond §12: order of checks -----------------------------------------------------------------


def test_unknown_keys_are_reported_before_missing_ones(kg):
    response = kg.call("POST", "/users", user_body(email=OMIT, phone="123"))
    assert errors_of(response)[0]["source"] == {"pointer": "/data/attributes/phone"}


def test_params_come_before_authorization_on_a_protected_account(kg):
    kg.emulator.add_account(slug="locked", protected=True)
    response = kg.call("POST", "/users", user_body(role="user"), token=None, account="locked")
    assert response.status_code == 400


# -- Beyond §12: ids, versions, listing -----------------------------------------------------------


def test_client_chosen_license_id_and_id_conflict(kg):
    chosen = str(uuid.uuid4())
    body = license_body(kg.fx["policy"], OMIT, id=chosen)
    first = kg.call("POST", "/licenses", body)
    assert first.status_code == 201
    assert first.json()["data"]["id"] == chosen
    again = kg.call("POST", "/licenses", body)
    assert again.status_code == 422
    error = errors_of(again)[0]
    assert error["code"] == "ID_CONFLICT"
    assert error["source"] == {"pointer": "/data/id"}
    assert len(kg.emulator.licenses()) == 1


def test_license_id_is_unpermitted_for_user_tokens(kg):
    user = kg.create_user()["id"]
    token = kg.login()["attributes"]["token"]
    body = license_body(kg.fx["policy"], user, id=str(uuid.uuid4()))
    response = kg.call("POST", "/licenses", body, token=token)
    assert response.status_code == 400
    assert errors_of(response)[0]["source"] == {"pointer": "/data/id"}


def test_account_pinned_to_1_5_answers_with_user_without_a_header(kg):
    account = kg.emulator.add_account(slug="old-shop", api_version="1.5")
    product, token = kg.emulator.add_product(account)
    policy = kg.emulator.add_policy(account, product)
    response = kg.call("POST", "/users", user_body(), token=token, account="old-shop")
    user = response.json()["data"]["id"]
    body = license_body(policy, user)
    response = kg.call("POST", "/licenses", body, token=token, account="old-shop")
    assert response.status_code == 201
    assert response.headers["Keygen-Version"] == "1.5"
    relationships = response.json()["data"]["relationships"]
    assert relationships["user"]["data"]["id"] == user
    assert "owner" not in relationships
    headers = {"Keygen-Version": "1.8"}
    response = kg.call(
        "GET", f"/licenses?owner={user}", token=token, account="old-shop", headers=headers
    )
    assert "owner" in response.json()["data"][0]["relationships"]


def test_listing_is_newest_first_scoped_to_the_product_and_exact_on_email(kg):
    user = kg.create_user()["id"]
    older = kg.create_license(user)["id"]
    newer = kg.create_license(user)["id"]
    kg.create_license(user, policy=kg.fx["policy2"], token=kg.fx["product_token2"])
    response = kg.call("GET", f"/licenses?owner={user}")
    assert [item["id"] for item in response.json()["data"]] == [newer, older]
    assert len(kg.call("GET", "/licenses?owner=clark@example.com&limit=1").json()["data"]) == 1
    assert kg.call("GET", "/licenses?owner=CLARK@example.com").json()["data"] == []
    response = kg.call("GET", "/licenses?limit=0")
    assert errors_of(response)[0]["detail"] == "limit must be a number between 1 and 100 (got 0)"


def test_license_lookup_by_key_and_product_scope(kg):
    lic = kg.create_license(None)
    key = lic["attributes"]["key"]
    assert kg.call("GET", f"/licenses/{key}").json()["data"]["id"] == lic["id"]
    other = kg.call("GET", f"/licenses/{lic['id']}", token=kg.fx["product_token2"])
    assert other.status_code == 404
    assert errors_of(other)[0]["detail"] == f"The requested license '{lic['id']}' was not found"
    assert kg.call("DELETE", f"/licenses/{lic['id']}").status_code == 204
    assert kg.emulator.licenses() == []


def test_singleplayer_routes_and_ping(kg):
    assert requests.get(kg.url + "/v1/ping", timeout=5).status_code == 200
    assert kg.emulator.requests == []  # health probes are not logged
    kg.emulator.configure(mode="singleplayer")  # a self-hosted Keygen; Cloud is multiplayer
    response = kg.call("GET", "/v1/me")
    assert response.status_code == 200
    assert response.json()["data"]["id"] == kg.fx["product"]


def test_concurrent_signups_never_duplicate_an_email(kg):
    statuses: list[int] = []

    def sign_up() -> None:
        statuses.append(kg.call("POST", "/users", user_body()).status_code)

    threads = [threading.Thread(target=sign_up) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert sorted(statuses) == [201] + [422] * 7
    assert [u["email"] for u in kg.emulator.users(ACCOUNT)].count("clark@example.com") == 1


def test_request_log_records_the_shape_but_never_the_token(kg):
    kg.call("POST", "/users", user_body(), headers={"Keygen-Version": "1.8"})
    kg.call("GET", "/me", token="nope")
    created, refused = kg.emulator.requests
    assert (
        created
        | {
            "method": "POST",
            "path": "/v1/accounts/acme/users",
            "route": "users.create",
            "status": 201,
            "keygen_version": "1.8",
            "accept": JSONAPI,
            "content_type": JSONAPI,
            "json": user_body(),
            "authenticated": True,
        }
        == created
    )
    assert (refused["route"], refused["status"], refused["authenticated"]) == ("me", 401, False)
    assert kg.fx["product_token"] not in json.dumps(kg.emulator.requests)


def test_general_rate_limit_is_off_by_default_and_configurable():
    clock = lambda: 1_746_100_807.0  # noqa: E731
    with served(Emulator(clock=clock)) as kg:
        assert "X-RateLimit-Limit" not in kg.call("GET", "/me").headers
        kg.emulator.set_rate_limit(2, period=30)
        first = kg.call("GET", "/me")
        assert first.headers["X-RateLimit-Remaining"] == "1"
        assert kg.call("GET", "/me").status_code == 200
        assert kg.call("GET", "/me", token=kg.fx["admin_token"]).status_code == 200
        throttled = kg.call("GET", "/me")
        kg.emulator.set_rate_limit(None)
        assert kg.call("GET", "/me").status_code == 200
    assert throttled.status_code == 429
    assert "meta" not in throttled.json()
    assert throttled.headers["Retry-After"] == str(30 - 1_746_100_807 % 30)
    assert throttled.headers["X-RateLimit-Window"] == "30s"


# -- Fault injection ----------------------------------------------------------------------------


def clark_emails(kg: Keygen) -> list[str]:
    return [u["email"] for u in kg.emulator.users(ACCOUNT) if u["role"] == "user"]


def test_fault_status_before_does_not_commit(kg):
    kg.emulator.inject("users.create", status=500)
    response = kg.call("POST", "/users", user_body())
    assert response.status_code == 500
    error = errors_of(response)[0]
    assert error["title"] == "Internal server error"
    assert error["detail"].startswith("Looks like something went wrong!")
    assert response.json()["meta"]["id"] == response.headers["X-Request-Id"]
    assert clark_emails(kg) == []
    assert kg.call("POST", "/users", user_body()).status_code == 201


def test_fault_status_after_commits(kg):
    kg.emulator.inject("users.create", status=503, when="after")
    response = kg.call("POST", "/users", user_body())
    assert response.status_code == 503
    assert errors_of(response)[0]["title"] == "Service unavailable"
    assert clark_emails(kg) == ["clark@example.com"]


def test_fault_custom_errors(kg):
    errors = [{"title": "Conflict", "detail": "race"}]
    kg.emulator.inject("licenses.create", status=409, errors=errors)
    response = kg.call("POST", "/licenses", license_body(kg.fx["policy"], OMIT))
    assert response.status_code == 409
    assert errors_of(response) == errors


@pytest.mark.parametrize("when", ["before", "after"])
def test_fault_drop_closes_the_connection(kg, when):
    kg.emulator.inject("users.create", drop=True, when=when)
    with pytest.raises(requests.ConnectionError):
        kg.call("POST", "/users", user_body())
    assert clark_emails(kg) == ([] if when == "before" else ["clark@example.com"])
    assert kg.emulator.requests[-1]["status"] is None
    assert kg.call("GET", "/me").status_code == 200  # the server lives on


def test_fault_drop_on_a_kept_alive_connection(kg):
    with requests.Session() as session:
        headers = {"Authorization": f"Bearer {kg.fx['product_token']}"}
        url = kg.url + "/v1/accounts/acme/me"
        assert session.get(url, headers=headers, timeout=5).status_code == 200
        kg.emulator.inject("me", drop=True)
        with pytest.raises(requests.ConnectionError):
            session.get(url, headers=headers, timeout=5)
        assert session.get(url, headers=headers, timeout=5).status_code == 200


def test_fault_garbled_commits_and_answers_unreadable_json(kg):
    kg.emulator.inject("users.create", garbled=True)
    response = kg.call("POST", "/users", user_body())
    assert response.status_code == 201
    with pytest.raises(ValueError):
        json.loads(response.text)
    assert clark_emails(kg) == ["clark@example.com"]


def test_fault_delay_before_and_after(kg):
    kg.emulator.inject("me", delay=0.3)
    started = time.monotonic()
    assert kg.call("GET", "/me").status_code == 200
    assert time.monotonic() - started >= 0.3

    kg.emulator.inject("users.create", delay=1.0, when="after")
    with pytest.raises(requests.Timeout):
        kg.call("POST", "/users", user_body(), timeout=0.3)
    assert clark_emails(kg) == ["clark@example.com"]  # committed before the wait


def test_fault_retry_after_is_a_keygen_429(kg):
    kg.emulator.inject("users.create", retry_after=7)
    response = kg.call("POST", "/users", user_body())
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"
    body = response.json()
    assert "meta" not in body
    assert body["errors"][0]["code"] == "TOO_MANY_REQUESTS"
    assert clark_emails(kg) == []


def test_fault_times_and_queueing(kg):
    kg.emulator.inject("me", status=500, times=2)
    kg.emulator.inject("me", status=503)
    statuses = [kg.call("GET", "/me").status_code for _ in range(4)]
    assert statuses == [500, 500, 503, 200]

    kg.emulator.inject("me", status=502, times=None)
    assert [kg.call("GET", "/me").status_code for _ in range(3)] == [502, 502, 502]
    kg.emulator.clear_faults()
    assert kg.call("GET", "/me").status_code == 200
    with pytest.raises(ValueError):
        kg.emulator.inject("users.update", status=500)


def test_faults_are_per_route(kg):
    kg.emulator.inject("licenses.create", status=503)
    assert kg.call("POST", "/users", user_body()).status_code == 201
    response = kg.call("POST", "/licenses", license_body(kg.fx["policy"], OMIT))
    assert response.status_code == 503


def test_reset_keeps_the_seed_and_forgets_the_rest(kg):
    user = kg.create_user()["id"]
    kg.create_license(user)
    token = kg.login()["attributes"]["token"]
    kg.emulator.inject("me", status=500)
    kg.emulator.reset()
    assert kg.emulator.licenses() == []
    assert clark_emails(kg) == []
    assert kg.emulator.requests == []
    assert kg.call("GET", "/me", token=token).status_code == 401
    assert kg.call("GET", "/me").status_code == 200
    assert kg.call("GET", "/me", token=kg.fx["admin_token"]).status_code == 200


# -- Connections, control plane, app factory, CLI -----------------------------------------------


def test_new_connections_count_kept_alive_connections_once(kg):
    url = kg.url + "/v1/accounts/acme/me"
    headers = {"Authorization": f"Bearer {kg.fx['product_token']}"}
    before = kg.emulator.new_connections
    with requests.Session() as session:
        session.get(url, headers=headers, timeout=5)
        session.post(kg.url + "/v1/accounts/acme/users", json=user_body(), headers=headers)
    assert kg.emulator.new_connections - before == 1

    before = kg.emulator.new_connections
    for _ in range(2):
        with requests.Session() as session:
            session.get(url, headers=headers, timeout=5)
    assert kg.emulator.new_connections - before == 2


def test_control_plane_over_http(kg):
    control = kg.url + "/_emulator"
    fault = {"route": "users.create", "status": 500, "when": "after"}
    assert requests.post(control + "/faults", json=fault, timeout=5).status_code == 204
    assert kg.call("POST", "/users", user_body()).status_code == 500
    bad = requests.post(control + "/faults", json={"route": "nope"}, timeout=5)
    assert bad.status_code == 400

    state = requests.get(control + "/state", timeout=5).json()
    assert [u["email"] for u in state["users"] if u["role"] == "user"] == ["clark@example.com"]
    assert state["licenses"] == []
    assert [r["route"] for r in state["requests"]] == ["users.create"]
    assert state["new_connections"] >= 1

    created = requests.post(
        control + "/policies",
        json={"account": ACCOUNT, "product": kg.fx["product"]},
        timeout=5,
    )
    policy = created.json()["id"]
    kg.create_license(None, policy=policy)
    assert requests.delete(f"{control}/policies/{policy}", timeout=5).status_code == 204
    response = kg.call("POST", "/licenses", license_body(policy, OMIT))
    assert response.status_code == 403  # a product token and a policy that is gone

    requests.post(
        control + "/faults", json={"route": "me", "times": None, "status": 503}, timeout=5
    )
    assert requests.delete(control + "/faults", timeout=5).status_code == 204
    assert kg.call("GET", "/me").status_code == 200
    assert requests.post(control + "/reset", timeout=5).status_code == 204
    state = requests.get(control + "/state", timeout=5).json()
    assert (state["licenses"], state["requests"]) == ([], [])


def test_create_app_seeds_from_the_environment(monkeypatch):
    token = "prod-" + "0" * 64 + "v3"
    policy = str(uuid.uuid4())
    monkeypatch.setenv("EMULATOR_ACCOUNT_ID", ACCOUNT)
    monkeypatch.setenv("EMULATOR_ACCOUNT_SLUG", "shop")
    monkeypatch.setenv("EMULATOR_PROTECTED", "true")
    monkeypatch.setenv("EMULATOR_API_VERSION", "1.5")
    monkeypatch.setenv("EMULATOR_PRODUCT_TOKEN", token)
    monkeypatch.setenv("EMULATOR_POLICY_ID", policy)
    emulator = create_app().extensions["keygen_emulator"]
    state = emulator.snapshot()
    assert state["accounts"] == [
        {"id": ACCOUNT, "slug": "shop", "protected": True, "api_version": "1.5"}
    ]
    assert [p["id"] for p in state["policies"]] == [policy]
    server = serve(emulator)
    try:
        me = requests.get(
            server.url + "/v1/accounts/shop/me",
            headers={"Authorization": f"Bearer {token}"},
            timeout=5,
        )
    finally:
        server.stop()
    assert me.status_code == 200
    assert me.headers["Keygen-Version"] == "1.5"


def test_no_access_log_lines(kg, caplog):
    with caplog.at_level(logging.DEBUG, logger="werkzeug"):
        kg.call("GET", "/users/clark@example.com")
        # What werkzeug's own handler logs under `flask run` (werkzeug.serving.log_request).
        line = '127.0.0.1 - - [01/May/2025 12:00:00] "%s" %s %s'
        logging.getLogger("werkzeug").info(line, "GET /users/clark@example.com", 404, "-")
    assert [r for r in caplog.records if r.name == "werkzeug"] == []


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_main_serves_until_terminated():
    port = free_port()
    token = "prod-" + "ab" * 32 + "v3"
    args = [sys.executable, "-m", "keygen_emulator", "--port", str(port), "--protected"]
    args += ["--slug", "shop", "--api-version", "1.5", "--product-token", token]
    process = subprocess.Popen(
        args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: lines.put(process.stdout.readline()), daemon=True)
    reader.start()
    try:
        line = lines.get(timeout=20)
        url = f"http://127.0.0.1:{port}"
        assert line == f"keygen emulator listening on {url}\n"
        base = url + "/v1/accounts/shop"
        anonymous = requests.post(base + "/users", json=user_body(), timeout=5)
        assert anonymous.status_code == 403
        me = requests.get(base + "/me", headers={"Authorization": f"Bearer {token}"}, timeout=5)
        assert me.status_code == 200
        assert me.headers["Keygen-Version"] == "1.5"
    finally:
        process.terminate()
        out, err = process.communicate(timeout=10)
    assert process.returncode == 0
    assert token not in out + err
    assert "clark@example.com" not in out + err


def test_policies_show_is_scoped_to_the_products_token(kg):
    own = kg.call("GET", f"/policies/{kg.fx['policy']}")
    assert own.status_code == 200
    assert own.json()["data"]["relationships"]["product"]["data"]["id"] == kg.fx["product"]
    other = kg.call("GET", f"/policies/{kg.fx['policy2']}")
    assert other.status_code == 404
    assert other.json()["errors"][0]["code"] == "NOT_FOUND"
    admin = kg.call("GET", f"/policies/{kg.fx['policy2']}", token=kg.fx["admin_token"])
    assert admin.status_code == 200
