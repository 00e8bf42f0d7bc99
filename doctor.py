"""`flask doctor`: checks the settings and the world, and says in plain words what is wrong.

Each check gives one health.Check: OK, WARN (works, but unsafe or unusual), ERROR (signups fail)
or SKIP (not checked, and why). What Keygen says is asked the same way /readyz asks it.
Settings that cannot even be parsed never get here: config.py refuses to start and names them.

With ``--url`` (the address the public uses), the doctor also sends a signed probe through the
proxy to /_doctor and compares what the portal saw with what it should see: https, the public
Host, and the client's own address, which a client must not be able to choose.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlsplit

import requests

import email_rules
import keygen_webhooks
from config import Settings
from health import ERROR, OK, SKIP, WARN, Check, keygen_checks
from journal import Journal
from keygen_api import KeygenClient, KeygenError
from mailer import MailConfigurationError, Mailer, MailError
from protection import RateLimits

TIMEOUT = (3.05, 10.0)

# Values copied from examples and tutorials instead of generated (lower-cased, no separators).
PLACEHOLDERS = (
    "changeme",
    "secret",
    "yoursecretkey",
    "password",
    "example",
    "placeholder",
    "replaceme",
    "youwillneverguess",
    "devkey",
    "testkey",
)
MIN_DISTINCT_CHARACTERS = 10  # 32 random hex digits have about 14 distinct characters


def examine(
    settings: Settings,
    keygen: KeygenClient,
    journal: Journal,
    limits: RateLimits,
    *,
    mailer: Mailer | None = None,
    url: str | None = None,
) -> list[Check]:
    return [
        *keygen_checks(
            keygen,
            settings.keygen_policy_id,
            timeout=TIMEOUT,
            thorough=True,
            self_service=settings.self_service,
        ),
        secret_key_check(settings.secret_key),
        database_check(journal),
        *kept_signups_checks(journal),
        ratelimit_check(settings, limits),
        mail_check(settings, mailer),
        proxy_check(settings, url),
        disposable_check(settings),
        webhook_key_check(settings, keygen),
    ]


def secret_key_check(secret_key: str) -> Check:
    squashed = "".join(c for c in secret_key.lower() if c.isalnum())
    placeholder = next((p for p in PLACEHOLDERS if p in squashed), None)
    if len(secret_key) < 32:
        problem = "is shorter than 32 characters"
    elif placeholder:
        problem = f"contains the placeholder word {placeholder!r}"
    elif len(set(secret_key)) < MIN_DISTINCT_CHARACTERS:
        problem = f"uses only {len(set(secret_key))} different characters"
    else:
        return Check("secret_key", OK, "SECRET_KEY looks random.")
    return Check(
        "secret_key",
        ERROR,
        f"SECRET_KEY {problem}, so it can be guessed and anyone could forge the form's CSRF "
        "tokens. Generate one with: "
        'python -c "import secrets; print(secrets.token_urlsafe(48))"',
    )


def database_check(journal: Journal) -> Check:
    try:
        journal.ping()
    except Exception as error:  # any driver error: its class says which
        return Check(
            "database",
            ERROR,
            f"The signup journal's database does not answer ({type(error).__name__}): "
            "check DATABASE_URL and that the database server is running.",
        )
    return Check("database", OK, "The signup journal's database answers.")


def kept_signups_checks(journal: Journal) -> list[Check]:
    """Signups whose Keygen user Keygen refused to delete (journal.State.KEPT), if any."""
    try:
        kept = journal.kept()
    except Exception:  # the database check says why
        return []
    if not kept:
        return []
    latest = kept[-1]
    detail = (
        f"{len(kept)} signup(s) got no license, and Keygen refused to delete their users (they "
        "hold or are attached to a license of another product, or the token lacks "
        "user.delete), so those users stay in Keygen: delete them there if they should go. "
        f"The latest: signup {latest.id}, user {latest.user_id} ({latest.last_error})."
    )
    return [Check("kept", WARN, detail, required=False)]


def ratelimit_check(settings: Settings, limits: RateLimits) -> Check:
    uri = settings.ratelimit_storage_uri
    if not uri.startswith("memory://"):
        if limits.reachable():
            return Check("rate_limits", OK, "The rate-limit storage answers.")
        return Check(
            "rate_limits",
            ERROR,
            "The rate-limit storage (RATELIMIT_STORAGE_URI) does not answer, so every signup is "
            "refused: check the address and that Redis is running.",
        )
    workers = settings.web_concurrency
    if workers > 1:
        return Check(
            "rate_limits",
            WARN,
            f"RATELIMIT_STORAGE_URI is memory://, so each of the {workers} gunicorn workers (and "
            "each instance) counts on its own and the limits are that many times looser. Use "
            "redis://, or WEB_CONCURRENCY=1 and one instance.",
        )
    return Check(
        "rate_limits", OK, "Rate limits are kept in memory, which is right for one process."
    )


def mail_check(settings: Settings, mailer: Mailer | None) -> Check:
    if mailer is None:
        return Check(
            "mail", SKIP, "Email is off (no MAIL_SERVER): keys are shown on the page only."
        )
    if not settings.mail_server:
        return Check(
            "mail", OK, "Email goes to the console: right for the demo, not for customers."
        )
    where = f"{settings.mail_server}:{settings.mail_port}"
    try:
        mailer.check()
    except MailConfigurationError as error:
        return Check(
            "mail",
            ERROR,
            f"The mail server {where} refused us ({error}): check MAIL_USERNAME and "
            "MAIL_PASSWORD, and that MAIL_USE_TLS / MAIL_USE_SSL and MAIL_PORT match the server. "
            "Emails wait in the outbox until it accepts them.",
        )
    except MailError as error:
        return Check(
            "mail",
            ERROR,
            f"Could not reach the mail server {where} ({error}): check MAIL_SERVER, MAIL_PORT "
            "and that this machine may connect to it. Emails wait in the outbox meanwhile.",
        )
    login = " and accepts the login" if settings.mail_username else ""
    return Check("mail", OK, f"The mail server {where} answers{login}.")


def disposable_check(settings: Settings) -> Check:
    """The bundled list of throwaway-inbox domains: an operator updates it by bumping the pin."""
    count, version = email_rules.disposable_list()
    held = f"The disposable-mail list ({email_rules.DISPOSABLE_PACKAGE} {version}) holds"
    if not settings.block_disposable_email:
        return Check("disposable", SKIP, f"BLOCK_DISPOSABLE_EMAIL is off. {held} {count} domains.")
    if settings.email_domains_allow:
        detail = f"{held} {count} domains; EMAIL_DOMAINS_ALLOW decides first."
        return Check("disposable", OK, detail)
    return Check("disposable", OK, f"{held} {count} domains, refused at signup.")


def webhook_key_check(settings: Settings, keygen: KeygenClient) -> Check:
    """Forgot-password trusts only webhooks that verify with KEYGEN_PUBLIC_KEY: another
    account's key (a copy-paste slip) refuses every reset request as it arrives."""
    if not settings.password_reset_enabled:
        detail = "Forgot-password is off (SELF_SERVICE, KEYGEN_PUBLIC_KEY and email turn it on)."
        return Check("webhook_key", SKIP, detail)
    compare = "compare KEYGEN_PUBLIC_KEY with the Ed25519 public key in Keygen's dashboard"
    try:
        answer = keygen.account_webhook_key(timeout=TIMEOUT)
    except KeygenError as error:
        why = f"the token lacks {error.permission}" if error.permission else str(error)
        detail = f"Could not read the account's webhook key ({why}): {compare}."
        return Check("webhook_key", WARN, detail, required=False)
    if answer is None:
        why = "without KEYGEN_ACCOUNT_ID" if not settings.keygen_account_id else "from this Keygen"
        detail = f"KEYGEN_PUBLIC_KEY not checked: no account key to read {why}; {compare}."
        return Check("webhook_key", SKIP, detail)
    ours = keygen_webhooks.public_key(settings.keygen_public_key).public_bytes_raw()
    try:
        matches = keygen_webhooks.public_key(answer).public_bytes_raw() == ours
    except ValueError:
        detail = f"The account's webhook key came in a form the portal does not know: {compare}."
        return Check("webhook_key", WARN, detail, required=False)
    if not matches:
        detail = (
            "KEYGEN_PUBLIC_KEY is not this account's Ed25519 key: every forgot-password webhook "
            "will be refused. Copy the Ed25519 public key from Keygen's dashboard."
        )
        return Check("webhook_key", ERROR, detail, required=False)
    return Check("webhook_key", OK, "KEYGEN_PUBLIC_KEY is the account's webhook key.")


