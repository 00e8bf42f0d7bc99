"""The portal's database: the signup journal and the outbox (and whatever else the portal keeps)
share one schema, one engine per process and one way to migrate.

SQLite (WAL) by default; PostgreSQL when DATABASE_URL points at one. One code path serves both.
"""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import (
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

metadata = MetaData()  # every table of the portal


def work_columns() -> list[Column]:
    """The columns of a table worked through by leases (the journal's signups, the outbox's
    letters): tries so far, when next, who holds it until when, what went wrong, and when."""
    return [
        Column("attempts", Integer, nullable=False, default=0),
        Column("next_attempt_at", Float, nullable=False),
        Column("lease_owner", String(64)),
        Column("lease_until", Float),
        Column("last_error", String(500)),
        Column("created_at", Float, nullable=False),
        Column("updated_at", Float, nullable=False),
    ]


def open_engine(url: str, threads: int) -> Engine:
    # A connection kept for every thread that may need one at once, and SQLAlchemy's usual ten
    # more for the background threads and bursts. With its default of five kept, a busy worker
    # closed and reopened connections all the time: each reopening paid for a PostgreSQL login
    # or SQLite's PRAGMAs, and started with an empty statement cache.
    pool = {"pool_size": threads, "max_overflow": 10}
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if str(path) not in ("", ":memory:"):
            path.parent.mkdir(parents=True, exist_ok=True)
        # Waiting for a lock beats failing a signup; WAL lets readers and a writer overlap.
        engine = create_engine(url, connect_args={"timeout": 30}, **pool)

        @event.listens_for(engine, "connect")
        def _pragmas(connection, _record):
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, pool_pre_ping=True, **pool)


def create_schema(engine: Engine) -> None:
    """Create the tables, or add what a newer version needs. Safe to run on every start,
    by every worker of every instance at once."""
    for attempt in range(5):
        try:
            with engine.begin() as db:
                if db.dialect.name == "postgresql":  # one migrator at a time
                    db.execute(text("SELECT pg_advisory_xact_lock(7242017)"))
                metadata.create_all(db)
                for table in metadata.sorted_tables:
                    _add_missing_columns(db, table)
            return
        except DBAPIError:
            # SQLite has no advisory lock: another process created the table between our
            # check and our create. Look again.
            if attempt == 4:
                raise
            time.sleep(0.1 * (attempt + 1))


def _add_missing_columns(db, table: Table) -> None:
    """Additive migrations: a column a newer version added (none was ever removed)."""
    present = {c["name"] for c in inspect(db).get_columns(table.name)}
    for column in table.columns:
        if column.name in present:
            continue
        kind = column.type.compile(db.dialect)
        default = ""
        if column.server_default is not None:
            default = f" NOT NULL DEFAULT {column.server_default.arg.text}"
        db.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}{default}'))


def default_url(instance_path: str) -> str:
    """Without DATABASE_URL: SQLite in the instance folder (one machine only)."""
    return f"sqlite:///{Path(instance_path) / 'portal.db'}"
