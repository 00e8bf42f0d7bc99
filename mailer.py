"""Email: build a safe message with compose(), deliver it with a mailer.

SMTPMailer talks to a real relay, ConsoleMailer prints for the demo, MemoryMailer keeps messages
for tests. A mailer sends once and says whether trying again can help (MailTemporaryFailure) or
not (MailPermanentFailure); retrying is the caller's job. No Flask and nothing from the project.
"""

from __future__ import annotations

import email
import email.policy
import re
import smtplib
import ssl
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import KW_ONLY, dataclass, field
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from typing import Protocol, TextIO

# C0 and C1 controls (CR, LF, NUL, U+0085...) and the Unicode line and paragraph separators:
# everything str.splitlines() breaks on. Python 3.11.7 predates the fix for CVE-2024-6923
# (https://github.com/python/cpython/issues/121650), so nothing like this may reach a header.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_MESSAGE_ID = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")
_SENDER = re.compile(r"(?:(?P<name>[^<>]*?)\s*<(?P<address>[^<>]*)>|(?P<bare>[^<>]*))")
# Replies that mean the server refused our credentials or our connection, not the message.
_AUTHENTICATION_CODES = {530, 534, 535, 538}


class MailError(Exception):
    """The message was not delivered. ``code`` is the SMTP reply code, if the server sent one.

    The text never holds the message, the credentials or the envelope addresses.
    """

    def __init__(self, message: str, *, code: int | None = None):
        super().__init__(message)
        self.code = code


class MailTemporaryFailure(MailError):
    """Trying again later may work: connection refused or reset, a timeout, a 4xx reply.

    If the connection broke after the message was sent but before the server confirmed it, the
    message may have arrived anyway; the stable Message-ID lets mail clients drop the duplicate.
    """


class MailPermanentFailure(MailError):
    """The server refused the message or its address (5xx): sending it again will fail again."""


class MailConfigurationError(MailPermanentFailure):
    """The server refused us, not the message: credentials, TLS, a missing extension. Every
    message fails until an operator fixes the settings; ``check()`` shows the same error."""


def compose(
    *,
    sender: str,
    to_email: str,
    to_name: str,
    subject: str,
    text: str,
    html: str | None = None,
    message_id: str,
) -> EmailMessage:
    """A message ready for any mailer: text (and HTML) body, Date and a stable Message-ID.

    ``sender`` is "address" or "Name <address>"; ``message_id`` is "unique-part@domain" and
    comes back as ``<message_id>``, so a message sent twice can be recognised as one. Raises
    ValueError, naming the argument but never quoting it, for anything that could break a header.
    """
    _refuse_control_characters(
        sender=sender, to_email=to_email, to_name=to_name, subject=subject, message_id=message_id
    )
    if not _MESSAGE_ID.fullmatch(message_id):
        raise ValueError("message_id must look like 'unique-part@domain', without angle brackets")
    sender_name, sender_address = _split_sender(sender)
    message = EmailMessage(policy=email.policy.SMTP)
    message["From"] = _mailbox("sender", sender_name, sender_address)
    message["To"] = _mailbox("to_email", to_name, to_email)
    message["Subject"] = subject
    message["Date"] = datetime.now(UTC)
    message["Message-ID"] = f"<{message_id}>"
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies, please
    # Quoted-printable keeps the message 7-bit, so no relay needs 8BITMIME.
    message.set_content(text, cte="quoted-printable")
    if html:
        message.add_alternative(html, subtype="html", cte="quoted-printable")
    return message


def _refuse_control_characters(**fields: str) -> None:
    for name, value in fields.items():
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a str")
        if _CONTROL.search(value):
            raise ValueError(f"{name} contains a line break or another control character")


def _split_sender(sender: str) -> tuple[str, str]:
    match = _SENDER.fullmatch(sender.strip())
    if match is None:
        raise ValueError("sender must be 'address' or 'Name <address>'")
    if match["bare"] is not None:
        return "", match["bare"]
    name = match["name"]
    if len(name) >= 2 and name[0] == name[-1] == '"':
        name = name[1:-1]
    return name, match["address"]


def _mailbox(argument: str, name: str, addr_spec: str) -> Address:
    try:
        address = Address(name, addr_spec=addr_spec)
    except (ValueError, TypeError, IndexError, email.errors.MessageError):
        # The stdlib's own messages quote the value.
        raise ValueError(f"{argument} is not a valid email address") from None
    if not address.username or not address.domain:
        raise ValueError(f"{argument} is not a valid email address")
    if name and not _folds_intact(address):
        # Python 3.11.7 predates the fix for gh-80222: folding a long display name can drop its
        # quotes, and '"Doe, John …" <a@b>' becomes two mailboxes. The bare address is right.
        address = Address(addr_spec=address.addr_spec)
    return address


