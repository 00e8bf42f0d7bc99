"""compose() keeps every header safe; SMTPMailer against aiosmtpd on loopback (plain, STARTTLS
with AUTH, implicit TLS, 4xx/5xx replies, refused and silent servers); the console and memory
mailers; the key email's templates rendered by Flask."""

import datetime
import io
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from html.parser import HTMLParser

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from flask import Flask, render_template
from markupsafe import escape

from i18n import init_i18n
from mailer import (
    ConsoleMailer,
    MailConfigurationError,
    MailPermanentFailure,
    MailTemporaryFailure,
    MemoryMailer,
    SMTPMailer,
    compose,
)
from support.leaks import secret
from support.mail import Recorder, text_of
from support.paths import ROOT
from support.processes import free_port
from support.tls import Certificate

SENDER = "Acme Licensing <licenses@portal.example>"
RECIPIENT = "zoe@example.com"
KEY = secret("A1B2C3-D4E5F6-0A1B2C-3D4E5F-6A7B8C-V3")
SMTP_USER = "portal"
SMTP_PASSWORD = secret("smtp-pa55word-of-the-portal")
MESSAGE_ID = "license-7d0c1f4e-5b7a-4c39-9a0e-2f1d3c4b5a69@portal.example"


def message(**changes) -> EmailMessage:
    values = dict(
        sender=SENDER,
        to_email=RECIPIENT,
        to_name="Zoë O'Hara",
        subject="Your Acme Pro license key",
        text=f"Hello Zoë,\n\nYour key:\n\n{KEY}\n",
        html=f"<p>Hello Zoë,</p><p><code>{KEY}</code></p>",
        message_id=MESSAGE_ID,
    )
    values.update(changes)
    return compose(**values)


def assert_nothing_secret_in(error: Exception) -> None:
    text = f"{error} {error!r}"
    for value in (SMTP_PASSWORD, KEY, RECIPIENT):
        assert value not in text


# -- An SMTP server on loopback -------------------------------------------------------------------


@dataclass
class SMTPServer:
    host: str
    port: int
    handler: Recorder

    def mailer(self, **options) -> SMTPMailer:
        options.setdefault("timeout", 2.0)
        return SMTPMailer(self.host, self.port, local_hostname="portal.test", **options)


@contextmanager
def smtp_server(**options) -> Iterator[SMTPServer]:
    handler = Recorder()
    options.setdefault("enable_SMTPUTF8", False)  # aiosmtpd's Controller turns it on
    controller = Controller(
        handler, hostname="127.0.0.1", port=free_port(), ready_timeout=5.0, **options
    )
    controller.start()
    try:
        yield SMTPServer("127.0.0.1", controller.port, handler)
    finally:
        controller.stop()


@pytest.fixture(autouse=True)
def quiet_smtp_server_log() -> Iterator[None]:
    """aiosmtpd logs every line of DATA at DEBUG: keep the test keys out of test-logs/."""
    logger = logging.getLogger("mail.log")
    level = logger.level
    logger.setLevel(logging.INFO)
    yield
    logger.setLevel(level)


@pytest.fixture
def smtp() -> Iterator[SMTPServer]:
    with smtp_server() as server:
        yield server


