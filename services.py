"""The objects the application factory builds and the views and commands use, by type."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app

from accounts import SelfService
from branding import Brand
from captcha import Captcha
from config import Settings
from delivery import Courier
from health import KeygenProbe, MailProbe
from journal import Journal
from keygen_api import KeygenClient
from metrics import Metrics
from protection import FillTimer, RateLimits
from signup import SignupWorkflow
from worker import Reconciler

EXTENSION = "portal"  # the app.extensions key, Flask's place for an extension's state


@dataclass(frozen=True)
class Services:
    settings: Settings
    brand: Brand
    captcha: Captcha
    limits: RateLimits
    fill_timer: FillTimer
    journal: Journal
    keygen: KeygenClient
    metrics: Metrics
    signup: SignupWorkflow
    reconciler: Reconciler
    courier: Courier | None  # None: email is off
    mail_probe: MailProbe | None
    keygen_probe: KeygenProbe  # /readyz's questions to Keygen, asked at most so often
    accounts: SelfService | None  # None: SELF_SERVICE is off

    def install(self, app: Flask) -> None:
        app.extensions[EXTENSION] = self


def services(app: Flask | None = None) -> Services:
    """The services of ``app``, or of the app handling this request or command."""
    return (app or current_app).extensions[EXTENSION]
