"""The pages of self-service (SELF_SERVICE): signing in and out, the account page with each
license and its machines, and freeing a machine. reset_views.py has forgot-password.

Flask-Login keeps who is signed in: the session cookie carries an opaque id, the person's Keygen
token stays on the server (account_sessions.py). A signed-in browser gets no signup form: one
person, one account.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime

from flask import (
    Blueprint,
    Flask,
    abort,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_babel import format_date, format_datetime, gettext
from flask_babel import lazy_gettext as _l
from flask_login import LoginManager, current_user, login_required, login_user, logout_user

from account_forms import CodeForm, ConfirmForm, SignInForm
from accounts import (
    CodeNeeded,
    CodeWrong,
    FreeRefused,
    KeygenDown,
    NotYours,
    SelfService,
    SignedOut,
    SignInRefused,
    TooManyAttempts,
)
from errors import error_page
from protection import LimiterUnavailable, LimitReached, client_bucket
from services import services
from views import turned_away

log = logging.getLogger(f"portal.{__name__}")
bp = Blueprint("account", __name__)

PENDING_MAX_AGE = 300  # seconds the second step of a sign-in may take
WRONG = _l("The email address or password is not right, or this account cannot sign in here.")
CODE_WRONG = _l("That code is not right, or was used already. Enter the code shown now.")
TOO_SLOW = _l("That took too long. Please sign in again.")
ENDED = _l("Your sign-in has ended. Please sign in again.")
# License statuses as Keygen names them (app/models/license.rb, `status`).
STATUSES = {
    "ACTIVE": _l("Active"),
    "INACTIVE": _l("Active, not used lately"),
    "EXPIRING": _l("Expiring soon"),
    "EXPIRED": _l("Expired"),
    "SUSPENDED": _l("Suspended"),
    "BANNED": _l("Banned"),
}


def init_account_pages(app: Flask) -> None:
    """Flask-Login, the blueprint, and what the templates need; only with SELF_SERVICE."""
    manager = LoginManager(app)
    # The sign-in's server-side row and its short lifetime protect it. Flask-Login's "basic"
    # protection would rewrite every visitor's session cookie (marking it not fresh) on each
    # page, the signup form's included; "strong" would sign out anyone whose address changes.
    manager.session_protection = None
    manager.user_loader(lambda session_id: services(app).accounts.signed_in(session_id))
    manager.unauthorized_handler(_please_sign_in)
    app.register_blueprint(bp)
    app.before_request(_no_signup_while_signed_in)
    app.jinja_env.filters.update(masked_key=masked_key, short=short, day=day, moment=moment)
    app.jinja_env.globals.update(license_status=license_status)


def accounts() -> SelfService:
    return services().accounts


# -- Signing in ------------------------------------------------------------------------------


@bp.get("/sign-in")
def sign_in_form():
    if current_user.is_authenticated:
        return redirect(url_for("account.overview"), 303)
    return render_template("sign_in.html", form=SignInForm())


@bp.post("/sign-in")
def sign_in_submit():
    limited = limit_page(("sign-in-ip", client_bucket(request.remote_addr)))
    if limited:
        return limited
    form = SignInForm()
    if not form.validate():
        return render_template("sign_in.html", form=form), 422
    limited = limit_page(("sign-in-email", services().limits.email_bucket(form.email.data)))
    return limited or _sign_in(form.email.data, form.password.data, None, form)


@bp.post("/sign-in/code")
def code_submit():
    limited = limit_page(("sign-in-ip", client_bucket(request.remote_addr)))
    if limited:
        return limited
    form = CodeForm()
    pending = accounts().code_sealer.unseal(form.pending.data or "", max_age=PENDING_MAX_AGE)
    if pending is None:
        flash(str(TOO_SLOW), "error")
        return redirect(url_for("account.sign_in_form"), 303)
    email, password = json.loads(pending)
    if not form.validate():
        return render_template("sign_in_code.html", form=form), 422
    limited = limit_page(("sign-in-email", services().limits.email_bucket(email)))
    return limited or _sign_in(email, password, form.code.data, form)


def _sign_in(email: str, password: str, code: str | None, form):
    try:
        signed_in = accounts().sign_in(email, password, code)
    except CodeNeeded:
        sealed = accounts().code_sealer.seal(json.dumps([email, password]))
        code_form = CodeForm(formdata=None, pending=sealed)
        return render_template("sign_in_code.html", form=code_form)
    except CodeWrong:
        form.code.errors.append(CODE_WRONG)
        return render_template("sign_in_code.html", form=form), 422
    except SignInRefused:
        return _refused(email)
    except TooManyAttempts as error:
        log.warning("request %s: Keygen limited sign-in attempts: %s", g.request_id, error)
        return error_page(429)
    except KeygenDown as error:
        log.warning("request %s: sign-in failed: %s", g.request_id, error)
        return error_page(503, kind="account", retry_after=60)
    start(signed_in)
    return redirect(url_for("account.overview"), 303)


def _refused(email: str):
    """The same page for a wrong password, an unknown address and a locked account."""
    form = SignInForm(formdata=None, email=email)
    form.form_errors.append(WRONG)
    return render_template("sign_in.html", form=form), 422


def start(signed_in) -> None:
    """A fresh session for the new sign-in: nothing from before it carries over."""
    session.clear()
    login_user(signed_in)


@bp.post("/sign-out")
def sign_out():
    ConfirmForm()  # the CSRF check ran before the view; nothing else is in the form
    if current_user.is_authenticated:
        accounts().sign_out(current_user)
    logout_user()
    session.clear()
    flash(gettext("You have signed out."), "info")
    return redirect(url_for("account.sign_in_form"), 303)


# -- The account page --------------------------------------------------------------------------


@bp.get("/account")
@login_required
def overview():
    try:
        licenses = accounts().licenses(current_user)
    except SignedOut:
        return _ended()
    except KeygenDown as error:
        log.warning("request %s: account page: %s", g.request_id, error)
        return error_page(503, kind="account", retry_after=60)
    return render_template("account.html", licenses=licenses, form=ConfirmForm())


@bp.route("/account/machines/<machine_id>/free", methods=["GET", "POST"])
@login_required
def free_machine(machine_id: str):
    """A confirmation page (GET), then the deactivation (POST): no JavaScript needed."""
    person = current_user
    form = ConfirmForm()
    if request.method == "POST":
        try:
            services().limits.admit(("deactivation", person.user_id))
        except LimitReached as error:
            log.warning("request %s: user %s: %s", g.request_id, person.user_id, error)
            return error_page(429, kind="deactivations")
        except LimiterUnavailable as error:
            return turned_away(error)
    try:
        machine, lic = accounts().machine(person, machine_id)
        if request.method == "GET":
            return render_template("free_machine.html", machine=machine, license=lic, form=form)
        accounts().free_machine(person, machine_id)
    except NotYours:
        log.warning(
            "request %s: user %s asked for machine %r, not one of theirs",
            g.request_id,
            person.user_id,
            machine_id[:64],
        )
        abort(404)
    except FreeRefused as refusal:
        if refusal.gone:
            flash(gettext("That device had been freed already."), "info")
            return redirect(url_for("account.overview"), 303)
        page = render_template(
            "free_machine.html", machine=machine, license=lic, form=form, refused=refusal
        )
        return page, 409
    except SignedOut:
        return _ended()
    except KeygenDown as error:
        log.warning("request %s: freeing a machine: %s", g.request_id, error)
        return error_page(503, kind="account", retry_after=60)
    name = machine.name or machine.hostname or short(machine.fingerprint)
    flash(gettext("%(name)s is no longer activated. Its seat is free.", name=name), "info")
    return redirect(url_for("account.overview"), 303)


# -- Shared ------------------------------------------------------------------------------------


def limit_page(*buckets: tuple[str, str]):
    """None if the request may go on, else the page that turns it away."""
    try:
        services().limits.admit(*buckets)
    except (LimitReached, LimiterUnavailable) as error:
        return turned_away(error)
    return None


def _ended():
    logout_user()
    session.clear()
    flash(str(ENDED), "info")
    return redirect(url_for("account.sign_in_form"), 303)


def _please_sign_in():
    flash(gettext("Please sign in to see your licenses."), "info")
    return redirect(url_for("account.sign_in_form"), 303)


_SIGNUP = ("portal.signup_form", "portal.signup_submit", "portal.verify_submit")


def _no_signup_while_signed_in():
    """A signed-in person creates no second account or license from this browser."""
    if request.endpoint in _SIGNUP and "_user_id" in session and current_user.is_authenticated:
        log.info("request %s: signed in, so no signup", g.request_id)
        flash(gettext("You are signed in. Sign out first to create another account."), "info")
        return redirect(url_for("account.overview"), 303)
    return None


# -- What the templates show ---------------------------------------------------------------------


def masked_key(key: str) -> str:
    """Enough of a key to tell it from another, not enough to use it (a screen share). Keys of
    one scheme end alike (Keygen's end in "V3"), so the start it is."""
    return (key[:6] if len(key) >= 24 else "") + "•" * 12


def short(fingerprint: str | None) -> str:
    text = fingerprint or ""
    return text if len(text) <= 12 else f"{text[:8]}…{text[-4:]}"


def _parsed(moment_text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat((moment_text or "").replace("Z", "+00:00"))
    except ValueError:
        return None


def day(moment_text: str | None) -> str:
    when = _parsed(moment_text)
    return format_date(when, "long") if when else ""


def moment(moment_text: str | None) -> str:
    when = _parsed(moment_text)
    return format_datetime(when, "medium") + " UTC" if when else ""


def license_status(status: str | None) -> str:
    label = STATUSES.get(status or "")
    return str(label) if label else (status or "").capitalize()
