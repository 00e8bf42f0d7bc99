"""The portal's one blueprint: the signup form, its outcomes, email verification, lost-key
recovery, and the operators' endpoints."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable

from flask import (
    Blueprint,
    abort,
    current_app,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_babel import get_locale, gettext
from flask_babel import lazy_gettext as _l
from flask_wtf.csrf import CSRFError, generate_csrf
from markupsafe import escape

import doctor
import email_rules
from delivery import LinkExpired, LinkInvalid
from errors import error_page
from forms import (
    AddressFirstForm,
    PasswordForm,
    RecoveryForm,
    SignupForm,
    bound_nonce,
    new_nonce,
    new_session_secret,
)
from health import readiness
from i18n import page_language
from outbox import Letter
from outcomes import (
    AlreadyIssued,
    Applicant,
    CheckInbox,
    Issued,
    LinkUsed,
    Processing,
    Rejected,
    SignupUnavailable,
    TooBusy,
    TryLater,
)
from protection import LimiterUnavailable, LimitReached
from services import services

log = logging.getLogger(f"portal.{__name__}")
bp = Blueprint("portal", __name__)


# -- Signup --------------------------------------------------------------------------------------


@bp.get("/")
def signup_form():
    nonce = new_nonce()
    session_secret()  # now, so that a double click racing this page's answer carries it too
    return stencil("signup.html", _blank_form, "csrf_token", "nonce", "served").fill(
        csrf_token=generate_csrf(),  # Flask-WTF's: also puts the raw token in the session
        nonce=nonce,
        served=services().fill_timer.stamp(nonce),
    )


SESSION_BINDING = "binding"  # the session's key of its secret (bound_nonce)


def session_secret() -> str:
    """This browser session's secret (forms.bound_nonce), made when it is first needed."""
    if SESSION_BINDING not in session:
        session[SESSION_BINDING] = new_session_secret()
    return session[SESSION_BINDING]


def new_signup_form() -> SignupForm:
    """The form: without a password when the address is verified first (REQUIRE_EMAIL_...)."""
    if services().settings.require_email_verification:
        return AddressFirstForm()
    return SignupForm()


def _blank_form(markers: dict[str, str]) -> str:
    form = new_signup_form()
    form.csrf_token.current_token = markers["csrf_token"]
    form.nonce.data, form.served.data = markers["nonce"], markers["served"]
    return render_template("signup.html", form=form)


def _key_page(markers: dict[str, str]) -> str:
    issued = Issued(markers["email"], markers["license_key"], license_id="", signup_id="")
    return render_template("issued.html", issued=issued, first_name=markers["first_name"])


def stencil(name: str, render: Callable[[dict[str, str]], str], *fields: str) -> Stencil:
    """Page `name` in this request's language, rendered once per process by `render`."""
    stencils = current_app.extensions.setdefault("stencils", {})
    key = (name, str(get_locale()))
    if key not in stencils:
        stencils[key] = Stencil(render, fields)
    return stencils[key]


class Stencil:
    """A page as rendered for every visitor, with a marker where each per-visitor value goes.

    Only a few values differ from one visitor to the next: on the signup form the CSRF token,
    the nonce and its signed serve time; on the key page the name, the address and the key. So
    the page is rendered once per process and language, and each request fills in the markers,
    escaped as Jinja would. Kept for bench R9 (32 users), which fails when both pages go through
    Jinja and WTForms on every request."""

    def __init__(self, render: Callable[[dict[str, str]], str], fields: tuple[str, ...]):
        markers = {field: f"stencil-{field}-{uuid.uuid4().hex}" for field in fields}
        names = {marker: field for field, marker in markers.items()}
        parts = re.split("(" + "|".join(names) + ")", render(markers))
        parts[1::2] = [names[marker] for marker in parts[1::2]]
        assert set(parts[1::2]) == set(fields), "every value appears on the page"
        self._parts = parts  # literal text and field names, alternating: [text, name, ..., text]

    def fill(self, **values: str) -> str:
        parts = self._parts
        filled = [parts[0]]
        for index in range(1, len(parts), 2):
            filled += [escape(values[parts[index]]), parts[index + 1]]
        return "".join(filled)


