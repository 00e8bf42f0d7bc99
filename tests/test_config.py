"""Settings: missing or unsafe values refuse to boot, with every problem named at once."""

import pytest

from app import create_app
from config import ConfigError, load_settings
from support.portal import GOOD, TOKEN


def problems_of(env: dict) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    return caught.value.problems


def test_good_settings_load_with_defaults():
    settings = load_settings(GOOD)
    assert settings.keygen_api_url == "https://api.keygen.sh"
    assert settings.keygen_account_id == "acme"
    assert settings.password_min_length == 8
    assert settings.demo_mode is False


def test_every_missing_setting_is_named_at_once():
    problems = problems_of({})
    assert problems == [
        "KEYGEN_PRODUCT_TOKEN is required but not set",
        "KEYGEN_POLICY_ID is required but not set",
        "SECRET_KEY is required but not set",
        # Required by Keygen Cloud's own host, the default KEYGEN_API_URL (test_keygen_setups.py).
        "KEYGEN_ACCOUNT_ID is required but not set: Keygen Cloud (https://api.keygen.sh) needs "
        "it; only a custom domain or a self-hosted Keygen can do without",
    ]


def test_create_app_refuses_to_start_without_settings(monkeypatch):
    for name in GOOD:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError) as caught:
        create_app()
    assert "KEYGEN_PRODUCT_TOKEN is required" in str(caught.value)
    assert "SECRET_KEY is required" in str(caught.value)


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("KEYGEN_POLICY_ID", "not-a-uuid", "KEYGEN_POLICY_ID must be a UUID"),
        ("KEYGEN_API_URL", "http://keygen.example.com", "KEYGEN_API_URL must use https"),
        ("KEYGEN_API_URL", "ftp://keygen.example.com", "KEYGEN_API_URL must be an http(s) URL"),
        ("KEYGEN_API_URL", "https://api.keygen.sh/v1", "KEYGEN_API_URL must be the server's root"),
        ("KEYGEN_PRODUCT_TOKEN", "admin-" + "a" * 64 + "v3", "is an admin token"),
        ("KEYGEN_PRODUCT_TOKEN", "852da78f-1444-4462-8863-d7b9fff9e003", "is a token's id"),
        ("KEYGEN_PRODUCT_TOKEN", "prod-abc def", "without spaces"),
        ("KEYGEN_ACCOUNT_ID", "acme/../x", "KEYGEN_ACCOUNT_ID must be the account's UUID or slug"),
        ("SECRET_KEY", "short", "SECRET_KEY must be at least 32 characters"),
        ("PASSWORD_MIN_LENGTH", "5", "must be between 6 (Keygen's minimum) and 72"),
        ("PASSWORD_MIN_LENGTH", "eight", "PASSWORD_MIN_LENGTH must be a number"),
        ("SIGNUP_DEADLINE", "40", "SIGNUP_DEADLINE must be at most 25 seconds"),
        ("KEYGEN_READ_TIMEOUT", "-1", "KEYGEN_READ_TIMEOUT must be a positive number"),
        ("DEMO_MODE", "maybe", "DEMO_MODE must be true or false"),
    ],
)
def test_malformed_values_are_named(name, value, problem):
    problems = problems_of({**GOOD, name: value})
    assert len(problems) == 1
    assert problem in problems[0]


def test_problems_never_repeat_the_secret_values():
    bad_token = "admin-" + "f" * 64 + "v3"
    error = None
    try:
        load_settings({**GOOD, "KEYGEN_PRODUCT_TOKEN": bad_token, "SECRET_KEY": "tiny-secret"})
    except ConfigError as caught:
        error = str(caught)
    assert error is not None
    assert bad_token not in error
    assert "tiny-secret" not in error


def test_plain_http_is_allowed_on_loopback_only():
    for url in ("http://127.0.0.1:8001", "http://localhost:8001", "http://[::1]:8001"):
        assert load_settings({**GOOD, "KEYGEN_API_URL": url}).keygen_api_url == url


