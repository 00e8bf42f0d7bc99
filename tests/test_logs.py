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


def test_json_lines_carry_ids_and_stay_one_line_whatever_the_message(app):
    import json

    from logs import JsonFormatter

    record = logging.LogRecord(
        "signup", logging.WARNING, __file__, 1, "name %s", ("x\n2026-01-01 INFO forged",), None
    )
    record.signup_id = "s-1"
    record.keygen_request_id = "k-1"
    with app.test_request_context(headers={"X-Request-ID": "req-12345678"}):
        app.preprocess_request()
        line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "name x\n2026-01-01 INFO forged"
    assert (entry["level"], entry["logger"]) == ("WARNING", "signup")
    assert (entry["request_id"], entry["signup_id"], entry["keygen_request_id"]) == (
        "req-12345678",
        "s-1",
        "k-1",
    )


def test_lines_outside_a_request_carry_their_pass_or_their_process(app):
    import json
    import os

    import logs

    def entry() -> dict:
        record = logging.LogRecord("worker", logging.INFO, __file__, 1, "a line", (), None)
        return json.loads(logs.JsonFormatter().format(record))

    with logs.scope("reconcile") as pass_id:
        first, second = entry(), entry()
    assert first["request_id"] == second["request_id"] == pass_id
    assert pass_id.startswith("reconcile-")
    with logs.scope("reconcile") as next_pass:
        assert entry()["request_id"] == next_pass != pass_id
    assert entry()["request_id"] == f"pid-{os.getpid()}"
