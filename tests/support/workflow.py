"""The signup workflow driven directly, without HTTP: a clock the test moves forward, and
shortcuts to what the emulator and the journal hold afterwards."""

from __future__ import annotations

import time

from forms import new_nonce
from journal import Journal
from keygen_api import KeygenClient
from signup import Applicant, Issued, SignupWorkflow
from support.leaks import PASSWORD, secret
from support.portal import KeygenWorld

CLARK = Applicant(
    email="clark@example.com", password=PASSWORD, first_name="Clark", last_name="Kent"
)


class Clock:
    """Real time plus an offset the test can move forward (for Retry-After and cool-downs)."""

    def __init__(self):
        self.offset = 0.0

    def wall(self) -> float:
        return time.time() + self.offset

    def monotonic(self) -> float:
        return time.monotonic() + self.offset


def make_workflow(
    keygen, journal, pauses, clock, *, token=None, policy=None, read_timeout=1.0, **options
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
        deadline=4.0,
        sleep=pauses.append,
        clock=clock.monotonic,
        **options,
    )


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
