"""The Keygen client's self-service calls against the emulator over loopback: signing in as the
person (HTTP Basic, second factor), what their token reads, revoking it, freeing a machine with
the product token, and the password reset."""

from __future__ import annotations

import calendar
import json
import time
import uuid

import pytest

from keygen_api import (
    KeygenAccessDenied,
    KeygenClient,
    KeygenInvalid,
    KeygenNotFound,
    KeygenSecondFactorNeeded,
    KeygenSecondFactorWrong,
    endpoint_name,
)
from support.accounts import product_token, staff_member
from support.leaks import PASSWORD, secret
from support.otp import totp
from support.portal import KeygenWorld
from support.webhooks import webhook_receiver


@pytest.fixture
def api(keygen: KeygenWorld) -> KeygenClient:
    return KeygenClient(keygen.url, keygen.account, keygen.token, connect_timeout=1, read_timeout=2)


def person(api: KeygenClient, keygen: KeygenWorld, email: str, *policies: str):
    """A user with licenses under the given policies; returns (user, [license ids])."""
    user = api.create_user(email=email, password=PASSWORD, first_name="A", last_name="B")
    ids = []
    for policy in policies:
        license_id = str(uuid.uuid4())
        token = product_token(keygen, policy)
        other = KeygenClient(keygen.url, keygen.account, token)
        other.create_license(license_id=license_id, policy_id=policy, owner_id=user.id)
        ids.append(license_id)
    return user, ids


def sign_in(api: KeygenClient, email: str, password: str = PASSWORD, **options):
    token = api.create_user_token(email, password, expires_at=time.time() + 600, **options)
    secret(token.value)
    return token


def test_signing_in_makes_a_short_lived_token_of_the_persons_own(api, keygen):
    user, _ = person(api, keygen, "clark@example.com")
    token = sign_in(api, "Clark@Example.com")
    assert token.value.startswith("user-") and token.is_customers
    assert token.bearer_id == user.id
    [minted] = [t for t in keygen.emulator.tokens(keygen.account) if t["id"] == token.id]
    assert minted["bearer_id"] == user.id and minted["name"] == "Signup portal session"
    expiry = calendar.timegm(time.strptime(minted["expiry"], "%Y-%m-%dT%H:%M:%S.000Z"))
    assert abs(expiry - (time.time() + 600)) < 5  # not Keygen's two weeks
    [call] = keygen.calls("tokens.create")
    assert call["authenticated"] and call["json"]["data"]["type"] == "tokens"


@pytest.mark.parametrize(
    "email, password", [("clark@example.com", "wrong"), ("no@example.com", "x")]
)
def test_a_wrong_password_and_an_unknown_address_are_both_access_denied(
    api, keygen, email, password
):
    person(api, keygen, "clark@example.com")
    with pytest.raises(KeygenAccessDenied) as raised:
        sign_in(api, email, password)
    assert type(raised.value) is KeygenAccessDenied
    assert raised.value.status == 401
    assert password not in str(raised.value)


def test_a_banned_user_is_access_denied_with_the_right_password(api, keygen):
    user, _ = person(api, keygen, "clark@example.com")
    keygen.emulator.ban_user(user.id)
    with pytest.raises(KeygenAccessDenied) as raised:
        sign_in(api, "clark@example.com")
    assert raised.value.status == 403


def test_a_second_factor_is_asked_for_and_checked(api, keygen):
    user, _ = person(api, keygen, "clark@example.com")
    factor = keygen.emulator.enable_second_factor(user.id)
    with pytest.raises(KeygenSecondFactorNeeded):
        sign_in(api, "clark@example.com")
    code = totp(factor)
    with pytest.raises(KeygenSecondFactorWrong):
        sign_in(api, "clark@example.com", otp=f"{(int(code) + 1) % 1_000_000:06d}")
    assert sign_in(api, "clark@example.com", otp=code).bearer_id == user.id


def test_a_staff_members_token_is_not_a_customers(api, keygen):
    staff_member(keygen, "dev@example.com")
    token = sign_in(api, "dev@example.com")
    assert token.kind == "developer-token" and not token.is_customers


