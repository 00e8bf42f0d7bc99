"""Languages: every message the code and templates use is translated in every language, the
compiled catalogues match their sources, and each page, its errors and every email render
with no English left in them. The language comes from the switch, then Accept-Language; an
email comes in the language of the page the person used, however much later it is sent."""

from __future__ import annotations

import html as htmllib
import re

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po
from flask import render_template
from flask_babel import force_locale
from sqlalchemy import Column, MetaData, Table, create_engine, inspect
from wtforms import StringField
from wtforms.validators import DataRequired

from database import metadata
from forms import PortalForm
from i18n import LANGUAGES
from journal import Journal
from outbox import Letter
from support.captcha import captcha_app
from support.http import csrf_token_from, form_data, issued_key
from support.languages import assert_no_english, visible_text
from support.leaks import PASSWORD
from support.mail import PRODUCT, PUBLIC_URL, link_in, text_of
from support.paths import ROOT

TRANSLATED = [code for code in LANGUAGES if code != "en"]
# The keywords scripts/translations.sh extracts with (gettext and _ are Babel's defaults).
KEYWORDS = {"_": None, "gettext": None, "lazy_gettext": None, "_l": None, "N_": None}


def source_messages() -> set[str | tuple[str, str]]:
    """Every msgid in the code and templates now, extracted afresh as the command does; a
    message with plural forms ({% pluralize %}) is a (singular, plural) pair."""
    with open(ROOT / "babel.cfg", encoding="utf-8") as config:
        method_map, options_map = parse_mapping_cfg(config)
    keywords = {**KEYWORDS, "ngettext": (1, 2)}
    found = extract_from_dir(
        str(ROOT), method_map, options_map, keywords=keywords, strip_comment_tags=True
    )
    return {message for _, _, message, _, _ in found}


def catalogue(language: str):
    path = ROOT / "translations" / language / "LC_MESSAGES" / "messages.po"
    with open(path, "rb") as po:
        return read_po(po, locale=language)


SOURCE = source_messages()
MESSAGES = sorted(m for m in SOURCE if isinstance(m, str))
PLURALS = sorted(m for m in SOURCE if isinstance(m, tuple))
PLACEHOLDER = re.compile(r"%\(\w+\)[sd]")


def test_the_source_has_messages_to_translate():
    assert len(MESSAGES) > 50
    assert "Create account and get my key" in MESSAGES  # a template
    assert "Enter your first name." in MESSAGES  # forms.py
    assert "An account with this email already exists." in MESSAGES  # signup.py, Keygen's 422
    assert "Page not found" in MESSAGES  # errors.py
    assert "Hello %(first_name)s," in MESSAGES  # the key email
    assert "Lost your license key?" in MESSAGES  # delivery's pages
    assert "Your %(product_name)s license keys" in MESSAGES  # delivery.py's subjects
    assert "This form can only be sent from its own page." in MESSAGES  # errors.py's 403
    assert any("not a robot" in m for m in MESSAGES)  # captcha.py
    assert (  # with plural forms, from the verification email
        "The link works once and expires in %(count)s hour.",
        "The link works once and expires in %(count)s hours.",
    ) in PLURALS


@pytest.mark.parametrize("language", TRANSLATED)
def test_every_message_is_translated(language):
    """A string added anywhere without a translation fails here until scripts/translations.sh
    is run and the new entries are translated."""
    po = catalogue(language)
    missing = [m for m in MESSAGES if m not in po or not po[m].string]
    fuzzy = [m for m in MESSAGES if m in po and po[m].fuzzy]
    assert not missing, f"untranslated in {language}: {missing}"
    assert not fuzzy, f"fuzzy (needs review) in {language}: {fuzzy}"
    for message in MESSAGES:
        assert sorted(PLACEHOLDER.findall(po[message].string)) == sorted(
            PLACEHOLDER.findall(message)
        ), f"{language}: placeholders differ in {message!r}"
    for singular, plural in PLURALS:
        assert singular in po, f"untranslated in {language}: {singular!r}"
        forms = po[singular].string
        assert isinstance(forms, tuple) and len(forms) == po.num_plurals, singular
        assert all(forms), f"a plural form untranslated in {language}: {singular!r}"
        assert not po[singular].fuzzy, f"fuzzy in {language}: {singular!r}"
        for form in forms:
            assert sorted(PLACEHOLDER.findall(form)) == sorted(PLACEHOLDER.findall(plural)), (
                f"{language}: placeholders differ in {form!r}"
            )


