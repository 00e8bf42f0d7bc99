"""The portal's one blueprint: the signup form, its outcomes, and the operators' endpoints."""

from __future__ import annotations

import logging
import re
import uuid

from flask import Blueprint, abort, current_app, g, render_template, request
from flask_wtf.csrf import generate_csrf
from markupsafe import escape

from errors import error_page
from forms import SignupForm, new_nonce
from health import readiness
from protection import LimiterUnavailable, LimitReached
from signup import (
    AlreadyIssued,
    Applicant,
    Issued,
    Processing,
    Rejected,
    SignupUnavailable,
    TooBusy,
    TryLater,
)

log = logging.getLogger(__name__)
bp = Blueprint("portal", __name__)


# -- Signup --------------------------------------------------------------------------------------


@bp.get("/")
def signup_form():
    nonce = new_nonce()
    page = current_app.extensions.setdefault("blank_form", BlankForm())
    return page.fill(
        csrf_token=generate_csrf(),  # also puts the raw token in the session cookie
        nonce=nonce,
        served=current_app.extensions["fill_timer"].stamp(nonce),
    )


class BlankForm:
    """The signup page as every visitor first sees it.

    Rendering it through Jinja and WTForms was most of a GET's cost, yet only three values
    differ from one visitor to the next: the CSRF token, the nonce and its signed serve time.
    So it is rendered once per process, with a marker where each of those goes, and every GET
    fills in the markers (escaped, as Jinja would)."""

    def __init__(self):
        self._parts: list[str] | None = None

    def fill(self, **values: str) -> str:
        parts = self._parts or self._render()
        filled = [parts[0]]
        for index in range(1, len(parts), 2):
            filled += [escape(values[parts[index]]), parts[index + 1]]
        return "".join(filled)

    def _render(self) -> list[str]:
        """Literal text and field names, alternating: [text, name, text, ..., text]."""
        markers = {
            name: f"blank-{name}-{uuid.uuid4().hex}" for name in ("csrf_token", "nonce", "served")
        }
        form = SignupForm()
        form.csrf_token.current_token = markers["csrf_token"]
        form.nonce.data, form.served.data = markers["nonce"], markers["served"]
        page = render_template("signup.html", form=form)
        names = {marker: name for name, marker in markers.items()}
        parts = re.split("(" + "|".join(names) + ")", page)
        parts[1::2] = [names[marker] for marker in parts[1::2]]
        assert sorted(parts[1::2]) == sorted(markers), "each value appears once in the form"
        self._parts = parts
        return parts


@bp.post("/")
def signup_submit():
    limits = current_app.extensions["rate_limits"]
    try:
        limits.admit_client(request.remote_addr)  # after the CSRF check, before anything else
    except (LimitReached, LimiterUnavailable) as error:
        return turned_away(error)
    form = SignupForm()
    if form.website.data:
        # A bot filled in the field people cannot see: a page like a real outcome, no signup.
        log.info("request %s: honeypot field filled; nothing was created", g.request_id)
        return render_template("processing.html", email=form.email.data), 202
    timer = current_app.extensions["fill_timer"]
    age = timer.age(form.served.data, form.nonce.data)
    if age is None:
        form.served.data = timer.stamp(form.nonce.data)
    if timer.too_fast(age):
        when = "without a valid serve time" if age is None else f"{age:.1f} s after it was served"
        log.info("request %s: form sent too fast, %s", g.request_id, when)
        form.form_errors.append(TOO_FAST)
        return render_template("signup.html", form=form), 422
    if not form.validate():
        return render_template("signup.html", form=form), 422
    try:
        limits.admit_signup(form.email.data)
    except (LimitReached, LimiterUnavailable) as error:
        return turned_away(error)
    applicant = Applicant(
        email=form.email.data,
        password=form.password.data,
        first_name=form.first_name.data,
        last_name=form.last_name.data,
    )
    metrics = current_app.extensions["metrics"]
    try:
        outcome = current_app.extensions["signup"].sign_up(applicant, form.nonce.data)
    except Rejected as rejection:
        metrics.count_signup(rejection)
        for name, message in rejection.errors.items():
            form[name].errors.append(message)
        return render_template("signup.html", form=form), 422
    except TryLater as error:
        metrics.count_signup(error)
        log.warning("request %s: %s", g.request_id, error)
        form.form_errors.append(TRY_LATER)
        response = current_app.make_response((render_template("signup.html", form=form), 503))
        response.headers["Retry-After"] = "60"
        return response
    except SignupUnavailable as error:
        metrics.count_signup(error)
        return error_page(503, kind="unavailable")
    except TooBusy as error:
        metrics.count_signup(error)
        return error_page(503, kind="busy", retry_after=30)
    metrics.count_signup(outcome)
    return show(outcome, first_name=applicant.first_name)


TOO_FAST = "That was quicker than we expected. Please check the form and send it again."


def turned_away(error: LimitReached | LimiterUnavailable):
    if isinstance(error, LimitReached):
        log.warning("request %s: %s", g.request_id, error)
        return error_page(429)
    log.error("request %s: signups refused: %s", g.request_id, error)
    return error_page(503, kind="unavailable")


TRY_LATER = (
    "Our licensing service did not answer in time, so nothing was created. "
    "Please submit the form again in a minute."
)


def show(outcome, *, first_name: str):
    if isinstance(outcome, Issued):
        return render_template("issued.html", issued=outcome, first_name=first_name)
    if isinstance(outcome, AlreadyIssued):
        return render_template("already.html", email=outcome.email)
    assert isinstance(outcome, Processing)
    return render_template("processing.html", email=outcome.email), 202


@bp.get("/healthz")
def healthz():
    """The process is alive. Calls nothing else, so it stays fast while Keygen is slow."""
    return {"status": "ok"}


@bp.get("/readyz")
def readyz():
    """Whether this instance can sign people up now, with every check named."""
    workflow = current_app.extensions["signup"]
    checks = readiness(workflow.keygen, workflow.policy_id, workflow.journal)
    ready = all(check.ok for check in checks)
    body = {
        "status": "ready" if ready else "not ready",
        "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in checks},
    }
    if not ready:
        log.warning("not ready: %s", "; ".join(c.detail for c in checks if not c.ok))
    return body, 200 if ready else 503


@bp.get("/metrics")
def prometheus_metrics():
    """Prometheus metrics, for the holder of METRICS_TOKEN (without one: this machine only)."""
    exporter = current_app.extensions["metrics"]
    if not exporter.may_read(request.headers, request.remote_addr):
        abort(404)  # as if there were nothing here
    body, content_type = exporter.render()
    return body, 200, {"Content-Type": content_type}