@contextmanager
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never says a word, like a relay stuck before 220."""
    held: list[socket.socket] = []
    done = threading.Event()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(0.05)

        def hold() -> None:
            while not done.is_set():
                try:
                    held.append(listener.accept()[0])
                except TimeoutError:
                    continue

        thread = threading.Thread(target=hold, daemon=True)
        thread.start()
        try:
            yield listener.getsockname()[1]
        finally:
            done.set()
            thread.join(timeout=2)
            for connection in held:
                connection.close()


def authenticator(server, session, envelope, mechanism, auth_data) -> AuthResult:
    valid = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == SMTP_USER.encode()
        and auth_data.password == SMTP_PASSWORD.encode()
    )
    return AuthResult(success=valid, handled=False)


@contextmanager
def starttls_server(certificate: Certificate, **options) -> Iterator[SMTPServer]:
    """STARTTLS required, then AUTH required, as a submission relay on port 587 would be."""
    with smtp_server(
        tls_context=certificate.server_context(),
        require_starttls=True,
        authenticator=authenticator,
        auth_required=True,
        auth_require_tls=True,
        **options,
    ) as server:
        yield server


# -- compose() ----------------------------------------------------------------------------------


def test_a_message_arrives_with_its_envelope_and_both_parts(smtp):
    text, html = render_license_email(product_name="Acme Pro")
    smtp.mailer().send(message(text=text, html=html))

    [received] = smtp.handler.received
    assert received.mail_from == "licenses@portal.example"
    assert received.rcpt_tos == [RECIPIENT]
    parsed = received.parsed()
    assert parsed.get_content_type() == "multipart/alternative"
    assert str(parsed["From"]) == "Acme Licensing <licenses@portal.example>"
    assert parsed["Subject"] == "Your Acme Pro license key"
    assert parsed["Message-ID"] == f"<{MESSAGE_ID}>"
    assert parsed["Auto-Submitted"] == "auto-generated"
    sent_at = parsed["Date"].datetime
    assert abs((datetime.datetime.now(datetime.UTC) - sent_at).total_seconds()) < 60
    plain = text_of(parsed, "plain")
    rich = text_of(parsed, "html")
    for part in (plain, rich):
        assert KEY in part
        assert "Acme Pro" in part
    assert f"\n{KEY}\n" in plain  # on its own line


@pytest.mark.parametrize("name", ["Zoë O'Hara", "ねこ"])
def test_names_in_any_script_arrive_intact_and_headers_stay_ascii(smtp, name):
    text, html = render_license_email(first_name=name)
    smtp.mailer().send(message(to_name=name, subject=f"Your key, {name}", text=text, html=html))

    [received] = smtp.handler.received
    headers = received.content.split(b"\r\n\r\n", 1)[0]
    headers.decode("ascii")  # RFC 2047 encoded words, no raw UTF-8
    assert b"=?utf-8?" in headers
    parsed = received.parsed()
    [to] = parsed["To"].addresses
    assert (to.display_name, to.addr_spec) == (name, RECIPIENT)
    assert parsed["Subject"] == f"Your key, {name}"
    assert f"Hello {name}," in text_of(parsed, "plain")
    assert f"Hello {escape(name)}," in text_of(parsed, "html")


BREAKS = ["\r\n", "\n", "\r", "\x00", "\u0085", "\u2028"]


@pytest.mark.parametrize("argument", ["to_name", "subject", "to_email", "sender", "message_id"])
@pytest.mark.parametrize("bad", BREAKS, ids=[repr(b) for b in BREAKS])
def test_line_breaks_and_controls_are_refused_before_any_connection(smtp, argument, bad):
    injected = f"Eve{bad}Bcc: attacker@example.com"
    with pytest.raises(ValueError, match="line break") as refused:
        smtp.mailer().send(message(**{argument: injected}))

    assert argument in str(refused.value)
    assert bad not in str(refused.value)
    assert "attacker" not in str(refused.value)
    assert smtp.handler.greetings == 0
    assert smtp.handler.received == []


@pytest.mark.parametrize(
    "name",
    [
        "Eve Bcc: attacker@example.com",
        "Eve <attacker@example.com>, mallory@example.com",
        '"Eve" <attacker@example.com>',
        "Doe, John " + "x" * 80,  # long enough to fold: gh-80222 dropped the quotes here
    ],
)
def test_a_name_never_adds_a_recipient(smtp, name):
    smtp.mailer().send(message(to_name=name))

    [received] = smtp.handler.received
    assert received.rcpt_tos == [RECIPIENT]
    parsed = received.parsed()
    assert [a.addr_spec for a in parsed["To"].addresses] == [RECIPIENT]
    assert parsed["Bcc"] is None and parsed["Cc"] is None


@pytest.mark.parametrize(
    "address", ["", "zoe", "zoe@", "@example.com", "a@b.com, c@d.com", "a@b.com>", "a b@c.com"]
)
def test_malformed_addresses_are_refused_without_quoting_them(address):
    with pytest.raises(ValueError, match="to_email is not a valid email address") as refused:
        message(to_email=address)
    assert str(refused.value) == "to_email is not a valid email address"


@pytest.mark.parametrize(
    "message_id", [f"<{MESSAGE_ID}>", "license-1", "license 1@portal.example", "a@b@c", ""]
)
def test_malformed_message_ids_are_refused(message_id):
    with pytest.raises(ValueError, match="message_id must look like"):
        message(message_id=message_id)


def test_the_message_id_is_the_one_passed_in_every_time():
    first, second = message(), message(subject="Resent")
    assert first["Message-ID"] == second["Message-ID"] == f"<{MESSAGE_ID}>"


@pytest.mark.parametrize(
    ("sender", "expected"),
    [
        ("licenses@portal.example", ("", "licenses@portal.example")),
        ('"Acme, Inc." <licenses@portal.example>', ("Acme, Inc.", "licenses@portal.example")),
        ("Zoë's Shop <shop@portal.example>", ("Zoë's Shop", "shop@portal.example")),
    ],
)
def test_the_sender_may_carry_a_name(sender, expected):
    [mailbox] = message(sender=sender)["From"].addresses
    assert (mailbox.display_name, mailbox.addr_spec) == expected


def test_a_text_only_message_is_a_single_part():
    plain = message(html=None)
    assert plain.get_content_type() == "text/plain"
    assert KEY in plain.get_content()


# -- SMTPMailer ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stage", "reply", "failure", "code"),
    [
        ("rcpt", "451 4.3.0 try later", MailTemporaryFailure, 451),
        ("data", "451 4.3.0 try later", MailTemporaryFailure, 451),
        ("rcpt", "550 5.1.1 <{address}>: user unknown", MailPermanentFailure, 550),
        ("data", "550 5.1.1 <{address}>: user unknown", MailPermanentFailure, 550),
    ],
)
def test_smtp_replies_say_whether_to_try_again(smtp, stage, reply, failure, code):
    setattr(smtp.handler, f"{stage}_reply", reply)
    with pytest.raises(failure) as failed:
        smtp.mailer().send(message())

    assert type(failed.value) is failure
    assert failed.value.code == code
    assert str(code) in str(failed.value)
    assert_nothing_secret_in(failed.value)  # the address the server quoted back is redacted
    assert smtp.handler.received == []


def test_a_stopped_server_is_a_quick_temporary_failure():
    with smtp_server() as server:
        mailer = server.mailer()
    started = time.monotonic()
    for attempt in (lambda: mailer.send(message()), mailer.check):
        with pytest.raises(MailTemporaryFailure) as failed:
            attempt()
        assert failed.value.code is None
        assert_nothing_secret_in(failed.value)
    assert time.monotonic() - started < 1.0


def test_a_server_that_never_answers_times_out():
    with silent_server() as port:
        mailer = SMTPMailer("127.0.0.1", port, timeout=0.5, local_hostname="portal.test")
        for attempt in (lambda: mailer.send(message()), mailer.check):
            started = time.monotonic()
            with pytest.raises(MailTemporaryFailure):
                attempt()
            assert time.monotonic() - started < 0.5 + 1.0


def test_check_passes_against_a_working_server(smtp):
    smtp.mailer().check()
    assert smtp.handler.greetings == 1
    assert smtp.handler.mail_commands == 0


@pytest.mark.parametrize("mechanism", ["LOGIN", "PLAIN"])
def test_starttls_and_auth(loopback_certificate, mechanism):
    other = {"LOGIN": "PLAIN", "PLAIN": "LOGIN"}[mechanism]
    with starttls_server(loopback_certificate, auth_exclude_mechanism=[other]) as server:
        mailer = server.mailer(
            use_tls=True,
            ssl_context=loopback_certificate.client_context(),
            username=SMTP_USER,
            password=SMTP_PASSWORD,
        )
        mailer.check()
        mailer.send(message())

    [received] = server.handler.received
    assert received.tls and received.authenticated
    assert received.rcpt_tos == [RECIPIENT]


def test_a_wrong_password_is_an_operator_problem(loopback_certificate):
    with starttls_server(loopback_certificate) as server:
        mailer = server.mailer(
            use_tls=True,
            ssl_context=loopback_certificate.client_context(),
            username=SMTP_USER,
            password=secret("not-the-smtp-password"),
        )
        for attempt in (lambda: mailer.send(message()), mailer.check):
            with pytest.raises(MailConfigurationError) as failed:
                attempt()
            assert isinstance(failed.value, MailPermanentFailure)
            assert failed.value.code == 535
            assert "not-the-smtp-password" not in f"{failed.value} {failed.value!r}"
        assert server.handler.mail_commands == 0


def test_sending_without_starttls_to_a_server_that_requires_it_fails_permanently(
    loopback_certificate,
):
    with (
        starttls_server(loopback_certificate) as server,
        pytest.raises(MailConfigurationError) as failed,
    ):
        server.mailer().send(message())
    assert failed.value.code == 530
    assert server.handler.received == []


def test_starttls_never_falls_back_to_plain_text(smtp):
    mailer = smtp.mailer(use_tls=True, username=SMTP_USER, password=SMTP_PASSWORD)
    with pytest.raises(MailConfigurationError, match="STARTTLS") as failed:
        mailer.send(message())
    assert_nothing_secret_in(failed.value)
    assert smtp.handler.mail_commands == 0


def test_an_untrusted_certificate_is_refused_by_default(loopback_certificate):
    with starttls_server(loopback_certificate) as server:
        mailer = server.mailer(use_tls=True, username=SMTP_USER, password=SMTP_PASSWORD)
        with pytest.raises(MailConfigurationError, match="certificate") as failed:
            mailer.check()
    assert_nothing_secret_in(failed.value)
    assert server.handler.received == []


def test_implicit_tls(loopback_certificate):
    with smtp_server(ssl_context=loopback_certificate.server_context()) as server:
        mailer = server.mailer(use_ssl=True, ssl_context=loopback_certificate.client_context())
        mailer.check()
        mailer.send(message())

    [received] = server.handler.received
    assert received.tls
    assert received.parsed()["Message-ID"] == f"<{MESSAGE_ID}>"


def test_an_idn_address_goes_as_given_to_a_server_that_speaks_smtputf8():
    with smtp_server(enable_SMTPUTF8=True) as server:
        server.mailer().send(message(to_email="zoe@bücher.example"))
    [received] = server.handler.received
    assert received.rcpt_tos == ["zoe@bücher.example"]
    assert "SMTPUTF8" in received.mail_options
    assert received.parsed()["To"].addresses[0].addr_spec == "zoe@bücher.example"


def test_an_idn_address_is_refused_for_good_by_a_server_without_smtputf8(smtp):
    with pytest.raises(MailPermanentFailure, match="SMTPUTF8") as failed:
        smtp.mailer().send(message(to_email="zoe@bücher.example"))
    assert type(failed.value) is MailPermanentFailure
    assert smtp.handler.mail_commands == 0


def test_the_password_stays_out_of_repr():
    mailer = SMTPMailer(
        "smtp.example.com", 587, use_tls=True, username=SMTP_USER, password=SMTP_PASSWORD
    )
    assert SMTP_PASSWORD not in repr(mailer)
    assert "smtp.example.com" in repr(mailer) and SMTP_USER in repr(mailer)


@pytest.mark.parametrize(
    "options",
    [
        dict(use_tls=True, use_ssl=True),
        dict(username=SMTP_USER),
        dict(password=SMTP_PASSWORD),
        dict(timeout=0),
    ],
)
def test_contradictory_settings_are_refused(options):
    with pytest.raises(ValueError) as refused:
        SMTPMailer("smtp.example.com", 587, **options)
    assert SMTP_PASSWORD not in str(refused.value)


# -- ConsoleMailer and MemoryMailer ---------------------------------------------------------------


def test_the_console_mailer_prints_headers_and_the_text_part():
    stream = io.StringIO()
    ConsoleMailer(stream).send(message(text=f"Hello Zoë\x1b[2J,\n\n{KEY}\n"))

    printed = stream.getvalue()
    assert "To: Zoë O'Hara <zoe@example.com>" in printed
    assert "Subject: Your Acme Pro license key" in printed
    assert f"Message-ID: <{MESSAGE_ID}>" in printed
    assert f"\n{KEY}\n" in printed
    assert "\x1b" not in printed  # no terminal escapes from a body
    assert "<code>" not in printed  # the text part only


def test_the_console_mailer_writes_to_stdout_by_default(capsys):
    mailer = ConsoleMailer()
    mailer.check()
    mailer.send(message())
    assert "Subject: Your Acme Pro license key" in capsys.readouterr().out


def test_the_memory_mailer_keeps_real_messages_and_fails_on_request():
    mailer = MemoryMailer()
    mailer.failures.append(MailTemporaryFailure("451 try later", code=451))
    sent = message()
    with pytest.raises(MailTemporaryFailure):
        mailer.send(sent)
    assert mailer.outbox == []
    mailer.send(sent)
    mailer.check()
    assert mailer.outbox == [sent]
    assert isinstance(mailer.outbox[0], EmailMessage)


@pytest.mark.parametrize("mailer", [MemoryMailer(), ConsoleMailer(io.StringIO())])
def test_mailers_refuse_what_compose_did_not_build(mailer):
    with pytest.raises(ValueError, match="compose"):
        mailer.send(EmailMessage())


# -- The key email's templates ------------------------------------------------------------------


def render_license_email(**changes) -> tuple[str, str]:
    values = dict(
        product_name="Acme Pro",
        first_name="Zoë",
        license_key=KEY,
        email=RECIPIENT,
        support_email="help@acme.example",
    )
    values.update(changes)
    app = Flask(__name__, template_folder=str(ROOT / "templates"))
    init_i18n(app)  # the templates are translated
    with app.app_context():
        return (
            render_template("email/license.txt", **values),
            render_template("email/license.html", **values),
        )


VOID_ELEMENTS = frozenset({"meta", "br", "hr", "img", "link", "input"})


class Markup(HTMLParser):
    def __init__(self):
        super().__init__()
        self.open: list[str] = []
        self.tags: list[str] = []
        self.links: list[str] = []
        self.misnested: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.links += [value for name, value in attrs if name in ("href", "src") and value]
        if tag not in VOID_ELEMENTS:
            self.open.append(tag)

    def handle_endtag(self, tag):
        if not self.open or self.open.pop() != tag:
            self.misnested.append(tag)


def test_the_html_email_is_simple_well_formed_markup():
    _, html = render_license_email()
    markup = Markup()
    markup.feed(html)
    markup.close()
    assert html.startswith("<!DOCTYPE html>")
    assert markup.tags[:2] == ["html", "head"]
    assert (markup.open, markup.misnested) == ([], [])
    assert not {"script", "img", "iframe", "object", "style", "link"} & set(markup.tags)
    assert markup.links == ["mailto:help@acme.example"]


def test_the_key_email_escapes_html_and_keeps_the_text_literal():
    text, html = render_license_email(first_name="<b>O'Hara</b>", product_name="R&D <Tools>")
    assert "<b>" not in html and "&lt;b&gt;O&#39;Hara&lt;/b&gt;" in html
    assert "R&amp;D &lt;Tools&gt;" in html
    assert "Hello <b>O'Hara</b>," in text
    assert "your R&D <Tools> license" in text


def test_the_key_email_without_product_name_or_support_contact():
    text, html = render_license_email(product_name="", support_email="")
    for body in (text, html):
        assert "the key for your license:" in body
        assert KEY in body
        assert "help" not in body.lower()
        assert RECIPIENT in body
    assert "<title>Your license key</title>" in html
