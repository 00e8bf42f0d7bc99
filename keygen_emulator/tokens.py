"""Tokens: `POST /tokens` (a user signs in with HTTP Basic email:password, a second factor
when they have one) and `DELETE /tokens/:id`, as app/controllers/api/v1/tokens_controller.rb
and app/policies/token_policy.rb answer them.
"""

from __future__ import annotations

import re
import secrets

import flask

from keygen_emulator import documents, people
from keygen_emulator.errors import Halt, forbidden, not_found, unauthorized
from keygen_emulator.formats import basic_pair, parse_time, password_matches
from keygen_emulator.schema import TOKEN_SCHEMA

USER_TOKEN_TTL = 14 * 24 * 3600
_STAFF_WRITE = frozenset({"admin", "developer"})
_TOKEN_PREFIXES = {
    "user": "user",
    "admin": "admin",
    "developer": "dev",
    "sales_agent": "sales",
    "support_agent": "spprt",
    "read_only": "read",
}
# The email format of Basic authentication (EMAIL_RE in config/initializers/regexp.rb).
_BASIC_EMAIL_RE = re.compile(r"[^@\s]+@(?:[-a-z0-9]+\.)+[a-z]{2,}", re.I)


class TokenRoutes:
    """The Api's token endpoints (routes.Api; pipeline.Call has what they use)."""

    def tokens_create(self) -> flask.Response:
        authorization = self.request.headers.get("Authorization", "")
        scheme, _, credentials = authorization.strip().partition(" ")
        data = self.typed(TOKEN_SCHEMA) or {}
        attributes = data.get("attributes") or {}
        if scheme.lower() == "basic":
            bearer = self._check_password(*(basic_pair(credentials.strip()) or ("", "")))
            self.log["authenticated"] = True
        else:
            self.authenticate(required=True)
            self.verify_permissions()
            bearer = self.bearer
        with self.emu.lock:
            if self.role() == "product" and scheme.lower() != "basic":
                kind, prefix, bearer_type, expiry = "product-token", "prod", "products", None
            else:
                role = bearer["role"]
                kind = f"{role.replace('_', '-')}-token"
                prefix, bearer_type = _TOKEN_PREFIXES[role], "users"
                expiry = self.emu.clock() + USER_TOKEN_TTL if role == "user" else None
            if "expiry" in attributes:
                expiry = None if attributes["expiry"] is None else parse_time(attributes["expiry"])
            token = self.emu.store.add_token(
                self.account["id"],
                f"{prefix}-{secrets.token_hex(32)}v3",
                kind,
                bearer_type,
                bearer["id"],
                expiry,
                name=attributes.get("name"),
                minted=True,
                environment_id=self.environment and self.environment["id"],
            )
            document = documents.token_document(token, reveal=True)
        return self.render(201, {"data": document}, location=f"tokens/{token['id']}")

    def _check_password(self, email: str, password: str) -> dict:
        """The user behind Basic email:password (app/controllers/api/v1/tokens_controller.rb)."""

        def refuse(code: str, detail: str) -> Halt:
            return unauthorized(code, detail, header="Authorization")

        if not _BASIC_EMAIL_RE.fullmatch(email):
            raise refuse("EMAIL_REQUIRED", "email is required")
        with self.emu.lock:
            user_id = self.emu.store.emails.get((self.account["id"], email.lower()))
            user = self.emu.store.users.get(user_id or "")
        if user is None:
            raise refuse("EMAIL_INVALID", "email must be valid")
        if user["password"] is None:
            raise refuse("PASSWORD_NOT_SUPPORTED", "password is unsupported")
        if not password:
            raise refuse("PASSWORD_REQUIRED", "password is required")
        factor = user["second_factor"]
        if factor is not None:  # before the password, "so that we don't leak correctness"
            otp = (self.params.get("meta") or {}).get("otp")
            if otp is None:
                raise unauthorized("OTP_REQUIRED", "second factor is required", pointer="/meta/otp")
            with self.emu.lock:
                if not people.verify(factor, str(otp), self.emu.clock()):
                    detail = "second factor must be valid"
                    raise unauthorized("OTP_INVALID", detail, pointer="/meta/otp")
        if not password_matches(user["password"], password):
            raise refuse("PASSWORD_INVALID", "password must be valid")
        if user["banned"]:  # TokenPolicy#generate?: deny! 'user is banned'
            raise forbidden("You do not have permission to complete the request (user is banned)")
        return user

    def tokens_destroy(self) -> flask.Response:
        self.authenticate(required=True)
        role = self.role()
        store = self.emu.store
        with self.emu.lock:
            token = store.tokens.get(store.token_ids.get(self.args["id"].lower(), ""))
            visible = token is not None and token["account_id"] == self.account["id"]
            if visible and token["bearer_id"] != self.bearer["id"] and role not in _STAFF_WRITE:
                # A product may revoke the tokens of users who hold one of its licenses.
                visible = role == "product" and any(
                    lic["owner_id"] == token["bearer_id"] and lic["product_id"] == self.bearer["id"]
                    for lic in store.licenses.values()
                )
            if not visible:
                raise not_found("token", self.args["id"])
            self.verify_permissions()
            store.delete_token(token)
        return self.render(204, None)