def test_secrets_can_come_from_files(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    env = {**GOOD, "KEYGEN_PRODUCT_TOKEN_FILE": str(token_file)}
    del env["KEYGEN_PRODUCT_TOKEN"]
    assert load_settings(env).keygen_product_token == TOKEN


def test_value_and_file_together_are_refused(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    problems = problems_of({**GOOD, "KEYGEN_PRODUCT_TOKEN_FILE": str(token_file)})
    assert problems == [
        "KEYGEN_PRODUCT_TOKEN: set either KEYGEN_PRODUCT_TOKEN or KEYGEN_PRODUCT_TOKEN_FILE, "
        "not both"
    ]


def test_unreadable_secret_file_is_named(tmp_path):
    env = {**GOOD, "SECRET_KEY_FILE": str(tmp_path / "missing")}
    del env["SECRET_KEY"]
    assert problems_of(env) == [
        "SECRET_KEY: cannot read SECRET_KEY_FILE (No such file or directory)"
    ]


def test_signups_leave_two_threads_of_each_process_to_the_pages_unless_set():
    assert load_settings(GOOD).signup_concurrency == 14  # of gunicorn's 16 threads
    assert load_settings({**GOOD, "GUNICORN_THREADS": "6"}).signup_concurrency == 4
    assert load_settings({**GOOD, "GUNICORN_THREADS": "2"}).signup_concurrency == 1
    chosen = {**GOOD, "GUNICORN_THREADS": "6", "SIGNUP_CONCURRENCY": "5"}
    assert load_settings(chosen).signup_concurrency == 5


def test_gunicorn_takes_its_workers_and_threads_from_the_same_settings(monkeypatch, tmp_path):
    import runpy
    from pathlib import Path

    conf = Path(__file__).resolve().parent.parent / "gunicorn.conf.py"
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))  # see test_logs.gunicorn_conf
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    monkeypatch.delenv("GUNICORN_THREADS", raising=False)
    defaults = runpy.run_path(str(conf))
    assert (defaults["workers"], defaults["threads"]) == (2, 16)
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    monkeypatch.setenv("GUNICORN_THREADS", "6")
    chosen = runpy.run_path(str(conf))
    assert (chosen["workers"], chosen["threads"]) == (3, 6)
    monkeypatch.setenv("GUNICORN_THREADS", "many")
    with pytest.raises(ConfigError) as caught:
        runpy.run_path(str(conf))
    assert caught.value.problems == ["GUNICORN_THREADS must be a number"]


def test_secrets_stay_out_of_the_settings_repr():
    text = repr(load_settings(GOOD))
    assert TOKEN not in text
    assert GOOD["SECRET_KEY"] not in text


def test_env_example_works_as_docker_reads_an_env_file_and_shows_the_defaults():
    """`docker run --env-file` takes everything after the = as the value, comments included:
    every line of .env.example must work as it stands, and say what the default is."""
    from pathlib import Path

    example = Path(__file__).resolve().parent.parent / ".env.example"
    env = {}
    for line in example.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            env[name] = value
    assert load_settings({**env, **GOOD}) == load_settings(GOOD)


def test_configuration_doc_and_env_example_list_exactly_the_settings():
    """docs/configuration.md's tables and .env.example name each setting of config.py once,
    and no other."""
    import re
    from pathlib import Path

    from config import SETTINGS

    root = Path(__file__).resolve().parent.parent
    doc = (root / "docs" / "configuration.md").read_text()
    example = (root / ".env.example").read_text()
    rows = re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", doc, re.MULTILINE)
    documented = set(rows)
    assert len(rows) == len(documented), "a setting has two rows in docs/configuration.md"
    missing, unknown = sorted(set(SETTINGS) - documented), sorted(documented - set(SETTINGS))
    assert not missing, f"missing from docs/configuration.md: {missing}"
    assert not unknown, f"in docs/configuration.md but not in config.py: {unknown}"
    filled_in = re.findall(r"^([A-Z][A-Z0-9_]*)=", example, re.MULTILINE)
    assert sorted(filled_in) == sorted(SETTINGS), ".env.example differs from config.py"


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("https://api.keygen.sh", True),
        ("https://keygen.example.com", True),
        ("http://127.0.0.1:8001", False),
        ("http://localhost:8001", False),
        ("http://[::1]:8001", False),
    ],
)
def test_the_demo_runs_only_against_a_keygen_on_this_machine(url, refused):
    """The demo prints emails, keys included, to the console: never against a real Keygen."""
    environ = {**GOOD, "DEMO_MODE": "true", "KEYGEN_API_URL": url}
    if not refused:
        assert load_settings(environ).demo_mode is True
        return
    with pytest.raises(ConfigError) as caught:
        load_settings(environ)
    assert any(
        p.startswith("DEMO_MODE is for the built-in Keygen emulator") for p in caught.value.problems
    )
