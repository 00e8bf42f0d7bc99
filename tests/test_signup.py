"""The workflow against the emulator: the happy path, Keygen's refusals, retries that never
duplicate, and compensation that never leaves a user without a license."""

import logging
import uuid

import pytest

from conftest import PASSWORD, KeygenWorld, secret
from keygen_api import KeygenClient
from signup import (
    CREATED_BY,
    Applicant,
    Rejected,
    SignupUnavailable,
    SignupWorkflow,
    TryLater,
)

CLARK = Applicant(
    email="clark@example.com", password=PASSWORD, first_name="Clark", last_name="Kent"
)


@pytest.fixture
def pauses() -> list[float]:
    return []


def make_workflow(keygen: KeygenWorld, pauses: list[float], *, token=None, policy=None):
    client = KeygenClient(
        keygen.url, keygen.account, token or keygen.token, connect_timeout=1, read_timeout=1
    )
    return SignupWorkflow(client, policy or keygen.policy, deadline=4.0, sleep=pauses.append)


@pytest.fixture
def workflow(keygen, pauses) -> SignupWorkflow:
    return make_workflow(keygen, pauses)


def only_user_and_license(keygen: KeygenWorld) -> tuple[dict, dict]:
    [user] = keygen.users()
    [license] = keygen.licenses()
    assert license["owner_id"] == user["id"]
    assert license["policy_id"] == keygen.policy
    return user, license


def test_happy_path_makes_exactly_two_calls(workflow, keygen):
    issued = workflow.sign_up(CLARK)
    secret(issued.license_key)
    user, license = only_user_and_license(keygen)
    assert [c["route"] for c in keygen.calls()] == ["users.create", "licenses.create"]
    assert issued.license_key == license["key"]
    assert issued.user_id == user["id"]
    assert user["metadata"] == {"createdBy": CREATED_BY, "portalSignupId": issued.signup_id}
    assert (user["first_name"], user["last_name"]) == ("Clark", "Kent")
    assert license["metadata"]["portalSignupId"] == issued.signup_id


def test_the_license_id_is_chosen_by_the_portal(workflow, keygen):
    issued = workflow.sign_up(CLARK)
    [create] = keygen.calls("licenses.create")
    assert create["json"]["data"]["id"] == issued.license_id
    assert uuid.UUID(issued.license_id).version == 4
    assert create["json"]["data"]["relationships"] == {
        "policy": {"data": {"type": "policies", "id": keygen.policy}},
        "owner": {"data": {"type": "users", "id": issued.user_id}},
    }


def test_taken_email_is_rejected_under_the_email_field(workflow, keygen):
    workflow.sign_up(CLARK)
    with pytest.raises(Rejected) as caught:
        workflow.sign_up(Applicant("CLARK@example.COM", PASSWORD, "Other", "Person"))
    assert caught.value.errors == {"email": "An account with this email already exists."}
    assert len(keygen.users()) == 1
    assert len(keygen.licenses()) == 1


@pytest.mark.parametrize(
    ("errors", "expected"),
    [
        (
            [("EMAIL_INVALID", "is invalid", "/data/attributes/email")],
            {"email": "Enter a valid email address, like name@example.com."},
        ),
        (
            [
                ("PASSWORD_TOO_SHORT", "is too short", "/data/attributes/password"),
                ("FIRST_NAME_TOO_LONG", "is too long", "/data/attributes/firstName"),
            ],
            {
                "password": "This password is too short.",
                "first_name": "Use at most 255 characters.",
            },
        ),
    ],
)
def test_keygen_validation_errors_land_under_their_fields(workflow, keygen, errors, expected):
    keygen.emulator.inject(
        "users.create",
        status=422,
        errors=[
            {
                "title": "Unprocessable resource",
                "detail": detail,
                "code": code,
                "source": {"pointer": pointer},
            }
            for code, detail, pointer in errors
        ],
    )
    with pytest.raises(Rejected) as caught:
        workflow.sign_up(CLARK)
    assert caught.value.errors == expected
    assert keygen.users() == []


def test_real_keygen_password_rule_maps_to_the_password_field(workflow, keygen):
    with pytest.raises(Rejected) as caught:
        workflow.sign_up(Applicant("lois@example.com", "short", "Lois", "Lane"))
    assert caught.value.errors == {"password": "This password is too short."}


def test_a_bad_token_is_an_operator_problem_logged_with_the_request_id(keygen, pauses, caplog):
    token = secret("prod-" + "1" * 64 + "v3")
    workflow = make_workflow(keygen, pauses, token=token)
    with caplog.at_level(logging.ERROR), pytest.raises(SignupUnavailable):
        workflow.sign_up(CLARK)
    [record] = [r for r in caplog.records if r.name == "signup"]
    assert "401 TOKEN_INVALID" in record.getMessage()
    assert "(request " in record.getMessage()
    assert "KEYGEN_PRODUCT_TOKEN" in record.getMessage()
    assert token not in caplog.text
    assert keygen.users() == []


