"""What Keygen's refusals say about the portal's settings: one sentence for each way a Keygen
setup can refuse the portal, naming what to change. /readyz and `flask doctor` show them
(health.keygen_checks), and a signup that meets a refusal logs what_to_do() for the operator.

The refusals are told apart by KeygenError.reason (keygen_errors.py), which reads Keygen's
answers; the sentences here only name settings.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from keygen_api import (
    API_VERSION,
    ENDPOINT_PERMISSIONS,
    NEEDED_PERMISSIONS,
    OLDEST_KEYGEN,
    Bearer,
    KeygenClient,
    KeygenError,
    missing_permissions,
)

# Permissions without which no signup completes: readiness fails on these (the others fail
# only some steps: a lookup after a timeout, an undo, lost-key recovery).
EVERY_SIGNUP = frozenset(
    {ENDPOINT_PERMISSIONS["users.create"], ENDPOINT_PERMISSIONS["licenses.create"]}
)

# What an operator must do about a refusal that stops signups, by reason.
_TO_DO = {
    "payment_required": (
        "the Keygen account is over its plan's limits (402 Payment Required: its daily request "
        "limit or its licensed users). Upgrade the plan or add a payment method in Keygen"
    ),
    "subscription": (
        "the Keygen account's subscription is not active (403). Renew it in Keygen's billing "
        "settings"
    ),
    "permission": (
        "KEYGEN_PRODUCT_TOKEN lacks the permission {permission}. Give the token every "
        "permission `flask doctor` lists"
    ),
    "token": "Keygen refused KEYGEN_PRODUCT_TOKEN. `flask doctor` says why",
    "token_expired": "KEYGEN_PRODUCT_TOKEN has expired. Create a product token in Keygen",
    "host": "Keygen does not serve KEYGEN_API_URL's host name. `flask doctor` says why",
    "api_version": "Keygen does not know KEYGEN_API_VERSION. `flask doctor` says which to set",
    "environment_unknown": "Keygen has no environment KEYGEN_ENVIRONMENT names",
    "environments_unsupported": "this Keygen (CE) has no environments: empty KEYGEN_ENVIRONMENT",
}


def what_to_do(error: KeygenError) -> str:
    """For the log line of a signup stopped by a refusal only an operator can fix."""
    sentence = _TO_DO.get(error.reason)
    if sentence is None:
        return "Check KEYGEN_PRODUCT_TOKEN, KEYGEN_POLICY_ID and the Keygen account's plan"
    return sentence.format(permission=error.permission or "the call needs")


def refused_for_good(error: KeygenError) -> bool:
    """A 403 to a delete that no retry will change: the user holds or is attached to a license
    of another product (`UserPolicy#destroy?`, app/policies/user_policy.rb), or the token may
    not delete users. A lapsed subscription's 403 passes once it is renewed."""
    return error.status == 403 and error.reason in ("denied", "permission")


def why_kept(error: KeygenError) -> str:
    """Why Keygen refused to delete a user, for the log line of a KEPT signup."""
    if error.reason == "denied":
        return "the user holds, or is attached to, a license of another product"
    return what_to_do(error)


def account_problem(error: KeygenError) -> str | None:
    """The sentence for a refusal of the account itself (its plan, its subscription), which
    Keygen gives on every call it checks the subscription for, or None."""
    if error.reason in ("payment_required", "subscription"):
        return f"Keygen refused the portal ({error}): {_TO_DO[error.reason]}."
    return None


def token_problem(
    keygen: KeygenClient, error: KeygenError, timeout: tuple[float, float], *, thorough: bool
) -> str:
    """Why GET /me failed, for the "keygen" check. ``thorough`` (the doctor) may ask once more
    to tell an environment problem from a bad token."""
    reason, url = error.reason, keygen.api_url
    host = urlsplit(url).netloc
    if reason in _WHERE:
        return _WHERE[reason](keygen, error, host)
    if reason == "token":
        return _unknown_token(keygen, error, timeout, thorough=thorough)
    if reason == "permission":
        return (
            f"KEYGEN_PRODUCT_TOKEN lacks the permission product.read, so Keygen will not say whose "
            f"it is ({error}). Give the token these permissions: {', '.join(NEEDED_PERMISSIONS)}."
        )
    if reason == "token_expired":
        return f"KEYGEN_PRODUCT_TOKEN has expired ({error}): create a product token in Keygen."
    if error.status in (401, 403):
        return (
            f"Keygen refused KEYGEN_PRODUCT_TOKEN ({error}): the token is wrong, expired or "
            "revoked, or belongs to another account. Create a product token in Keygen."
        )
    return (
        f"Keygen at {url} did not answer usefully ({error}): check KEYGEN_API_URL and that "
        "this machine can reach it."
    )


def _host(keygen: KeygenClient, error: KeygenError, host: str) -> str:
    return (
        f"Keygen at {keygen.api_url} answered 403 with an empty body: it does not know the host "
        f"name {host}. A self-hosted Keygen answers only the names in its KEYGEN_HOST and "
        "KEYGEN_HOSTS: add it there, or use one of those in KEYGEN_API_URL. (Not a token problem.)"
    )


