"""Prometheus metrics: how signups end, how Keygen answers, and what is left unfinished.

Under gunicorn each worker process counts on its own; with PROMETHEUS_MULTIPROC_DIR set
(gunicorn.conf.py sets it) the counts go to files there, and a scrape of any worker adds up all
of them. Without it (tests, `flask run`) one in-memory registry per app.

Labels hold only fixed words: outcomes, Keygen routes ("users.create", never a URL with an id or
an email) and status codes. The outbox's backlog is read from the journal at scrape time, like the
oldest unfinished signup.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Iterator, Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from journal import Journal
from keygen_api import CircuitBreaker
from outcomes import (
    AlreadyIssued,
    CheckInbox,
    Issued,
    Processing,
    Rejected,
    SignupUnavailable,
    TooBusy,
    TryLater,
)
from setting_checks import is_loopback

log = logging.getLogger(f"portal.{__name__}")

OUTCOMES: dict[type, str] = {
    Issued: "issued",
    AlreadyIssued: "already_issued",
    Processing: "processing",
    Rejected: "rejected",
    TryLater: "try_later",
    SignupUnavailable: "unavailable",
    TooBusy: "busy",
    CheckInbox: "check_inbox",
}
# Submissions refused to keep to one trial per person (email_rules, signup_run): counted under
# their reason instead of "rejected" (a form error) or "check_inbox" (ENUMERATION_SAFE).
REFUSALS = (
    "same_person",
    "disposable_email",
    "domain_denied",
    "domain_not_allowed",
    "domain_limit",
)
# Shown from the start (at 0), so that an alert can watch them before the first one happens.
OPERATOR_REASONS = ("payment_required", "subscription", "permission", "token", "delete_refused")
# Seconds; Keygen usually answers in tens of milliseconds, and a read may wait up to 10 s.
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0)
# A request that came through a reverse proxy carries one of these (every recipe in deploy/
# sets X-Forwarded-For), so a proxy on this machine does not make the public "loopback".
FORWARDING_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-IP")


class Metrics:
    def __init__(
        self,
        journal: Journal,
        *,
        breaker: CircuitBreaker | None = None,
        token: str = "",
        served_elsewhere: bool = False,
    ):
        self._token = token
        self._served_elsewhere = served_elsewhere  # METRICS_PORT: never on the public port
        self._breaker = breaker  # the Keygen client's: its state is a gauge
        self.multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
        self.registry = None if self.multiprocess_dir else CollectorRegistry()
        self._journal_collector = _JournalCollector(journal)
        if self.registry is not None:
            self.registry.register(self._journal_collector)
        self._signup_metrics()
        self._keygen_metrics()
        self._refresh_breaker()

    def _signup_metrics(self) -> None:
        self.signups = Counter(
            "portal_signups",
            "Signup submissions the workflow finished with, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.retries = Counter(
            "portal_signup_retries",
            "Signup steps tried again: now (within the request) or later (by the reconciler).",
            ["when"],
            registry=self.registry,
        )
        for when in ("now", "later"):
            self.retries.labels(when=when)
        for outcome in (*OUTCOMES.values(), *REFUSALS):
            self.signups.labels(outcome=outcome)
        self.operator_problems = Counter(
            "portal_operator_problems",
            "Signups stopped by a Keygen refusal only an operator can fix, by reason: "
            "payment_required (402), subscription, permission, token, delete_refused, ...",
            ["reason"],
            registry=self.registry,
        )
        for reason in OPERATOR_REASONS:
            self.operator_problems.labels(reason=reason)

    def _keygen_metrics(self) -> None:
        self.keygen_requests = Counter(
            "portal_keygen_requests",
            "HTTP requests to Keygen by route and status ('none': no answer).",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.keygen_seconds = Histogram(
            "portal_keygen_request_seconds",
            "Time Keygen took to answer (or to fail), by route.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "portal_keygen_rate_limited",
            "Answers 429 (too many requests) from Keygen.",
            registry=self.registry,
        )
        self.breaker_open = Gauge(
            "portal_keygen_breaker_open",
            "1 while the circuit breaker stops or only probes calls to Keygen, in any worker.",
            multiprocess_mode="livemax",
            registry=self.registry,
        )

    def keygen_call(self, endpoint: str, status: int | None, seconds: float) -> None:
        """The Keygen client's observer: every HTTP attempt, answered or not."""
        self.keygen_requests.labels(endpoint=endpoint, status=str(status or "none")).inc()
        self.keygen_seconds.labels(endpoint=endpoint).observe(seconds)
        if status == 429:
            self.rate_limited.inc()
        self._refresh_breaker()

    def count_operator_problem(self, reason: str) -> None:
        """The workflow's on_operator_problem: a fixed word (keygen_errors.REASONS)."""
        self.operator_problems.labels(reason=reason).inc()

    def count_retry(self, when: str) -> None:
        """The workflow's on_retry: a step tried again "now" or "later"."""
        self.retries.labels(when=when).inc()

    def count_signup(self, result: object) -> None:
        """Count an outcome (Issued, …) or a SignupError (Rejected, …) of one submission."""
        refusal = getattr(result, "refusal", None)
        self.signups.labels(outcome=refusal or OUTCOMES[type(result)]).inc()

    def count_refusal(self, reason: str) -> None:
        """A submission refused before the workflow: one of REFUSALS."""
        self.signups.labels(outcome=reason).inc()

    def may_read(self, headers: Mapping[str, str], remote_addr: str | None) -> bool:
        """With METRICS_TOKEN: its bearer only. Without: this machine, not through a proxy."""
        if self._served_elsewhere:
            return False
        if self._token:
            scheme, _, given = headers.get("Authorization", "").partition(" ")
            return scheme.lower() == "bearer" and hmac.compare_digest(
                given.strip().encode(), self._token.encode()
            )
        return is_loopback(remote_addr) and not any(h in headers for h in FORWARDING_HEADERS)

    def render(self) -> tuple[bytes, str]:
        """The text a Prometheus scrape reads, and its content type."""
        self._refresh_breaker()
        registry = self.registry
        if registry is None:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=self.multiprocess_dir)
            registry.register(self._journal_collector)
        return generate_latest(registry), CONTENT_TYPE_LATEST

    def _refresh_breaker(self) -> None:
        # Open and half-open both count: until a probe succeeds, calls fail fast.
        if self._breaker is not None:
            self.breaker_open.set(0 if self._breaker.state == "closed" else 1)


