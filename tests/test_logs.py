"""The suite-wide secret scan of conftest.py is real: logs land where it looks, and it finds a
planted secret."""

import logging

from conftest import LOG_DIR, SECRETS, find_leaks, secret


def test_app_logs_land_in_the_scanned_directory(keygen):
    logging.getLogger("signup").error("marker line %s", "4b1d-scan-check")
    for handler in logging.getLogger().handlers:
        handler.flush()
    assert "4b1d-scan-check" in (LOG_DIR / "pytest.log").read_text()


def test_the_scan_finds_a_planted_secret():
    value = secret("prod-" + "9" * 64 + "v3")
    planted = LOG_DIR / "planted.log"
    planted.write_text(f"Authorization: Bearer {value}\n")
    try:
        assert ("planted.log", "a Keygen token") in find_leaks()
    finally:
        planted.unlink()
        SECRETS.discard(value)
    assert ("planted.log", "a Keygen token") not in find_leaks()
