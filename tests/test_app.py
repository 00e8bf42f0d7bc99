"""The pages through Flask's test client: the form, the key shown once, errors beside their
fields, CSRF, the generic pages for operator problems, and the headers on every response."""

import logging
import re

import pytest

from app import create_app
from support.http import csrf_token_from, issued_key
from support.leaks import KEY_PATTERN, PASSWORD, secret
from support.portal import make_settings


def html(response) -> str:
    return response.get_data(as_text=True)


def field_errors(page: str, field: str) -> list[str]:
    block = re.search(rf'<ul class="errors" id="{field}-error">(.*?)</ul>', page, re.S)
    return re.findall(r"<li>(.*?)</li>", block.group(1)) if block else []


def input_value(page: str, field: str) -> str | None:
    tag = re.search(rf'<input[^>]*\bid="{field}"[^>]*>', page).group(0)
    value = re.search(r'value="([^"]*)"', tag)
    return value.group(1) if value else None


def test_form_has_labelled_fields_with_autocomplete(client):
    page = html(client.get("/"))
    for field, autocomplete, label in [
        ("first_name", "given-name", "First name"),
        ("last_name", "family-name", "Last name"),
        ("email", "email", "Email"),
        ("password", "new-password", "Password"),
    ]:
        assert f'<label for="{field}">{label}</label>' in page
        tag = re.search(rf'<input[^>]*\bid="{field}"[^>]*>', page).group(0)
        assert f'autocomplete="{autocomplete}"' in tag
    assert 'type="password"' in page
    assert "Show password" in page
    assert 'name="csrf_token"' in page
    assert "Demo mode" not in page


def test_signup_shows_the_key_once_with_no_store(sign_up, keygen):
    response = sign_up()
    assert response.status_code == 200
    key = issued_key(html(response))
    assert KEY_PATTERN.match(key)
    assert response.headers["Cache-Control"] == "no-store"
    [user] = keygen.users()
    [license] = keygen.licenses()
    assert license["key"] == key
    assert license["owner_id"] == user["id"]
    assert license["policy_id"] == keygen.policy
    assert user["email"] == "clark@example.com"


def test_the_key_is_never_in_a_cookie_or_the_session(client, sign_up):
    response = sign_up()
    key = issued_key(html(response))
    cookies = " ".join(response.headers.getlist("Set-Cookie"))
    assert key not in cookies
    with client.session_transaction() as session:
        assert key not in repr(dict(session))
    assert key not in response.headers.get("Location", "")


def test_email_taken_in_any_case_is_shown_under_the_email_field(sign_up, keygen):
    sign_up()
    response = sign_up(email="  CLARK@Example.com ", first_name="Kal", last_name="El")
    page = html(response)
    assert response.status_code == 422
    assert field_errors(page, "email") == ["An account with this email already exists."]
    assert len(keygen.users()) == 1
    assert len(keygen.licenses()) == 1
    assert input_value(page, "first_name") == "Kal"
    assert input_value(page, "password") in (None, "")


def test_form_errors_keep_values_but_not_the_password(sign_up, keygen):
    response = sign_up(email="not-an-email", first_name="Lois")
    page = html(response)
    assert response.status_code == 422
    assert field_errors(page, "email") == ["Enter a valid email address, like name@example.com."]
    assert input_value(page, "first_name") == "Lois"
    assert input_value(page, "email") == "not-an-email"
    assert PASSWORD not in page
    assert 'aria-invalid="true"' in page
    assert 'aria-describedby="email-error"' in page
    assert keygen.calls() == []


def test_keygen_validation_error_lands_under_its_field(sign_up, keygen):
    keygen.emulator.inject(
        "users.create",
        status=422,
        errors=[
            {
                "title": "Unprocessable resource",
                "detail": "is invalid",
                "code": "EMAIL_INVALID",
                "source": {"pointer": "/data/attributes/email"},
            }
        ],
    )
    page = html(sign_up())
    assert field_errors(page, "email") == ["Enter a valid email address, like name@example.com."]
    assert keygen.users() == []


def test_post_without_csrf_token_is_400_and_calls_nothing(client, keygen):
    client.get("/")
    data = {"first_name": "A", "last_name": "B", "email": "a@example.com", "password": PASSWORD}
    response = client.post("/", data=data)
    assert response.status_code == 400
    assert "This form has expired" in html(response)
    assert keygen.calls() == []


def test_csrf_token_of_another_session_is_refused(app, keygen):
    other = app.test_client()
    token = csrf_token_from(html(other.get("/")))
    client = app.test_client()
    client.get("/")
    response = client.post("/", data={"csrf_token": token, "email": "a@example.com"})
    assert response.status_code == 400
    assert keygen.calls() == []