def _folds_intact(address: Address) -> bool:
    """Whether a header with this one address, folded as it will be sent, parses back to it."""
    expected = [(address.addr_spec, _squash(address.display_name))]
    # utf8=True is how smtplib folds for a server that speaks SMTPUTF8 (IDN addresses).
    for policy in (email.policy.SMTP, email.policy.SMTP.clone(utf8=True)):
        folded = policy.fold("To", policy.header_factory("To", address))
        parsed = email.message_from_string(folded, policy=email.policy.default)["To"]
        if [(a.addr_spec, _squash(a.display_name)) for a in parsed.addresses] != expected:
            return False
    return True


def _squash(text: str) -> str:
    # The stdlib's parser adds a space between adjacent encoded-words; RFC 2047 says not to.
    return "".join(text.split())


def _envelope(message: EmailMessage) -> tuple[str, list[str]]:
    """MAIL FROM and RCPT TO, from the parsed address headers that compose() wrote."""
    try:
        [sender] = [a.addr_spec for h in message.get_all("From", []) for a in h.addresses]
        recipients = [
            a.addr_spec
            for name in ("To", "Cc", "Bcc")
            for header in message.get_all(name, [])
            for a in header.addresses
        ]
    except (AttributeError, ValueError):
        raise ValueError("send messages built by compose(): one From address is needed") from None
    if not recipients:
        raise ValueError("the message has no recipient")
    return sender, recipients


class Mailer(Protocol):
    """What the workflow needs from any of the mailers below."""

    def send(self, message: EmailMessage) -> None: ...

    def check(self) -> None: ...


@dataclass(eq=False)
class SMTPMailer:
    """Delivers each message over its own SMTP connection.

    ``use_tls`` upgrades with STARTTLS (never silently falling back to plain text); ``use_ssl``
    speaks TLS from the first byte (port 465). ``timeout`` bounds the connect and every single
    reply, not the whole conversation. TLS verifies the certificate and host name unless an
    ``ssl_context`` says otherwise.
    """

    host: str
    port: int
    _: KW_ONLY
    use_tls: bool = False
    use_ssl: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = 10.0
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False)
    local_hostname: str | None = None  # the EHLO name; smtplib's default is socket.getfqdn()

    def __post_init__(self) -> None:
        if self.use_tls and self.use_ssl:
            raise ValueError("use_tls (STARTTLS) and use_ssl (implicit TLS) exclude each other")
        if bool(self.username) != bool(self.password):
            raise ValueError("username and password must be given together")
        if not self.timeout > 0:
            raise ValueError("timeout must be a positive number of seconds")
        if (self.use_tls or self.use_ssl) and self.ssl_context is None:
            self.ssl_context = ssl.create_default_context()

    def send(self, message: EmailMessage) -> None:
        sender, recipients = _envelope(message)
        smtp = self._connect()
        with self._failures(smtp, setup=False, redact=recipients):
            refused = smtp.send_message(message, sender, recipients)
        _quit(smtp)  # the server has taken the message: a failed goodbye changes nothing
        if refused:
            raise MailPermanentFailure(
                f"{self.host}:{self.port} refused {len(refused)} of {len(recipients)} recipients"
            )

    def check(self) -> None:
        """Connect, greet, start TLS and log in as configured, then say goodbye."""
        _quit(self._connect())

    def _connect(self) -> smtplib.SMTP:
        with self._failures(setup=True):
            if self.use_ssl:
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                    self.host,
                    self.port,
                    local_hostname=self.local_hostname,
                    timeout=self.timeout,
                    context=self.ssl_context,
                )
            else:
                smtp = smtplib.SMTP(
                    self.host, self.port, local_hostname=self.local_hostname, timeout=self.timeout
                )
        with self._failures(smtp, setup=True):
            smtp.ehlo_or_helo_if_needed()
            if self.use_tls:
                smtp.starttls(context=self.ssl_context)
                smtp.ehlo_or_helo_if_needed()
            if self.username and self.password:
                smtp.login(self.username, self.password)
        return smtp

    @contextmanager
    def _failures(
        self, smtp: smtplib.SMTP | None = None, *, setup: bool, redact: Iterable[str] = ()
    ) -> Iterator[None]:
        """On any error, drop the connection (a QUIT could hang as long again) and translate."""
        try:
            yield
        except BaseException as error:
            if smtp is not None:
                smtp.close()
            if isinstance(error, OSError | smtplib.SMTPException):
                raise self._failure(error, setup=setup, redact=redact) from None
            raise

    def _failure(self, error: Exception, *, setup: bool, redact: Iterable[str]) -> MailError:
        """The MailError for a transport error; ``setup``: before the message was offered."""
        where = f"{self.host}:{self.port}"
        redact = [self.password or "", *redact]
        if isinstance(error, smtplib.SMTPRecipientsRefused):
            code, reply = max(error.recipients.values())  # one 5xx makes it permanent
        elif isinstance(error, smtplib.SMTPResponseException) and error.smtp_code > 0:
            code, reply = error.smtp_code, error.smtp_error
        else:
            return _transport_failure(error, where=where, setup=setup, redact=redact)
        text = f"{where} answered {code} {_clean(reply, redact)}"
        if not 500 <= code < 600:
            return MailTemporaryFailure(text, code=code)
        # Refusing our greeting, our credentials or our sender refuses every message alike.
        if setup or code in _AUTHENTICATION_CODES or isinstance(error, smtplib.SMTPSenderRefused):
            return MailConfigurationError(text, code=code)
        return MailPermanentFailure(text, code=code)