# -- The proxy, as a request sees it -------------------------------------------------------------

PROBE_HEADER = "X-Portal-Doctor"
PROBE_MAX_AGE = 120  # seconds
SPOOFED_ADDRESS = "198.51.100.77"  # TEST-NET-2: no real client has it


def sign_probe(secret_key: str, now: float | None = None) -> str:
    stamp = str(int(now if now is not None else time.time()))
    return f"{stamp}.{_probe_mac(secret_key, stamp)}"


def probe_is_genuine(secret_key: str, value: str | None, now: float | None = None) -> bool:
    """Only the holder of SECRET_KEY (the doctor) may see what the portal sees."""
    stamp, _, mac = (value or "").partition(".")
    if not stamp.isdigit() or not hmac.compare_digest(mac, _probe_mac(secret_key, stamp)):
        return False
    return abs((now if now is not None else time.time()) - int(stamp)) <= PROBE_MAX_AGE


def _probe_mac(secret_key: str, stamp: str) -> str:
    message = b"portal-doctor-probe:" + stamp.encode()
    return hmac.new(secret_key.encode(), message, hashlib.sha256).hexdigest()


def proxy_check(settings: Settings, url: str | None) -> Check:
    if not url:
        return Check(
            "proxy",
            SKIP,
            "Proxy settings not checked: run `flask doctor --url https://your.public.address` "
            "to send a probe through the proxy.",
        )
    url = url.rstrip("/")
    headers = {PROBE_HEADER: sign_probe(settings.secret_key), "X-Forwarded-For": SPOOFED_ADDRESS}
    try:
        response = requests.get(url + "/_doctor", headers=headers, timeout=TIMEOUT)
    except requests.RequestException as error:
        return Check("proxy", ERROR, f"Could not reach {url} ({type(error).__name__}).")
    if response.status_code != 200:
        return Check(
            "proxy",
            ERROR,
            f"{url}/_doctor answered {response.status_code}, not the probe's answer: the address "
            "is not this portal, it runs with another SECRET_KEY, or its Host is not in "
            "TRUSTED_HOSTS.",
        )
    return _judge(settings, urlsplit(url), response.json())


