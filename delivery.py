"""Email off the request's path: the outbox courier, the links in emails, and what each says.

Requests and the reconciler only queue messages in the journal's outbox (journal.py), in the same
transaction as the state they belong to. The Courier, a thread in each portal process (any number
of processes and instances, kept apart by leases), sends what is due: it composes each message at
send time, fetching the license key from Keygen by the license id the row holds, so that no key
and no link token is ever stored in the clear (a key Keygen shows only once comes sealed in the
row instead, sealing.py, and is wiped with the row's last attempt), and in the language the row
holds: the one of the page the
person used (flask_babel's force_locale, as there is no request here). A temporary failure
(connection refused, 4xx, Keygen unreachable) is retried with a growing, jittered delay; a
permanent one (5xx) is given up with a line for the operator. A message is marked sent only
after the server took it, so a crash in between sends it again: delivery is at least once, and
the stable Message-ID lets mail clients drop the copy.

Links are built from PUBLIC_URL only, never from a request's Host header.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from flask import Flask, render_template
from flask_babel import force_locale
from flask_babel import lazy_gettext as _l
from itsdangerous import BadData, URLSafeSerializer

import email_rules
import logs
from budget import BudgetUnavailable, KeygenBudget
from i18n import default_language, known_language
from journal import Journal, State
from keygen_api import KeygenClient, KeygenError, KeygenNotFound
from mailer import (
    MailConfigurationError,
    Mailer,
    MailPermanentFailure,
    MailTemporaryFailure,
    compose,
)
from outbox import Mail, MailState
from sealing import Sealer

log = logging.getLogger(f"portal.{__name__}")

# The subject of each kind of message, with PRODUCT_NAME and without; the bodies are
# templates/email/<kind>.txt and .html.
SUBJECTS = {
    "license": (_l("Your %(product_name)s license key"), _l("Your license key")),
    "verify": (
        _l("Confirm your email address to get your %(product_name)s license"),
        _l("Confirm your email address to get your license"),
    ),
    "taken": (
        _l("You already have an account for %(product_name)s"),
        _l("You already have an account"),
    ),
    "recovery": (_l("Your %(product_name)s license keys"), _l("Your license keys")),
    "reset": (
        _l("Choose a new password for %(product_name)s"),
        _l("Choose a new password"),
    ),
    "again": (
        _l("We could not finish your %(product_name)s signup"),
        _l("We could not finish your signup"),
    ),
}


class LinkInvalid(Exception):
    """The link was not made by this portal, or was changed."""


class LinkExpired(Exception):
    """The link is genuine but older than VERIFICATION_LINK_LIFETIME."""


class Links:
    """The portal's URLs for emails, and the signed verification link.

    The token is the signup id and the time the link was made (when its email is sent), signed
    with a key derived from SECRET_KEY (itsdangerous, with its own salt), so the database never
    holds it. Single use comes from the journal: the button on the link's page moves the signup
    on from PENDING_VERIFICATION, and a second press finds it moved. The link's GET only puts
    the token in the session and redirects (views.py): no page's URL holds it.
    """

    def __init__(
        self,
        public_url: str,
        secret_key: str,
        *,
        lifetime: float,
        clock: Callable[[], float] = time.time,
    ):
        self.public_url = public_url.rstrip("/")
        self.serializer = URLSafeSerializer(secret_key, salt="portal.verify-email")
        self.lifetime = lifetime
        self.clock = clock

    @property
    def host(self) -> str:
        return urlsplit(self.public_url).hostname or "localhost"

    def signup_form(self) -> str:
        return self.public_url + "/"

    def lost_key(self) -> str:
        return self.public_url + "/lost-key"

    def verification(self, signup_id: str, made_at: float) -> str:
        return f"{self.public_url}/verify/{self.serializer.dumps([signup_id, round(made_at)])}"

    # Self-service (accounts.py): the sign-in page, and the password reset link. The reset
    # link's token is the reset's id, signed; its row in password_resets.py makes it expire
    # and work once.

    def sign_in(self) -> str:
        return self.public_url + "/sign-in"

    def password_reset(self, reset_id: str) -> str:
        return f"{self.public_url}/reset/{self._resets().dumps(reset_id)}"

    def reset_id(self, token: str) -> str:
        """The reset named by a reset link's token; LinkInvalid if it is not ours."""
        try:
            reset_id = self._resets().loads(token)
        except (BadData, TypeError, ValueError):
            raise LinkInvalid("not a password reset link of this portal") from None
        if not isinstance(reset_id, str):
            raise LinkInvalid("not a password reset link of this portal")
        return reset_id

    def _resets(self) -> URLSafeSerializer:
        return URLSafeSerializer(self.serializer.secret_key, salt="portal.reset-password")

    def verified_signup(self, token: str) -> str:
        """The signup id in a verification token; LinkInvalid or LinkExpired otherwise."""
        try:
            signup_id, made_at = self.serializer.loads(token)
        except (BadData, TypeError, ValueError):
            raise LinkInvalid("not a verification link of this portal") from None
        if not isinstance(signup_id, str) or not isinstance(made_at, int | float):
            raise LinkInvalid("not a verification link of this portal")
        if self.clock() - made_at > self.lifetime:
            raise LinkExpired(f"verification link for signup {signup_id} expired")
        return signup_id