def hashable(value):
    """A plural message's ids and forms come as a list from one reader, a tuple from the other."""
    return tuple(value) if isinstance(value, list | tuple) else value


@pytest.mark.parametrize("language", TRANSLATED)
def test_the_compiled_catalogue_matches_its_source(language):
    directory = ROOT / "translations" / language / "LC_MESSAGES"
    with open(directory / "messages.mo", "rb") as mo:
        compiled = {hashable(m.id): hashable(m.string) for m in read_mo(mo) if m.id}
    source = {hashable(m.id): hashable(m.string) for m in catalogue(language) if m.id and m.string}
    assert compiled == source, "run scripts/translations.sh to compile the catalogues"


# -- Rendered pages --------------------------------------------------------------------------


def submit(client, **changes):
    page = client.get("/").get_data(as_text=True)
    data = form_data(**changes)
    data.setdefault("csrf_token", csrf_token_from(page))
    return client.post("/", data=data)


@pytest.mark.parametrize("language", TRANSLATED)
def test_the_form_its_errors_and_the_key_page_are_fully_translated(client, keygen, language):
    form = client.get(f"/?lang={language}")  # the switch; the cookie keeps it for the POSTs
    page = form.get_data(as_text=True)
    assert f'<html lang="{language}">' in page
    assert_no_english(visible_text(page), language, "form")

    errors = submit(client, first_name="", last_name="", email="nope", password="short")
    assert errors.status_code == 422
    page = errors.get_data(as_text=True)
    assert f'<html lang="{language}">' in page
    assert page.count('class="errors"') == 4
    assert_no_english(visible_text(page), language, "error state")

    issued = submit(client, email=f"clark-{language}@example.com")
    page = issued.get_data(as_text=True)
    issued_key(page)
    assert_no_english(visible_text(page), language, "key page")

    taken = submit(client, email=f"clark-{language}@example.com")  # Keygen's 422, translated
    assert taken.status_code == 422
    po = catalogue(language)
    assert po["An account with this email already exists."].string in taken.get_data(as_text=True)


@pytest.mark.parametrize("language", TRANSLATED)
def test_error_pages_are_translated(client, language):
    response = client.get(f"/no-such-page?lang={language}")
    assert response.status_code == 404
    page = response.get_data(as_text=True)
    assert catalogue(language)["Page not found"].string in page
    assert_no_english(visible_text(page), language, "404 page")


@pytest.mark.parametrize("language", TRANSLATED)
def test_the_key_email_is_translated(app, language):
    values = dict(
        product_name="Acme Pro",
        first_name="Zoë",
        license_key="ABC123-DEF456",
        email="zoe@example.com",
        support_email="help@acme.example",
    )
    with app.test_request_context("/"), force_locale(language):
        text = render_template("email/license.txt", **values)
        html = render_template("email/license.html", **values)
    assert "ABC123-DEF456" in text and "ABC123-DEF456" in html
    assert f'<html lang="{language}">' in html
    assert_no_english(text, language, "text email")
    assert_no_english(visible_text(html), language, "HTML email")
    assert "mailto:help@acme.example" in html


# -- Choosing the language ---------------------------------------------------------------------


def html_lang(response) -> str:
    return re.search(r'<html lang="([^"]+)"', response.get_data(as_text=True)).group(1)


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("de-DE,de;q=0.9,en;q=0.5", "de"),
        ("fr-CA", "fr"),
        ("es-419,es;q=0.9", "es"),
        ("ja,zh;q=0.8", "en"),  # nothing we have: English
        ("", "en"),
    ],
)
def test_accept_language_picks_the_page_language(client, accept, expected):
    response = client.get("/", headers={"Accept-Language": accept})
    assert html_lang(response) == expected
    assert "Accept-Language" in response.headers["Vary"]


def test_the_switch_beats_accept_language_and_is_remembered(client):
    response = client.get("/?lang=fr", headers={"Accept-Language": "de"})
    assert html_lang(response) == "fr"
    cookie = next(c for c in response.headers.getlist("Set-Cookie") if c.startswith("lang="))
    assert "lang=fr;" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    later = client.get("/", headers={"Accept-Language": "de"})
    assert html_lang(later) == "fr"


