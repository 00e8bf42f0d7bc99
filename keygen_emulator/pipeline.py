"""One API request through Keygen's order of checks, up to the endpoint, and its answer.

The order decides the status when several things are wrong: the Host, rate limit, JSON body,
Accept, route, account, API version, environment, subscription (Rack middleware,
`app/controllers/application_controller.rb` and its concerns), then, inside each endpoint,
authentication, the body's schema, authorization (permissions first), model rules. Middleware
errors carry no `meta` and no Keygen-* headers (`lib/keygen/middleware.rb`).
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import flask

from keygen_emulator import faults
from keygen_emulator.deployment import (
    ROUTE_PERMISSIONS,
    SUBSCRIBED_ROUTES,
    effective_permissions,
    host_name,
    in_environment,
    lacks,
)
from keygen_emulator.errors import (
    NO_ENDPOINT,
    Halt,
    bad_request,
    error,
    forbidden_because,
    invalid,
    not_found,
    unauthorized,
)
from keygen_emulator.formats import (
    UUID_RE,
    reject_constant,
    token_from,
    underscore_keys,
    version_tuple,
)
from keygen_emulator.schema import Param, check
from keygen_emulator.state import Emulator

JSONAPI = "application/vnd.api+json"
_JSON_TYPES = frozenset({JSONAPI, "application/vnd.keygen+json", "application/json"})
_ACCEPTABLE = _JSON_TYPES | {"*/*", "application/*"}
_FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
_MIME_RE = re.compile(r"[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+*-]+")
_MIME_INVALID = (
    "The mime type of the request is not acceptable (check content-type and accept headers)"
)
_CREDENTIAL_CODES = frozenset(
    {"EMAIL_REQUIRED", "EMAIL_INVALID", "PASSWORD_REQUIRED", "PASSWORD_INVALID"}
    | {"PASSWORD_NOT_SUPPORTED"}
)

_ROUTE_TABLE = [
    ("GET", re.compile(r""), "accounts.show"),  # /v1/accounts/<id> itself
    ("GET", re.compile(r"me"), "me"),
    ("GET", re.compile(r"users"), "users.index"),
    ("POST", re.compile(r"users"), "users.create"),
    ("GET", re.compile(r"users/(?P<id>[^/]+)"), "users.show"),
    ("DELETE", re.compile(r"users/(?P<id>[^/]+)"), "users.destroy"),
    ("GET", re.compile(r"licenses"), "licenses.index"),
    ("POST", re.compile(r"licenses"), "licenses.create"),
    ("GET", re.compile(r"licenses/(?P<id>[^/]+)"), "licenses.show"),
    ("DELETE", re.compile(r"licenses/(?P<id>[^/]+)"), "licenses.destroy"),
    ("GET", re.compile(r"policies/(?P<id>[^/]+)"), "policies.show"),
    ("POST", re.compile(r"tokens"), "tokens.create"),
    ("DELETE", re.compile(r"tokens/(?P<id>[^/]+)"), "tokens.destroy"),
    # Self-service (machines.py, passwords.py)
    ("GET", re.compile(r"machines"), "machines.index"),
    ("GET", re.compile(r"machines/(?P<id>[^/]+)"), "machines.show"),
    ("DELETE", re.compile(r"machines/(?P<id>[^/]+)"), "machines.destroy"),
    ("POST", re.compile(r"passwords"), "passwords.reset"),
    ("POST", re.compile(r"users/(?P<id>[^/]+)/actions/reset-password"), "users.reset_password"),
]
_ACCOUNT_PATH = re.compile(r"/v1/accounts/([^/]+)(?:/(.*))?")


def match_route(method: str, path: str) -> tuple[str | None, dict, str | None]:
    """(route name, path arguments, account segment) for a request path."""
    path = path.rstrip("/")
    if path == "/v1/ping":
        return ("ping" if method == "GET" else None), {}, None
    found = _ACCOUNT_PATH.fullmatch(path)
    if found:
        account, rest = found[1], found[2] or ""
    elif path.startswith("/v1/"):  # singleplayer style: /v1/users and so on
        account, rest = None, path[4:]
    else:
        return None, {}, None
    for route_method, pattern, name in _ROUTE_TABLE:
        matched = pattern.fullmatch(rest) if route_method == method else None
        if matched:
            return name, matched.groupdict(), account
    return None, {}, account


class Call:
    """One API request. Subclasses provide one method per route (users.create: users_create)."""

    def __init__(self, emulator: Emulator, request: flask.Request) -> None:
        self.emu = emulator
        self.request = request
        self.id = str(uuid.uuid4())
        self.route, self.args, self.account_ref = match_route(request.method, request.path)
        if self.account_ref is not None and not emulator.deployment.serves_account_routes(
            request.host
        ):
            self.route, self.args = None, {}  # config/routes.rb: only under Keygen's domain
        self.account: dict | None = None
        self.environment: dict | None = None
        self.version: str | None = None
        self.token: dict | None = None
        self.bearer: dict | None = None
        self.params: dict = {}
        self.mime = ""
        self.prefers_json = False
        self.rate_headers: dict = {}
        self.log = {
            "method": request.method,
            "path": request.path,
            "query": request.query_string.decode("latin-1"),
            "route": self.route,
            "status": None,
            "keygen_version": request.headers.get("Keygen-Version"),
            "keygen_environment": request.headers.get("Keygen-Environment"),
            "accept": request.headers.get("Accept"),
            "content_type": request.headers.get("Content-Type"),
            "json": None,
            "authenticated": False,
            "bearer_type": None,
            # The scheme only (Bearer, Basic): the credentials themselves are never logged.
            "auth_scheme": request.headers.get("Authorization", "").partition(" ")[0] or None,
        }

    def run(self) -> flask.Response:
        epoch = self.emu.epoch
        if self.route != "ping":  # health probes stay out of the log, like the control plane
            self.emu.record(self.log)
        fault = self.emu.take_fault(self.route) if self.route else None
        try:
            if fault is None:
                response = self.process()
            else:
                response = faults.answer_with_fault(self, fault, epoch)
        except faults.Drop:
            flask.request.environ[faults.DROP_KEY] = True
            return flask.Response(status=500)  # never sent: the connection is closed instead
        self.log["status"] = response.status_code
        return response

    def process(self) -> flask.Response:
        if not self.emu.deployment.serves_host(self.request.host):
            # Rails' host authorization (config/environments/production.rb): before anything
            # of Keygen's runs, an empty 403.
            return flask.Response(b"", status=403, content_type="text/html; charset=utf-8")
        try:
            account = self.account_ref or ""
            self.rate_headers = faults.throttle(self.emu, self.request, account, self.route)
            self._parse_body()
            self._check_accept()
            if self.route is None:
                raise Halt(404, [error("Not found", NO_ENDPOINT, "NOT_FOUND")])
            if self.route == "ping":
                return self.render(200, None, middleware=True)
            self._resolve_account()
            self._resolve_version()
            self._resolve_environment()
            self._require_active_subscription()
            with self.emu.lock:
                self.emu.store.run_jobs(self.emu.clock())
            return getattr(self, self.route.replace(".", "_"))()
        except Halt as halt:
            return self.render_halt(halt)

    # Middleware and scoping

    def _parse_body(self) -> None:
        request = self.request
        mime = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        rewritten = not mime or mime in _FORM_TYPES or mime.startswith("text/")
        if request.method in ("POST", "PUT", "PATCH", "DELETE") and rewritten:
            mime = "application/json"  # Keygen's DefaultContentType middleware
        if mime and not _MIME_RE.fullmatch(mime):
            raise bad_request(_MIME_INVALID, "MIME_TYPE_INVALID")
        self.mime = mime
        raw = request.get_data(cache=False)
        if mime not in _JSON_TYPES or not raw.strip():
            return
        try:
            text = raw.decode("utf-8")
            document = json.loads(text, parse_constant=reject_constant)
            params = underscore_keys(document)
        except (ValueError, RecursionError):
            raise bad_request(
                "The request could not be completed because it contains invalid JSON "
                "(check formatting/encoding)",
                "JSON_INVALID",
            ) from None
        if "\\u0000" in text.lower():
            raise bad_request(
                "The request could not be completed because it contains an unexpected null "
                "byte (check encoding)",
                "ENCODING_INVALID",
            )
        self.log["json"] = document
        # A top-level array or scalar is wrapped as {data: ...} (config/initializers/jsonapi.rb).
        self.params = params if isinstance(params, dict) else {"data": params}

    def _check_accept(self) -> None:
        accept = self.request.headers.get("Accept", "").strip()
        if not accept:  # Rails then takes the request's content type as the accepted one
            types = [self.mime] if self.mime else []
        else:
            types = [part.split(";", 1)[0].strip().lower() for part in accept.split(",")]
            types = ["*/*" if t == "*" else t for t in types]
        acceptable = [t for t in types if t in _ACCEPTABLE]
        if types and not acceptable:
            raise bad_request(_MIME_INVALID, "MIME_TYPE_INVALID")
        self.prefers_json = bool(acceptable) and acceptable[0] == "application/json"

    def _resolve_account(self) -> None:
        """`app/services/resolve_account_service.rb`: by the Host's custom domain, then by the
        id or slug in the path (multiplayer); or the one account (singleplayer)."""
        deployment = self.emu.deployment
        with self.emu.lock:
            store = self.emu.store
            if deployment.mode == "singleplayer":
                player_one = next(iter(store.accounts.values()), None)
                if self.account_ref is None:
                    self.account = player_one
                else:
                    self.account = store.find_account(self.account_ref)
                    if self.account is not None and self.account is not player_one:
                        detail = f"account is invalid (expected {player_one['id']})"
                        raise Halt(404, [error("Not found", detail, "NOT_FOUND")])
            else:
                cname = deployment.cnames.get(host_name(self.request.host))
                self.account = store.accounts.get(cname or "")
                if self.account is None and self.account_ref is not None:
                    self.account = store.find_account(self.account_ref)
        if self.account is None and self.account_ref is None:
            raise Halt(404, [error("Not found", "account is required", "NOT_FOUND")])
        if self.account is None:
            raise not_found("account", self.account_ref or "")

    def _resolve_version(self) -> None:
        header = self.request.headers.get("Keygen-Version", "").strip()
        version = header or self.account["api_version"]
        if version[:1] in ("v", "V"):
            version = version[1:]
        if version not in self.emu.deployment.versions():
            item = error("Bad request", "unsupported API version requested", "INVALID_API_VERSION")
            item["links"] = {"about": "https://keygen.sh/docs/api/versioning/"}
            raise Halt(400, [item])
        self.version = version

    def _resolve_environment(self) -> None:
        """`Keygen-Environment` (app/controllers/concerns/current_environment_scope.rb): EE
        only; an id or code of the account's environments."""
        code = self.request.headers.get("Keygen-Environment")
        if code is None:
            return
        source = {"header": "Keygen-Environment"}
        if self.emu.deployment.edition != "EE":
            item = error("Bad request", "is unsupported", "ENVIRONMENT_NOT_SUPPORTED", **source)
            raise Halt(400, [item])
        with self.emu.lock:
            self.environment = self.emu.store.find_environment(self.account["id"], code)
        if self.environment is None:  # application_controller.rb, InvalidEnvironmentError
            item = error("Bad request", "environment is invalid", "ENVIRONMENT_INVALID", **source)
            raise Halt(400, [item])

    def _require_active_subscription(self) -> None:
        """app/controllers/concerns/current_account_constraints.rb, before authentication."""
        if self.route not in SUBSCRIBED_ROUTES:
            return
        if not self.account["active"]:
            detail = "must have an active subscription to access this resource"
            raise Halt(403, [error("Account does not have an active subscription", detail)])
        if self.account["daily_limit_reached"]:
            detail = (
                "Daily API request limit of 2,500 has been reached for your account. Please "
                "add a payment method at https://app.keygen.sh/billing to continue."
            )
            raise Halt(402, [error("Daily API request limit reached", detail)])

    # For the endpoints

    def authenticate(self, *, required: bool) -> None:
        token = token_from(self.request.headers.get("Authorization", ""))
        if not token:
            if required:
                raise unauthorized("TOKEN_MISSING")
            return
        if UUID_RE.fullmatch(token):
            raise unauthorized(
                "TOKEN_FORMAT_INVALID",
                "Token format is invalid (make sure that you're providing a token value, "
                "not a token's UUID identifier)",
            )
        store = self.emu.store
        with self.emu.lock:
            record = store.tokens.get(token)
            if (
                record is None
                or record["account_id"] != self.account["id"]
                # app/services/token_lookup_service.rb: only the environment's tokens
                or not in_environment(record["environment_id"], self.environment)
            ):
                raise unauthorized("TOKEN_INVALID")
            if record["expiry"] is not None and record["expiry"] <= self.emu.clock():
                raise unauthorized("TOKEN_EXPIRED", "Token is expired")
            owners = store.products if record["bearer_type"] == "products" else store.users
            bearer = owners.get(record["bearer_id"])
        if bearer is None:
            raise unauthorized("TOKEN_INVALID")
        if record["bearer_type"] == "users" and bearer.get("banned"):
            raise Halt(403, [error("Access denied", "User is banned", "USER_BANNED")])
        self.token, self.bearer = record, bearer
        self.log["authenticated"] = True
        self.log["bearer_type"] = record["bearer_type"]  # "products" or "users", never who

    def role(self) -> str | None:
        """The bearer's role: None (anonymous), "product", or a user's role."""
        if self.token is None:
            return None
        return "product" if self.token["bearer_type"] == "products" else self.bearer["role"]

    def typed(self, schema: Param) -> Any:
        return check(self.params, schema)

    def permissions(self) -> tuple[list[str] | None, list[str] | None]:
        """(the bearer's, the token's) permissions; (None, None) where Keygen has none (CE)."""
        if self.token is None or self.emu.deployment.edition != "EE":
            return None, None
        bearer = self.bearer.get("permissions") if self.role() == "product" else None
        token = effective_permissions(self.token, bearer)
        return (list(bearer) if bearer is not None else None), token

    def verify_permissions(self) -> None:
        """`verify_permissions!` (app/policies/application_policy.rb), the first check of every
        policy: the bearer's permissions, then the token's."""
        action = ROUTE_PERMISSIONS[self.route]
        bearer, token = self.permissions()
        if bearer is not None and lacks(bearer, action):
            raise forbidden_because(f"{self.role()} lacks permission to perform action")
        if token is not None and lacks(token, action):
            raise forbidden_because("token lacks permission to perform action")

    def visible(self, record: dict) -> bool:
        """Whether a record is in this request's environment."""
        return in_environment(record.get("environment_id"), self.environment)

    # Rendering

    def render(self, status: int, document: dict | None, *, location=None, middleware=False):
        body = b""
        if document is not None:
            body = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
        response = flask.Response(body, status=status)
        if body:
            kind = "application/json" if self.prefers_json else JSONAPI
            response.headers["Content-Type"] = f"{kind}; charset=utf-8"
        else:
            del response.headers["Content-Type"]
        if not middleware:
            response.headers.update(self._keygen_headers())
        response.headers.update(self.rate_headers)
        if location:
            base = self.request.host_url.rstrip("/")
            response.headers["Location"] = f"{base}/v1/accounts/{self.account['id']}/{location}"
        return response

    def render_halt(self, halt: Halt) -> flask.Response:
        errors = halt.errors
        if self.version is not None:
            errors = [self._migrate(item) for item in errors]
        if halt.middleware:
            self.rate_headers = {}
            response = self.render(halt.status, {"errors": errors}, middleware=True)
        else:
            response = self.render(halt.status, {"meta": {"id": self.id}, "errors": errors})
        response.headers.update(halt.headers)
        return response

    def _migrate(self, item: dict) -> dict:
        """Error changes for old API versions, from `app/migrations/rename_*_error_code*.rb`."""
        version = version_tuple(self.version)
        code = item.get("code")
        if code in _CREDENTIAL_CODES and version <= (1, 7):
            return {
                **item,
                "code": "CREDENTIALS_INVALID",
                "detail": "email and password must be valid",
            }
        if code == "OWNER_NOT_FOUND" and version <= (1, 5):
            return invalid("licenses", "user", "must exist", "USER_NOT_FOUND", relationship=True)
        return item

    def _keygen_headers(self) -> dict:
        """`app/controllers/concerns/default_headers.rb`; `-Id` names up to 1.3."""
        old = self.version is not None and version_tuple(self.version) <= (1, 3)
        suffix = "-Id" if old else ""
        headers = {
            "X-Request-Id": self.id,
            "Keygen-Edition": self.emu.deployment.edition,
            "Keygen-Mode": self.emu.deployment.mode,
            "Cache-Control": "no-transform, no-store, max-age=0",
        }
        if self.account is not None:
            headers[f"Keygen-Account{suffix}"] = self.account["id"]
        if self.token is not None:
            headers[f"Keygen-Bearer{suffix}"] = self.token["bearer_id"]
            headers[f"Keygen-Token{suffix}"] = self.token["id"]
        if self.version is not None:
            headers["Keygen-Version"] = self.version
        if self.environment is not None:
            headers["Keygen-Environment"] = self.environment["code"]
        return headers