class _Nothing(Exception):
    """There is nothing to send after all (no licenses for a recovery request)."""


class _KeyGone(Exception):
    """Keygen shows the key only once (LEGACY_ENCRYPT), and no sealed copy of it is left."""


class _NoTurn(Exception):
    """The shared Keygen budget has no turn for the courier's call soon enough."""


@dataclass(frozen=True)
class Content:
    subject: str
    text: str
    html: str
    to_name: str
    link_until: float | None = None  # a verification link in it works until then


class Courier:
    """Sends the outbox's due messages; one pass with run_once(), or as a thread."""

    LEASE = 120.0  # seconds; outlasts one SMTP conversation (each reply is bounded by a timeout)
    TURN_WAIT = 10.0  # seconds the courier waits for a turn at Keygen before trying later

    def __init__(
        self,
        app: Flask,
        journal: Journal,
        keygen: KeygenClient,
        mailer: Mailer,
        links: Links,
        *,
        sender: str,
        product_name: str = "",
        interval: float = 5.0,
        give_up_after: float = 259200.0,
        backoff_base: float = 30.0,
        backoff_cap: float = 3600.0,
        same_mailbox: bool = False,
        sealer: Sealer | None = None,
        resets=None,
        self_service: bool = False,
        budget: KeygenBudget | None = None,
    ):
        self.app = app
        self.same_mailbox = same_mailbox  # ONE_ACCOUNT_PER_PERSON: recovery finds the mailbox
        self.journal = journal
        self.keygen = keygen
        self.mailer = mailer
        self.links = links
        self.sender = sender
        self.product_name = product_name
        self.interval = interval
        self.give_up_after = give_up_after
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.sealer = sealer  # opens the keys Keygen shows only once (sealing.py)
        self.resets = resets  # password_resets.ResetStore, when forgot-password is on
        self.self_service = self_service  # emails link to the sign-in page
        self.budget = budget  # the signups' Keygen budget: the courier's calls take turns in it
        self.owner = f"courier:{uuid.uuid4().hex[:12]}"
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- One pass ------------------------------------------------------------------------------

    def run_once(self) -> dict[str, int]:
        """Send every due message this process can lease; counts by how each one ended."""
        counts = {"sent": 0, "retry": 0, "failed": 0, "dropped": 0}
        for due in self.journal.due_mail():
            mail = self.journal.lease_mail(due.id, owner=self.owner, lease=self.LEASE)
            if mail is not None:  # else another process took it first
                counts[self.deliver(mail)] += 1
        return counts

    def deliver(self, mail: Mail) -> str:
        try:
            content = self.content(mail)
            message = compose(
                sender=self.sender,
                to_email=mail.email,
                to_name=content.to_name,
                subject=content.subject,
                text=content.text,
                html=content.html,
                message_id=f"{mail.kind}.{mail.id}@{self.links.host}",
            )
            if content.link_until is not None:
                self.journal.keep_awaiting(mail.ref or "", until=content.link_until)
            self.mailer.send(message)
        except _Nothing:
            self.journal.settle_mail(mail.id, owner=self.owner, state=MailState.DROPPED)
            return "dropped"
        except KeygenNotFound:
            return self.give_up(mail, "the license no longer exists in Keygen")
        except _KeyGone:
            return self.give_up(mail, "Keygen shows this key only once, and no copy is left")
        except (KeygenError, MailTemporaryFailure, BudgetUnavailable, _NoTurn) as error:
            return self.retry(mail, str(error))
        except MailConfigurationError as error:
            # Our settings, not the message: every message fails alike until they are fixed,
            # so keep them all and say so loudly.
            log.error(
                "outbox: the mail server refused the portal (%s). Check MAIL_SERVER, MAIL_PORT, "
                "MAIL_USE_TLS/SSL, MAIL_USERNAME and MAIL_PASSWORD; message %s waits.",
                error,
                mail.id,
            )
            return self.retry(mail, str(error))
        except MailPermanentFailure as error:
            return self.give_up(mail, str(error))
        except ValueError as error:  # compose() refused a header: it will refuse it again
            return self.give_up(mail, str(error))
        self.journal.settle_mail(
            mail.id, owner=self.owner, state=MailState.SENT, attempts=mail.attempts + 1
        )
        log.info("outbox: sent %s email %s", mail.kind, mail.id)
        return "sent"

    def retry(self, mail: Mail, reason: str) -> str:
        now = self.journal.clock()
        if now - mail.created_at > self.give_up_after:
            return self.give_up(mail, f"still failing after {now - mail.created_at:.0f}s: {reason}")
        attempts = mail.attempts + 1
        # Exponential, capped, with jitter ("equal jitter": never less than half the step, so
        # that retries are really spaced out, and processes started together drift apart).
        step = min(self.backoff_cap, self.backoff_base * 2 ** (attempts - 1))
        delay = random.uniform(step / 2, step)
        self.journal.settle_mail(
            mail.id,
            owner=self.owner,
            attempts=attempts,
            next_attempt_at=now + delay,
            last_error=reason[:500],
        )
        log.warning(
            "outbox: %s email %s not sent (%s); attempt %d, next in %.0fs",
            mail.kind,
            mail.id,
            reason,
            attempts,
            delay,
        )
        return "retry"

    def give_up(self, mail: Mail, reason: str) -> str:
        self.journal.settle_mail(
            mail.id,
            owner=self.owner,
            state=MailState.FAILED,
            attempts=mail.attempts + 1,
            last_error=reason[:500],
        )
        # For the operator: which message, about what; never the key or the address.
        log.error(
            "outbox: gave up on %s email %s (about %s): %s. The customer can ask for their "
            "key again on the lost-key page.",
            mail.kind,
            mail.id,
            mail.ref or "-",
            reason,
        )
        return "failed"

    # -- What each message says ------------------------------------------------------------------

    def content(self, mail: Mail) -> Content:
        values = {
            "first_name": mail.first_name or "",
            "email": mail.email,
            "product_name": self.product_name,
            "support_email": None,
            "lost_key_url": self.links.lost_key(),
            "signup_url": self.links.signup_form(),
            "sign_in_url": self.links.sign_in() if self.self_service else None,
        }
        to_name = " ".join(n for n in (mail.first_name, mail.last_name) if n)
        kind, link_until = mail.kind, None
        if kind == "license":
            values["license_key"] = self.license_key(mail)
        elif kind == "verify":
            kind, link_until = self.verification(mail, values)
        elif kind == "recovery":
            user, keys, unrecoverable = self.recovered(mail.email)
            values["first_name"] = user.first_name or ""
            values["license_keys"] = keys
            values["unrecoverable"] = unrecoverable
            to_name = " ".join(n for n in (user.first_name, user.last_name) if n)
        elif kind == "reset":
            if self.resets is None or not self.resets.usable(mail.ref or ""):
                raise _Nothing()  # used, expired or superseded before it went out
            values["reset_url"] = self.links.password_reset(mail.ref or "")
            values["link_minutes"] = max(1, round(self.resets.lifetime / 60))
        elif kind not in ("taken", "again"):
            raise ValueError(f"unknown kind of message {kind!r}")
        # In the language of the page the person used when it was queued (the outbox keeps it).
        language = mail.locale if known_language(mail.locale) else default_language(self.app)
        with self.app.app_context(), force_locale(language):
            with_product, without = SUBJECTS[kind]
            subject = with_product % values if self.product_name else str(without)
            text = render_template(f"email/{kind}.txt", **values)
            html = render_template(f"email/{kind}.html", **values)
        return Content(subject, text, html, to_name, link_until)

    def license_key(self, mail: Mail) -> str:
        """The key of a license email: its sealed copy, or else Keygen's."""
        if mail.sealed_key and self.sealer is not None:
            key = self.sealer.unseal(mail.sealed_key)
            if key is not None:
                return key
        self.take_turn()
        key = self.keygen.get_license(mail.ref or "").key
        if key is None:
            raise _KeyGone()
        return key

    def verification(self, mail: Mail, values: dict) -> tuple[str, float | None]:
        """REQUIRE_EMAIL_VERIFICATION's email: the link, made now so that its lifetime runs
        from the sending; or, for an address (or, with ONE_ACCOUNT_PER_PERSON, a mailbox) that
        has an account, "you already have an account". Looked up here rather than on the
        request's path, so the form's answer says nothing. _Nothing once the signup went on
        without it (used, or expired)."""
        signup = self.journal.find(mail.ref or "")
        if signup is None or signup.state != State.PENDING_VERIFICATION or signup.verify:
            raise _Nothing()
        if self.find_user(mail.email) is not None:
            return "taken", None
        now = self.journal.clock()
        values["verify_url"] = self.links.verification(signup.id, now)
        values["link_hours"] = max(1, round(self.links.lifetime / 3600))
        return "verify", now + self.links.lifetime

    def recovered(self, email: str):
        """The Keygen user with this address (or mailbox), the keys of their licenses (the
        product token sees only this product's), and how many keys Keygen does not show again.
        _Nothing if there is no such user or no license."""
        user = self.find_user(email)
        if user is None:
            raise _Nothing()
        self.take_turn()
        licenses = self.keygen.list_licenses(owner=user.id)
        if not licenses:
            raise _Nothing()
        keys = [license.key for license in licenses if license.key is not None]
        return user, keys, len(licenses) - len(keys)

    def find_user(self, email: str):
        """The Keygen user with this address; with ONE_ACCOUNT_PER_PERSON, else the user of the
        same mailbox (jane+1@ asking for jane@'s keys: they go to the address asked with,
        which reaches that mailbox). None if there is none."""
        self.take_turn()
        try:
            return self.keygen.get_user(email)
        except KeygenNotFound:
            if not self.same_mailbox:
                return None
        canonical = email_rules.canonical(email)
        self.take_turn()
        users = self.keygen.list_users(metadata={email_rules.METADATA_KEY: canonical})
        return users[0] if users else None

    def take_turn(self) -> None:
        """Wait for a turn in the Keygen budget the signups share (budget.py), as each of their
        calls does: a flood of lost-key requests must not spend the quota signups need."""
        if self.budget is None:
            return
        wait = self.budget.reserve(1, within=self.TURN_WAIT)
        if wait is None:
            raise _NoTurn(f"no turn at Keygen within {self.TURN_WAIT:g} s")
        time.sleep(wait)

    # -- In the background -----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="courier", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Something was queued in this process: send it now rather than at the next pass."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                with logs.scope("outbox"):  # one id for the lines of one pass (logs.py)
                    self.run_once()
            except Exception:
                log.exception("outbox: pass failed; trying again later")
            self._wake.wait(self.interval * random.uniform(0.8, 1.2))