def test_a_policy_of_another_product_leaves_no_user_behind(keygen, pauses, caplog):
    workflow = make_workflow(keygen, pauses, policy=keygen.other_policy)
    with caplog.at_level(logging.ERROR), pytest.raises(SignupUnavailable):
        workflow.sign_up(CLARK)
    assert keygen.users() == []
    assert keygen.licenses() == []
    assert any("403" in r.getMessage() and "(request " in r.getMessage() for r in caplog.records)
    assert [c["route"] for c in keygen.calls()] == [
        "users.create",
        "licenses.create",
        "users.destroy",
    ]


def test_a_deleted_policy_leaves_no_user_behind(workflow, keygen):
    keygen.emulator.delete_policy(keygen.policy)
    try:
        with pytest.raises(SignupUnavailable):
            workflow.sign_up(CLARK)
        assert keygen.users() == []
    finally:
        keygen.emulator.add_policy(keygen.account, keygen.product, id=keygen.policy)


def test_an_unexpected_400_is_an_operator_problem(workflow, keygen):
    keygen.emulator.inject(
        "users.create",
        status=400,
        errors=[
            {"title": "Bad request", "detail": "unpermitted parameter", "source": {"pointer": "/x"}}
        ],
    )
    with pytest.raises(SignupUnavailable):
        workflow.sign_up(CLARK)


def test_user_create_500_once_is_retried(workflow, keygen, pauses):
    keygen.emulator.inject("users.create", status=500)
    issued = workflow.sign_up(CLARK)
    only_user_and_license(keygen)
    assert issued.email == "clark@example.com"
    assert len(pauses) == 1


def test_user_created_but_answer_lost_is_found_not_duplicated(workflow, keygen):
    keygen.emulator.inject("users.create", drop=True, when="after")
    workflow.sign_up(CLARK)
    only_user_and_license(keygen)
    assert [c["route"] for c in keygen.calls()] == [
        "users.create",
        "users.show",
        "licenses.create",
    ]


def test_user_created_but_500_after_commit_is_found_not_duplicated(workflow, keygen):
    keygen.emulator.inject("users.create", status=500, when="after")
    workflow.sign_up(CLARK)
    only_user_and_license(keygen)


def test_someone_elses_user_found_after_a_lost_answer_is_not_taken_over(workflow, keygen):
    """The lookup after a lost answer finds a user, but not one this signup created."""
    KeygenClient(keygen.url, keygen.account, keygen.token).create_user(
        email="clark@example.com", password=PASSWORD, first_name="Real", last_name="Clark"
    )
    keygen.emulator.inject("users.create", status=503)
    with pytest.raises(Rejected) as caught:
        workflow.sign_up(CLARK)
    assert caught.value.errors == {"email": "An account with this email already exists."}
    assert keygen.licenses() == []


def test_license_503_twice_then_success(workflow, keygen, pauses):
    keygen.emulator.inject("licenses.create", status=503, times=2)
    workflow.sign_up(CLARK)
    only_user_and_license(keygen)
    assert len(pauses) == 2
    # Full jitter under a cap that doubles: 0 <= pause <= 0.25 * 2**attempt.
    assert 0 <= pauses[0] <= 0.5
    assert 0 <= pauses[1] <= 1.0


def test_license_created_but_answer_lost_is_read_back_with_the_same_key(workflow, keygen):
    keygen.emulator.inject("licenses.create", drop=True, when="after")
    issued = workflow.sign_up(CLARK)
    _, license = only_user_and_license(keygen)
    assert issued.license_key == license["key"]
    assert issued.license_id == license["id"]


def test_license_garbled_answer_is_resent_and_read_back(workflow, keygen):
    keygen.emulator.inject("licenses.create", garbled=True)
    issued = workflow.sign_up(CLARK)
    _, license = only_user_and_license(keygen)
    assert issued.license_key == license["key"]


def test_license_rate_limited_waits_for_retry_after(workflow, keygen, pauses):
    keygen.emulator.inject("licenses.create", retry_after=1)
    workflow.sign_up(CLARK)
    only_user_and_license(keygen)
    assert pauses == [1.0]


def test_retry_after_beyond_the_deadline_gives_up_and_compensates(workflow, keygen, pauses):
    keygen.emulator.inject("licenses.create", retry_after=60)
    with pytest.raises(TryLater):
        workflow.sign_up(CLARK)
    assert pauses == []
    assert keygen.users() == []


def test_license_never_answering_compensates_the_user(workflow, keygen, pauses):
    keygen.emulator.inject("licenses.create", status=503, times=None)
    with pytest.raises(TryLater):
        workflow.sign_up(CLARK)
    assert keygen.users() == []
    assert keygen.licenses() == []


def test_keygen_down_for_users_creates_nothing(workflow, keygen):
    keygen.emulator.inject("users.create", status=503, times=None)
    with pytest.raises(TryLater):
        workflow.sign_up(CLARK)
    assert keygen.users() == []


def test_nothing_answering_at_all_is_try_later(keygen, pauses):
    client = KeygenClient("http://127.0.0.1:9", keygen.account, keygen.token, connect_timeout=0.5)
    workflow = SignupWorkflow(client, keygen.policy, deadline=2.0, sleep=pauses.append)
    with pytest.raises(TryLater):
        workflow.sign_up(CLARK)
