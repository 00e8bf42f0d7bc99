"""`flask doctor`: checks the settings and the world, and says in plain words what is wrong.

Each check gives one Finding: OK, WARN (works, but unsafe or unusual) or ERROR (signups fail).
Settings that cannot even be parsed never get here: config.py refuses to start and names them.
There are no checks for proxy, SMTP or rate-limit settings because the portal has none yet.
"""

from __future__ import annotations

from dataclasses import dataclass

from config import Settings
from journal import Journal
from keygen_api import (
    KeygenAccessDenied,
    KeygenClient,
    KeygenError,
    KeygenNotFound,
)

TIMEOUT = (3.05, 10.0)
OK, WARN, ERROR = "OK", "WARN", "ERROR"

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


@dataclass(frozen=True)
class Finding:
    level: str
    sentence: str

    def line(self) -> str:
        return f"{self.level:<5} {self.sentence}"


def examine(settings: Settings, keygen: KeygenClient, journal: Journal) -> list[Finding]:
    return [
        *keygen_findings(settings, keygen),
        secret_key_finding(settings.secret_key),
        database_finding(journal),
    ]


def keygen_findings(settings: Settings, keygen: KeygenClient) -> list[Finding]:
    url = settings.keygen_api_url
    try:
        bearer = keygen.me(timeout=TIMEOUT)
    except KeygenNotFound:
        return [
            Finding(
                ERROR,
                f"Keygen at {url} knows no account {settings.keygen_account_id!r}: "
                "check KEYGEN_ACCOUNT_ID (and KEYGEN_API_URL for a self-hosted Keygen).",
            )
        ]
    except KeygenAccessDenied as error:
        return [
            Finding(
                ERROR,
                f"Keygen refused KEYGEN_PRODUCT_TOKEN ({error}): the token is wrong, expired "
                "or revoked, or belongs to another account. Create a product token in Keygen.",
            )
        ]
    except KeygenError as error:
        return [
            Finding(
                ERROR,
                f"Keygen at {url} did not answer usefully ({error}): check KEYGEN_API_URL and "
                "that this machine can reach it.",
            )
        ]
    if not bearer.is_product:
        kind = bearer.token_kind or f"a token of {bearer.type}"
        return [
            Finding(
                ERROR,
                f"KEYGEN_PRODUCT_TOKEN is not a product token (it is {kind}): the portal needs "
                "a product token, which can do only what the portal needs. Create one in Keygen.",
            )
        ]
    findings = [Finding(OK, f"Keygen answers, and the token is product {bearer.id}'s.")]
    findings.append(policy_finding(settings.keygen_policy_id, bearer.id, keygen))
    findings.append(protection_finding(keygen))
    return findings


def policy_finding(policy_id: str, product_id: str, keygen: KeygenClient) -> Finding:
    try:
        policy = keygen.get_policy(policy_id, timeout=TIMEOUT)
    except KeygenNotFound:
        # A product token cannot see other products' policies: both look the same from here.
        return Finding(
            ERROR,
            f"KEYGEN_POLICY_ID {policy_id} does not exist, or belongs to another product than "
            "the token's: no license can be issued. Use a policy of the token's product.",
        )
    except KeygenError as error:
        return Finding(ERROR, f"Keygen would not show policy {policy_id} ({error}).")
    if policy.product_id != product_id:
        return Finding(
            ERROR,
            f"KEYGEN_POLICY_ID {policy_id} belongs to product {policy.product_id}, not to the "
            f"token's product {product_id}: no license can be issued.",
        )
    return Finding(OK, f"Policy {policy_id} exists and belongs to the token's product.")


def protection_finding(keygen: KeygenClient) -> Finding:
    try:
        protected = keygen.account_is_protected(timeout=TIMEOUT)
    except KeygenError as error:
        return Finding(WARN, f"Could not tell whether the Keygen account is protected ({error}).")
    if protected:
        return Finding(OK, "The Keygen account is protected: only tokens can create users.")
    return Finding(
        WARN,
        "The Keygen account is not protected: anyone can create users directly against "
        "Keygen's API, bypassing the portal. Turn on 'Protected' in the account's settings.",
    )


def secret_key_finding(secret_key: str) -> Finding:
    squashed = "".join(c for c in secret_key.lower() if c.isalnum())
    placeholder = next((p for p in PLACEHOLDERS if p in squashed), None)
    if len(secret_key) < 32:
        problem = "is shorter than 32 characters"
    elif placeholder:
        problem = f"contains the placeholder word {placeholder!r}"
    elif len(set(secret_key)) < MIN_DISTINCT_CHARACTERS:
        problem = f"uses only {len(set(secret_key))} different characters"
    else:
        return Finding(OK, "SECRET_KEY looks random.")
    return Finding(
        ERROR,
        f"SECRET_KEY {problem}, so it can be guessed and anyone could forge the form's CSRF "
        "tokens. Generate one with: "
        'python -c "import secrets; print(secrets.token_urlsafe(48))"',
    )


def database_finding(journal: Journal) -> Finding:
    try:
        journal.ping()
    except Exception as error:  # any driver error: its class says which
        return Finding(
            ERROR,
            f"The signup journal's database does not answer ({type(error).__name__}): "
            "check DATABASE_URL and that the database server is running.",
        )
    return Finding(OK, "The signup journal's database answers.")