def _judge(settings: Settings, public, seen: dict) -> Check:
    hops = settings.trusted_proxy_hops
    entries = [entry.strip() for entry in seen["forwarded_for"].split(",") if entry.strip()]
    proxied = entries != [SPOOFED_ADDRESS]  # a proxy appended to, or replaced, our header
    believed = seen["proxy_fix"] and len(entries) >= hops  # the address came from the header
    if seen["remote_addr"] == SPOOFED_ADDRESS:
        return Check(
            "proxy",
            ERROR,
            f"A client can choose its own address: the portal believed an X-Forwarded-For the "
            f"doctor made up. TRUSTED_PROXY_HOPS={hops} trusts more proxies than the request "
            "passed; set it to the number of proxies in front of the portal.",
        )
    if proxied and not believed:
        fix = (
            "set TRUSTED_PROXY_HOPS to the number of proxies in front of the portal (usually 1)"
            if hops == 0
            else f"add the proxy's address {seen['peer']} to TRUSTED_PROXIES"
        )
        return Check(
            "proxy",
            ERROR,
            f"Every client appears as the proxy's address {seen['peer']}, so all of them share "
            f"one rate-limit bucket and the portal cannot see https: {fix}.",
        )
    if public.scheme == "https" and seen["scheme"] != "https":
        return Check(
            "proxy",
            ERROR,
            f"The public address is https but the portal sees {seen['scheme']}: have the proxy "
            "send X-Forwarded-Proto (the recipes in deploy/ do).",
        )
    if seen["host"].lower() != public.netloc.lower():
        return Check(
            "proxy",
            WARN,
            f"The portal sees the Host {seen['host']!r}, not {public.netloc!r}: have the proxy "
            "pass the public Host (nginx: proxy_set_header Host $http_host).",
        )
    if not proxied and hops:
        return Check(
            "proxy",
            WARN,
            f"TRUSTED_PROXY_HOPS={hops}, but the probe reached the portal without passing a "
            "proxy: clients that can do the same must not be able to reach it.",
        )
    where = "behind the proxy" if proxied else "without a proxy"
    return Check(
        "proxy",
        OK,
        f"Reached {where}, the portal sees {seen['scheme']}, the public Host "
        "and the client's own address.",
    )
