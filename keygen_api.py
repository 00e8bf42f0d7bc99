"""The Keygen API as the portal uses it: URLs, headers, Keygen's limits, HTTP connections.

Everything the portal knows about Keygen lives here and in the modules this one re-exports:
keygen_records.py (the resources read from Keygen's JSON:API documents), keygen_errors.py
(Keygen's answers as exceptions named after what the caller should do next) and
keygen_permissions.py (what the product token needs); keygen_self_service.py holds the calls made
as a signed-in person, and circuit.py the circuit breaker and the Retry-After gate. The rest of
the portal imports `KeygenClient`, the records and the errors from here. The facts are checked
against keygen-api's source (github.com/keygen-sh/keygen-api), whose files the comments name.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter

from circuit import CircuitBreaker, RetryAfterGate
from keygen_account import PROBE_EMAIL, AccountCalls
from keygen_errors import (
    KeygenAccessDenied,
    KeygenCircuitOpen,
    KeygenConflict,
    KeygenError,
    KeygenInvalid,
    KeygenNotFound,
    KeygenRateLimited,
    KeygenRejected,
    KeygenSecondFactorNeeded,
    KeygenSecondFactorWrong,
    KeygenUnavailable,
    Problem,
    error_for,
    json_or_none,
    seconds_until_quota_resets,
)
from keygen_permissions import (
    ENDPOINT_PERMISSIONS,
    NEEDED_PERMISSIONS,
    SELF_SERVICE_PERMISSIONS,
    WILDCARD_PERMISSION,
    missing_permissions,
    needed_permissions,
)
from keygen_records import Bearer, License, Machine, Policy, Token, User
from keygen_self_service import SelfServiceCalls

__all__ = [
    "ENDPOINT_PERMISSIONS",
    "NEEDED_PERMISSIONS",
    "PROBE_EMAIL",
    "SELF_SERVICE_PERMISSIONS",
    "WILDCARD_PERMISSION",
    "Bearer",
    "CircuitBreaker",
    "KeygenAccessDenied",
    "KeygenCircuitOpen",
    "KeygenClient",
    "KeygenConflict",
    "KeygenError",
    "KeygenInvalid",
    "KeygenNotFound",
    "KeygenRateLimited",
    "KeygenRejected",
    "KeygenSecondFactorNeeded",
    "KeygenSecondFactorWrong",
    "KeygenUnavailable",
    "License",
    "Machine",
    "Policy",
    "Problem",
    "Token",
    "User",
    "missing_permissions",
    "needed_permissions",
]

log = logging.getLogger(f"portal.{__name__}")

# The Keygen-Version sent with every call (KEYGEN_API_VERSION). 1.7 is the newest that every
# supported Keygen knows: self-hosted CE/EE v1.3.0 to v1.4.x answer 400 INVALID_API_VERSION to
# 1.8 (their lib/keygen/version.rb is 1.7.0, which config/initializers/request_migrations.rb
# makes the newest API version). The only migration between 1.7 and 1.8,
# app/migrations/rename_credential_error_codes_for_token_migration.rb, rewrites POST /tokens'
# 401 codes into CREDENTIALS_INVALID; nothing else the portal reads or sends changes. Keygen
# before v1.3.0 (API 1.5) refuses a license's `owner` relationship, so it is not supported.
API_VERSION = "1.7"
API_VERSIONS = ("1.7", "1.8")  # what KEYGEN_API_VERSION may pin
OLDEST_KEYGEN = "v1.3.0"  # the oldest self-hosted Keygen CE/EE release the portal works with
# Keygen Cloud's domain: its hosts find an account only by the URL's /accounts/<id>, never by
# the Host, which only a custom domain can do (resolve_account_service.rb refuses "internal").
CLOUD_DOMAIN = "keygen.sh"
MEDIA_TYPE = "application/vnd.api+json"
USER_AGENT = "keygen-signup-portal/1.0"

# Passwords: Keygen refuses shorter ones (app/models/user.rb, `length: { minimum: 6 }`), and
# hashes with bcrypt, which silently ignores every byte past the 72nd.
MIN_PASSWORD_LENGTH = 6
MAX_PASSWORD_BYTES = 72

# Token values start with their kind (app/models/token.rb, `prefix`): only a product
# token can do what the portal needs, and nothing more.
PRODUCT_TOKEN_PREFIX = "prod-"  # noqa: S105 (a prefix, not a secret)
_OTHER_TOKEN_KINDS = {
    "admin": "an admin token",
    "user": "a user token",
    "activ": "a license activation token",
    "env": "an environment token",
    "dev": "a developer token",
    "sales": "a sales-agent token",
    "spprt": "a support-agent token",
    "read": "a read-only token",
}


def token_kind(token: str) -> str | None:
    """What kind of token other than a product token this is ("an admin token"), if any."""
    return _OTHER_TOKEN_KINDS.get(token.split("-", 1)[0])


# -- Protecting Keygen and ourselves -----------------------------------------------------------

MAX_QUOTA_WAIT = 60.0  # a Reset further out than this is a clock problem, not Keygen's window


def quota_used_up_until(response: requests.Response) -> float | None:
    """When Keygen's rate-limit window resets (epoch seconds), if this answer says it is used
    up: a 429, or X-RateLimit-Remaining 0. None while calls remain (or Keygen sends no limit
    headers, as self-hosted Keygen does by default)."""
    headers = response.headers
    try:
        if response.status_code == 429 and "Retry-After" in headers:
            return time.time() + seconds_until_quota_resets(response)
        if int(headers.get("X-RateLimit-Remaining", "1")) > 0:
            return None
        return float(headers["X-RateLimit-Reset"])
    except (KeyError, ValueError):
        return None


# -- Client -------------------------------------------------------------------------------------

# Called once per HTTP attempt, answered or not: (endpoint such as "users.create", the status or
# None when there was no answer, seconds). How the portal's metrics see Keygen (metrics.py).
Observer = Callable[[str, int | None, float], None]

_ACTIONS = {"GET": "show", "POST": "create", "DELETE": "destroy", "PATCH": "update"}


def endpoint_name(method: str, path: str) -> str:
    """'users.create', 'licenses.show', 'me': a request's route, never its ids or emails."""
    collection, _, rest = path.partition("/")
    if not collection:  # the account's own document, /v1/accounts/<id>
        return "accounts.show"
    if collection == "me":
        return "me"
    if not rest:
        return f"{collection}.{'index' if method == 'GET' else 'create'}"
    if "/actions/" in rest:  # users/{id}/actions/reset-password: users.reset_password
        return f"{collection}.{rest.rsplit('/', 1)[-1].replace('-', '_')}"
    return f"{collection}.{_ACTIONS.get(method, method.lower())}"


