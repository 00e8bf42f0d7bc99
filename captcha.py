"""The optional CAPTCHA (Cloudflare Turnstile, hCaptcha or reCAPTCHA, chosen by CAPTCHA_PROVIDER):
what the page must load, what the Content-Security-Policy must allow for it, and the server-side
check of the answer against the provider's siteverify endpoint. views.py asks `problem()` before
the workflow runs, so a failed or unverifiable CAPTCHA never reaches Keygen. An answer counts only
if it was given on this portal's own host name (an answer solved on another site that uses the
same site key is refused) and, with Turnstile's CAPTCHA_ACTION, for this form."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import requests

from i18n import N_

log = logging.getLogger(f"portal.{__name__}")


@dataclass(frozen=True)
class Provider:
    script: str  # the widget's script, loaded by the form page
    widget_class: str  # the element the script turns into a widget
    response_field: str  # the form field the widget fills with its answer
    verify_url: str  # where the answer is checked (server to server)
    csp: dict[str, tuple[str, ...]]  # directive -> origins the widget needs


# Each provider's documented script, answer field, siteverify URL and CSP origins.
PROVIDERS = {
    "turnstile": Provider(
        script="https://challenges.cloudflare.com/turnstile/v0/api.js",
        widget_class="cf-turnstile",
        response_field="cf-turnstile-response",
        verify_url="https://challenges.cloudflare.com/turnstile/v0/siteverify",
        csp={
            "script-src": ("https://challenges.cloudflare.com",),
            "frame-src": ("https://challenges.cloudflare.com",),
        },
    ),
    "hcaptcha": Provider(
        script="https://js.hcaptcha.com/1/api.js",
        widget_class="h-captcha",
        response_field="h-captcha-response",
        verify_url="https://api.hcaptcha.com/siteverify",
        csp={
            directive: ("https://hcaptcha.com", "https://*.hcaptcha.com")
            for directive in ("script-src", "frame-src", "style-src", "connect-src")
        },
    ),
    "recaptcha": Provider(
        script="https://www.google.com/recaptcha/api.js",
        widget_class="g-recaptcha",
        response_field="g-recaptcha-response",
        verify_url="https://www.google.com/recaptcha/api/siteverify",
        csp={
            "script-src": (
                "https://www.google.com/recaptcha/",
                "https://www.gstatic.com/recaptcha/",
            ),
            "frame-src": (
                "https://www.google.com/recaptcha/",
                "https://recaptcha.google.com/recaptcha/",
            ),
        },
    ),
}


FAILED = N_("Please complete the check that you are not a robot, then send the form again.")
UNAVAILABLE = N_(
    "We could not check that you are not a robot right now, so nothing was created. "
    "Please send the form again in a minute."
)


@dataclass(frozen=True)
class Problem:
    message: str  # for the person, above the form
    status: int  # 422: their answer was refused; 503: the provider did not answer


@dataclass
class Captcha:
    provider: str = "none"
    site_key: str = ""
    secret_key: str = field(default="", repr=False)
    verify_url: str = ""
    timeout: float = 5.0
    session: requests.Session = field(default_factory=requests.Session, repr=False)
    # PUBLIC_URL's host and TRUSTED_HOSTS (".example.com": any name under it)
    hostnames: tuple[str, ...] = ()
    action: str = ""  # Turnstile's data-action; "": not checked

    @property
    def widget(self) -> Provider | None:
        return PROVIDERS.get(self.provider)

    def csp(self) -> dict[str, tuple[str, ...]]:
        """What the Content-Security-Policy must add for the widget (nothing when off)."""
        return self.widget.csp if self.widget else {}

    def problem(self, form: Mapping[str, str], client_address: str | None) -> Problem | None:
        """None when the CAPTCHA is off or the provider confirms the answer.

        One request, with a timeout and no retry (requests' default adapter retries nothing):
        an answer token is valid once, and the person is waiting."""
        widget = self.widget
        if widget is None:
            return None
        answer = (form.get(widget.response_field) or "").strip()
        if not answer:
            log.info("captcha: the form came without an answer")
            return Problem(FAILED, 422)
        data = {"secret": self.secret_key, "response": answer}
        if client_address:
            data["remoteip"] = client_address
        try:
            response = self.session.post(
                self.verify_url or widget.verify_url, data=data, timeout=self.timeout
            )
            response.raise_for_status()
            verdict = response.json()
        except (requests.RequestException, ValueError) as error:
            # The exception names the URL and the status only; the secret was in the body.
            log.warning("captcha: the verify endpoint failed: %s", type(error).__name__)
            return Problem(UNAVAILABLE, 503)
        if not isinstance(verdict, dict) or verdict.get("success") is not True:
            codes = verdict.get("error-codes") if isinstance(verdict, dict) else None
            log.info("captcha: answer refused (%s)", ", ".join(map(str, codes or [])) or "no code")
            return Problem(FAILED, 422)
        if not self.ours(verdict):
            log.info(
                "captcha: an answer given on %r for action %r, not on this portal's page",
                verdict.get("hostname"),
                verdict.get("action"),
            )
            return Problem(FAILED, 422)
        return None

    def ours(self, verdict: dict) -> bool:
        """Whether the provider says the answer was given on this portal's page: its host name,
        and (Turnstile) the action of this form."""
        hostname = str(verdict.get("hostname") or "").lower().rstrip(".")
        if not any(_matches(hostname, allowed) for allowed in self.hostnames):
            return False
        return not self.action or verdict.get("action") == self.action


def _matches(hostname: str, allowed: str) -> bool:
    """TRUSTED_HOSTS's rule: "example.com" is that name, ".example.com" it and any under it."""
    if allowed.startswith("."):
        return hostname == allowed[1:] or hostname.endswith(allowed)
    return hostname == allowed.strip("[]")