@bp.post("/")
def signup_submit():
    limits = services().limits
    try:
        limits.admit_client(request.remote_addr)  # after the CSRF check, before anything else
    except (LimitReached, LimiterUnavailable) as error:
        return turned_away(error)
    form = new_signup_form()
    if (stopped := stop_bots(form)) is not None:
        return stopped
    if not form.validate():
        refused(getattr(form, "refusal", None))
        return render_template("signup.html", form=form), 422
    organisation = current_app.config["EMAIL_DOMAIN_RULES"].capped(form.email.data)
    try:
        limits.admit_signup(person(form.email.data), organisation)
    except (LimitReached, LimiterUnavailable) as error:
        if isinstance(error, LimitReached) and error.bucket == "domain":
            refused("domain_limit")
        return turned_away(error)
    applicant = Applicant(
        email=form.email.data,
        password=form.password.data if form.password else "",  # none yet: verified first
        first_name=form.first_name.data,
        last_name=form.last_name.data,
        consent=services().brand.consent_record(),
        locale=page_language(),
    )
    return sign_up(form, applicant)


def stop_bots(form: SignupForm):
    """The page for a submission a bot trap caught (the honeypot, the CAPTCHA, a form sent
    faster than a person fills it in), or None: nothing of it reaches Keygen."""
    if form.website.data:
        # A bot filled in the field people cannot see: a page like a real outcome, no signup.
        log.info("request %s: honeypot field filled; nothing was created", g.request_id)
        return render_template("processing.html", email=form.email.data), 202
    if problem := services().captcha.problem(request.form, request.remote_addr):
        form.form_errors.append(gettext(problem.message))
        return render_template("signup.html", form=form), problem.status
    timer = services().fill_timer
    age = timer.age(form.served.data, form.nonce.data)
    if age is None:
        form.served.data = timer.stamp(form.nonce.data)
    if timer.too_fast(age):
        when = "without a valid serve time" if age is None else f"{age:.1f} s after it was served"
        log.info("request %s: form sent too fast, %s", g.request_id, when)
        form.form_errors.append(TOO_FAST)
        return render_template("signup.html", form=form), 422
    return None


def sign_up(form: SignupForm, applicant: Applicant):
    """The workflow's answer to a well-formed submission, as a page (and a count)."""
    metrics = services().metrics
    try:
        nonce = bound_nonce(session_secret(), form.nonce.data)
        outcome = services().signup.sign_up(applicant, nonce)
    except Rejected as rejection:
        metrics.count_signup(rejection)
        for name, message in rejection.errors.items():
            form[name].errors.append(gettext(message))
        return render_template("signup.html", form=form), 422
    except TryLater as error:
        metrics.count_signup(error)
        log.warning("request %s: %s", g.request_id, error)
        form.form_errors.append(TRY_LATER)
        page = render_template("signup.html", form=form, reference=g.request_id)
        response = current_app.make_response((page, 503))
        response.headers["Retry-After"] = "60"
        return response
    except (SignupUnavailable, TooBusy) as error:
        metrics.count_signup(error)
        return not_now(error)
    metrics.count_signup(outcome)
    wake_courier()
    return show(outcome, first_name=applicant.first_name)


def person(email: str) -> str:
    """Who the per-email limits count: the mailbox (ONE_ACCOUNT_PER_PERSON), or the address."""
    if services().settings.one_account_per_person:
        return email_rules.canonical(email)
    return email


def refused(reason: str | None) -> None:
    """A refusal to keep to one trial per person: counted and logged, without the address."""
    if reason is not None:
        services().metrics.count_refusal(reason)
        log.info("request %s: signup refused: %s", g.request_id, reason)


TOO_FAST = _l("That was quicker than we expected. Please check the form and send it again.")


def turned_away(error: LimitReached | LimiterUnavailable):
    if isinstance(error, LimitReached):
        log.warning("request %s: %s", g.request_id, error)
        return error_page(429)
    log.error("request %s: signups refused: %s", g.request_id, error)
    return error_page(503, kind="unavailable")


FORM_EXPIRED = _l(
    "This form had expired, so nothing was sent. Please check your details and submit it again."
)


