"""ONE_ACCOUNT_PER_PERSON in the journal's database: which signup is creating the account of a
mailbox right now, so that two spellings of it sent at once cannot both pass Keygen's lookup.
Part of the Journal (journal.py).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Column, Float, String, Table, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from database import metadata

person_holds = Table(
    "person_holds",
    metadata,
    Column("person", String(64), primary_key=True),
    Column("signup_id", String(36), nullable=False),
    Column("held_at", Float, nullable=False),
)
_NEW_HOLD = {
    "postgresql": postgresql.insert(person_holds).on_conflict_do_nothing(),
    "sqlite": sqlite.insert(person_holds).on_conflict_do_nothing(),
}


class PersonHolds:
    """The Journal's queries of person_holds (it shares their engine and clock)."""

    engine: Engine
    clock: Callable[[], float]

    def hold_person(self, person: str, signup_id: str) -> bool:
        """Whether this signup may create the account of ``person`` (a mailbox): True unless
        another signup that is still creating one holds it. A finished holder's hold passes on."""
        with self.engine.begin() as db:
            db.execute(
                _NEW_HOLD[db.dialect.name],
                {"person": person, "signup_id": signup_id, "held_at": self.clock()},
            )
            holder = db.execute(
                select(person_holds.c.signup_id).where(person_holds.c.person == person)
            ).scalar_one()
        if holder == signup_id:
            return True
        if self.still_working(holder):
            return False
        taken_over = (
            update(person_holds)
            .where(person_holds.c.person == person)
            .where(person_holds.c.signup_id == holder)  # unless another took it over first
            .values(signup_id=signup_id, held_at=self.clock())
        )
        with self.engine.begin() as db:
            return db.execute(taken_over).rowcount == 1

    def still_working(self, signup_id: str) -> bool:
        """Whether that signup is unfinished (the Journal knows)."""
        raise NotImplementedError