class KeygenClient(AccountCalls, SelfServiceCalls):
    """Calls Keygen with a product token (and, for self-service, with a person's own
    credentials: keygen_self_service.py; the doctor's questions about the account are in
    keygen_account.py). A requests Session per thread, never retries itself.

    Retries belong to the caller, which knows which requests are safe to repeat.
    """

    def __init__(
        self,
        api_url: str,
        account: str,
        token: str,
        *,
        api_version: str = API_VERSION,
        environment: str = "",
        connect_timeout: float = 3.05,
        read_timeout: float = 10.0,
        breaker: CircuitBreaker | None = None,
        clock: Callable[[], float] = time.monotonic,
        observer: Observer | None = None,
        on_quota_used_up: Callable[[float], None] | None = None,
    ):
        self.api_url = api_url.rstrip("/")
        self.account = account
        self.api_version = api_version
        self.environment = environment
        # Without an account, /v1/<resource>: a Keygen Cloud custom domain finds the account by
        # the Host, a singleplayer Keygen serves its only one (resolve_account_service.rb).
        self.base_url = f"{self.api_url}/v1"
        if account:
            self.base_url += f"/accounts/{quote(account, safe='')}"
        # Sent with every call, on top of requests' own defaults.
        self._headers = {
            "Accept": MEDIA_TYPE,
            "Authorization": f"Bearer {token}",
            "Keygen-Version": api_version,
            "User-Agent": USER_AGENT,
        }
        if environment:  # EE: tokens and records of an environment are found only with it
            self._headers["Keygen-Environment"] = environment
        try:  # a bad address or a token that cannot be a header: refused now, not per call
            requests.Request("GET", self.base_url, headers=self._headers).prepare()
        except requests.RequestException as error:  # the text would hold the token
            raise ValueError(f"unusable Keygen address or token: {type(error).__name__}") from None
        self.timeout = (connect_timeout, read_timeout)
        self._local = threading.local()
        self.breaker = breaker or CircuitBreaker(clock=clock)
        self.gate = RetryAfterGate(clock=clock)
        self.observer = observer
        # Told the epoch second at which Keygen's rate-limit window resets, whenever an answer
        # says the window is used up (admission.py holds every signup's turn until then).
        self.on_quota_used_up = on_quota_used_up

    def __repr__(self) -> str:
        return f"KeygenClient({self.base_url!r})"

    # The calls the portal makes.

    def me(
        self, *, timeout: tuple[float, float] | None = None, global_environment: bool = False
    ) -> Bearer:
        """Who the token belongs to; ``global_environment``: asked without KEYGEN_ENVIRONMENT
        (the doctor's second opinion on a token Keygen does not find)."""
        document = self._request(
            "GET", "me", timeout=timeout, global_environment=global_environment
        )
        return self._parse(Bearer.from_document, document)

    def get_policy(self, policy_id: str, *, timeout: tuple[float, float] | None = None) -> Policy:
        """A product token sees only its own product's policies: another's is a 404."""
        path = "policies/" + quote(policy_id, safe="")
        return self._parse(Policy.from_document, self._request("GET", path, timeout=timeout))

    def create_user(
        self,
        *,
        email: str,
        password: str,
        first_name: str | None,
        last_name: str | None,
        metadata: dict[str, Any] | None = None,
        timeout: tuple[float, float] | None = None,
    ) -> User:
        attributes: dict[str, Any] = {
            "firstName": first_name,
            "lastName": last_name,
            "email": email,
            "password": password,
        }
        if metadata:
            attributes["metadata"] = metadata
        body = {"data": {"type": "users", "attributes": attributes}}
        document = self._request("POST", "users", json=body, expect=201, timeout=timeout)
        return self._parse(User.from_document, document)

    def get_user(self, id_or_email: str, *, timeout: tuple[float, float] | None = None) -> User:
        path = "users/" + quote(id_or_email.lower(), safe="@")
        return self._parse(User.from_document, self._request("GET", path, timeout=timeout))

    def list_users(
        self, *, metadata: dict[str, str], timeout: tuple[float, float] | None = None
    ) -> list[User]:
        """Users whose metadata holds each key with exactly that value, newest first, up to 100
        (`has_scope :metadata` in app/controllers/api/v1/users_controller.rb, `search_metadata`
        in app/models/user.rb). A product token sees the users with the role user."""
        params = {f"metadata[{key}]": value for key, value in metadata.items()}
        params["limit"] = "100"
        document = self._request("GET", "users", params=params, timeout=timeout)
        return self._parse(lambda doc: [User.from_resource(item) for item in doc["data"]], document)

    def delete_user(self, user_id: str, *, timeout: tuple[float, float] | None = None) -> None:
        self._request("DELETE", "users/" + quote(user_id, safe=""), expect=204, timeout=timeout)

    def create_license(
        self,
        *,
        license_id: str,
        policy_id: str,
        owner_id: str,
        metadata: dict[str, Any] | None = None,
        timeout: tuple[float, float] | None = None,
    ) -> License:
        """Create a license with an id we chose, so that resending it can never duplicate it."""
        data: dict[str, Any] = {
            "type": "licenses",
            "id": license_id,
            "relationships": {
                "policy": {"data": {"type": "policies", "id": policy_id}},
                "owner": {"data": {"type": "users", "id": owner_id}},
            },
        }
        if metadata:
            data["attributes"] = {"metadata": metadata}
        document = self._request(
            "POST", "licenses", json={"data": data}, expect=201, timeout=timeout
        )
        return self._parse(License.from_document, document)

    def get_license(
        self, license_id: str, *, timeout: tuple[float, float] | None = None
    ) -> License:
        path = "licenses/" + quote(license_id, safe="")
        return self._parse(License.from_document, self._request("GET", path, timeout=timeout))

    def delete_license(
        self, license_id: str, *, timeout: tuple[float, float] | None = None
    ) -> None:
        path = "licenses/" + quote(license_id, safe="")
        self._request("DELETE", path, expect=204, timeout=timeout)

    def list_licenses(
        self, *, owner: str, timeout: tuple[float, float] | None = None
    ) -> list[License]:
        """The licenses a user owns (by id or email), newest first, up to 100."""
        params = {"owner": owner.lower(), "limit": "100"}
        document = self._request("GET", "licenses", params=params, timeout=timeout)
        return self._parse(
            lambda doc: [License.from_resource(item) for item in doc["data"]], document
        )

    # Plumbing.

    @staticmethod
    def _parse(read, document: dict):
        """Turn a document into records; a body of the wrong shape is no usable answer."""
        try:
            return read(document)
        except (KeyError, TypeError, AttributeError):
            raise KeygenUnavailable("a response body of an unexpected shape") from None

    def _session(self) -> requests.Session:
        """This thread's session, made in this process: connection pools must not cross
        gunicorn's fork. One thread makes one call at a time, so one connection is enough."""
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            session = requests.Session()
            session.headers.update(self._headers)
            # The environment's proxies and CA bundle (REQUESTS_CA_BUNDLE), read once per session
            # rather than on every call: kept for bench R9 (32 users), which fails without it.
            found = session.merge_environment_settings(self.base_url, {}, None, None, None)
            session.proxies, session.verify = found["proxies"], found["verify"]
            session.trust_env = False
            adapter = HTTPAdapter(pool_connections=1, pool_maxsize=1, max_retries=0)
            session.mount(self.base_url, adapter)
            local.session, local.pid = session, os.getpid()
        return local.session

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        expect: int = 200,
        timeout: tuple[float, float] | None = None,
        anonymous: bool = False,
        global_environment: bool = False,
        authorization: str | None = None,
        own_quota: bool = False,
    ) -> dict:
        """One call. `authorization` replaces the product token; `own_quota`: Keygen counts the
        call in a bucket of its own (rack_attack.rb keys buckets by token), not the product's."""
        if not own_quota:
            self.gate.before_call()
        self.breaker.before_call()
        started = time.monotonic()
        status: int | None = None
        headers: dict[str, str | None] = {"Authorization": None} if anonymous else {}
        if authorization is not None:
            headers["Authorization"] = authorization
        if global_environment:
            headers["Keygen-Environment"] = None
        try:
            document = self._guarded_send(
                method, path, json, params, expect, timeout, headers, own_quota=own_quota
            )
            status = expect
            return document
        except KeygenError as error:
            status = error.status
            if error.reason == "permission":
                error.permission = ENDPOINT_PERMISSIONS.get(endpoint_name(method, path))
            raise
        finally:  # after the breaker has counted this attempt, so that observers see its state
            self._observe(method, path, status, time.monotonic() - started)

    def _observe(self, method: str, path: str, status: int | None, seconds: float) -> None:
        if self.observer is None:
            return
        try:
            self.observer(endpoint_name(method, path), status, seconds)
        except Exception:  # counting a call must never fail it
            log.exception("the Keygen call observer failed")

    def _guarded_send(
        self, method, path, json, params, expect, timeout, headers, *, own_quota=False
    ) -> dict:
        """One HTTP attempt, with the breaker and the Retry-After gate told how it went."""
        try:
            document = self._send(
                method, path, json, params, expect, timeout, headers, own_quota=own_quota
            )
        except KeygenRateLimited as error:
            if not own_quota:
                self.gate.rate_limited(error.retry_after)
            self.breaker.succeeded()  # Keygen answered; it is up
            raise
        except KeygenUnavailable:
            self.breaker.failed()
            raise
        except KeygenError:
            self.breaker.succeeded()
            raise
        self.breaker.succeeded()
        return document

    def _note_quota(self, response: requests.Response) -> None:
        """Keygen's X-RateLimit-Remaining 0 means the next call in this window is a 429: wait
        for X-RateLimit-Reset instead of sending it (config/initializers/rack_attack.rb)."""
        resets_at = quota_used_up_until(response)
        if resets_at is None:
            return
        self.gate.rate_limited(min(MAX_QUOTA_WAIT, max(0.0, resets_at - time.time())))
        if self.on_quota_used_up is not None:
            try:
                self.on_quota_used_up(resets_at)
            except Exception:  # the shared budget may be down; this call itself went fine
                log.exception("could not tell the Keygen budget that the quota is used up")

    def _send(self, method, path, json, params, expect, timeout, headers, *, own_quota=False):
        """``headers``: this call's changes to the session's (None removes one)."""
        headers = dict(headers)
        if json is not None:
            headers["Content-Type"] = MEDIA_TYPE
        try:
            response = self._session().request(
                method,
                f"{self.base_url}/{path}".rstrip("/"),
                json=json,
                params=params,
                headers=headers,
                timeout=timeout or self.timeout,
                allow_redirects=False,
            )
        except requests.RequestException as error:
            # The exception text can hold the URL (with an email) but never the body or token.
            raise KeygenUnavailable(
                f"{method} {path.split('/')[0]}: {type(error).__name__}"
            ) from None
        if not own_quota:
            self._note_quota(response)
        if response.status_code != expect:
            raise error_for(response)
        if expect == 204:
            return {}
        document = json_or_none(response)
        if not isinstance(document, dict) or not isinstance(document.get("data"), (dict, list)):
            raise KeygenUnavailable(
                f"{response.status_code} with an unreadable body",
                status=response.status_code,
                request_id=response.headers.get("X-Request-Id"),
            )
        return document