def _no_route(keygen: KeygenClient, error: KeygenError, host: str) -> str:
    if not keygen.account:
        return (
            f"Keygen at {keygen.api_url} has no /v1/me ({error}): KEYGEN_API_URL is not the root "
            "of a Keygen API."
        )
    return (
        f"Keygen at {keygen.api_url} serves no /v1/accounts/... routes under the host name "
        f"{host} ({error}): it is a custom domain, or a self-hosted Keygen whose KEYGEN_HOST "
        "has another domain. This is not a bad token or account: with a custom domain leave "
        "KEYGEN_ACCOUNT_ID empty; otherwise use the host name Keygen was set up with."
    )


def _account_required(keygen: KeygenClient, error: KeygenError, host: str) -> str:
    return (
        f"Keygen at {keygen.api_url} does not know {host} as an account's custom domain, so it "
        "needs the account: set KEYGEN_ACCOUNT_ID (or add the domain to the account in Keygen)."
    )


def _account_invalid(keygen: KeygenClient, error: KeygenError, host: str) -> str:
    return (
        f"This self-hosted Keygen serves only its own account ({error.detail}), not "
        f"{keygen.account!r}: set KEYGEN_ACCOUNT_ID to it, or leave KEYGEN_ACCOUNT_ID empty."
    )


def _account_unknown(keygen: KeygenClient, error: KeygenError, host: str) -> str:
    return (
        f"Keygen at {keygen.api_url} knows no account {keygen.account!r}: check "
        "KEYGEN_ACCOUNT_ID (and KEYGEN_API_URL for a self-hosted Keygen)."
    )


def _api_version(keygen: KeygenClient, error: KeygenError, host: str) -> str:
    if keygen.api_version != API_VERSION:
        fix = f"it is an older Keygen: set KEYGEN_API_VERSION={API_VERSION}, or leave it unset."
    else:
        fix = f"it is older than Keygen {OLDEST_KEYGEN}, the oldest the portal works with."
    return (
        f"Keygen at {keygen.api_url} does not know API version {keygen.api_version} "
        f"({error}): {fix}"
    )


def _environment_unknown(keygen: KeygenClient, error: KeygenError, host: str) -> str:
    return (
        f"Keygen has no environment {keygen.environment!r} ({error}): set KEYGEN_ENVIRONMENT "
        "to the code of one of the account's environments, or leave it empty for the global one."
    )


def _environments_unsupported(keygen: KeygenClient, error: KeygenError, host: str) -> str:
    return f"This Keygen is CE and has no environments ({error}): leave KEYGEN_ENVIRONMENT empty."


_WHERE = {
    "host": _host,
    "no_route": _no_route,
    "account_required": _account_required,
    "account_invalid": _account_invalid,
    "account_unknown": _account_unknown,
    "api_version": _api_version,
    "environment_unknown": _environment_unknown,
    "environments_unsupported": _environments_unsupported,
    "payment_required": lambda keygen, error, host: account_problem(error),
    "subscription": lambda keygen, error, host: account_problem(error),
}


def _unknown_token(
    keygen: KeygenClient, error: KeygenError, timeout: tuple[float, float], *, thorough: bool
) -> str:
    """Keygen answers 401 TOKEN_INVALID alike to a revoked or mistyped token and to a token of
    another environment than the one asked in: the lookup is scoped to the request's environment
    (app/services/token_lookup_service.rb, `for_environment`). Only Keygen EE has environments;
    asked again in the global environment, a token of it answers."""
    if error.edition != "EE":
        return (
            f"Keygen refused KEYGEN_PRODUCT_TOKEN ({error}): the token is wrong, expired or "
            "revoked, or belongs to another account. Create a product token in Keygen."
        )
    if not keygen.environment:
        return (
            f"Keygen refused KEYGEN_PRODUCT_TOKEN ({error}): it knows no such token in the "
            "global environment. Keygen answers the same to a revoked or mistyped token and to "
            "a token of an environment: for the latter set KEYGEN_ENVIRONMENT to the "
            "environment's code; otherwise create a product token in Keygen."
        )
    in_global = False
    if thorough:
        try:
            keygen.me(timeout=timeout, global_environment=True)
            in_global = True
        except KeygenError:
            pass
    where = f"environment {keygen.environment!r}"
    if in_global:
        return (
            f"Keygen refused KEYGEN_PRODUCT_TOKEN in {where} ({error}), but knows it in the "
            f"global environment: leave KEYGEN_ENVIRONMENT empty, or use a product token of "
            f"{where}."
        )
    also = " nor in the global one" if thorough else ""
    return (
        f"Keygen refused KEYGEN_PRODUCT_TOKEN ({error}): it knows no such token in {where}"
        f"{also}. The token belongs to another environment (set KEYGEN_ENVIRONMENT to its "
        "code), or it was revoked or mistyped (create a product token in Keygen)."
    )


def permissions_problem(
    bearer: Bearer, needed: dict[str, str] = NEEDED_PERMISSIONS
) -> tuple[str, bool] | None:
    """(the sentence, whether no signup can complete) when the token lacks permissions the
    portal needs (Keygen EE), or None."""
    missing = missing_permissions(bearer.permissions, needed)
    if not missing:
        return None
    uses = "; ".join(f"{permission} ({needed[permission]})" for permission in missing)
    detail = (
        f"KEYGEN_PRODUCT_TOKEN lacks {len(missing)} of the permissions the portal needs: {uses}. "
        "Keygen refuses those calls with 403: give the token these permissions in Keygen, or use "
        "a product token with all of its product's permissions."
    )
    return detail, bool(EVERY_SIGNUP & set(missing))
