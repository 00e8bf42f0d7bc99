"""Languages: every message the code and templates use is translated in every language, the
compiled catalogues match their sources, and each page, its errors and the key email render
with no English left in them. The language comes from the switch, then Accept-Language."""

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
from flask_wtf import FlaskForm
from wtforms import StringField
from wtforms.validators import DataRequired

from conftest import ROOT, csrf_token_from, form_data, issued_key
from i18n import LANGUAGES

TRANSLATED = [code for code in LANGUAGES if code != "en"]
# The keywords scripts/translations.sh extracts with (gettext and _ are Babel's defaults).
KEYWORDS = {"_": None, "gettext": None, "lazy_gettext": None, "_l": None, "N_": None}


def source_messages() -> set[str]:
    """Every msgid in the code and templates now, extracted afresh as the command does."""
    with open(ROOT / "babel.cfg", encoding="utf-8") as config:
        method_map, options_map = parse_mapping_cfg(config)
    keywords = {**KEYWORDS, "ngettext": (1, 2)}
    found = extract_from_dir(
        str(ROOT), method_map, options_map, keywords=keywords, strip_comment_tags=True
    )
    return {message for _, _, message, _, _ in found if isinstance(message, str)}


def catalogue(language: str):
    path = ROOT / "translations" / language / "LC_MESSAGES" / "messages.po"
    with open(path, "rb") as po:
        return read_po(po, locale=language)


MESSAGES = sorted(source_messages())
PLACEHOLDER = re.compile(r"%\(\w+\)[sd]")


def test_the_source_has_messages_to_translate():
    assert len(MESSAGES) > 50
    assert "Create account and get my key" in MESSAGES  # a template
    assert "Enter your first name." in MESSAGES  # forms.py
    assert "An account with this email already exists." in MESSAGES  # signup.py, Keygen's 422
    assert "Page not found" in MESSAGES  # errors.py
    assert "Hello %(first_name)s," in MESSAGES  # the key email


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


@pytest.mark.parametrize("language", TRANSLATED)
def test_the_compiled_catalogue_matches_its_source(language):
    directory = ROOT / "translations" / language / "LC_MESSAGES"
    with open(directory / "messages.mo", "rb") as mo:
        compiled = {m.id: m.string for m in read_mo(mo) if m.id}
    source = {m.id: m.string for m in catalogue(language) if m.id and m.string}
    assert compiled == source, "run scripts/translations.sh to compile the catalogues"


# -- Rendered pages --------------------------------------------------------------------------


def visible_text(page: str) -> str:
    page = re.sub(r"<(script|style)\b.*?</\1>", " ", page, flags=re.S)
    return htmllib.unescape(re.sub(r"<[^>]+>", " ", page))


def english_fragments(language: str) -> list[str]:
    """The English words of each message, between its placeholders and tags, that the
    translation does not share (a product name or 'E-Mail' may well be the same)."""
    po = catalogue(language)
    fragments = set()
    for message in MESSAGES:
        for part in re.split(r"%\(\w+\)[sd]|<[^>]+>", message):
            part = " ".join(part.split()).strip(" ,.:;")
            if len(part) >= 4 and part not in po[message].string:
                fragments.add(part)
    return sorted(fragments, key=len, reverse=True)


def assert_no_english(text: str, language: str, where: str) -> None:
    text = " ".join(text.split())
    leaks = [f for f in english_fragments(language) if re.search(rf"\b{re.escape(f)}\b", text)]
    assert not leaks, f"English on the {where} in {language}: {leaks}"


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
    class Form(FlaskForm):
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
