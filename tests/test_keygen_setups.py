"""The portal against the Keygens a vendor runs: API versions, environments, custom domains and
self-hosted hosts, narrowed token permissions. Each setup signs people up, or `flask doctor`
and /readyz say precisely what is wrong and which setting to change (docs/keygen-compatibility.md).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from app import create_app
from config import ConfigError, load_settings
from keygen_api import KeygenClient
from support.http import csrf_token_from, form_data, issued_key
from support.portal import GOOD, make_settings
from support.setups import doctor, line_with


def sign_up(world, **changes):
    """Submit the form to a portal with these settings; the response."""
    client = create_app(make_settings(world, **changes)).test_client()
    page = client.get("/")
    data = form_data(csrf_token=csrf_token_from(page.get_data(as_text=True)))
    return client.post("/", data=data)


def readyz(world, **changes):
    response = create_app(make_settings(world, **changes)).test_client().get("/readyz")
    return response.status_code, response.get_json()["checks"]


# -- 1. API versions -----------------------------------------------------------------------------


def test_a_keygen_that_knows_only_1_7_signs_people_up(setups):
    setups.emulator.configure(newest_version="1.7")  # self-hosted CE/EE v1.3.0 to v1.4.x
    response = sign_up(setups)
    assert response.status_code == 200
    issued_key(response.get_data(as_text=True))
    assert {call["keygen_version"] for call in setups.calls()} == {"1.7"}
    [license] = setups.licenses()
    assert license["owner_id"] == setups.users()[0]["id"]


def test_keygen_api_version_pins_the_version_sent(setups):
    assert sign_up(setups, keygen_api_version="1.8").status_code == 200
    assert {call["keygen_version"] for call in setups.calls()} == {"1.8"}


def test_the_doctor_names_an_unknown_api_version_and_the_value_to_set(setups):
    setups.emulator.configure(newest_version="1.7")
    code, lines = doctor(setups, keygen_api_version="1.8")
    assert code == 1
    line = line_with(lines, "INVALID_API_VERSION")
    assert line.startswith("ERROR ")
    assert "does not know API version 1.8" in line
    assert "set KEYGEN_API_VERSION=1.7" in line
    # A Keygen older than v1.3.0 does not know 1.7 either: the portal does not support it.
    setups.emulator.configure(newest_version="1.5")
    _, lines = doctor(setups)
    assert "older than Keygen v1.3.0" in line_with(lines, "INVALID_API_VERSION")


@pytest.mark.parametrize(("value", "loaded"), [("1.8", "1.8"), ("v1.7", "1.7")])
def test_keygen_api_version_takes_the_versions_the_portal_knows(value, loaded):
    assert load_settings({**GOOD, "KEYGEN_API_VERSION": value}).keygen_api_version == loaded


def test_keygen_api_version_refuses_others():
    with pytest.raises(ConfigError) as caught:
        load_settings({**GOOD, "KEYGEN_API_VERSION": "1.5"})
    assert caught.value.problems == [
        "KEYGEN_API_VERSION must be 1.7 or 1.8 (the API versions the portal knows)"
    ]


# -- 2. Environments (Keygen EE) -----------------------------------------------------------------


def in_sandbox(world, **changes):
    settings = dict(
        keygen_product_token=world.sandbox_token,
        keygen_policy_id=world.sandbox_policy,
        keygen_environment="sandbox",
    )
    return settings | changes


def test_a_token_of_an_environment_signs_people_up_with_keygen_environment(setups):
    response = sign_up(setups, **in_sandbox(setups))
    assert response.status_code == 200
    issued_key(response.get_data(as_text=True))
    assert {call["keygen_environment"] for call in setups.calls()} == {"sandbox"}
    _, lines = doctor(setups, **in_sandbox(setups))
    assert lines[0].startswith("OK ")


def test_without_keygen_environment_the_doctor_says_the_token_may_be_an_environments(setups):
    settings = in_sandbox(setups, keygen_environment="")
    code, lines = doctor(setups, **settings)
    assert code == 1
    assert lines[0].startswith("ERROR ")
    assert "401 TOKEN_INVALID" in lines[0]
    assert "knows no such token in the global environment" in lines[0]
    assert "set KEYGEN_ENVIRONMENT to the environment's code" in lines[0]
    assert setups.sandbox_token not in "\n".join(lines)


def test_with_the_wrong_environment_the_doctor_says_so(setups):
    code, lines = doctor(setups, **in_sandbox(setups, keygen_environment="staging"))
    assert code == 1
    assert "no such token in environment 'staging' nor in the global one" in lines[0]
    assert "belongs to another environment" in lines[0]


def test_a_global_token_with_an_environment_is_told_to_drop_it(setups):
    code, lines = doctor(setups, keygen_environment="staging")
    assert code == 1
    assert "but knows it in the global environment" in lines[0]
    assert "leave KEYGEN_ENVIRONMENT empty" in lines[0]


def test_a_revoked_token_is_not_taken_for_an_environment_problem_on_keygen_ce(setups):
    setups.emulator.configure(edition="CE")
    code, lines = doctor(setups, keygen_product_token="prod-" + "7" * 64 + "v3")
    assert code == 1
    assert "the token is wrong, expired or revoked" in lines[0]
    assert "environment" not in lines[0]


def test_an_unknown_environment_and_keygen_ce_are_named(setups):
    _, lines = doctor(setups, keygen_environment="prod")
    assert "Keygen has no environment 'prod'" in lines[0]
    assert "ENVIRONMENT_INVALID" in lines[0]
    setups.emulator.configure(edition="CE")
    _, lines = doctor(setups, keygen_environment="sandbox")
    assert "This Keygen is CE and has no environments" in lines[0]
    assert "leave KEYGEN_ENVIRONMENT empty" in lines[0]


# -- 3. Custom domains and self-hosted hosts -----------------------------------------------------


def as_custom_domain(world) -> None:
    """Keygen Cloud with a custom domain for the account: our loopback address."""
    world.emulator.configure(domain="keygen.sh", cnames={"127.0.0.1": world.account})


def test_a_custom_domain_works_without_keygen_account_id(setups):
    as_custom_domain(setups)
    response = sign_up(setups, keygen_account_id="")
    assert response.status_code == 200
    issued_key(response.get_data(as_text=True))
    paths = {call["path"].rsplit("/", 1)[0] for call in setups.calls()}
    assert paths == {"/v1"}  # /v1/users, /v1/licenses: no /accounts/<id>
    _, lines = doctor(setups, keygen_account_id="")
    assert lines[0].startswith("OK ")


def test_account_routes_under_a_custom_domain_are_named_a_domain_problem(setups):
    as_custom_domain(setups)
    code, lines = doctor(setups)
    assert code == 1
    line = lines[0]
    assert line.startswith("ERROR ")
    assert "serves no /v1/accounts/... routes under the host name 127.0.0.1" in line
    assert "This is not a bad token or account: with a custom domain leave " in line
    assert "KEYGEN_ACCOUNT_ID empty" in line


def test_a_host_a_self_hosted_keygen_does_not_know_is_named(setups):
    setups.emulator.configure(hosts=("keygen.internal",))
    code, lines = doctor(setups)
    assert code == 1
    port = setups.url.rsplit(":", 1)[1]
    assert f"it does not know the host name 127.0.0.1:{port}" in lines[0]
    assert "KEYGEN_HOST and KEYGEN_HOSTS" in lines[0]
    assert "(Not a token problem.)" in lines[0]


def test_without_the_account_keygen_cloud_needs_a_custom_domain(setups):
    _, lines = doctor(setups, keygen_account_id="")
    assert "does not know 127.0.0.1" in lines[0]
    assert "set KEYGEN_ACCOUNT_ID" in lines[0]


def test_a_singleplayer_keygen_serving_another_account_names_it(setups):
    setups.emulator.configure(mode="singleplayer")
    assert sign_up(setups, keygen_account_id="").status_code == 200
    other = setups.emulator.add_account()  # the server's first account is its only one
    _, lines = doctor(setups, keygen_account_id=other)
    assert (
        f"serves only its own account (account is invalid (expected {setups.account}))"
        in (lines[0])
    )


def test_keygen_account_id_is_required_only_by_keygen_clouds_own_host():
    with pytest.raises(ConfigError) as caught:
        load_settings({**GOOD, "KEYGEN_ACCOUNT_ID": ""})
    assert caught.value.problems[0].startswith("KEYGEN_ACCOUNT_ID is required but not set")
    custom = {**GOOD, "KEYGEN_ACCOUNT_ID": "", "KEYGEN_API_URL": "https://licensing.example.com"}
    assert load_settings(custom).keygen_account_id == ""
    client = KeygenClient("https://licensing.example.com", "", GOOD["KEYGEN_PRODUCT_TOKEN"])
    assert client.base_url == "https://licensing.example.com/v1"


# -- 4. Narrowed token permissions (Keygen EE) ---------------------------------------------------


def test_the_doctor_lists_every_permission_the_token_lacks(setups):
    granted = ["product.read", "policy.read", "user.read", "machine.delete"]
    setups.emulator.set_permissions(setups.token, granted)
    code, lines = doctor(setups)
    assert code == 1
    line = line_with(lines, "KEYGEN_PRODUCT_TOKEN lacks")
    assert line.startswith("ERROR ")
    assert "lacks 4 of the permissions the portal needs" in line
    for missing in ("user.create", "user.delete", "license.create", "license.read"):
        assert missing in line
    assert "user.read" not in line and "policy.read" not in line
    status, checks = readyz(setups)
    assert status == 503
    assert not checks["permissions"]["ok"]


def test_a_permission_only_some_steps_need_fails_the_doctor_but_not_readiness(setups):
    granted = ["product.read", "policy.read", "user.create", "user.read", "license.create"]
    setups.emulator.set_permissions(setups.token, [*granted, "license.read", "machine.delete"])
    _, lines = doctor(setups)
    assert "lacks 1 of the permissions the portal needs: user.delete" in lines[1]
    status, checks = readyz(setups)
    assert status == 200
    assert checks["permissions"]["required"] is False


@pytest.mark.parametrize("self_service", [True, False])
def test_freeing_machines_needs_machine_delete_only_with_self_service(setups, self_service):
    everything = ["product.read", "policy.read", "user.create", "user.read", "user.delete"]
    setups.emulator.set_permissions(setups.token, [*everything, "license.create", "license.read"])
    _, lines = doctor(setups, self_service=self_service)
    named = [line for line in lines if "lacks 1 of the permissions the portal needs" in line]
    assert [("machine.delete" in line) for line in named] == ([True] if self_service else [])


def test_a_token_without_product_read_is_named_by_what_me_answers(setups):
    setups.emulator.set_permissions(setups.token, ["user.create"])
    _, lines = doctor(setups)
    assert "lacks the permission product.read, so Keygen will not say whose it is" in lines[0]


def test_every_permission_is_confirmed_when_keygen_reports_them(setups):
    _, lines = doctor(setups)
    assert "with every permission the portal needs" in lines[0]


def test_a_signup_meeting_lacks_permission_is_an_operator_problem_never_retried(setups, caplog):
    everything_but = ["product.read", "policy.read", "user.create", "user.read", "user.delete"]
    setups.emulator.set_permissions(setups.token, [*everything_but, "license.read"])
    with caplog.at_level(logging.ERROR, logger="portal"):
        response = sign_up(setups)
    assert response.status_code == 503
    assert "lacks permission" not in response.get_data(as_text=True)  # the generic page
    assert [c["route"] for c in setups.calls()] == [
        "users.index",  # the same person? (ONE_ACCOUNT_PER_PERSON)
        "users.create",
        "licenses.create",
        "users.destroy",
    ]
    [record] = [r for r in caplog.records if "Keygen refused creating a license" in r.getMessage()]
    assert "lacks the permission license.create" in record.getMessage()
    assert record.keygen_request_id
    assert record.keygen_reason == "permission"
    assert setups.users() == []


def test_the_compatibility_doc_names_only_tests_that_exist():
    """docs/keygen-compatibility.md cites a test for each behaviour: each must exist."""
    root = Path(__file__).resolve().parent
    doc = (root.parent / "docs" / "keygen-compatibility.md").read_text()
    cited, module = [], ""
    for named, name in re.findall(r"`(test_\w+\.py)?::(test_\w+)`", doc):
        module = named or module  # `::test_x` is in the module named before it
        cited.append((module, name))
    assert len(cited) > 40
    missing = [
        f"{module}::{name}"
        for module, name in cited
        if not re.search(rf"^def {name}\(", (root / module).read_text(), re.M)
    ]
    assert not missing
