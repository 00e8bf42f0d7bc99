"""A test-only entry point for gunicorn: the portal, whose worker process dies the moment Keygen
has answered one chosen step (PORTAL_TEST_CRASH_AFTER: create_user or create_license), before
the portal could record the answer. Served as `support.crashing:create_app()` with tests/ on
gunicorn's --pythonpath (support/servers.py, portal(app=...))."""

import logging
import os

from app import create_app as create_portal
from services import services


def create_app():
    app = create_portal()
    keygen = services(app).keygen
    step = os.environ["PORTAL_TEST_CRASH_AFTER"]
    answered = getattr(keygen, step)

    def then_die(*args, **kwargs):
        result = answered(*args, **kwargs)
        logging.getLogger("portal.tests").warning("dying after %s, as the test asked", step)
        logging.shutdown()
        os._exit(70)
        return result

    setattr(keygen, step, then_die)
    return app
