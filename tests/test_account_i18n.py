"""The self-service pages in German, French and Spanish, with no English left: sign-in and its
refusal, the second factor's page, the account page, the confirmation of freeing a device,
forgot-password and its answer."""

from __future__ import annotations

import pytest

from app import create_app
from services import services
from support.accounts import customer, machine_ids, sign_in
from support.http import csrf_token_from
from support.languages import assert_no_english, catalogue, visible_text
from support.mail import PUBLIC_URL
from support.portal import make_settings

LANGUAGES = ["de", "fr", "es"]


@pytest.fixture
def browser(keygen):
    site = create_app(
        make_settings(
            keygen,
            mail_server="127.0.0.1",
            mail_use_tls=False,
            mail_default_sender="keys@acme.example",
            public_url=PUBLIC_URL,
            outbox_interval=0.0,
            keygen_public_key=keygen.emulator.public_key(keygen.account),
        )
    )
    services(site).accounts.floor = 0.0
    return site.test_client()


def page_of(response) -> str:
    return visible_text(response.get_data(as_text=True))


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_self_service_pages_are_fully_translated(browser, keygen, language):
    person = customer(keygen, "clark@example.com", machines={0: [{"name": "Laptop"}]})
    form = browser.get(f"/sign-in?lang={language}")
    assert f'<html lang="{language}">' in form.get_data(as_text=True)
    assert_no_english(page_of(form), language, "sign-in page")
    refused = sign_in(browser, person.email, "not the password")
    assert refused.status_code == 422
    assert_no_english(page_of(refused), language, "refused sign-in")
    missing = browser.post(
        "/sign-in", data={"csrf_token": csrf_token_from(form.get_data(as_text=True))}
    )
    assert missing.status_code == 422
    assert_no_english(page_of(missing), language, "sign-in errors")

    sign_in(browser, person.email)
    account = browser.get("/account")
    assert account.status_code == 200 and "Laptop" in account.get_data(as_text=True)
    assert_no_english(page_of(account), language, "account page")
    [machine] = machine_ids(keygen, person.licenses[0])
    confirm = browser.get(f"/account/machines/{machine}/free")
    assert_no_english(page_of(confirm), language, "confirmation")
    done = browser.post(
        f"/account/machines/{machine}/free",
        data={"csrf_token": csrf_token_from(confirm.get_data(as_text=True))},
        follow_redirects=True,
    )
    assert catalogue(language)["Devices"].string in done.get_data(as_text=True)
    assert_no_english(page_of(done), language, "account page with a notice")


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_second_factor_and_forgot_password_pages_are_fully_translated(
    browser, keygen, language
):
    person = customer(keygen, "clark@example.com")
    keygen.emulator.enable_second_factor(person.user_id)
    browser.get(f"/sign-in?lang={language}")
    code = sign_in(browser, person.email)
    assert 'name="pending"' in code.get_data(as_text=True)
    assert_no_english(page_of(code), language, "second factor page")
    forgot = browser.get("/forgot-password")
    assert_no_english(page_of(forgot), language, "forgot-password page")
    data = {"csrf_token": csrf_token_from(forgot.get_data(as_text=True)), "email": person.email}
    sent = browser.post("/forgot-password", data=data)
    assert_no_english(page_of(sent), language, "forgot-password answer")
    assert_no_english(page_of(browser.get("/reset")), language, "a link that does not work")
