"""The signup workflow driven directly, without HTTP: a clock the test moves forward, and
shortcuts to what the emulator and the journal hold afterwards."""

from __future__ import annotations

import time

from admission import Admission
from forms import new_nonce
from journal import Journal
from keygen_api import KeygenClient
from outcomes import Applicant, Issued
from signup import SignupWorkflow
from support.leaks import PASSWORD, secret
from support.portal import KeygenWorld

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


def wait_for_call(keygen, route: str, timeout: float = 5.0, count: int = 1) -> None:
    """Until Keygen has seen `count` calls of this route (the last signup is now stuck on it)."""
    deadline = time.monotonic() + timeout
    while len(keygen.calls(route)) < count:
        assert time.monotonic() < deadline, f"no {route} call within {timeout} s"
        time.sleep(0.02)
