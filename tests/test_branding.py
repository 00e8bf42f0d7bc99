"""Branding by configuration (logo, accent colour, support and legal links) and the consent to
the terms, which Keygen keeps in the user's metadata."""

from datetime import UTC, datetime

import pytest

from app import create_app
from branding import Brand, contrast
from config import ConfigError, load_settings
from guards import CONTENT_SECURITY_POLICY
from support.http import csrf_token_from, form_data, issued_key
from support.portal import make_settings

REQUIRED = {
    "KEYGEN_ACCOUNT_ID": "acme",
    "KEYGEN_PRODUCT_TOKEN": "prod-abc",
    "KEYGEN_POLICY_ID": "5c1c2a9e-8d0c-4a53-a2c5-2a4c36c0e4b1",
    "SECRET_KEY": "s" * 40,
}


def html(response) -> str:
    return response.get_data(as_text=True)


def submit(client, **changes):
    data = form_data(**changes)
    data.setdefault("csrf_token", csrf_token_from(html(client.get("/"))))
    return client.post("/", data=data)


# -- Settings ----------------------------------------------------------------------------------


def test_branding_settings_are_read_and_normalised():
    settings = load_settings(
        {
            **REQUIRED,
            "BRAND_ACCENT_COLOR": " #0A7 ",
            "BRAND_LOGO_URL": "https://cdn.acme.example/logo.svg",
            "SUPPORT_EMAIL": "help@acme.example",
            "TERMS_URL": "/terms",
            "PRIVACY_URL": "https://acme.example/privacy",
            "TERMS_VERSION": "2025-01",
        }
    )
    assert settings.brand_accent_color == "#00aa77"
    assert settings.terms_url == "/terms"
    assert settings.terms_version == "2025-01"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("BRAND_ACCENT_COLOR", "blue", "BRAND_ACCENT_COLOR must be a hex colour"),
        ("BRAND_ACCENT_COLOR", "#12345", "BRAND_ACCENT_COLOR must be a hex colour"),
        ("BRAND_LOGO_URL", "http://acme.example/logo.png", "BRAND_LOGO_URL must be an https://"),
        ("BRAND_LOGO_URL", "//acme.example/logo.png", "BRAND_LOGO_URL must be an https://"),
        ("TERMS_URL", "javascript:alert(1)", "TERMS_URL must be an https://"),
        ("PRIVACY_URL", "https://acme.example/a b", "PRIVACY_URL must be an https://"),
        ("SUPPORT_EMAIL", "help", "SUPPORT_EMAIL must be an email address"),
        ("TERMS_URL", "/terms", "TERMS_VERSION is required when TERMS_URL is set"),
    ],
)
def test_bad_branding_settings_refuse_to_start(name, value, message):
    with pytest.raises(ConfigError) as error:
        load_settings({**REQUIRED, name: value})
    assert any(problem.startswith(message) for problem in error.value.problems), error.value


# -- The accent colour -------------------------------------------------------------------------


def test_no_accent_no_brand_stylesheet(client):
    assert 'href="/brand.css"' not in html(client.get("/"))
    assert client.get("/brand.css").status_code == 404


def test_a_dark_accent_colours_the_button_and_the_links_in_the_light_theme(keygen):
    client = create_app(make_settings(keygen, brand_accent_color="#6b21a8")).test_client()
    assert '<link rel="stylesheet" href="/brand.css">' in html(client.get("/"))
    response = client.get("/brand.css")
    assert response.status_code == 200
    assert response.mimetype == "text/css"
    css = html(response)
    assert ":root { --brand: #6b21a8; --brand-text: #ffffff; }" in css
    assert "@media not (prefers-color-scheme: dark) { :root { --accent: #6b21a8;" in css
    # Purple on the dark card is unreadable: the dark theme keeps its own link colour.
    assert "@media (prefers-color-scheme: dark) { :root { --accent" not in css


def test_a_light_accent_gets_dark_text_and_is_never_used_for_text_on_white(keygen):
    client = create_app(make_settings(keygen, brand_accent_color="#ffd60a")).test_client()
    css = html(client.get("/brand.css"))
    assert "--brand-text: #000000;" in css
    assert "@media not (prefers-color-scheme: dark) { :root { --accent" not in css
    assert "@media (prefers-color-scheme: dark) { :root { --accent: #ffd60a;" in css


