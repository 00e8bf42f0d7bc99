"""The run's hooks and the everyday fixtures: a Keygen emulator on a loopback port, the app built
against it, `sign_up`, the workflow and the journal. Helpers live in tests/support/ (see its
__init__.py); the fixtures of the support modules are registered below.

Every log line of the run (this process and every server the tests start) goes under
test-logs/. When the session ends, those files are searched for every secret the tests used
or saw (passwords, product tokens, license keys); one hit fails the run.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterator

import pytest

from app import create_app
from config import Settings
from journal import Journal
from keygen_emulator import Emulator, serve
from signup import SignupWorkflow
from support.http import form_submitter
from support.leaks import PASSWORD, SECRET_KEY, SECRETS, find_leaks, secret
from support.paths import LOG_DIR, SCRATCH
from support.portal import KeygenWorld, make_settings
from support.servers import new_postgres_database
from support.workflow import Clock, make_workflow

pytest_plugins = [
    "support.axe",  # axe_source
    "support.browser",  # browser
    "support.captcha",  # verify
    "support.mail",  # portal_with
    "support.proxies",  # certificate
    "support.servers",  # postgres_server
    "support.setups",  # setups: the Keygens a vendor runs (tests/test_keygen_*.py)
    "support.tls",  # loopback_certificate
]


# -- Logs of the whole run ----------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    for old in LOG_DIR.parent.glob("run-*"):
        if time.time() - old.stat().st_mtime > 3600:  # an earlier run's, not a concurrent one's
            shutil.rmtree(old, ignore_errors=True)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(LOG_DIR / "pytest.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.DEBUG)
    # aiosmtpd logs every line of DATA at DEBUG: the key emails of the tests would land in
    # test-logs/. Its INFO lines (commands, envelope addresses) hold no secret.
    logging.getLogger("mail.log").setLevel(logging.INFO)
    SECRETS.update({PASSWORD, SECRET_KEY})


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    leaks = find_leaks()
    if leaks:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = "\n".join(f"  {path}: {kind}" for path, kind in leaks)
        message = f"SECRETS FOUND IN LOGS ({LOG_DIR}):\n{lines}"
        if reporter:
            reporter.write_line(message, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session", autouse=True)
def scratch_folders(tmp_path_factory) -> None:
    """The helpers that are not fixtures (make_settings, the gunicorn portals) make their folders
    with pytest's tmp_path_factory too."""
    SCRATCH.factory = tmp_path_factory


# -- The Keygen emulator ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def keygen_server() -> Iterator[tuple[Emulator, str, dict]]:
    emulator = Emulator()
    account = emulator.add_account(slug="portal-test")
    product, token = emulator.add_product(account, name="Portal Test App")
    # Protected, as the portal's policy must be (health.py): its users cannot issue themselves
    # more licenses.
    policy = emulator.add_policy(account, product, protected=True)
    other_product, _ = emulator.add_product(account, name="Another App")
    other_policy = emulator.add_policy(account, other_product)
    ids = dict(
        account=account, product=product, token=secret(token), policy=policy, other=other_policy
    )
    server = serve(emulator)
    yield emulator, server.url, ids
    server.stop()


@pytest.fixture
def keygen(keygen_server) -> Iterator[KeygenWorld]:
    emulator, url, ids = keygen_server
    emulator.reset()
    world = KeygenWorld(
        emulator=emulator,
        url=url,
        account=ids["account"],
        slug="portal-test",
        product=ids["product"],
        token=ids["token"],
        policy=ids["policy"],
        other_policy=ids["other"],
    )
    yield world
    SECRETS.update(license["key"] for license in emulator.licenses())
    emulator.clear_faults()


# -- The portal ---------------------------------------------------------------------------------


@pytest.fixture
def settings(keygen: KeygenWorld) -> Settings:
    return make_settings(keygen)


@pytest.fixture
def app(settings: Settings):
    return create_app(settings)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def sign_up(client) -> Callable[..., object]:
    """Submit the real form, with the CSRF token of a freshly served page."""

    return form_submitter(client)


# -- The workflow, driven directly ----------------------------------------------------------------


@pytest.fixture
def clock(pauses) -> Clock:
    return Clock(pauses)


@pytest.fixture
def pauses() -> list[float]:
    return []


@pytest.fixture
def workflow(keygen, journal, clock) -> SignupWorkflow:
    return make_workflow(keygen, journal, clock)


# -- The journal, on SQLite and on a real PostgreSQL (support/servers.py) -----------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/portal.db"
    return new_postgres_database(request.getfixturevalue("postgres_server"))


@pytest.fixture
def journal(database_url) -> Iterator[Journal]:
    journal = Journal(database_url)
    journal.create_schema()
    yield journal
    journal.engine.dispose()
