"""Servers the tests run as separate processes: PostgreSQL."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.paths import LOG_DIR
from support.processes import free_port, require

# -- PostgreSQL ----------------------------------------------------------------------------------

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