class _JournalCollector(Collector):
    """Read at scrape time from the journal, which every process and instance shares."""

    def __init__(self, journal: Journal):
        self.journal = journal

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            oldest = self.journal.oldest_unfinished()
        except Exception as error:  # a scrape must answer even when the database does not
            log.warning("metrics: cannot read the signup journal: %s", type(error).__name__)
            return
        age = self.journal.clock() - oldest if oldest is not None else 0.0
        yield GaugeMetricFamily(
            "portal_oldest_unfinished_signup_seconds",
            "Age of the oldest signup not yet issued or undone (0: none).",
            value=max(age, 0.0),
        )
        try:
            backlog, oldest_mail = self.journal.mail_backlog()
        except Exception as error:
            log.warning("metrics: cannot read the outbox: %s", type(error).__name__)
            return
        yield GaugeMetricFamily(
            "portal_outbox_backlog",
            "Emails waiting in the outbox to be sent (or sent again).",
            value=backlog,
        )
        waited = self.journal.clock() - oldest_mail if oldest_mail is not None else 0.0
        yield GaugeMetricFamily(
            "portal_outbox_oldest_seconds",
            "How long the oldest email in the outbox has waited (0: none).",
            value=max(waited, 0.0),
        )


def serve_separately(port: int, host: str, journal: Journal):
    """Serve every worker's metrics on their own port, from gunicorn's master (METRICS_PORT).

    The master outlives its workers, so the port answers while workers restart, and no worker
    has to give a thread to it. Returns the server, so that the caller can close it."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    registry.register(_JournalCollector(journal))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
