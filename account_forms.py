"""The forms of self-service: signing in (and the second factor's code), forgot-password, a new
password, and the confirmation of freeing a machine. Shape only; Keygen decides the rest."""

from __future__ import annotations

from flask_babel import gettext
from flask_babel import lazy_gettext as _l
from wtforms import HiddenField, PasswordField, StringField
from wtforms.validators import InputRequired, Length, Regexp, ValidationError

from forms import PortalForm, email_field, not_common, password_length

MAX_TYPED_PASSWORD = 1024  # a sign-in sends what was typed; beyond this it is not a password


def digits_only(value: str | None) -> str | None:
    """Authenticator apps show "123 456"; people type it so."""
    return "".join(value.split()) if isinstance(value, str) else value


class SignInForm(PortalForm):
    email = email_field()
    # No strip: spaces are part of a password.
    password = PasswordField(
        _l("Password"),
        validators=[
            InputRequired(_l("Enter your password.")),
            Length(max=MAX_TYPED_PASSWORD, message=_l("Use at most %(max)d characters.")),
        ],
    )


class CodeForm(PortalForm):
    # The address and password of the first step, sealed by the server (accounts.py): the
    # browser holds them only in a form it cannot read, for a few minutes.
    pending = HiddenField()
    code = StringField(
        _l("Authentication code"),
        filters=[digits_only],
        validators=[
            InputRequired(_l("Enter the code your authenticator app shows.")),
            Regexp(r"^\d{6}$", message=_l("The code has 6 digits.")),
        ],
    )


class ForgotPasswordForm(PortalForm):
    email = email_field()


def not_the_address(form: NewPasswordForm, field: PasswordField) -> None:
    """The address is the one thing everyone who sees the account knows."""
    email = (form.address or "").casefold()
    password = (field.data or "").casefold()
    if email and password in (email, email.partition("@")[0]):
        raise ValidationError(gettext("Please don't use your email address as your password."))


class NewPasswordForm(PortalForm):
    address: str | None = None  # the account's address, set by the view
    password = PasswordField(
        _l("New password"),
        validators=[
            InputRequired(_l("Choose a password.")),
            password_length,
            not_the_address,
            not_common,
        ],
    )


class ConfirmForm(PortalForm):
    """A button and the CSRF token: freeing a machine, signing out."""
