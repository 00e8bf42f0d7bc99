"""The form's shape checks, through the real form in a request context."""

import pytest
from werkzeug.datastructures import MultiDict

from forms import SignupForm

VALID = {
    "first_name": "Clark",
    "last_name": "Kent",
    "email": "clark@example.com",
    "password": "correct horse battery",
}


@pytest.fixture
def validate(app):
    app.config["WTF_CSRF_ENABLED"] = False

    def run(**changes):
        data = {**VALID, **changes}
        with app.test_request_context(method="POST", data=MultiDict(data)):
            form = SignupForm()
            form.validate()
            return form

    return run


def test_valid_submission_passes(validate):
    form = validate()
    assert form.errors == {}


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("first_name", "", "Enter your first name."),
        ("first_name", "   ", "Enter your first name."),
        ("last_name", "", "Enter your last name."),
        ("first_name", "x" * 256, "Use at most 255 characters."),
        ("last_name", "y" * 10_000, "Use at most 255 characters."),
        (
            "first_name",
            "Eve\r\nBcc: attacker@example.com",
            "Use letters, spaces and punctuation only.",
        ),
        ("first_name", "line\nbreak", "Use letters, spaces and punctuation only."),
        ("last_name", "nul\x00byte", "Use letters, spaces and punctuation only."),
        ("last_name", "evil\u202egnp.exe", "Use letters, spaces and punctuation only."),
        ("last_name", "zero\u200bwidth", "Use letters, spaces and punctuation only."),
        ("email", "", "Enter your email address."),
        ("email", "foo.com", "Enter a valid email address, like name@example.com."),
        ("email", "a@b.com,c@d.com", "Enter a valid email address, like name@example.com."),
        ("email", "v@x.com\r\nBcc: a@y.com", "Enter a valid email address, like name@example.com."),
        ("email", "a" * 65 + "@example.com", "The part before the @ is too long"),
        ("password", "", "Choose a password."),
        ("password", "short", "Use at least 8 characters."),
        ("password", "a" * 73, "This password is too long: at most 72 bytes are allowed."),
        ("password", "😀" * 20, "This password is too long: at most 72 bytes are allowed."),
        ("password", "é" * 37, "This password is too long: at most 72 bytes are allowed."),
    ],
)
def test_rejections_name_the_field_and_say_why(validate, field, value, message):
    form = validate(**{field: value})
    assert list(form.errors) == [field]
    assert form.errors[field][0].startswith(message)


@pytest.mark.parametrize("name", ["José", "O'Hara", "ねこ", "Nguyễn", "Anne-Marie", "👩‍💻"])
def test_real_names_are_accepted(validate, name):
    assert validate(first_name=name).errors == {}


def test_names_are_trimmed_and_stored_in_nfc(validate):
    form = validate(first_name="  Zoe\u0308 ")
    assert form.first_name.data == "Zo\u00eb"


def test_email_is_trimmed_and_lower_cased_like_keygen_does(validate):
    form = validate(email="  Clark.Kent@Example.COM ")
    assert form.errors == {}
    assert form.email.data == "clark.kent@example.com"


def test_international_domains_are_sent_as_punycode(validate):
    form = validate(email="user@bücher.de")
    assert form.errors == {}
    assert form.email.data == "user@xn--bcher-kva.de"


# Not "a" * 72: a repeated character is refused as a guessable pattern (below).
BYTES_72_ASCII = "the quick brown fox jumps over the lazy dog, then naps under an old oak."
BYTES_72_ACCENTS = "déjà vu: crème brûlée à côté, café très noir, où ça? oui!!!!"


@pytest.mark.parametrize("password", [BYTES_72_ASCII, BYTES_72_ACCENTS, "  spaces around  "])
def test_passwords_up_to_72_bytes_are_kept_exactly(validate, password):
    assert len(password.encode()) in (72, 17)
    form = validate(password=password)
    assert form.errors == {}
    assert form.password.data == password


def test_minimum_password_length_is_configurable(app, validate):
    app.config["PASSWORD_MIN_LENGTH"] = 15
    assert validate(password="fourteen chars").errors["password"] == ["Use at least 15 characters."]
    assert validate(password="fifteen chars!!").errors == {}


# -- Common passwords and the email (NIST SP 800-63B: a blocklist, no composition rules) ------

COMMON = "This password is one of the most commonly used, so it is easy to guess."


@pytest.mark.parametrize(
    "password",
    [
        "password",  # the list itself, in any case
        "Baseball",
        "iloveyou",
        "password123456789",  # a listed word padded with digits or symbols
        "!!Dragon2024!!",
        "qwertyuiopasdfgh",  # a keyboard row
        "0987654321",
        "abcdefghijklmnop",
        "aaaaaaaaaaaa",  # a short pattern, repeated
        "abcabcabcabc",
    ],
)
def test_common_and_guessable_passwords_are_refused(validate, password):
    assert validate(password=password).errors == {"password": [COMMON + PLEASE]}


PLEASE = " Please choose another: a few unrelated words make a strong one."


@pytest.mark.parametrize(
    "password",
    ["correct horse battery staple", "Tr0ub4dor&3-xyzzy", "qwerty is my cat's name"],
)
def test_uncommon_passwords_pass_without_composition_rules(validate, password):
    """Lower case and spaces only is fine; a common word inside a longer phrase is too."""
    assert validate(password=password).errors == {}


@pytest.mark.parametrize(
    ("email", "password"),
    [
        ("clark.kent.1938@example.com", "clark.kent.1938@example.com"),
        ("clark.kent.1938@example.com", "Clark.Kent.1938@Example.COM"),
        ("clark.kent.1938@example.com", "clark.kent.1938"),
    ],
)
def test_the_email_or_its_local_part_is_refused_as_a_password(validate, email, password):
    assert validate(email=email, password=password).errors == {
        "password": ["Please don't use your email address as your password."]
    }


def test_one_password_message_at_a_time(validate):
    assert validate(password="pass").errors == {"password": ["Use at least 8 characters."]}


def test_no_composition_rule_is_mentioned_anywhere():
    from support.paths import ROOT

    for page in (ROOT / "templates").rglob("*.html"):
        text = page.read_text(encoding="utf-8").lower()
        for rule in ("uppercase", "upper-case", "a digit", "a number", "special character"):
            assert rule not in text, (page.name, rule)


def test_the_list_is_shipped_and_large():
    from forms import COMMON_PASSWORDS, common_passwords

    assert COMMON_PASSWORDS.is_file()
    assert len(common_passwords()) == 30_000
    assert {"123456", "password", "qwerty"} <= common_passwords()