def test_the_switch_lists_every_language_by_its_own_name(client):
    page = client.get("/?lang=de").get_data(as_text=True)
    nav = re.search(r'<nav class="languages"[^>]*>(.*?)</nav>', page, re.S).group(1)
    for code, name in LANGUAGES.items():
        assert re.search(rf'<a href="\?lang={code}" hreflang="{code}" lang="{code}"', nav)
        assert name in nav
    assert 'lang="de" aria-current="true"' in nav


def test_an_unknown_language_is_ignored(client):
    response = client.get("/?lang=xx", headers={"Accept-Language": "es"})
    assert html_lang(response) == "es"
    assert not any(c.startswith("lang=") for c in response.headers.getlist("Set-Cookie"))
    client.set_cookie("lang", "../../etc")
    assert html_lang(client.get("/")) == "en"


def test_the_key_page_has_no_switch_that_would_leave_it(client, keygen):
    page = submit(client).get_data(as_text=True)
    issued_key(page)
    assert '<nav class="languages"' not in page


@pytest.mark.parametrize("language", TRANSLATED)
def test_wtforms_own_messages_are_translated(app, language):
    class Form(PortalForm):
        class Meta:
            csrf = False

        name = StringField(validators=[DataRequired()])

    with app.test_request_context(f"/?lang={language}", method="POST", data={}):
        form = Form()
        assert not form.validate()
        [message] = form.name.errors
    assert message != "This field is required."


def test_the_english_check_finds_english(client):
    """The check above is not vacuous: the English page fails it."""
    page = visible_text(client.get("/?lang=en").get_data(as_text=True))
    with pytest.raises(AssertionError, match="Create account and get my key"):
        assert_no_english(page, "de", "form")
    # Nor is it blind to a string that was never wrapped, and so is in no catalogue.
    with pytest.raises(AssertionError, match="not in the catalogues"):
        assert_no_english("Sehen Sie in Ihrem Postfach nach. Then press the button.", "de", "email")


# -- Email delivery: its pages, and each email in the language of the page ----------------------


def assert_page_in(response, language: str, where: str) -> None:
    assert html_lang(response) == language, where
    assert_no_english(visible_text(response.get_data(as_text=True)), language, where)


def assert_email_in(message, language: str, where: str, subject: str, **values) -> None:
    """Subject, text and HTML in this language, with nothing English left in them."""
    assert message["Subject"] == catalogue(language)[subject].string % values, where
    html = text_of(message, "html")
    assert f'<html lang="{language}">' in html, where
    assert_no_english(text_of(message, "plain"), language, f"{where} (text)")
    assert_no_english(visible_text(html), language, f"{where} (HTML)")


def opened(client, path: str, **options):
    """A verification link as a browser opens it: the link, then the page it redirects to."""
    assert client.get(path, **options).status_code == 303
    return client.get("/verify", **options)


def press(portal, path: str, client=None, **options):
    """The link's page, its password chosen and its button pressed."""
    client = client or portal.client
    page = opened(client, path, **options)
    data = {"csrf_token": csrf_token_from(page.get_data(True)), "password": PASSWORD}
    return client.post("/verify", data=data, **options)


