"""Servers the tests run as separate processes: the Keygen emulator, the portal under gunicorn
(with gunicorn.conf.py, configured through its environment), Redis and PostgreSQL."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import requests

from support.leaks import SECRET_KEY, secret
from support.paths import GUNICORN, LOG_DIR, ROOT, SCRATCH
from support.processes import free_port, listening_url, process, require, stop, wait_for_http

# -- The Keygen emulator -------------------------------------------------------------------------


@contextmanager
def emulator(*flags: str) -> Iterator[dict]:
    ids = {
        "account": str(uuid.uuid4()),
        "policy": str(uuid.uuid4()),
        "token": secret("prod-" + uuid.uuid4().hex + uuid.uuid4().hex + "v3"),
    }
    args = [sys.executable, "-m", "keygen_emulator", "--port", "0"]
    args += ["--account-id", ids["account"], "--product-token", ids["token"]]
    # A protected account, so its policy is protected too, as the portal's must be (health.py).
    args += ["--policy-id", ids["policy"], "--protected", *flags]
    with process("emulator", args, dict(os.environ)) as proc:
        ids["url"] = listening_url(proc, r"listening on (http://127\.0\.0\.1:\d+)")
        wait_for_http(ids["url"] + "/v1/ping", process=proc)
        yield ids


def keygen_state(url: str) -> dict:
    state = requests.get(url + "/_emulator/state", timeout=5).json()
    secret_keys = [license["key"] for license in state["licenses"]]
    for key in secret_keys:
        secret(key)
    return state


# -- The portal under gunicorn -------------------------------------------------------------------


@contextmanager
def portal(env_changes: dict[str, str], *, app: str = "app:create_app()") -> Iterator[str]:
    """The portal under gunicorn; ``app`` may be a test-only entry point of tests/support."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEYGEN_", "SECRET_KEY"))}
    env.update(BIND="127.0.0.1:0", WEB_CONCURRENCY="2", COOKIE_SECURE="false")
    env["DATABASE_URL"] = f"sqlite:///{SCRATCH.folder('portal-e2e')}/portal.db"
    env.update(env_changes)
    args = [GUNICORN, "-c", "gunicorn.conf.py", "--pythonpath", str(ROOT / "tests"), app]
    with process("portal", args, env) as proc:
        url = listening_url(proc, r"Listening at: (http://127\.0\.0\.1:\d+)")
        wait_for_http(url + "/healthz", process=proc)
        yield url


@dataclass
class Portal:
    url: str  # http://127.0.0.1:PORT, gunicorn itself
    upstream: str  # 127.0.0.1:PORT
    keygen: dict
    log: Path

    def access_lines(self) -> list[str]:
        return [
            line
            for line in self.log.read_text(encoding="utf-8", errors="replace").splitlines()
            if "request_id=" in line
        ]


@contextmanager
def running_portal(env_changes: dict[str, str], keygen: dict) -> Iterator[Portal]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEYGEN_", "SECRET_KEY"))}
    env["DATABASE_URL"] = f"sqlite:///{SCRATCH.folder('portal-proxy')}/portal.db"
    env.update(env_changes)
    args = [GUNICORN, "-c", "gunicorn.conf.py", "app:create_app()"]
    with process("portal", args, env) as proc:
        url = listening_url(proc, r"Listening at: (http://127\.0\.0\.1:\d+)")
        wait_for_http(url + "/healthz", process=proc)
        yield Portal(url, url.removeprefix("http://"), keygen, proc.log_path)


def settings_for(keygen: dict, **changes: str) -> dict[str, str]:
    values = {
        "KEYGEN_API_URL": keygen["url"],
        "KEYGEN_ACCOUNT_ID": keygen["account"],
        "KEYGEN_PRODUCT_TOKEN": keygen["token"],
        "KEYGEN_POLICY_ID": keygen["policy"],
        "SECRET_KEY": SECRET_KEY,
        "RECONCILE_INTERVAL": "0",
        "WEB_CONCURRENCY": "2",
    }
    values.update(changes)
    return values


# -- Redis ---------------------------------------------------------------------------------------


@contextmanager
def redis_server(*options: str) -> Iterator[str]:
    """A throwaway redis-server on a free loopback port, without persistence, and with any
    further ``options`` (e.g. deploy/compose.yaml's)."""
    binary = shutil.which("redis-server")
    require(binary is not None, "redis-server")
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    args += options
    with open(LOG_DIR / f"redis-{port}.log", "ab") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_redis(port, proc)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            stop(proc)


def wait_for_redis(port: int, proc: subprocess.Popen, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    client = redis.Redis(port=port, socket_timeout=1)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}")
        try:
            client.ping()
            return
        except redis.ConnectionError:
            time.sleep(0.05)
    raise TimeoutError(f"redis-server did not answer on port {port} within {timeout} s")


# -- PostgreSQL ----------------------------------------------------------------------------------

PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), None)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL on a loopback port; yields a URL of its server."""
    require(PG_BIN is not None and shutil.which("runuser") is not None, "PostgreSQL")
    # Not tmp_path_factory: its folders are inside a root-only (0700) one postgres cannot enter.
    home = Path(tempfile.mkdtemp(prefix="portal-postgres-"))
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
