"""The suite-wide secret scan of conftest.py is real: logs land where it looks, and it finds a
planted secret."""

import json
import logging
import time

import pytest

from support.leaks import SECRETS, find_leaks, secret
from support.paths import LOG_DIR, ROOT


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


# -- Redaction (logs.RedactSecrets on every root handler and in gunicorn's logconfig) ----------

TOKEN = "prod-" + "ab12" * 16 + "v3"
CSRF = "ImQ3ZjFlNzVhYjQ2MWQ5NjQ2ZjM1NTk4NTNmMmUwZTc3YTY0YjUzMTMi.ZoQx1w.Q2hVx3kX0b7y9Qm3t1V0JcX2zL4"


@pytest.mark.parametrize(
    ("line", "hidden"),
    [
        (f"Authorization: Bearer {TOKEN}", TOKEN),
        (f"headers={{'Authorization': 'Bearer {TOKEN}', 'Accept': 'x'}}", TOKEN),
        (f"[('Authorization', 'Bearer {TOKEN}')]", TOKEN),
        ("Cookie: __Host-session=eyJjc3JmIjoiYWJjIn0.Zabc.def; theme=dark", "eyJjc3JmIjoiYWJj"),
        ("Set-Cookie: session=s3cr3t-cookie-value; HttpOnly", "s3cr3t-cookie-value"),
        ("token seen in passing: " + TOKEN, TOKEN),
        ("issued ABCDEF-123456-7890AB-CDEF01-234567-V3 to clark", "ABCDEF-123456-7890AB"),
        ("license key 4F2A-9C1D-7B3E-11AA for you", "4F2A-9C1D-7B3E-11AA"),
        ("signed key/eyJhY2NvdW50Ijp7ImlkIjoiMSJ9fQ==.c2lnbmF0dXJl", "eyJhY2NvdW50Ijp7"),
        (f"csrf failed for {CSRF}", CSRF),
        (f"POST /?csrf_token={CSRF}&email=a@b.c", CSRF),
        ("GET /?email=a@b.c&password=hunter2-secret&x=1", "hunter2-secret"),
        ('body {"password": "kent<3lois", "email": "a@b.c"}', "kent<3lois"),
        ("redis://portal:r3d1s-pass@cache:6379/0 is down", "r3d1s-pass"),
        ("postgresql://portal:pg-pass-123@db/portal refused", "pg-pass-123"),
        ('127.0.0.1 "GET /verify/WyJjNzhjMDFh.NOzEue6a5b--Nju HTTP/1.1" 200', "WyJjNzhjMDFh"),
    ],
)
def test_redaction_masks_what_looks_secret(line, hidden):
    from logs import MASK, redact

    masked = redact(line)
    assert hidden not in masked
    assert MASK in masked


@pytest.mark.parametrize(
    "line",
    [
        "request 6f1c2a3b4d5e6f70: signup issued (license 3b5c1a9e-47c2-4f0e-9a41-2a8f6d1e0b7c)",
        '127.0.0.1 "GET /healthz HTTP/1.1" 200 15 3ms "curl/8.0"',
        "422 EMAIL_TAKEN: has already been taken (request 6f1c2a3b)",
        "reconciler: 3 stale signups, oldest 912 s",
        "Listening at: http://127.0.0.1:8000 (1234)",
        "Booting worker with pid: 4242",
        "keygen users.create 201 in 0.231 s",
    ],
)
def test_ordinary_lines_pass_unchanged(line):
    from logs import redact

    assert redact(line) == line


def test_the_settings_secrets_are_masked_wherever_they_appear(keygen, caplog):
    """create_app hands logs.py the product token and SECRET_KEY, whatever their shape."""
    from app import create_app
    from support.leaks import SECRET_KEY
    from support.portal import make_settings

    create_app(make_settings(keygen))
    caplog.set_level(logging.INFO)
    logging.getLogger("signup").warning("token=%s key %s", keygen.token, SECRET_KEY)
    assert keygen.token not in caplog.text and SECRET_KEY not in caplog.text
    assert "[redacted]" in caplog.text


def test_tracebacks_are_masked_too(app, caplog):
    from logs import RedactSecrets

    handler = logging.getLogger().handlers[0]
    assert any(isinstance(f, RedactSecrets) for f in handler.filters)
    try:
        raise RuntimeError(f"Authorization: Bearer {TOKEN}")
    except RuntimeError:
        logging.getLogger("signup").exception("failed")
    assert TOKEN not in caplog.text
    assert "RuntimeError: Authorization: [redacted]" in caplog.text


