"""The optional CAPTCHA, against a stand-in siteverify endpoint: a real HTTP server on loopback
that answers as Turnstile, hCaptcha and reCAPTCHA do (success, refusal, outage, silence).
Whatever goes wrong, the form says so and Keygen is never called."""

from __future__ import annotations

import time

import pytest

from config import ConfigError, load_settings
from guards import CONTENT_SECURITY_POLICY
from support.captcha import CAPTCHA_SECRET, SITE_KEY, captcha_app
from support.http import csrf_token_from, form_data


def submit(client, **fields):
    page = client.get("/").get_data(as_text=True)
    data = form_data(**fields)
    data["csrf_token"] = csrf_token_from(page)
    return client.post("/", data=data, environ_base={"REMOTE_ADDR": "198.51.100.7"})


def test_a_confirmed_answer_signs_up_and_the_check_carries_secret_answer_and_address(
    keygen, verify
):
    client = captcha_app(keygen, verify)
    response = submit(client, **{"cf-turnstile-response": "XXXX.DUMMY.TOKEN.XXXX"})
    assert response.status_code == 200, response.get_data(as_text=True)[-400:]
    assert verify.checks == [
        {
            "secret": CAPTCHA_SECRET,
            "response": "XXXX.DUMMY.TOKEN.XXXX",
            "remoteip": "198.51.100.7",
        }
    ]
    assert len(keygen.users()) == 1


@pytest.mark.parametrize(
    ("mode", "answer", "status", "message"),
    [
        ("refuse", "a-forged-answer", 422, "Please complete the check that you are not a robot"),
        ("success", "", 422, "Please complete the check that you are not a robot"),
        ("error", "an-answer", 503, "We could not check that you are not a robot right now"),
        ("garbage", "an-answer", 503, "We could not check that you are not a robot right now"),
        ("hang", "an-answer", 503, "We could not check that you are not a robot right now"),
    ],
    ids=["refused", "no-answer", "verify-500", "verify-garbage", "verify-timeout"],
)
def test_anything_but_a_confirmed_answer_keeps_the_form_and_calls_no_keygen(
    keygen, verify, mode, answer, status, message
):
    verify.mode = mode
    client = captcha_app(keygen, verify)
    started = time.monotonic()
    response = submit(client, first_name="Lois", **{"cf-turnstile-response": answer})
    page = response.get_data(as_text=True)
    assert response.status_code == status
    assert message in page
    assert 'value="Lois"' in page  # what was typed is kept
    assert keygen.calls() == []
    assert time.monotonic() - started < 2.5  # CAPTCHA_TIMEOUT=1, no retry
    assert len(verify.checks) == (0 if not answer else 1)  # never asked twice


def test_the_verify_endpoint_down_refuses_without_keygen(keygen, verify):
    client = captcha_app(keygen, verify)
    verify.server.shutdown()
    verify.server.server_close()
    response = submit(client, **{"cf-turnstile-response": "an-answer"})
    assert response.status_code == 503
    assert keygen.calls() == []


@pytest.mark.parametrize(
    ("provider", "field", "script", "origin"),
    [
        (
            "turnstile",
            "cf-turnstile-response",
            "https://challenges.cloudflare.com/turnstile/v0/api.js",
            "https://challenges.cloudflare.com",
        ),
        ("hcaptcha", "h-captcha-response", "https://js.hcaptcha.com/1/api.js", "hcaptcha.com"),
        (
            "recaptcha",
            "g-recaptcha-response",
            "https://www.google.com/recaptcha/api.js",
            "https://www.google.com/recaptcha/",
        ),
    ],
)
def test_each_provider_gets_its_widget_field_and_csp_origins(
    keygen, verify, provider, field, script, origin
):
    client = captcha_app(keygen, verify, provider=provider)
    page = client.get("/")
    html = page.get_data(as_text=True)
    assert f'<script src="{script}" async defer></script>' in html
    assert f'data-sitekey="{SITE_KEY}"' in html
    csp = page.headers["Content-Security-Policy"]
    assert csp.startswith(CONTENT_SECURITY_POLICY)
    script_src = next(d for d in csp.split("; ") if d.startswith("script-src "))
    frame_src = next(d for d in csp.split("; ") if d.startswith("frame-src "))
    assert "'self'" in script_src and origin in script_src and origin in frame_src
    assert "unsafe-inline" not in csp
    assert CAPTCHA_SECRET not in html
    assert submit(client, **{field: "ok"}).status_code == 200


def test_without_a_provider_no_widget_no_origin_no_check(client, verify, sign_up):
    page = client.get("/")
    assert page.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "data-sitekey" not in page.get_data(as_text=True)
    assert sign_up().status_code == 200
    assert verify.checks == []