@pytest.mark.parametrize("language", TRANSLATED)
def test_each_email_comes_in_the_language_of_the_page(portal_with, keygen, language):
    """Verification, key, lost-key and "you already have an account" emails, and the pages on
    the way, through the real form, the courier and aiosmtpd. The emails are written by the
    courier after the request, so the language travels with the outbox row."""
    portal = portal_with(require_email_verification=True, key_delivery="email")
    email = f"zoe-{language}@example.com"
    assert_page_in(portal.client.get(f"/?lang={language}"), language, "form")
    inbox = portal.sign_up(email=email, first_name="Zoë")
    assert inbox.status_code == 200
    assert_page_in(inbox, language, "check-inbox page (verify)")

    assert portal.deliver()["sent"] == 1
    [verify] = portal.mails()
    assert_email_in(
        verify,
        language,
        "verification email",
        "Confirm your email address to get your %(product_name)s license",
        product_name=PRODUCT,
    )
    path = link_in(verify).removeprefix(PUBLIC_URL)
    assert_page_in(opened(portal.client, path), language, "verify page")
    issued = press(portal, path)
    assert_page_in(issued, language, "check-inbox page (key)")
    used = opened(portal.client, path)
    assert used.status_code == 410
    assert_page_in(used, language, "used-link page")

    assert portal.deliver()["sent"] == 1
    key_mail = portal.mails()[-1]
    [key] = [license["key"] for license in keygen.licenses()]
    assert key in text_of(key_mail, "plain") and key in text_of(key_mail, "html")
    assert_email_in(
        key_mail,
        language,
        "key email",
        "Your %(product_name)s license key",
        product_name=PRODUCT,
    )

    assert_page_in(portal.client.get("/lost-key"), language, "lost-key form")
    token = csrf_token_from(portal.client.get("/lost-key").get_data(as_text=True))
    wrong = portal.client.post("/lost-key", data={"email": "nope", "csrf_token": token})
    assert wrong.status_code == 422
    assert_page_in(wrong, language, "lost-key form's error state")
    sent = portal.client.post("/lost-key", data={"email": email, "csrf_token": token})
    assert sent.status_code == 200
    assert_page_in(sent, language, "lost-key sent page")
    assert portal.deliver()["sent"] == 1
    recovery = portal.mails()[-1]
    assert key in text_of(recovery, "plain")
    assert_email_in(
        recovery,
        language,
        "lost-key email",
        "Your %(product_name)s license keys",
        product_name=PRODUCT,
    )

    again = portal.sign_up(email=email, first_name="Mallory")  # the same address once more
    assert again.status_code == 200
    assert_page_in(again, language, "check-inbox page (taken)")
    assert portal.deliver()["sent"] == 1
    taken = portal.mails()[-1]
    assert email in text_of(taken, "plain") and f"{PUBLIC_URL}/lost-key" in text_of(taken, "html")
    assert_email_in(
        taken,
        language,
        "already-an-account email",
        "You already have an account for %(product_name)s",
        product_name=PRODUCT,
    )


@pytest.mark.parametrize("language", TRANSLATED)
def test_the_language_is_the_one_of_the_signup_even_for_a_click_from_another_browser(
    portal_with, keygen, language
):
    """The key email is queued when the link is pressed, maybe on another device: it is still
    written in the language the person signed up in (kept in the journal's row)."""
    portal = portal_with(require_email_verification=True, key_delivery="email")
    portal.client.get(f"/?lang={language}")
    portal.sign_up()
    portal.deliver()
    path = link_in(portal.mails()[0]).removeprefix(PUBLIC_URL)
    other = portal.app.test_client()  # no cookie: an English browser
    english = {"headers": {"Accept-Language": "en"}}
    assert html_lang(opened(other, path, **english)) == "en"
    press(portal, path, other, **english)
    portal.deliver()
    key_mail = portal.mails()[-1]
    assert_email_in(
        key_mail, language, "key email", "Your %(product_name)s license key", product_name=PRODUCT
    )


def test_accept_language_alone_chooses_the_emails_language_too(portal_with, keygen):
    portal = portal_with(key_delivery="both")
    page = portal.client.get("/", headers={"Accept-Language": "es-MX,es;q=0.9"})
    data = form_data()
    data["csrf_token"] = csrf_token_from(page.get_data(as_text=True))
    issued = portal.client.post("/", data=data, headers={"Accept-Language": "es-MX,es;q=0.9"})
    shown = issued_key(issued.get_data(as_text=True))
    assert catalogue("es")["We have also emailed it to you."].string in issued.get_data(True)
    portal.deliver()
    [message] = portal.mails()
    assert shown in text_of(message, "plain")
    assert_email_in(
        message, "es", "key email", "Your %(product_name)s license key", product_name=PRODUCT
    )


def test_a_letter_without_a_language_is_written_in_the_default_one(portal_with, keygen):
    """Rows queued before the outbox kept a language: the app's default locale (English)."""
    portal = portal_with()
    portal.client.get("/?lang=de")  # a page in German changes nothing for such a row
    portal.journal.queue(Letter(kind="taken", email="old@example.com", dedupe="taken:old"))
    portal.deliver()
    [message] = portal.mails()
    assert message["Subject"] == f"You already have an account for {PRODUCT}"
    assert "This address already has an account" in text_of(message, "plain")
    assert '<html lang="en">' in text_of(message, "html")


