"""Which language each page is in, and the switch that changes it.

The visitor's own choice comes first: a link in the page's language switch adds ``?lang=xx``,
which is remembered in a cookie (not a secret: only the language code). Without a choice, the
browser's Accept-Language decides, and English is the fallback. Flask-Babel translates; the
catalogues are in translations/ (``scripts/translations.sh`` extracts, updates and compiles them).
"""

from __future__ import annotations

from flask import Flask, current_app, has_request_context, request
from flask_babel import Babel, get_locale

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
    language = request.args.get("lang", "")
    return language if language in LANGUAGES else None


def selected_locale() -> str:
    """Flask-Babel's locale selector: the switch, then the cookie, then Accept-Language."""
    if not has_request_context():  # e.g. an email rendered by the courier: flask_babel's
        return default_language(current_app)  # force_locale() chooses the person's language
    remembered = request.cookies.get(COOKIE, "")
    return (
        chosen_language()
        or (remembered if remembered in LANGUAGES else None)
        or request.accept_languages.best_match(LANGUAGES)
        or default_language(current_app)
    )


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
    response.vary.add("Accept-Language")
    return response