def test_the_honeypot_answers_before_the_captcha_is_asked(keygen, verify):
    client = captcha_app(keygen, verify)
    assert submit(client, website="https://spam.example").status_code == 202
    assert verify.checks == [] and keygen.calls() == []


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"CAPTCHA_PROVIDER": "recaptcha-v9"}, "CAPTCHA_PROVIDER must be none, turnstile"),
        ({"CAPTCHA_PROVIDER": "turnstile"}, "CAPTCHA_SITE_KEY is required when CAPTCHA_PROVIDER"),
        (
            {"CAPTCHA_PROVIDER": "hcaptcha", "CAPTCHA_SITE_KEY": "x"},
            "CAPTCHA_SECRET_KEY is required when CAPTCHA_PROVIDER",
        ),
        ({"CAPTCHA_VERIFY_URL": "http://verify.example/siteverify"}, "CAPTCHA_VERIFY_URL must use"),
        ({"CAPTCHA_TIMEOUT": "0"}, "CAPTCHA_TIMEOUT must be a positive number"),
        (
            {"CAPTCHA_PROVIDER": "turnstile", "CAPTCHA_SITE_KEY": "x", "CAPTCHA_SECRET_KEY": "y"},
            "CAPTCHA_PROVIDER needs PUBLIC_URL or TRUSTED_HOSTS",
        ),
        ({"CAPTCHA_ACTION": "sign up!"}, "CAPTCHA_ACTION must be up to 32 letters"),
        (
            {
                "CAPTCHA_PROVIDER": "hcaptcha",
                "CAPTCHA_SITE_KEY": "x",
                "CAPTCHA_SECRET_KEY": "y",
                "TRUSTED_HOSTS": "a.example",
                "CAPTCHA_ACTION": "signup",
            },
            "CAPTCHA_ACTION is Turnstile's",
        ),
    ],
)
def test_bad_captcha_settings_refuse_to_start(env, problem):
    from support.portal import GOOD

    with pytest.raises(ConfigError) as caught:
        load_settings({**GOOD, **env})
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems
    assert CAPTCHA_SECRET not in str(caught.value)


def test_captcha_settings_are_parsed_and_the_secret_stays_out_of_repr():
    from support.portal import GOOD

    settings = load_settings(
        {
            **GOOD,
            "CAPTCHA_PROVIDER": "Turnstile",
            "CAPTCHA_SITE_KEY": SITE_KEY,
            "CAPTCHA_SECRET_KEY": CAPTCHA_SECRET,
            "TRUSTED_HOSTS": "licenses.example.com",  # whose answers count
        }
    )
    assert (settings.captcha_provider, settings.captcha_verify_url) == ("turnstile", "")
    assert settings.captcha_timeout == 5.0
    assert CAPTCHA_SECRET not in repr(settings)


@pytest.mark.parametrize(
    ("settings", "confirms", "accepted"),
    [
        ({}, {"hostname": "localhost"}, True),
        ({}, {"hostname": "phishing.example"}, False),  # solved on another site, our site key
        ({}, {}, False),  # the provider named no host name
        (
            {"trusted_hosts": ("localhost", ".example.com")},
            {"hostname": "signup.example.com"},
            True,
        ),
        (
            {"trusted_hosts": ("localhost", ".example.com")},
            {"hostname": "example.com.evil.test"},
            False,
        ),
        (
            {"trusted_hosts": (), "public_url": "https://licenses.example.com"},
            {"hostname": "licenses.example.com"},
            True,
        ),
        ({"captcha_action": "signup"}, {"hostname": "localhost", "action": "signup"}, True),
        ({"captcha_action": "signup"}, {"hostname": "localhost", "action": "login"}, False),
        ({"captcha_action": "signup"}, {"hostname": "localhost"}, False),
    ],
)
def test_an_answer_counts_only_for_this_portals_host_name_and_action(
    keygen, verify, settings, confirms, accepted
):
    verify.confirms = confirms
    if "public_url" in settings:
        settings = {
            **settings,
            "mail_server": "127.0.0.1",
            "mail_default_sender": "keys@example.com",
            "outbox_interval": 0,
        }
    client = captcha_app(keygen, verify, **settings)
    response = submit(client, **{"cf-turnstile-response": "an-answer"})
    if accepted:
        assert response.status_code == 200
        assert len(keygen.users()) == 1
    else:
        assert response.status_code == 422
        assert "complete the check that you are not a robot" in response.get_data(as_text=True)
        assert keygen.calls() == []


def test_turnstiles_action_is_on_the_widget(keygen, verify):
    client = captcha_app(keygen, verify, captcha_action="signup")
    assert 'class="cf-turnstile" data-sitekey="' in client.get("/").get_data(as_text=True)
    assert 'data-action="signup"' in client.get("/").get_data(as_text=True)
