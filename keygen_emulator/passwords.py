"""Password resets, as `app/controllers/api/v1/passwords_controller.rb` and
`app/controllers/api/v1/users/actions/password_controller.rb` do them.

`POST /passwords` takes `meta.email` (and `meta.deliver`), needs no token, and answers 204
whether or not the address is known. For a known user it makes a reset token (24 random bytes in
hex ending v3, stored hashed: `PasswordResettable#generate_password_reset_token`) and broadcasts
`user.password-reset` with the token in the payload's `meta.passwordResetToken`; Keygen's own
email goes out unless `deliver` is false. `POST /users/{id}/actions/reset-password` takes the
token and the new password, authenticates nobody (`Users::PasswordPolicy#reset?`: no bearer or
the user themselves), answers 404 for a wrong token, 401 for one older than 24 hours, sets the
password and revokes every token of the user (`user.revoke_tokens!`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import flask

from keygen_emulator.errors import (
    DENIED_ANONYMOUS,
    Halt,
    error,
    forbidden,
    invalid,
    not_found,
    too_long,
)
from keygen_emulator.formats import UUID_RE, hash_password
from keygen_emulator.schema import Param, check

RESET_TOKEN_LIFETIME = 24 * 3600

RESET_REQUEST = Param(
    "object",
    children={
        "meta": Param(
            "object",
            children={
                "deliver": Param("boolean", optional=True),
                "email": Param("string"),
            },
        )
    },
)
RESET = Param(
    "object",
    children={
        "meta": Param(
            "object",
            children={
                "password_reset_token": Param("string"),
                "new_password": Param("string"),
            },
        )
    },
)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class PasswordRoutes:
    """The password endpoints, for pipeline.Call's subclass (routes.Api)."""

    def passwords_reset(self) -> flask.Response:
        check(self.params, RESET_REQUEST)
        meta = self.params["meta"]
        email = meta["email"].lower()
        with self.emu.lock:
            user_id = self.emu.store.emails.get((self.account["id"], email))
            user = self.emu.store.users.get(user_id or "")
            if user is None:
                return self.render(204, None)
            token = secrets.token_hex(24) + "v3"
            user["reset_digest"], user["reset_sent"] = _digest(token), self.emu.clock()
            payload = {"data": self._user_doc(user), "meta": {"passwordResetToken": token}}
            if meta.get("deliver") is not False:
                self.emu.reset_emails.append(user["email"])
        self.emu.webhooks.broadcast(self.account["id"], "user.password-reset", payload)
        return self.render(204, None)

    def users_reset_password(self) -> flask.Response:
        ident = self.args["id"]
        with self.emu.lock:
            store = self.emu.store
            user_id = ident.lower() if UUID_RE.fullmatch(ident) else None
            user = store.users.get(user_id or store.emails.get((self.account["id"], ident), ""))
            if user is None or user["account_id"] != self.account["id"]:
                raise not_found("user", ident)
            if user["role"] == "user" and self.account["protected"] and user["password"] is None:
                raise forbidden(DENIED_ANONYMOUS)
        check(self.params, RESET)
        meta = self.params["meta"]
        password = meta["new_password"]
        with self.emu.lock:
            digest = user["reset_digest"]
            given = _digest(meta["password_reset_token"])
            if digest is None or not hmac.compare_digest(digest, given):
                raise not_found("user", ident)
            if user["reset_sent"] < self.emu.clock() - RESET_TOKEN_LIFETIME:
                item = error("Unauthorized", "is expired", pointer="/meta/passwordResetToken")
                raise Halt(401, [item], headers={"WWW-Authenticate": 'Bearer realm="keygen"'})
            if len(password) < 6:
                detail = "is too short (minimum is 6 characters)"
                raise Halt(422, [invalid("users", "password", detail, "PASSWORD_TOO_SHORT")])
            if len(password) > 72:
                raise Halt(422, [too_long("users", "password", 72)])
            user["password"] = hash_password(password)
            user["reset_digest"] = user["reset_sent"] = None
            for token in [t for t in store.tokens.values() if t["bearer_id"] == user["id"]]:
                store.delete_token(token)
            document = self._user_doc(user)
        return self.render(200, {"data": document})
