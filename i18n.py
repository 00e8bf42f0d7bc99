"""Which language each page is in, and the switch that changes it.

The visitor's own choice comes first: a link in the page's language switch adds ``?lang=xx``,
which is remembered in a cookie (not a secret: only the language code). Without a choice, the
browser's Accept-Language decides, and English is the fallback. Flask-Babel translates; the
catalogues are in translations/ (``scripts/translations.sh`` extracts, updates and compiles them).
"""

from __future__ import annotations

from functools import cache, lru_cache

from babel import Locale
from flask import Flask, current_app, has_request_context, request
from flask_babel import Babel, get_locale
from werkzeug.datastructures import LanguageAccept
from werkzeug.http import parse_accept_header

# Every language the catalogues complete, in the order the switch lists them.
LANGUAGES = {"en": "English", "de": "Deutsch", "fr": "Français", "es": "Español"}
COOKIE = "lang"
COOKIE_MAX_AGE = 365 * 24 * 3600


def N_(message: str) -> str:
    """Marks a message for the catalogues without translating it: code outside a request keeps
    it as is, and the page that shows it translates it (gettext)."""
    return message


def init_i18n(app: Flask) -> None:
    Babel(app, locale_selector=selected_locale)
    # {% trans %} blocks span lines in the templates; the catalogues hold them on one.
    app.jinja_env.policies["ext.i18n.trimmed"] = True
    app.jinja_env.globals.update(languages=LANGUAGES, page_language=page_language)
    app.after_request(remember_choice)


def chosen_language() -> str | None:
    """The language picked in the switch on this request, if any."""
    if not has_request_context() or not request.environ.get("QUERY_STRING"):
        return None  # most pages come without a query string: nothing to parse (bench R6)
    language = request.args.get("lang", "")
    return language if language in LANGUAGES else None


def selected_locale() -> Locale:
    """Flask-Babel parses whatever the selector returns on every request, unless it is a
    Locale already: one parsed Locale per language saves a tenth of the form page's cost."""
    return _locale(select_language())


@cache
def _locale(language: str) -> Locale:
    return Locale.parse(language)


def select_language() -> str:
    if not has_request_context():  # e.g. an email rendered by the courier: flask_babel's
        return default_language(current_app)  # force_locale() chooses the person's language
    remembered = request.cookies.get(COOKIE, "")
    return (
        chosen_language()
        or (remembered if remembered in LANGUAGES else None)
        # From the environ: request.headers raises and catches an exception for a missing one.
        or best_match(request.environ.get("HTTP_ACCEPT_LANGUAGE", ""))
        or default_language(current_app)
    )


@lru_cache(maxsize=512)
def best_match(accept_language: str) -> str | None:
    """Browsers send a handful of distinct headers, and parsing one cost as much as the rest of
    the form page (bench R6): each is parsed once."""
    return parse_accept_header(accept_language, LanguageAccept).best_match(LANGUAGES)


def default_language(app: Flask) -> str:
    """Flask-Babel's BABEL_DEFAULT_LOCALE if it is one of ours, else English."""
    language = app.config.get("BABEL_DEFAULT_LOCALE", "en")
    return language if language in LANGUAGES else "en"


def known_language(language: str | None) -> bool:
    """Whether a stored language code (an outbox row's) is one the catalogues complete."""
    return language in LANGUAGES


def page_language() -> str:
    """What <html lang> says: the language the page is actually rendered in."""
    return str(get_locale() or "en")


def remember_choice(response):
    language = chosen_language()
    if language:
        response.set_cookie(
            COOKIE,
            language,
            max_age=COOKIE_MAX_AGE,
            secure=current_app.config.get("SESSION_COOKIE_SECURE", True),
            httponly=True,
            samesite="Lax",
        )
    # Plain string work: response.vary parses and rebuilds the header on every response.
    vary = response.headers.get("Vary")
    response.headers["Vary"] = f"{vary}, Accept-Language" if vary else "Accept-Language"
    return response
