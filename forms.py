"""What a well-formed signup is: fields, filters and limits. No network: Keygen's own answers
(an email already taken, say) come back through the workflow in signup.py."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
import unicodedata
from functools import cache
from pathlib import Path

from babel.support import Translations
from email_validator import EmailNotValidError, validate_email
from flask import current_app
from flask_babel import get_locale, gettext
from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import BooleanField, EmailField, HiddenField, PasswordField, StringField
from wtforms.i18n import messages_path
from wtforms.validators import (
    DataRequired,
    InputRequired,
    Length,
    Regexp,
    StopValidation,
    ValidationError,
)

import email_rules
from keygen_api import MAX_PASSWORD_BYTES

NAME_MAX = 255  # Keygen's limit for first_name and last_name (user.rb)
EMAIL_MAX = 254  # RFC 5321 path limit; Keygen allows 255
LOCAL_PART_MAX = 64  # RFC 5321; email-validator 2.4 no longer checks it

# Characters that change how text is displayed without being visible (bidi overrides, zero-width
# spaces). The zero-width joiner stays allowed: emoji sequences such as 👩‍💻 need it.
_INVISIBLE = (
    {"\u200b", "\u200c", "\u2060", "\ufeff"}
    | {chr(c) for c in range(0x202A, 0x202F)}
    | {chr(c) for c in range(0x2066, 0x206A)}
)


def strip(value: str | None) -> str | None:
    return value.strip() if isinstance(value, str) else value


def nfc(value: str | None) -> str | None:
    """One spelling per name: 'Zoë' typed as e + combining diaeresis is stored as 'ë'."""
    return unicodedata.normalize("NFC", value) if isinstance(value, str) else value


def printable_name(form: FlaskForm, field: StringField) -> None:
    """Names end up in email headers and logs, where a line break or control character lets an
    attacker add headers or forge lines."""
    for char in field.data or "":
        if char in _INVISIBLE or unicodedata.category(char) in ("Cc", "Zl", "Zp", "Cs", "Co"):
            raise ValidationError(gettext("Use letters, spaces and punctuation only."))


def email_address(form: FlaskForm, field: EmailField) -> None:
    """A syntactically valid address, normalised the way Keygen compares them (lower case, IDN
    domains in punycode). No DNS lookups: they are slow and fail on private networks."""
    try:
        result = validate_email(field.data or "", check_deliverability=False)
    except EmailNotValidError:
        raise ValidationError(
            gettext("Enter a valid email address, like name@example.com.")
        ) from None
    if len(result.local_part.encode("utf-8")) > LOCAL_PART_MAX:
        raise ValidationError(gettext("The part before the @ is too long (at most 64 characters)."))
    field.data = (result.ascii_email or result.normalized).lower()


def password_length(form: FlaskForm, field: PasswordField) -> None:
    """At least PASSWORD_MIN_LENGTH characters, at most 72 bytes in UTF-8 (bcrypt truncates
    beyond that, so a longer password would silently be only partly checked). One message at
    a time: the other checks say nothing about a password of the wrong length."""
    password = field.data or ""
    minimum = current_app.config["PASSWORD_MIN_LENGTH"]
    if len(password) < minimum:
        raise StopValidation(gettext("Use at least %(num)d characters.", num=minimum))
    if len(password.encode("utf-8")) > MAX_PASSWORD_BYTES:
        raise StopValidation(
            gettext(
                "This password is too long: at most 72 bytes are allowed. "
                "Letters with accents and other scripts take 2–4 bytes each."
            )
        )


# The most common passwords, shipped with the portal (data/common-passwords.txt says where the
# list comes from), so that the check needs no network. NIST SP 800-63B asks for such a
# blocklist, and for no composition rules ("one digit, one capital") instead.
COMMON_PASSWORDS = Path(__file__).resolve().parent / "data" / "common-passwords.txt"
# Rows of a keyboard and runs of letters or digits: "qwertyuiopasdfgh" is no more secret than
# "qwerty", whatever its length.
_RUNS = (
    "qwertyuiopasdfghjklzxcvbnm",
    "azertyuiopqsdfghjklmwxcvbn",
    "qwertzuiopasdfghjklyxcvbnm",
    "abcdefghijklmnopqrstuvwxyz",
    "01234567890",
    "1qaz2wsx3edc4rfv5tgb6yhn7ujm8ik9ol0p",
)
_PADDING = string.digits + string.punctuation + " "
COMMON = _l(
    "This password is one of the most commonly used, so it is easy to guess. "
    "Please choose another: a few unrelated words make a strong one."
)


@cache
def common_passwords() -> frozenset[str]:
    with open(COMMON_PASSWORDS, encoding="utf-8") as lines:
        return frozenset(s for line in lines if (s := line.strip()) and not s.startswith("#"))


def is_common(password: str) -> bool:
    """On the list, the list's word with digits or symbols around it ("Password123!"), a run
    along the keyboard or the alphabet, or a short pattern repeated ("abcabcabc")."""
    folded = password.casefold()
    listed = common_passwords()
    core = folded.strip(_PADDING)
    if folded in listed or (core and core in listed):
        return True
    if any(folded in run or folded in run[::-1] for run in _RUNS):
        return True
    return any(folded == folded[:n] * (len(folded) // n) for n in range(1, 5) if n < len(folded))


def not_common(form: FlaskForm, field: PasswordField) -> None:
    """Attackers try the most common passwords first, on every site at once."""
    if field.data and is_common(field.data):
        raise ValidationError(COMMON)


def not_the_email(form: FlaskForm, field: PasswordField) -> None:
    """The email address is the one thing everyone who sees the account knows."""
    email = (form.address or "").casefold()
    password = (field.data or "").casefold()
    if email and password in (email, email.partition("@")[0]):
        raise ValidationError(gettext("Please don't use your email address as your password."))


def consent_to_terms(form: FlaskForm, field: BooleanField) -> None:
    """Required only when the operator set TERMS_URL: the consent is then recorded in Keygen."""
    if current_app.config.get("TERMS_URL") and not field.data:
        raise ValidationError(gettext("Accept the terms of service to create your account."))


DOMAIN_REFUSED = {
    email_rules.DISPOSABLE: _l(
        "This looks like a temporary inbox. Please use a permanent email address."
    ),
    email_rules.DENIED: _l(
        "Addresses at this domain cannot be used to sign up. Please use another email address."
    ),
    email_rules.NOT_ALLOWED: _l(
        "Signing up needs your work email address: addresses at this domain are not accepted."
    ),
}


def permitted_domain(form: FlaskForm, field: EmailField) -> None:
    """EMAIL_DOMAINS_DENY, EMAIL_DOMAINS_ALLOW and BLOCK_DISPOSABLE_EMAIL, from lists that ship
    with the portal (no lookup). The reason stays on the form for the metrics."""
    rules = current_app.config.get("EMAIL_DOMAIN_RULES")
    if rules is None or field.errors or not field.data:
        return
    refusal = rules.refusal(field.data)
    if refusal is not None:
        form.refusal = refusal
        raise ValidationError(DOMAIN_REFUSED[refusal])


@cache
def wtforms_translations(language: str) -> Translations:
    return Translations.load(messages_path(), [language], domain="wtforms")


class PortalForm(FlaskForm):
    """Every form of the portal: WTForms' own messages in the page's language, from a catalogue
    read once per language where Flask-WTF reads it per request (kept for bench R9, 32 users)."""

    class Meta:
        def get_translations(self, form):
            return wtforms_translations(str(get_locale()))


def new_nonce() -> str:
    return secrets.token_urlsafe(24)


def new_session_secret() -> str:
    """Kept in the signed session from the moment the form is served: a signup is bound to the
    browser session that sent it (bound_nonce)."""
    return secrets.token_urlsafe(24)


def bound_nonce(session_secret: str, nonce: str) -> str:
    """The key of a submission's journal row: its form's nonce, bound to the browser session
    that sent it. The same form sent twice from one session is one signup; sent from another
    session (a copied page, a cached form, a shared computer's back button) it is another,
    unrelated one, so a nonce alone never leads to anyone's key."""
    message = nonce.encode()
    return hmac.new(session_secret.encode(), message, hashlib.sha256).hexdigest()


def password_field() -> PasswordField:
    """The password of every form that asks for one: the same rules wherever it is chosen."""
    # No strip: spaces are part of a password, and Keygen must get exactly what was typed.
    return PasswordField(
        _l("Password"),
        validators=[
            InputRequired(_l("Choose a password.")),
            password_length,
            not_the_email,
            not_common,
        ],
    )


def email_field(*checks) -> EmailField:
    """The email field of every form: shaped here, looked up in Keygen by the workflow."""
    return EmailField(
        _l("Email"),
        filters=[strip],
        validators=[
            DataRequired(_l("Enter your email address.")),
            Length(max=EMAIL_MAX, message=_l("Use at most %(max)d characters.")),
            email_address,
            *checks,
        ],
    )


class SignupForm(PortalForm):
    # One per served form: resubmitting the same form (double click, refresh, back button,
    # two tabs of one page) is recognised as the same signup and never creates a second one.
    nonce = HiddenField(
        default=new_nonce,
        validators=[Regexp(r"^[A-Za-z0-9_-]{16,64}$", message=_l("This form is out of date."))],
    )
    # Signed by protection.FillTimer when the form is served: how long it took to fill in.
    served = HiddenField()
    # The honeypot: hidden from people by CSS, named so that form-filling bots fill it in.
    website = StringField(_l("Leave this field empty"))
    first_name = StringField(
        _l("First name"),
        filters=[strip, nfc],
        validators=[
            DataRequired(_l("Enter your first name.")),
            Length(max=NAME_MAX, message=_l("Use at most %(max)d characters.")),
            printable_name,
        ],
    )
    last_name = StringField(
        _l("Last name"),
        filters=[strip, nfc],
        validators=[
            DataRequired(_l("Enter your last name.")),
            Length(max=NAME_MAX, message=_l("Use at most %(max)d characters.")),
            printable_name,
        ],
    )
    email = email_field(permitted_domain)
    password = password_field()
    # Shown only when TERMS_URL is set; the page writes the label with links to the terms.
    accept_terms = BooleanField(_l("I accept the terms of service"), validators=[consent_to_terms])

    @property
    def address(self) -> str | None:
        """The address the password must not be (not_the_email)."""
        return self.email.data


class AddressFirstForm(SignupForm):
    """The form with REQUIRE_EMAIL_VERIFICATION: everything but the password, which whoever
    controls the address chooses on the page the emailed link opens (PasswordForm)."""

    password = None  # WTForms drops a field set to None


class PasswordForm(PortalForm):
    """The page of a verification link: the password, for the address the link was sent to."""

    password = password_field()

    def __init__(self, *args, address: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.address = address


class RecoveryForm(PortalForm):
    """The lost-key page: just the address the keys should go to."""

    email = email_field()
