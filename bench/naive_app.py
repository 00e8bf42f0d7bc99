"""The naive baseline: the portal's form and templates, wired to Keygen the way the tutorials do.

Keygen's "Creating users" and "Creating licenses" tutorials call the API once per step with a
fresh HTTP request and show whatever comes back. Ported to Flask, that is a module-level
`requests.post` per call (a new connection, and with TLS a new handshake, every time), no
timeouts, no retries, no idempotency, no admission control, served by gunicorn's default `sync`
workers. Only the integration differs from the portal: the form (forms.py), CSRF and templates
are the same, so that the benchmark compares the integrations and nothing else.

This is deliberately not how to do it. It exists only as the benchmark's yardstick; the
benchmark bounds every run from the outside, since nothing in here times out.

    PORTAL_DIR=. gunicorn -w 5 bench.naive_app:app     (settings: the portal's KEYGEN_* names)
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import requests
from flask import Blueprint, Flask, render_template
from flask_wtf.csrf import CSRFProtect

PORTAL_DIR = Path(os.environ.get("PORTAL_DIR") or Path(__file__).resolve().parent.parent)
sys.path.insert(0, str(PORTAL_DIR))

from branding import Brand  # noqa: E402
from forms import SignupForm  # noqa: E402  (the portal's own form, from PORTAL_DIR)
from i18n import init_i18n  # noqa: E402  (the templates are translated)

KEYGEN_API_URL = os.environ.get("KEYGEN_API_URL", "https://api.keygen.sh").rstrip("/")
KEYGEN_ACCOUNT_ID = os.environ["KEYGEN_ACCOUNT_ID"]
KEYGEN_PRODUCT_TOKEN = os.environ["KEYGEN_PRODUCT_TOKEN"]
KEYGEN_POLICY_ID = os.environ["KEYGEN_POLICY_ID"]
BASE = f"{KEYGEN_API_URL}/v1/accounts/{KEYGEN_ACCOUNT_ID}"
HEADERS = {
    "Content-Type": "application/vnd.api+json",
    "Accept": "application/vnd.api+json",
    "Authorization": f"Bearer {KEYGEN_PRODUCT_TOKEN}",
}


@dataclass(frozen=True)
class Issued:
    email: str
    license_key: str


app = Flask(
    __name__,
    template_folder=str(PORTAL_DIR / "templates"),
    static_folder=str(PORTAL_DIR / "static"),
)
app.config.update(
    SECRET_KEY=os.environ["SECRET_KEY"],
    SESSION_COOKIE_SECURE=os.environ.get("COOKIE_SECURE", "true").lower() == "true",
    PASSWORD_MIN_LENGTH=int(os.environ.get("PASSWORD_MIN_LENGTH", "8")),
)
app.jinja_env.globals.update(product_name="", demo_mode=False, brand=Brand())
init_i18n(app)
CSRFProtect(app)
bp = Blueprint("portal", __name__)  # the templates link to portal.signup_form and friends


@bp.get("/")
def signup_form():
    return render_template("signup.html", form=SignupForm())


@bp.post("/")
def signup_submit():
    form = SignupForm()
    if not form.validate():
        return render_template("signup.html", form=form), 422

    # Step 1 of the tutorial: create the user.
    res = requests.post(  # noqa: S113  (no timeout: the tutorial's way, on purpose)
        f"{BASE}/users",
        headers=HEADERS,
        json={
            "data": {
                "type": "users",
                "attributes": {
                    "firstName": form.first_name.data,
                    "lastName": form.last_name.data,
                    "email": form.email.data,
                    "password": form.password.data,
                },
            }
        },
    )
    user = res.json()
    if "errors" in user:
        form.email.errors.append(user["errors"][0].get("detail", "Something went wrong."))
        return render_template("signup.html", form=form), 422

    # Step 2: create a license for that user.
    res = requests.post(  # noqa: S113
        f"{BASE}/licenses",
        headers=HEADERS,
        json={
            "data": {
                "type": "licenses",
                "relationships": {
                    "policy": {"data": {"type": "policies", "id": KEYGEN_POLICY_ID}},
                    "owner": {"data": {"type": "users", "id": user["data"]["id"]}},
                },
            }
        },
    )
    license = res.json()
    if "errors" in license:
        detail = license["errors"][0].get("detail", "")
        page = render_template(
            "error.html", code=500, title="Something went wrong", message=detail, reference=None
        )
        return page, 500

    issued = Issued(user["data"]["attributes"]["email"], license["data"]["attributes"]["key"])
    return render_template("issued.html", issued=issued, first_name=form.first_name.data)


@bp.get("/healthz")
def healthz():
    return {"status": "ok"}


app.register_blueprint(bp)
