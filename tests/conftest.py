"""Fixtures: a Keygen emulator on a loopback port, the app built against it, and `sign_up`.

Every log line of the run (this process and every server the tests start) goes under
test-logs/. When the session ends, those files are searched for every secret the tests used
or saw (passwords, product tokens, license keys); one hit fails the run.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from admission import Admission  # noqa: E402
from app import create_app  # noqa: E402
from config import Settings  # noqa: E402
from forms import new_nonce  # noqa: E402
from journal import Journal  # noqa: E402
from keygen_api import KeygenClient  # noqa: E402
from keygen_emulator import Emulator, serve  # noqa: E402
from outcomes import Applicant, Issued  # noqa: E402
from signup import SignupWorkflow  # noqa: E402

# One directory per run, so that two runs in one checkout never delete each other's logs.
LOG_DIR = ROOT / "test-logs" / f"run-{os.getpid()}"
SECRETS: set[str] = set()  # every secret a test used or saw; none may appear in a log
IN_CI = os.environ.get("CI", "").lower() == "true"

PASSWORD = "kent<3lois-and-krypton"
SECRET_KEY = "test-secret-key-" + "k" * 32
KEY_PATTERN = re.compile(r"^[0-9A-F]{6}(-[0-9A-F]{6}){4}-V3$")


def secret(value: str) -> str:
    """Remember a value that must never appear in a log, and return it."""
    SECRETS.add(value)
    return value


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


def find_leaks() -> list[tuple[str, str]]:
    """(file, what kind of secret) for every secret found in a log file."""
    leaks = []
    for path in sorted(LOG_DIR.rglob("*")):
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for value in SECRETS:
            if len(value) >= 6 and value in text:
                leaks.append((path.name, describe_secret(value)))
    return leaks


def describe_secret(value: str) -> str:
    if KEY_PATTERN.match(value):
        return "a license key"
    if value.startswith(("prod-", "admin-", "user-")):
        return "a Keygen token"
    return "a password or secret key"


# -- The Keygen emulator ------------------------------------------------------------------------


@dataclass
class KeygenWorld:
    """The emulator and the ids of what it holds for the portal."""

    emulator: Emulator
    url: str
    account: str
    slug: str
    product: str
    token: str
    policy: str
    other_policy: str  # a policy of another product of the same account

    def users(self) -> list[dict]:
        return self.emulator.users(self.account)

    def licenses(self) -> list[dict]:
        return self.emulator.licenses(self.account)

    def calls(self, route: str | None = None) -> list[dict]:
        return [r for r in self.emulator.requests if route is None or r["route"] == route]


@pytest.fixture(scope="session")
def keygen_server() -> Iterator[tuple[Emulator, str, dict]]:
    emulator = Emulator()
    account = emulator.add_account(slug="portal-test")
    product, token = emulator.add_product(account, name="Portal Test App")
    policy = emulator.add_policy(account, product)
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


def make_settings(world: KeygenWorld, **changes) -> Settings:
    values = dict(
        keygen_api_url=world.url,
        keygen_account_id=world.account,
        keygen_product_token=world.token,
        keygen_policy_id=world.policy,
        secret_key=SECRET_KEY,
        cookie_secure=False,  # the test client speaks plain http
        keygen_connect_timeout=1.0,
        keygen_read_timeout=2.0,
        signup_deadline=4.0,
        database_url=f"sqlite:///{tempfile.mkdtemp(prefix='portal-journal-')}/portal.db",
        reconcile_interval=0.0,  # tests run the reconciler themselves
    )
    values.update(changes)
    return Settings(**values)


@pytest.fixture
def settings(keygen: KeygenWorld) -> Settings:
    return make_settings(keygen)


@pytest.fixture
def app(settings: Settings):
    return create_app(settings)


@pytest.fixture
def client(app):
    return app.test_client()


CSRF_FIELD = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')


def csrf_token_from(html: str) -> str:
    match = CSRF_FIELD.search(html)
    assert match, "the page has no CSRF token"
    return secret(match.group(1))


def form_data(**changes) -> dict[str, str]:
    data = {
        "first_name": "Clark",
        "last_name": "Kent",
        "email": "clark@example.com",
        "password": PASSWORD,
    }
    data.update(changes)
    if data.get("password"):
        secret(data["password"])
    return {k: v for k, v in data.items() if v is not None}


@pytest.fixture
def sign_up(client) -> Callable[..., object]:
    """Submit the real form, with the CSRF token of a freshly served page."""

    def submit(**changes):
        page = client.get("/")
        data = form_data(**changes)
        data.setdefault("csrf_token", csrf_token_from(page.get_data(as_text=True)))
        return client.post("/", data=data)

    return submit


def issued_key(html: str) -> str:
    match = re.search(r'id="license-key"[^>]*>([^<]+)<', html)
    assert match, "the page shows no license key"
    return secret(match.group(1).strip())


# -- The workflow, driven directly ----------------------------------------------------------------

CLARK = Applicant(
    email="clark@example.com", password=PASSWORD, first_name="Clark", last_name="Kent"
)


class Clock:
    """Real time plus an offset the test can move forward (for Retry-After and cool-downs), whose
    sleeps are recorded in `pauses` and skipped, unless the test wants them slept for real."""

    def __init__(self, pauses: list[float]):
        self.offset = 0.0
        self.pauses = pauses
        self.really_sleeps = False

    def wall(self) -> float:
        return time.time() + self.offset

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        if self.really_sleeps:
            time.sleep(seconds)


@pytest.fixture
def pauses() -> list[float]:
    return []


@pytest.fixture
def clock(pauses) -> Clock:
    return Clock(pauses)


def make_workflow(
    keygen,
    journal,
    clock,
    *,
    token=None,
    policy=None,
    read_timeout=1.0,
    concurrency=6,
    budget=None,
    **options,
):
    client = KeygenClient(
        keygen.url,
        keygen.account,
        token or keygen.token,
        connect_timeout=1,
        read_timeout=read_timeout,
        clock=clock.monotonic,
    )
    journal.clock = clock.wall
    return SignupWorkflow(
        client,
        journal,
        policy or keygen.policy,
        admission=Admission(budget, slots=concurrency, clock=clock),
        deadline=4.0,
        **options,
    )


@pytest.fixture
def workflow(keygen, journal, clock) -> SignupWorkflow:
    return make_workflow(keygen, journal, clock)


def submit(workflow: SignupWorkflow, applicant: Applicant = CLARK, nonce: str | None = None):
    outcome = workflow.sign_up(applicant, nonce or new_nonce())
    if isinstance(outcome, Issued):
        secret(outcome.license_key)
    return outcome


def only_user_and_license(keygen: KeygenWorld) -> tuple[dict, dict]:
    [user] = keygen.users()
    [license] = keygen.licenses()
    assert license["owner_id"] == user["id"]
    assert license["policy_id"] == keygen.policy
    return user, license


def only_row(journal: Journal):
    [row] = journal.all()
    return row


# -- The journal, on SQLite and on a real PostgreSQL -------------------------------------------

PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), None)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL on a loopback port; yields a URL of its server."""
    require(PG_BIN is not None and shutil.which("runuser") is not None, "PostgreSQL")
    home = Path(tempfile.mkdtemp(prefix="portal-postgres-"))  # pytest's are root-only
    data = home / "data"
    port = free_port()
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres:
        shutil.chown(home, "postgres")
    subprocess.run(
        [*as_postgres, str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    options = f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c fsync=off"
    log = LOG_DIR / "postgres.log"
    start = [*as_postgres, str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", options, "-l"]
    subprocess.run([*start, str(home / "server.log"), "-w", "start"], check=True, timeout=60)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(
            [*as_postgres, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
            timeout=60,
            capture_output=True,
        )
        shutil.copy(home / "server.log", log)
        shutil.rmtree(home, ignore_errors=True)


def new_postgres_database(server: str) -> str:
    """A fresh, empty database on the server, so that tests never see each other's rows."""
    import psycopg

    name = "portal_" + uuid.uuid4().hex[:12]
    with psycopg.connect(server + "/postgres", autocommit=True) as db:
        db.execute(f"CREATE DATABASE {name}")
    return f"{server}/{name}"


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


# -- Processes and components ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, *, timeout: float = 20.0, process: subprocess.Popen | None = None):
    """Poll until the URL answers, the process dies, or the timeout passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before serving {url}")
        try:
            return requests.get(url, timeout=2)
        except (requests.ConnectionError, requests.Timeout):
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def require(available: bool, what: str) -> None:
    """Skip when a component is missing on a developer machine; fail under CI."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is required under CI but is not installed")
    pytest.skip(f"{what} is not installed (scripts/test.sh installs it when run as root)")