@bp.errorhandler(CSRFError)
def form_expired(error: CSRFError):
    """A signup form kept open past its token's lifetime (WTF_CSRF_TIME_LIMIT) comes back as it
    was typed, with a fresh token and without the password; nothing went further. Any other CSRF
    failure (no session, a token not ours) gets the error page: no values of unknown origin."""
    log.warning("request %s: CSRF check failed: %s", g.request_id, error.description)
    if request.endpoint != "portal.signup_submit" or "expired" not in (error.description or ""):
        return error_page(400, kind="csrf")
    form = new_signup_form()
    form.form_errors.append(FORM_EXPIRED)
    return render_template("signup.html", form=form), 400


TRY_LATER = _l(
    "Our licensing service did not answer in time, so nothing was created. "
    "Please submit the form again in a minute."
)


def not_now(error: SignupUnavailable | TooBusy):
    """An operator must act (SignupUnavailable), or too many signups are running (TooBusy)."""
    if isinstance(error, TooBusy):
        log.warning("request %s: turned away: %s", g.request_id, error)
        return error_page(503, kind="busy", retry_after=30)
    return error_page(503, kind="unavailable")


def show(outcome, *, first_name: str):
    if isinstance(outcome, Issued):
        return stencil("issued.html", _key_page, "first_name", "email", "license_key").fill(
            first_name=first_name, email=outcome.email, license_key=outcome.license_key
        )
    if isinstance(outcome, AlreadyIssued):
        return render_template("already.html", email=outcome.email)
    if isinstance(outcome, CheckInbox):
        # The same bytes for every address (ENUMERATION_SAFE): the page names none.
        return render_template("inbox.html", about=outcome.about)
    assert isinstance(outcome, Processing)
    return render_template("processing.html", email=outcome.email), 202


def wake_courier() -> None:
    """Whatever the workflow queued goes out now, not at the courier's next pass."""
    courier = services().courier
    if courier is not None:
        courier.wake()


def courier_or_404():
    courier = services().courier
    if courier is None:
        abort(404)  # no email configured: nothing to verify or recover by email
    return courier


# -- Verifying the address (REQUIRE_EMAIL_VERIFICATION) -----------------------------------------

OPENED_LINK = "verification_link"  # the session's key of the token of the link last opened


@bp.get("/verify/<token>")
def verification_link(token: str):
    """The link in the email. Its token goes into the session and the browser on to /verify,
    so that no page's URL holds it, and so no Referer the page's requests send and no log line
    of them. Opening it uses nothing up (mail scanners open links)."""
    courier_or_404()
    if len(token) <= 512:
        session[OPENED_LINK] = token
    else:
        session.pop(OPENED_LINK, None)
    response = redirect(url_for("portal.verify_form"), 303)
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@bp.get("/verify")
def verify_form():
    """The page of the link last opened: the password to choose, and the button."""
    found = linked_signup()
    if not isinstance(found, str):
        return found  # the page saying why the link does not work
    offer, signup = services().signup.link_state(found)
    if offer not in ("password", "press"):
        return link_problem(offer)
    return verify_page(offer, signup.email, PasswordForm(address=signup.email))


@bp.post("/verify")
def verify_submit():
    found = linked_signup()
    if not isinstance(found, str):
        return found
    workflow = services().signup
    offer, signup = workflow.link_state(found)
    if offer not in ("password", "press"):
        return link_problem(offer)
    form = PasswordForm(address=signup.email)
    if offer == "password" and not form.validate():
        return verify_page(offer, signup.email, form), 422
    metrics = services().metrics
    try:
        outcome = workflow.confirm(found, form.password.data if offer == "password" else None)
    except LinkUsed as error:
        log.info("request %s: %s", g.request_id, error)
        return link_problem("used")
    except Rejected as rejection:
        metrics.count_signup(rejection)
        if "email" in rejection.errors:  # an account for this address came first
            return link_problem("taken")
        for name, message in rejection.errors.items():
            if name in form:
                form[name].errors.append(gettext(message))
        return verify_page(offer, signup.email, form), 422
    except TryLater as error:
        metrics.count_signup(error)
        log.warning("request %s: %s", g.request_id, error)
        form.form_errors.append(TRY_LATER)
        return verify_page(offer, signup.email, form, reference=g.request_id), 503
    except (SignupUnavailable, TooBusy) as error:
        metrics.count_signup(error)
        return not_now(error)
    metrics.count_signup(outcome)
    wake_courier()
    if not isinstance(outcome, Processing):
        session.pop(OPENED_LINK, None)
    return show(outcome, first_name=signup.first_name or "")


