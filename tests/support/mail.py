"""Mail in the tests: an aiosmtpd handler that records what it receives (and refuses when told),
and `portal_with`, a portal with email on against such a server on loopback."""

from __future__ import annotations

import email
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage

import pytest
from aiosmtpd.controller import Controller

from app import create_app
from services import services
from support.http import csrf_token_from, form_data
from support.portal import make_settings
from support.processes import free_port
from support.workflow import Clock

PUBLIC_URL = "http://127.0.0.1:5999"
SENDER = "Acme Licensing <licenses@portal.example>"
PRODUCT = "Acme Pro"


def text_of(message: EmailMessage, subtype: str) -> str:
    return message.get_body(preferencelist=(subtype,)).get_content().replace("\r\n", "\n")


def link_in(message) -> str:
    [link] = re.findall(r"http://\S+/verify/[A-Za-z0-9_.-]+", text_of(message, "plain"))
    return link


# -- An SMTP server on loopback -------------------------------------------------------------------


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    mail_options: list[str]
    content: bytes
    tls: bool
    authenticated: bool

    def parsed(self) -> EmailMessage:
        if "SMTPUTF8" in self.mail_options:  # headers in raw UTF-8
            return email.message_from_string(self.content.decode(), policy=policy.default)
        return email.message_from_bytes(self.content, policy=policy.default)


@dataclass
class Recorder:
    """An aiosmtpd handler that keeps what it receives and, when told, refuses with a reply.

    A reply may hold ``{address}``: servers do quote the recipient back.
    """

    received: list[Received] = field(default_factory=list)
    greetings: int = 0
    mail_commands: int = 0
    rcpt_reply: str | None = None
    data_reply: str | None = None

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        self.greetings += 1
        session.host_name = hostname
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        self.mail_commands += 1
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.rcpt_reply:
            return self.rcpt_reply.format(address=address)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.data_reply:
            return self.data_reply.format(address=envelope.rcpt_tos[0])
        self.received.append(
            Received(
                mail_from=envelope.mail_from,
                rcpt_tos=list(envelope.rcpt_tos),
                mail_options=list(envelope.mail_options),
                content=envelope.content,
                tls=server.transport.get_extra_info("ssl_object") is not None,
                authenticated=bool(session.authenticated),
            )
        )
        return "250 2.0.0 Message accepted"


@contextmanager
def smtp_on(port: int, handler: Recorder) -> Iterator[Recorder]:
    controller = Controller(
        handler, hostname="127.0.0.1", port=port, ready_timeout=5.0, enable_SMTPUTF8=False
    )
    controller.start()
    try:
        yield handler
    finally:
        controller.stop()


# -- A portal with email on -----------------------------------------------------------------------


@dataclass
class MailPortal:
    app: object
    client: object
    handler: Recorder
    port: int
    clock: Clock

    @property
    def journal(self):
        return services(self.app).signup.journal

    @property
    def courier(self):
        return services(self.app).courier

    def deliver(self) -> dict[str, int]:
        return self.courier.run_once()

    def mails(self):
        return [received.parsed() for received in self.handler.received]

    def sign_up(self, **changes):
        page = self.client.get("/")
        data = form_data(**changes)
        data.setdefault("csrf_token", csrf_token_from(page.get_data(as_text=True)))
        return self.client.post("/", data=data)

    def background_done(self, timeout: float = 20.0) -> None:
        """Until no signup is queued or running in this portal's backlog threads."""
        admission = services(self.app).signup.admission
        deadline = time.monotonic() + timeout
        while not admission.backlog_idle:
            assert time.monotonic() < deadline, "background signups still running"
            time.sleep(0.05)

    def settled(self, timeout: float = 20.0) -> list:
        """The journal once no signup is left unfinished: the backlog threads (ENUMERATION_SAFE,
        a late turn at Keygen) are done."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = self.journal.all()
            if all(row.finished for row in rows):
                return rows
            time.sleep(0.05)
        raise AssertionError(f"signups still unfinished: {self.journal.all()}")


@pytest.fixture
def portal_with(keygen, clock) -> Iterator:
    """A portal with email on, against a running SMTP server; `portal_with(**settings)`."""
    servers = []

    def build(*, smtp_running: bool = True, handler: Recorder | None = None, **changes):
        port = free_port()
        handler = handler or Recorder()
        if smtp_running:
            server = smtp_on(port, handler)
            server.__enter__()
            servers.append(server)
        values = dict(
            mail_server="127.0.0.1",
            mail_port=port,
            mail_use_tls=False,
            mail_timeout=2.0,
            mail_default_sender=SENDER,
            public_url=PUBLIC_URL,
            product_name=PRODUCT,
            outbox_interval=0.0,  # the tests run the courier themselves
        )
        values.update(changes)
        app = create_app(make_settings(keygen, **values))
        portal = MailPortal(app, app.test_client(), handler, port, clock)
        portal.journal.clock = clock.wall
        portals.append(portal)
        return portal

    portals: list[MailPortal] = []
    yield build
    for portal in portals:  # no backlog thread of this test may reach the next one's Keygen
        portal.background_done()
    for server in servers:
        server.__exit__(None, None, None)