def _transport_failure(
    error: Exception, *, where: str, setup: bool, redact: Iterable[str]
) -> MailError:
    reason = f"{where}: {_clean(str(error) or type(error).__name__, redact)}"
    if isinstance(error, ssl.SSLCertVerificationError):
        return MailConfigurationError(reason)
    # Refused, reset or timed out (smtplib.SMTPException is an OSError too).
    if not isinstance(error, smtplib.SMTPException) or isinstance(
        error, smtplib.SMTPServerDisconnected
    ):
        return MailTemporaryFailure(reason)
    # smtplib's own refusals: STARTTLS or AUTH not offered, no AUTH mechanism in common...
    if setup:
        return MailConfigurationError(reason)
    # ...or no SMTPUTF8 for an address that needs it.
    if isinstance(error, smtplib.SMTPNotSupportedError):
        return MailPermanentFailure(reason)
    return MailTemporaryFailure(reason)


def _quit(smtp: smtplib.SMTP) -> None:
    try:
        smtp.quit()
    except (OSError, smtplib.SMTPException):
        smtp.close()


def _clean(text: str | bytes, redact: Iterable[str]) -> str:
    """A server's reply, fit for a log line: one line, short, without secrets or addresses."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = " ".join(_CONTROL.sub(" ", text).split())
    for value in redact:
        if value:
            text = re.sub(re.escape(value), "[redacted]", text, flags=re.IGNORECASE)
    return text[:300]


class ConsoleMailer:
    """The demo's mailer: writes each message's headers and text part to a stream (stdout).

    It prints license keys; that is its purpose in a demo, and why it must not run with real ones.
    """

    HEADERS = ("From", "To", "Subject", "Date", "Message-ID")

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream
        self._lock = threading.Lock()

    def send(self, message: EmailMessage) -> None:
        _envelope(message)  # refuse what SMTPMailer would refuse
        lines = [f"{name}: {message[name]}" for name in self.HEADERS if message[name] is not None]
        body = message.get_body(preferencelist=("plain",))
        text = body.get_content() if body is not None else ""
        printed = "\n".join(["-" * 72, *lines, "", text.strip("\r\n"), "-" * 72, ""])
        # Bodies are not checked like headers are: keep terminal escapes out of the console.
        printed = _CONTROL.sub(_console_safe, printed.replace("\r\n", "\n"))
        stream = self.stream or sys.stdout
        with self._lock:
            stream.write(printed)
            stream.flush()

    def check(self) -> None:
        pass


def _console_safe(match: re.Match[str]) -> str:
    return "\n" if match[0] == "\n" else " "


class MemoryMailer:
    """For tests: keeps each message, the real EmailMessage, in ``outbox``.

    Put MailErrors in ``failures`` and the next sends raise them, in order, keeping nothing.
    """

    def __init__(self) -> None:
        self.outbox: list[EmailMessage] = []
        self.failures: list[MailError] = []

    def send(self, message: EmailMessage) -> None:
        _envelope(message)
        if self.failures:
            raise self.failures.pop(0)
        self.outbox.append(message)

    def check(self) -> None:
        pass