def verify_page(offer: str, email: str, form: PasswordForm, **values):
    return render_template(
        "verify.html", form=form, email=email, needs_password=offer == "password", **values
    )


LINK_PROBLEMS = {"used": 410, "expired": 410, "taken": 409, "invalid": 404}


def link_problem(problem: str):
    return render_template("link.html", problem=problem), LINK_PROBLEMS[problem]


def linked_signup():
    """The signup id in the session's link token, or the page to answer with instead."""
    links = courier_or_404().links
    token = session.get(OPENED_LINK)
    if not token:
        log.info("request %s: the verification page without a link", g.request_id)
        return link_problem("invalid")
    try:
        return links.verified_signup(token)
    except LinkExpired as error:
        log.info("request %s: %s", g.request_id, error)
        return link_problem("expired")
    except LinkInvalid:
        log.info("request %s: a verification link that is not ours", g.request_id)
        return link_problem("invalid")


# -- Lost-key recovery ----------------------------------------------------------------------


@bp.get("/lost-key")
def lost_key_form():
    courier_or_404()
    return render_template("lost_key.html", form=RecoveryForm())


@bp.post("/lost-key")
def lost_key_submit():
    """Always the same answer, known address or not; the courier finds out which, later."""
    courier = courier_or_404()
    form = RecoveryForm()
    if not form.validate():
        return render_template("lost_key.html", form=form), 422
    try:
        services().limits.admit_recovery(request.remote_addr, person(form.email.data))
    except (LimitReached, LimiterUnavailable) as error:
        return turned_away(error)
    courier.journal.queue(Letter(kind="recovery", email=form.email.data, locale=page_language()))
    courier.wake()
    return render_template("lost_key_sent.html")


@bp.get("/brand.css")
def brand_css():
    """The accent colour (BRAND_ACCENT_COLOR), as a stylesheet: the CSP allows no inline style."""
    css = services().brand.stylesheet()
    if css is None:
        abort(404)
    return css, 200, {"Content-Type": "text/css; charset=utf-8", "Cache-Control": "max-age=300"}


@bp.get("/healthz")
def healthz():
    """The process is alive. Calls nothing else, so it stays fast while Keygen is slow."""
    return {"status": "ok"}


@bp.get("/readyz")
def readyz():
    """Whether this instance can sign people up now, with every check named. A failing check
    that is not required (the mail server) makes it "degraded", still 200. Only those who may
    read /metrics see the checks (ids, hosts, what Keygen said); anyone else, the status."""
    portal = services()
    checks = readiness(portal.keygen_probe, portal.journal, portal.limits, portal.mail_probe)
    ready = all(check.ok for check in checks if check.required)
    failing = [check for check in checks if not check.ok]
    body = {
        "status": ("degraded" if failing else "ready") if ready else "not ready",
        "checks": {
            c.name: {"ok": c.ok, "detail": c.detail, "required": c.required} for c in checks
        },
    }
    if failing:
        log.warning("%s: %s", body["status"], "; ".join(c.detail for c in failing))
    if not portal.metrics.may_read(request.headers, request.remote_addr):
        body = {"status": body["status"]}
    return body, 200 if ready else 503


@bp.get("/_doctor")
def doctor_probe():
    """What a request looks like from here, for `flask doctor --url`; 404 without its signature."""
    if not doctor.probe_is_genuine(
        current_app.config["SECRET_KEY"], request.headers.get(doctor.PROBE_HEADER)
    ):
        abort(404)
    before_proxy_fix = request.environ.get("werkzeug.proxy_fix.orig")  # only if it ran
    return {
        "scheme": request.scheme,
        "host": request.host,
        "remote_addr": request.remote_addr,
        "peer": (before_proxy_fix or request.environ).get("REMOTE_ADDR"),
        "proxy_fix": before_proxy_fix is not None,
        "forwarded_for": request.headers.get("X-Forwarded-For", ""),
    }


@bp.get("/metrics")
def prometheus_metrics():
    """Prometheus metrics, for the holder of METRICS_TOKEN (without one: this machine only)."""
    exporter = services().metrics
    if not exporter.may_read(request.headers, request.remote_addr):
        abort(404)  # as if there were nothing here
    body, content_type = exporter.render()
    return body, 200, {"Content-Type": content_type}
