"""The Keygen client against the emulator over loopback: request shapes, every status to its
exception, timeouts, connection reuse, and no secrets in error messages."""

import threading
import uuid

import pytest
from werkzeug.serving import make_server

from keygen_api import (
    KeygenAccessDenied,
    KeygenClient,
    KeygenConflict,
    KeygenInvalid,
    KeygenNotFound,
    KeygenRateLimited,
    KeygenRejected,
    KeygenUnavailable,
    Problem,
)
from keygen_emulator import Emulator, create_app, serve
from support.leaks import PASSWORD, secret
from support.portal import KeygenWorld


@pytest.fixture
def api(keygen: KeygenWorld) -> KeygenClient:
    return KeygenClient(keygen.url, keygen.account, keygen.token, connect_timeout=1, read_timeout=1)


def create_clark(api: KeygenClient, **changes):
    values = dict(
        email="clark@example.com",
        password=PASSWORD,
        first_name="Clark",
        last_name="Kent",
        metadata={"portalSignupId": "s-1"},
    )
    values.update(changes)
    return api.create_user(**values)


def test_create_user_sends_json_api_with_version_and_token(api, keygen):
    user = create_clark(api)
    assert user.email == "clark@example.com"
    assert (user.first_name, user.last_name) == ("Clark", "Kent")
    assert user.metadata == {"portalSignupId": "s-1"}
    [call] = keygen.calls("users.create")
    assert call["method"] == "POST"
    assert call["keygen_version"] == "1.7"  # KEYGEN_API_VERSION's default
    assert call["accept"] == "application/vnd.api+json"
    assert call["content_type"].startswith("application/vnd.api+json")
    assert call["authenticated"] is True
    assert call["json"] == {
        "data": {
            "type": "users",
            "attributes": {
                "firstName": "Clark",
                "lastName": "Kent",
                "email": "clark@example.com",
                "password": PASSWORD,
                "metadata": {"portalSignupId": "s-1"},
            },
        }
    }


def test_account_can_be_given_by_slug(keygen):
    api = KeygenClient(keygen.url, keygen.slug, keygen.token)
    assert api.me().id == keygen.product


def test_me_identifies_a_product_token(api, keygen):
    bearer = api.me()
    assert bearer.is_product
    assert bearer.id == keygen.product
    assert bearer.token_kind == "product-token"


def test_users_are_found_by_email_in_any_case_and_deleted(api):
    user = create_clark(api)
    assert api.get_user("CLARK@Example.com").id == user.id
    api.delete_user(user.id)
    with pytest.raises(KeygenNotFound):
        api.get_user(user.id)


def test_license_is_created_with_our_id_owner_and_policy(api, keygen):
    user = create_clark(api)
    license_id = str(uuid.uuid4())
    license = api.create_license(
        license_id=license_id, policy_id=keygen.policy, owner_id=user.id, metadata={"a": "b"}
    )
    secret(license.key)
    assert license.id == license_id
    assert (license.owner_id, license.policy_id) == (user.id, keygen.policy)
    assert api.get_license(license_id).key == license.key
    assert [item.id for item in api.list_licenses(owner=user.email.upper())] == [license_id]
    [stored] = keygen.licenses()
    assert (stored["id"], stored["owner_id"], stored["policy_id"]) == (
        license_id,
        user.id,
        keygen.policy,
    )


def test_resending_a_license_id_is_a_conflict_not_a_duplicate(api, keygen):
    user = create_clark(api)
    license_id = str(uuid.uuid4())
    api.create_license(license_id=license_id, policy_id=keygen.policy, owner_id=user.id)
    with pytest.raises(KeygenConflict):
        api.create_license(license_id=license_id, policy_id=keygen.policy, owner_id=user.id)
    assert len(keygen.licenses()) == 1


