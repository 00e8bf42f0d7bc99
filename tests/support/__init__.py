"""What the test modules share. Helpers are imported from here (``from support.http import
issued_key``); the fixtures defined here are registered by ``pytest_plugins`` in conftest.py.

paths      the checkout, the run's log folder, scratch folders under pytest's tmp dir
leaks      secrets the tests use or see; the search of the run's logs for them
processes  free ports, starting, waiting for and stopping processes; required components
http       what a browser does with the form: hidden fields, tokens, the key on the page
portal     the portal built in this process against the in-process emulator
workflow   the signup workflow driven directly, with a clock the test moves
servers    separate processes: the emulator, the portal under gunicorn, Redis, PostgreSQL
proxies    nginx and Caddy with the shipped recipes, and their TLS certificate
tls        a self-signed certificate for 127.0.0.1 (SMTP over TLS, the Keygen client)
mail       an aiosmtpd recorder, and a portal with email on against it
captcha    a stand-in siteverify endpoint
browser    headless Chromium
axe        axe-core in it: the accessibility rules
branded    a fully branded portal on loopback (also for scripts/screenshots.py)
setups     a Keygen with environments, another product, a LEGACY_ENCRYPT policy; the doctor
"""

import pkgutil

import pytest

# Before any of them is imported: their asserts explain a failure as the tests' own asserts do.
pytest.register_assert_rewrite(
    *(f"{__name__}.{module.name}" for module in pkgutil.iter_modules(__path__))
)