def test_a_bad_token_shows_the_generic_page_and_logs_the_request_id(keygen, caplog):
    token = secret("prod-" + "2" * 64 + "v3")
    app = create_app(make_settings(keygen, keygen_product_token=token))
    client = app.test_client()
    csrf = csrf_token_from(html(client.get("/")))
    data = {"csrf_token": csrf, "first_name": "A", "last_name": "B"}
    data.update(email="a@example.com", password=PASSWORD)
    with caplog.at_level(logging.ERROR):
        response = client.post("/", data=data)
    page = html(response)
    assert response.status_code == 503
    assert "Signup is unavailable right now" in page
    assert "TOKEN" not in page and "Keygen refused" not in page
    assert any(
        "401 TOKEN_INVALID" in r.getMessage() and "(request " in r.getMessage()
        for r in caplog.records
    )
    assert keygen.users() == []


def test_a_policy_of_another_product_shows_the_generic_page_and_strands_no_user(keygen):
    app = create_app(make_settings(keygen, keygen_policy_id=keygen.other_policy))
    client = app.test_client()
    csrf = csrf_token_from(html(client.get("/")))
    data = {"csrf_token": csrf, "first_name": "A", "last_name": "B"}
    data.update(email="a@example.com", password=PASSWORD)
    response = client.post("/", data=data)
    assert response.status_code == 503
    assert "Signup is unavailable right now" in html(response)
    assert keygen.users() == []
    assert keygen.licenses() == []


@pytest.mark.slow
def test_keygen_down_keeps_the_form_and_asks_to_try_again(sign_up, keygen):
    keygen.emulator.inject("users.create", status=503, times=None)
    response = sign_up(first_name="Lois")
    page = html(response)
    assert response.status_code == 503
    assert "Please submit the form again in a minute." in page
    assert input_value(page, "first_name") == "Lois"
    assert input_value(page, "email") == "clark@example.com"
    assert response.headers["Retry-After"] == "60"
    assert keygen.users() == []


def test_extra_fields_never_reach_keygen(sign_up, keygen):
    sign_up(role="admin", policy=keygen.other_policy, metadata="x")
    [create] = keygen.calls("users.create")
    assert set(create["json"]["data"]["attributes"]) == {
        "firstName",
        "lastName",
        "email",
        "password",
        "metadata",
    }
    [license] = keygen.licenses()
    assert license["policy_id"] == keygen.policy


def test_security_headers_on_every_page(client):
    for response in (client.get("/"), client.get("/nope"), client.put("/")):
        csp = response.headers["Content-Security-Policy"]
        for directive in ("default-src 'self'", "object-src 'none'", "frame-ancestors 'none'"):
            assert directive in csp
        assert "unsafe-inline" not in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "same-origin"
        assert response.headers["Cache-Control"] == "no-store"


def test_session_cookie_is_http_only_and_same_site(keygen):
    app = create_app(make_settings(keygen, cookie_secure=True))
    cookie = app.test_client().get("/").headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Secure" in cookie


@pytest.mark.parametrize(
    ("method", "path", "status", "title"),
    [
        ("GET", "/nope", 404, "Page not found"),
        ("PUT", "/", 405, "Not allowed"),
        ("DELETE", "/", 405, "Not allowed"),
    ],
)
def test_error_pages(client, method, path, status, title):
    response = client.open(path, method=method)
    assert response.status_code == status
    assert response.mimetype == "text/html"
    assert title in html(response)


def test_a_huge_body_is_413_and_calls_nothing(client, keygen):
    response = client.post("/", data={"first_name": "x" * 100_000})
    assert response.status_code == 413
    assert keygen.calls() == []


def test_unexpected_errors_show_a_page_with_a_reference_not_a_trace(app, client, caplog):
    def explode():
        raise RuntimeError("boom with internals")

    app.add_url_rule("/explode", "explode", explode)
    response = client.get("/explode")
    page = html(response)
    assert response.status_code == 500
    assert "Something went wrong on our side" in page
    assert "boom" not in page and "Traceback" not in page
    reference = re.search(r"Reference: <code>(\w+)</code>", page).group(1)
    assert any(reference in r.getMessage() for r in caplog.records)


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_demo_mode_shows_a_banner(keygen):
    app = create_app(make_settings(keygen, demo_mode=True))
    page = html(app.test_client().get("/"))
    assert "Demo mode" in page
    assert "keys are not real" in page


def test_a_well_formed_request_id_from_the_proxy_is_used_and_echoed(client):
    given = client.get("/", headers={"X-Request-ID": "proxy-id-1234abcd"})
    assert given.headers["X-Request-ID"] == "proxy-id-1234abcd"
    forged = client.get("/", headers={"X-Request-ID": "<script>alert(1)</script>"})
    assert re.fullmatch(r"[0-9a-f]{16}", forged.headers["X-Request-ID"])
