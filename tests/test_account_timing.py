"""A wrong password and an unknown address take the same time to answer. Keygen answers an unknown
address at once and hashes a wrong password first; the emulator plays that out with a delay on
the wrong-password attempts, and the portal's floor (accounts.SIGN_IN_FLOOR) must hide it."""

from __future__ import annotations

import statistics
import time

import pytest

from accounts import SIGN_IN_FLOOR
from app import create_app
from services import services
from support.accounts import customer, sign_in
from support.portal import make_settings

pytestmark = pytest.mark.slow
HASHING = 0.25  # seconds the emulator adds to each wrong-password attempt (Keygen's bcrypt)


@pytest.mark.timeout(240)
def test_a_wrong_password_and_an_unknown_address_take_the_same_time(keygen):
    site = create_app(
        make_settings(
            keygen, ratelimit_sign_in_per_ip="1000/minute", ratelimit_sign_in_per_email="100/minute"
        )
    )
    assert services(site).accounts.floor == SIGN_IN_FLOOR
    # One user per attempt: Keygen allows 5 password attempts a minute per address.
    known = [customer(keygen, f"user{i}@example.com").email for i in range(20)]
    timings: dict[str, list[float]] = {"wrong password": [], "unknown address": []}
    browser = site.test_client()
    sign_in(browser, "warm-up@example.com", "x")
    for index in range(20):
        for case, email in (
            ("wrong password", known[index]),
            ("unknown address", f"n{index}@x.io"),
        ):
            if case == "wrong password":
                keygen.emulator.inject("tokens.create", delay=HASHING, when="after")
            started = time.perf_counter()
            response = sign_in(browser, email, "not the password")
            timings[case].append(time.perf_counter() - started)
            assert response.status_code == 422
    wrong = statistics.median(timings["wrong password"])
    unknown = statistics.median(timings["unknown address"])
    assert min(min(t) for t in timings.values()) >= SIGN_IN_FLOOR
    assert abs(wrong - unknown) < 0.030, (wrong, unknown)
