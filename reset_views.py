"""Forgot-password (SELF_SERVICE with KEYGEN_PUBLIC_KEY and email): the request page, Keygen's
webhook, the link in the portal's email, and the page that sets the new password.

The link's token never reaches a page's URL: GET /reset/<token> keeps the reset's id in the
session and answers 303 to /reset, so the token is in no Referer and in no page's address (and
logs.py masks it in access lines). The webhook endpoint is the only POST without a CSRF token:
Keygen's signature stands in for it (keygen_webhooks.py).
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from flask import Blueprint, Flask, flash, g, redirect, render_template, request, session, url_for
from flask_babel import gettext

from account_forms import ForgotPasswordForm, NewPasswordForm
from account_views import accounts, limit_page, start
from accounts import KeygenDown, PasswordRefused, ResetUnusable
from delivery import LinkInvalid
from errors import error_page
from i18n import page_language
from keygen_webhooks import WebhookRefused
from protection import client_bucket
from services import services

log = logging.getLogger(f"portal.{__name__}")
bp = Blueprint("reset", __name__)
SESSION_KEY = "password_reset"


def init_reset_pages(app: Flask, csrf) -> None:
    app.register_blueprint(bp)
    csrf.exempt(keygen_webhook)


@bp.get("/forgot-password")
def forgot_form():
    return render_template("forgot_password.html", form=ForgotPasswordForm())


@bp.post("/forgot-password")
def forgot_submit():
    """The same answer for every address; Keygen's webhook tells the portal which exist."""
    limited = limit_page(("reset-ip", client_bucket(request.remote_addr)))
    if limited:
        return limited
    form = ForgotPasswordForm()
    if not form.validate():
        return render_template("forgot_password.html", form=form), 422
    limited = limit_page(("reset-email", services().limits.email_bucket(form.email.data)))
    if limited:
        return limited
    try:
        accounts().request_reset(form.email.data, page_language())
    except KeygenDown as error:
        log.warning("request %s: password reset request failed: %s", g.request_id, error)
        return error_page(503, kind="account", retry_after=60)
    return render_template("forgot_password_sent.html")


@bp.post("/webhooks/keygen")
def keygen_webhook():
    verifier = accounts().webhooks
    body = request.get_data(cache=False)
    try:
        event = verifier.verify(body, request.headers, _targets())
    except WebhookRefused as refusal:
        log.warning("request %s: webhook refused: %s", g.request_id, refusal)
        return {"error": "signature"}, 400
    if event.is_password_reset:
        accounts().reset_received(event)
        courier = services().courier
        if courier is not None:
            courier.wake()
    else:
        log.info(
            "request %s: webhook %s (%s) needs nothing here", g.request_id, event.id, event.event
        )
    return "", 204


def _targets() -> list[tuple[str, str]]:
    """Where Keygen may have been told the endpoint is: PUBLIC_URL's host and path (the README
    says to register that), or the address this request came to."""
    query = request.query_string.decode("latin-1")
    tail = request.path + (f"?{query}" if query else "")
    public = urlsplit(services().settings.public_url)
    here = urlsplit("//" + request.host)
    return [
        (public.hostname or "", public.path.rstrip("/") + tail),
        (here.hostname or "", request.script_root + tail),
    ]


@bp.get("/reset/<token>")
def reset_link(token: str):
    try:
        reset_id = services().courier.links.reset_id(token)
    except LinkInvalid:
        log.info("request %s: a reset link that is not ours", g.request_id)
        return render_template("reset_link.html", problem="invalid"), 404
    session[SESSION_KEY] = reset_id
    return redirect(url_for("reset.reset_form"), 303)


@bp.get("/reset")
def reset_form():
    reset = _reset()
    if reset is None:
        return render_template("reset_link.html", problem="expired"), 410
    form = NewPasswordForm()
    return render_template("reset_password.html", form=form, email=reset.email)


@bp.post("/reset")
def reset_submit():
    reset = _reset()
    if reset is None:
        return render_template("reset_link.html", problem="expired"), 410
    form = NewPasswordForm()
    form.address = reset.email
    if not form.validate():
        return render_template("reset_password.html", form=form, email=reset.email), 422
    try:
        signed_in = accounts().finish_reset(reset.id, form.password.data)
    except ResetUnusable:
        session.pop(SESSION_KEY, None)
        return render_template("reset_link.html", problem="expired"), 410
    except PasswordRefused as error:
        log.info("request %s: Keygen refused the new password: %s", g.request_id, error)
        form.password.errors.append(gettext("Please choose another password."))
        return render_template("reset_password.html", form=form, email=reset.email), 422
    except KeygenDown as error:
        log.warning("request %s: password reset failed: %s", g.request_id, error)
        return error_page(503, kind="account", retry_after=60)
    if signed_in is None:
        session.pop(SESSION_KEY, None)
        flash(gettext("Your password is changed. Sign in with it now."), "info")
        return redirect(url_for("account.sign_in_form"), 303)
    start(signed_in)  # a fresh session, without the reset's id
    flash(gettext("Your password is changed, and you are signed in."), "info")
    return redirect(url_for("account.overview"), 303)


def _reset():
    """The reset this browser opened a link of, while it can still be used."""
    reset_id = session.get(SESSION_KEY)
    return accounts().resets.find(reset_id) if isinstance(reset_id, str) else None