def test_taken_email_is_invalid_with_a_problem_on_the_email(api):
    create_clark(api)
    with pytest.raises(KeygenInvalid) as caught:
        create_clark(api, email="Clark@EXAMPLE.com")
    error = caught.value
    assert error.status == 422
    assert error.code == "EMAIL_TAKEN"
    assert error.pointer == "/data/attributes/email"
    assert error.problems == [Problem(field="email", kind="taken")]
    assert error.request_id
    assert str(error) == (
        f"422 EMAIL_TAKEN: has already been taken at /data/attributes/email "
        f"(request {error.request_id})"
    )


def test_several_validation_errors_become_problems(api):
    with pytest.raises(KeygenInvalid) as caught:
        create_clark(api, email="foo.com", password="short")
    assert caught.value.problems == [
        Problem(field="email", kind="invalid"),
        Problem(field="password", kind="too_short"),
    ]


def test_a_bad_token_is_access_denied_and_never_in_the_message(keygen):
    token = secret("prod-" + "0" * 64 + "v3")
    api = KeygenClient(keygen.url, keygen.account, token)
    with pytest.raises(KeygenAccessDenied) as caught:
        create_clark(api)
    assert caught.value.status == 401
    assert caught.value.code == "TOKEN_INVALID"
    assert token not in str(caught.value)
    assert PASSWORD not in str(caught.value)
    assert keygen.users() == []


def test_a_token_that_cannot_be_a_header_is_refused_at_once_without_its_text(keygen):
    token = secret("prod-" + "1" * 64 + "v3\r\nX-Evil: 1")
    with pytest.raises(ValueError) as caught:
        KeygenClient(keygen.url, keygen.account, token)
    assert token not in str(caught.value)
    assert "1" * 64 not in str(caught.value)
    assert keygen.calls("users.create") == []


def test_a_policy_of_another_product_is_access_denied(api, keygen):
    user = create_clark(api)
    with pytest.raises(KeygenAccessDenied) as caught:
        api.create_license(
            license_id=str(uuid.uuid4()), policy_id=keygen.other_policy, owner_id=user.id
        )
    assert caught.value.status == 403
    assert keygen.licenses() == []


def test_unknown_account_is_not_found(keygen):
    api = KeygenClient(keygen.url, "no-such-account", keygen.token)
    with pytest.raises(KeygenNotFound):
        api.me()


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_unavailable(api, keygen, status):
    keygen.emulator.inject("users.create", status=status)
    with pytest.raises(KeygenUnavailable) as caught:
        create_clark(api)
    assert caught.value.status == status
    assert not isinstance(caught.value, KeygenRejected)


def test_rate_limit_carries_retry_after(api, keygen):
    keygen.emulator.inject("users.create", retry_after=7)
    with pytest.raises(KeygenRateLimited) as caught:
        create_clark(api)
    assert caught.value.status == 429
    # Retry-After: 7 counts from Keygen's whole second; X-RateLimit-Reset, the window's end,
    # says exactly when: up to a second sooner.
    assert 6.0 < caught.value.retry_after <= 7.0
    assert isinstance(caught.value, KeygenUnavailable)


def test_a_dropped_connection_is_unavailable(api, keygen):
    keygen.emulator.inject("users.create", drop=True, when="after")
    with pytest.raises(KeygenUnavailable) as caught:
        create_clark(api)
    assert caught.value.status is None
    assert PASSWORD not in str(caught.value)
    # The create happened although the client could not know: the caller must look it up.
    assert [u["email"] for u in keygen.users()] == ["clark@example.com"]


def test_a_slow_answer_times_out(api, keygen):
    keygen.emulator.inject("users.create", delay=1.5)
    with pytest.raises(KeygenUnavailable):
        create_clark(api)


def test_a_garbled_body_is_unavailable(api, keygen):
    keygen.emulator.inject("users.create", garbled=True)
    with pytest.raises(KeygenUnavailable) as caught:
        create_clark(api)
    assert caught.value.status == 201