@pytest.mark.parametrize("language", TRANSLATED)
def test_the_link_problem_pages_are_translated(portal_with, keygen, clock, language):
    portal = portal_with(require_email_verification=True, verification_link_lifetime=600)
    portal.client.get(f"/?lang={language}")
    portal.sign_up()
    portal.deliver()
    path = link_in(portal.mails()[0]).removeprefix(PUBLIC_URL)
    invalid = opened(portal.client, path[:-3] + ("A" if path[-3] != "A" else "B") + path[-2:])
    assert invalid.status_code == 404
    assert_page_in(invalid, language, "invalid-link page")
    portal.courier.links.clock = clock.wall
    clock.offset += 601
    expired = opened(portal.client, path)
    assert expired.status_code == 410
    assert_page_in(expired, language, "expired-link page")


@pytest.mark.parametrize("language", TRANSLATED)
@pytest.mark.parametrize("keys", [1, 2])
def test_the_recovery_email_has_a_plural_for_each_count(app, language, keys):
    values = dict(
        product_name="Acme Pro",
        first_name="Zoë",
        email="zoe@example.com",
        license_keys=[f"KEY-{n}" for n in range(keys)],
        support_email=None,
    )
    with app.test_request_context("/"), force_locale(language):
        text = render_template("email/recovery.txt", **values)
    forms = catalogue(language)["You asked for the key of your %(product_name)s license:"].string
    form = forms[0] if keys == 1 else forms[1]  # 1 is singular, 2 plural, in all four
    assert form % {"product_name": "Acme Pro"} in text
    assert_no_english(text, language, f"recovery email with {keys} key(s)")


def test_the_outbox_and_journal_keep_a_language_and_older_databases_get_the_column(
    database_url,
):
    # The tables as the release before translated emails created them: no locale column.
    engine = create_engine(Journal(database_url).engine.url)
    older = MetaData()
    for table in metadata.sorted_tables:
        columns = [Column(c.name, c.type, primary_key=c.primary_key) for c in table.columns]
        Table(table.name, older, *(c for c in columns if c.name != "locale"))
    older.create_all(engine)
    engine.dispose()
    journal = Journal(database_url)
    journal.create_schema()
    for table in ("signups", "outbox"):
        assert "locale" in {c["name"] for c in inspect(journal.engine).get_columns(table)}
    claim = journal.claim("n" * 20, "zoe@example.com", owner="me", lease=60, locale="fr")
    assert journal.get(claim.signup.id).locale == "fr"
    journal.queue(Letter(kind="recovery", email="zoe@example.com", locale="de"))
    journal.queue(Letter(kind="recovery", email="old@example.com"))
    assert sorted((m.email, m.locale) for m in journal.mail()) == [
        ("old@example.com", None),
        ("zoe@example.com", "de"),
    ]
    journal.engine.dispose()


@pytest.mark.parametrize("language", TRANSLATED)
@pytest.mark.parametrize("mode", ["refuse", "error"])
def test_the_captchas_messages_are_translated(keygen, verify, language, mode):
    verify.mode = mode  # refused (422), or the provider unreachable (503)
    client = captcha_app(keygen, verify)
    client.get(f"/?lang={language}")
    response = submit(client, **{"cf-turnstile-response": "an-answer"})
    assert response.status_code == {"refuse": 422, "error": 503}[mode]
    page = response.get_data(as_text=True)
    assert 'class="error-summary"' in page
    assert_page_in(response, language, f"CAPTCHA {mode} state")


@pytest.mark.parametrize("language", TRANSLATED)
@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("Password123!", "This password is one of the most commonly used"),
        # An address of its own: as a password it counts as a secret, never to be logged.
        ("lois-i18n@example.com", "Please don't use your email address as your password."),
    ],
    ids=["common", "the-email"],
)
def test_the_password_checks_are_translated(client, keygen, language, password, message):
    client.get(f"/?lang={language}")
    response = submit(client, email="lois-i18n@example.com", password=password)
    assert response.status_code == 422
    [msgid] = [m for m in MESSAGES if m.startswith(message)]
    assert htmllib.escape(catalogue(language)[msgid].string) in response.get_data(as_text=True)
    assert_page_in(response, language, "password error state")