@pytest.mark.parametrize(
    "accent", ["#000000", "#ffffff", "#777777", "#ff0000", "#00ff00", "#0000ff"]
)
def test_the_button_text_always_has_aa_contrast(accent):
    css = Brand(accent=accent).stylesheet()
    text = "#000000" if "--brand-text: #000000" in css else "#ffffff"
    assert contrast(accent, text) >= 4.5


# -- Logo and links ----------------------------------------------------------------------------


def test_a_logo_on_another_site_is_allowed_by_the_csp(keygen):
    settings = make_settings(
        keygen, brand_logo_url="https://cdn.acme.example/logo.svg", product_name="Acme Pro"
    )
    response = create_app(settings).test_client().get("/")
    assert '<img class="logo" src="https://cdn.acme.example/logo.svg" alt="Acme Pro">' in html(
        response
    )
    csp = response.headers["Content-Security-Policy"]
    assert csp == CONTENT_SECURITY_POLICY + "; img-src 'self' https://cdn.acme.example"


def test_a_logo_on_this_site_keeps_the_csp(keygen):
    response = create_app(make_settings(keygen, brand_logo_url="/brand/logo.png")).test_client()
    page = response.get("/")
    assert 'src="/brand/logo.png"' in html(page)
    assert page.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY


def test_support_and_legal_links_are_in_the_footer(keygen):
    settings = make_settings(
        keygen, support_email="help@acme.example", privacy_url="https://acme.example/privacy"
    )
    client = create_app(settings).test_client()
    for page in (html(client.get("/")), html(client.get("/nowhere"))):
        assert '<a href="mailto:help@acme.example">help@acme.example</a>' in page
        assert 'href="https://acme.example/privacy" target="_blank" rel="noopener"' in page
    german = html(client.get("/?lang=de"))
    assert "Brauchen Sie Hilfe? Schreiben Sie an" in german


def test_no_branding_no_footer(client):
    assert '<footer class="site-footer">' not in html(client.get("/"))


# -- Consent -----------------------------------------------------------------------------------


@pytest.fixture
def terms_client(keygen):
    settings = make_settings(
        keygen,
        terms_url="https://acme.example/terms",
        terms_version="2025-01",
        privacy_url="https://acme.example/privacy",
    )
    return create_app(settings).test_client()


def test_without_terms_there_is_no_checkbox_and_no_consent_in_keygen(client, keygen):
    assert 'name="accept_terms"' not in html(client.get("/"))
    issued_key(html(submit(client)))
    [user] = keygen.users()
    assert "termsVersion" not in user["metadata"]
    assert "termsAcceptedAt" not in user["metadata"]


def test_with_terms_the_checkbox_is_required_and_nothing_is_created_without_it(
    terms_client, keygen
):
    page = html(terms_client.get("/"))
    assert '<input id="accept_terms" name="accept_terms" type="checkbox" value="y" required' in page
    assert '<label for="accept_terms">I accept the terms of service</label>' in page
    assert 'href="https://acme.example/terms" target="_blank"' in page
    response = submit(terms_client)
    assert response.status_code == 422
    page = html(response)
    assert 'id="accept_terms-error"' in page
    assert "Accept the terms of service to create your account." in page
    assert 'aria-describedby="accept_terms-hint accept_terms-error"' in page
    assert '<a href="#accept_terms">' in page  # in the error summary
    assert keygen.users() == []
    assert keygen.calls() == []


def test_with_terms_the_consent_is_stored_in_the_keygen_user(terms_client, keygen):
    before = datetime.now(UTC).replace(microsecond=0)
    issued_key(html(submit(terms_client, accept_terms="y")))
    after = datetime.now(UTC)
    [user] = keygen.users()
    metadata = user["metadata"]
    assert metadata["termsVersion"] == "2025-01"
    accepted = datetime.fromisoformat(metadata["termsAcceptedAt"].replace("Z", "+00:00"))
    assert metadata["termsAcceptedAt"].endswith("Z")
    assert before <= accepted <= after
    assert metadata["createdBy"] == "keygen-signup-portal"