def test_revoking_the_token_ends_it_at_keygen(api, keygen):
    person(api, keygen, "clark@example.com")
    token = sign_in(api, "clark@example.com")
    api.revoke_token(token)
    assert token.id not in [t["id"] for t in keygen.emulator.tokens(keygen.account)]
    with pytest.raises(KeygenAccessDenied):
        api.licenses_of(token, product_id=keygen.product)


def test_the_persons_token_reads_their_own_licenses_of_this_product_only(api, keygen):
    user, (first, second, _elsewhere) = person(
        api, keygen, "clark@example.com", keygen.policy, keygen.policy, keygen.other_policy
    )
    _, (hers,) = person(api, keygen, "lois@example.com", keygen.policy)
    token = sign_in(api, "clark@example.com")
    licenses = api.licenses_of(token, product_id=keygen.product)
    assert {lic.id for lic in licenses} == {first, second}
    assert {lic.owner_id for lic in licenses} == {user.id}
    assert {lic.product_id for lic in licenses} == {keygen.product}
    assert licenses[0].status == "ACTIVE"
    with pytest.raises(KeygenNotFound):
        api.license_as(token, hers)
    assert api.license_as(token, first).id == first
    assert api.policy_as(token, keygen.policy).id == keygen.policy
    assert {c["query"] for c in keygen.calls("licenses.index")} == {
        f"owner={user.id}&product={keygen.product}&page%5Bnumber%5D=1&page%5Bsize%5D=100"
    }


def test_machines_are_read_with_the_persons_token_and_freed_with_the_products(api, keygen):
    _, (mine,) = person(api, keygen, "clark@example.com", keygen.policy)
    _, (hers,) = person(api, keygen, "lois@example.com", keygen.policy)
    laptop = keygen.emulator.add_machine(mine, name="Laptop", platform="Linux", hostname="kent")
    theirs = keygen.emulator.add_machine(hers, name="Lois's PC")
    token = sign_in(api, "clark@example.com")
    [machine] = api.machines_of(token, product_id=keygen.product)
    assert (machine.id, machine.license_id, machine.name) == (laptop, mine, "Laptop")
    assert (machine.platform, machine.hostname, machine.product_id) == (
        "Linux",
        "kent",
        keygen.product,
    )
    assert machine.created and machine.last_heartbeat is None
    with pytest.raises(KeygenNotFound):
        api.machine_as(token, theirs)
    api.delete_machine(laptop)
    assert [m["id"] for m in keygen.emulator.machines(keygen.account)] == [theirs]


def test_a_password_reset_goes_through_keygens_webhook_and_the_anonymous_reset(api, keygen):
    user, _ = person(api, keygen, "clark@example.com")
    old = sign_in(api, "clark@example.com")
    with webhook_receiver() as receiver:
        keygen.emulator.add_webhook_endpoint(keygen.account, receiver.url)
        api.request_password_reset("Clark@Example.com")
        api.request_password_reset("nobody@example.com")
        [event] = receiver.wait_for(1)
        keygen.emulator.webhooks.wait()
        assert len(receiver.received) == 1
    assert keygen.emulator.reset_emails == []  # deliver: false, so Keygen sends none
    payload = json.loads(json.loads(event.body)["data"]["attributes"]["payload"])
    reset_token = secret(payload["meta"]["passwordResetToken"])
    with pytest.raises(KeygenInvalid):
        api.reset_password(user.id, reset_token, "abc")
    api.reset_password(user.id, reset_token, "a brand new password")
    [reset] = keygen.calls("users.reset_password")[-1:]
    assert reset["auth_scheme"] is None  # no token: the reset token proves who it is
    assert old.id not in [t["id"] for t in keygen.emulator.tokens(keygen.account)]
    assert sign_in(api, "clark@example.com", "a brand new password").bearer_id == user.id
    with pytest.raises(KeygenNotFound):
        api.reset_password(user.id, reset_token, "yet another password")


def test_metrics_name_the_reset_action_and_never_an_id():
    assert endpoint_name("POST", "users/abc/actions/reset-password") == "users.reset_password"
    assert endpoint_name("DELETE", "machines/abc") == "machines.destroy"
    assert endpoint_name("POST", "passwords") == "passwords.create"