def test_gunicorn_lines_are_masked(tmp_path):
    """gunicorn.conf.py's logconfig puts the same filter on gunicorn's handlers."""
    import json
    import os

    from support.paths import GUNICORN
    from support.processes import free_port, listening_url, process, wait_for_http

    env = dict(os.environ, BIND=f"127.0.0.1:{free_port()}", WEB_CONCURRENCY="1")
    app_file = tmp_path / "tiny.py"
    app_file.write_text(
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'ok']\n"
    )
    args = [GUNICORN, "-c", "gunicorn.conf.py", "--chdir", str(tmp_path), "tiny:app"]
    with process("gunicorn-redact", args, env) as proc:
        url = listening_url(proc, r"Listening at: (http://127\.0\.0\.1:\d+)")
        wait_for_http(url + "/", process=proc)
        wait_for_http(url + "/?password=hunter2-secret&csrf_token=" + CSRF, process=proc)
        wait_for_http(url + "/?marker=done", process=proc)
        deadline = time.monotonic() + 5
        while "marker=done" not in proc.log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
    log = proc.log_path.read_text()
    assert "marker=done" in log
    assert "hunter2-secret" not in log and CSRF not in log
    assert "password=[redacted]" in log
    access = [json.loads(line) for line in log.splitlines() if "password=" in line]
    assert access and all(entry["logger"] == "gunicorn.access" for entry in access)


@pytest.fixture
def gunicorn_conf(monkeypatch, tmp_path):
    """gunicorn.conf.py's settings, read without leaving its metrics directory in this
    process's environment (later tests would count metrics in files)."""
    import runpy

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    return runpy.run_path(str(ROOT / "gunicorn.conf.py"))


def test_access_lines_carry_the_request_id_the_portal_echoed(gunicorn_conf):
    """gunicorn's own logger with the portal's access format: the line says who asked for what,
    and logs.py files it under the X-Request-ID the portal answered with."""
    from datetime import timedelta
    from types import SimpleNamespace

    from gunicorn.config import Config
    from gunicorn.glogging import Logger

    from logs import JsonFormatter

    cfg = Config()
    cfg.set("access_log_format", gunicorn_conf["access_log_format"])
    response = SimpleNamespace(
        status="200 OK", sent=512, headers=[("Content-Type", "text/html"), ("X-Request-ID", "r1")]
    )
    request = SimpleNamespace(headers=[("USER-AGENT", 'a "b"')])
    environ = {
        "REMOTE_ADDR": "198.51.100.7",
        "REQUEST_METHOD": "POST",
        "RAW_URI": "/?lang=de",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_USER_AGENT": 'a "b"',
    }
    logger = Logger(cfg)
    atoms = logger.atoms_wrapper_class(
        logger.atoms(response, request, environ, timedelta(milliseconds=123))
    )
    record = logging.LogRecord(
        "gunicorn.access", logging.INFO, __file__, 1, cfg.access_log_format, (atoms,), None
    )
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"].startswith('198.51.100.7 "POST /?lang=de HTTP/1.1" 200 512 123ms "a')
    assert entry["request_id"] == "r1"


def test_each_worker_freezes_what_loading_the_app_made(gunicorn_conf):
    """gunicorn.conf.py: the objects a worker made while loading stay out of the collector's
    passes."""
    import gc

    try:
        gunicorn_conf["post_worker_init"](None)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_log_level_reaches_the_logger_of_every_module_of_the_portal(keygen):
    """Every module logs under `portal.<module>`, so LOG_LEVEL sets them all at once."""
    import importlib

    from app import create_app
    from support.portal import make_settings

    modules = [
        importlib.import_module(path.stem)
        for path in sorted(ROOT.glob("*.py"))
        if "log = logging.getLogger(" in path.read_text(encoding="utf-8")
    ]
    assert len(modules) >= 10
    portal = logging.getLogger("portal")
    try:
        create_app(make_settings(keygen, log_level="WARNING"))
        for module in modules:
            assert module.log.name == f"portal.{module.__name__}"
            assert module.log.getEffectiveLevel() == logging.WARNING, module.__name__
    finally:
        portal.setLevel(logging.NOTSET)


# Lines a client can make the portal log (a request line, a header): each repeats one piece of a
# pattern for 16 KiB, and ends with every word that lets a pattern look at the line at all.
HOSTILE_PIECES = [
    "a.", "a-", "a+", ".a", "a", "A-", "AAAA-", "'", '"', ":", "=", "a:", "a://", "a://x:",
    "a://:", "/verify/a/", "key=", "key=a&", "password=", '"key":', "'password':", '"cookie":"',
    "cookie:'a", "bearer ", "x" * 16 + ".", "x" * 16 + ".xxxx.", "prod-", "key/", " ",
]  # fmt: skip
EVERY_TRIGGER = " authorization cookie csrf bearer basic pass pwd secret token key session :// "
EVERY_TRIGGER += "/verify/ prod- key/ = : , @ - ."


@pytest.mark.parametrize("piece", HOSTILE_PIECES)
def test_masking_a_16_kib_hostile_line_takes_under_5_ms(piece):
    """Every pattern runs in one pass: a line built to make a regex backtrack costs no more than
    any other line of its length (the best of a few runs, as other tests share the machine)."""
    from logs import redact

    size = 16 * 1024 - len(EVERY_TRIGGER)
    line = (piece * (size // len(piece) + 1))[:size] + EVERY_TRIGGER
    took = []
    for _ in range(5):
        started = time.perf_counter()
        redact(line)
        took.append(time.perf_counter() - started)
    assert min(took) < 0.005, f"{min(took) * 1000:.1f} ms"