def test_client_never_retries_by_itself(api, keygen):
    keygen.emulator.inject("users.create", status=503)
    with pytest.raises(KeygenUnavailable):
        create_clark(api)
    assert len(keygen.calls("users.create")) == 1


def test_a_thread_reuses_one_connection(keygen):
    api = KeygenClient(keygen.url, keygen.account, keygen.token)
    before = keygen.emulator.new_connections
    for _ in range(5):
        api.me()
    assert keygen.emulator.new_connections - before == 1


def test_every_kind_of_answer_leaves_the_connection_reusable(keygen):
    """An error body, a 204 without one: each is read to its end, so the next call reuses the
    connection instead of opening another."""
    api = KeygenClient(keygen.url, keygen.account, keygen.token)
    before = keygen.emulator.new_connections
    user = create_clark(api)
    with pytest.raises(KeygenNotFound):
        api.get_policy(keygen.other_policy)
    api.delete_user(user.id)
    api.me()
    assert keygen.emulator.new_connections - before == 1


def test_each_thread_gets_its_own_connection(keygen):
    api = KeygenClient(keygen.url, keygen.account, keygen.token)
    before = keygen.emulator.new_connections
    threads = [threading.Thread(target=lambda: (api.me(), api.me())) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert keygen.emulator.new_connections - before == 3


def test_an_account_pinned_to_1_5_still_yields_the_owner():
    """Without our Keygen-Version header Keygen answers in the account's version (`user`)."""
    emulator = Emulator()
    account = emulator.add_account(api_version="1.5")
    product, token = emulator.add_product(account)
    policy = emulator.add_policy(account, product)
    server = serve(emulator)
    try:
        api = KeygenClient(server.url, account, secret(token))
        api._headers.pop("Keygen-Version")
        user = create_clark(api)
        license = api.create_license(
            license_id=str(uuid.uuid4()), policy_id=policy, owner_id=user.id
        )
        secret(license.key)
        assert license.owner_id == user.id
    finally:
        server.stop()


def test_redirects_are_not_followed(api, keygen):
    keygen.emulator.inject("me", status=302)
    with pytest.raises(KeygenUnavailable) as caught:
        api.me()
    assert caught.value.status == 302
    assert len(keygen.calls()) == 1


def test_a_policy_is_visible_only_to_its_products_token(api, keygen):
    assert api.get_policy(keygen.policy).product_id == keygen.product
    with pytest.raises(KeygenNotFound):
        api.get_policy(keygen.other_policy)


def test_the_environments_proxy_settings_apply(keygen, monkeypatch):
    """HTTP_PROXY and NO_PROXY work as they do for requests everywhere."""
    for name in ("http_proxy", "https_proxy", "no_proxy", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "")
    monkeypatch.setenv("HTTP_PROXY", keygen.url)  # the emulator answers by the path it is sent
    proxied = KeygenClient("http://keygen.invalid", keygen.account, keygen.token)
    assert proxied.me().is_product  # keygen.invalid resolves nowhere: it went through the proxy
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert KeygenClient(keygen.url, keygen.account, keygen.token).me().is_product


def test_the_ca_bundle_in_the_environment_is_trusted(keygen, loopback_certificate, monkeypatch):
    """REQUESTS_CA_BUNDLE: a Keygen behind a private CA (the benchmark's stand-in is one)."""
    server = make_server(
        "127.0.0.1",
        0,
        create_app(keygen.emulator),
        threaded=True,
        ssl_context=(str(loopback_certificate.cert), str(loopback_certificate.key)),
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{server.port}"
    try:
        monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
        monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
        with pytest.raises(KeygenUnavailable):  # not trusted without the bundle
            KeygenClient(url, keygen.account, keygen.token).me()
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(loopback_certificate.cert))
        assert KeygenClient(url, keygen.account, keygen.token).me().is_product
    finally:
        server.shutdown()
