"""The Keygen calls of self-service: signing a person in with their own email and password,
reading what their own token may read, freeing a machine, and the password reset. Part of
keygen_api (KeygenClient inherits these): the rest of the portal calls them from there.

Calls made *as the person* carry their user token (or, to sign in, HTTP Basic email:password);
only `delete_machine` and `request_password_reset` use the product token. Facts are from
keygen-api's source: app/controllers/api/v1/tokens_controller.rb and
app/controllers/concerns/authentication.rb (Basic auth, `meta.otp`), app/policies/*_policy.rb
(what a user token may read), app/controllers/api/v1/passwords_controller.rb and
app/controllers/api/v1/users/actions/password_controller.rb (the reset).
"""

from __future__ import annotations

import base64
import time
from typing import Any
from urllib.parse import quote

from keygen_errors import (
    KeygenAccessDenied,
    KeygenSecondFactorNeeded,
    KeygenSecondFactorWrong,
)
from keygen_records import License, Machine, Policy, Token

TOKEN_NAME = "Signup portal session"  # noqa: S105 (a label shown in Keygen, not a secret)
# Keygen answers a missing or wrong second factor with these codes, before it checks the
# password (authentication.rb, "verify second factor before password").
_SECOND_FACTOR = {"OTP_REQUIRED": KeygenSecondFactorNeeded, "OTP_INVALID": KeygenSecondFactorWrong}
PAGE_SIZE = "100"  # Keygen's largest page (app/models/concerns/pageable.rb, SIZE_UPPER)
# At most 1,000 licenses or machines on a person's page, 10 calls on their own quota. Offset
# pages (page[number]), which every supported Keygen has, unlike the newer cursor pages.
MAX_PAGES = 10


def _iso(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(moment))


def _bearer(token: str) -> str:
    return f"Bearer {token}"


class SelfServiceCalls:
    """Mixed into KeygenClient, whose `_request` and `_parse` these use."""

    def create_user_token(
        self, email: str, password: str, *, otp: str | None = None, expires_at: float
    ) -> Token:
        """A token of the person's own, expiring at `expires_at`: `POST /tokens` with HTTP
        Basic email:password and the second factor in `meta.otp`.

        A wrong address, a wrong password, a user without a password and a banned user are
        KeygenAccessDenied (401, or 403 "user is banned" from TokenPolicy#generate?); a missing
        or wrong code, KeygenSecondFactorNeeded or KeygenSecondFactorWrong.
        """
        pair = base64.b64encode(f"{email}:{password}".encode()).decode()
        body: dict[str, Any] = {
            "data": {
                "type": "tokens",
                "attributes": {"expiry": _iso(expires_at), "name": TOKEN_NAME},
            }
        }
        if otp is not None:
            body["meta"] = {"otp": otp}
        try:
            document = self._request(
                "POST",
                "tokens",
                json=body,
                expect=201,
                authorization=f"Basic {pair}",
                own_quota=True,
            )
        except KeygenAccessDenied as error:
            refusal = _SECOND_FACTOR.get(error.code or "")
            if refusal is None:
                raise
            raise refusal(
                str(error), status=error.status, errors=error.errors, request_id=error.request_id
            ) from None
        return self._parse(Token.from_document, document)

    def revoke_token(self, token: Token) -> None:
        """`DELETE /tokens/{id}` as its own bearer (TokenPolicy#revoke?: `record.bearer ==
        bearer`)."""
        path = "tokens/" + quote(token.id, safe="")
        self._request(
            "DELETE", path, expect=204, authorization=_bearer(token.value), own_quota=True
        )

    def licenses_of(self, token: Token, *, product_id: str) -> list[License]:
        """The licenses of this product the token's user owns (a user token sees only licenses
        it owns or is attached to: LicensePolicy, `for_user`), newest first."""
        params = {"owner": token.bearer_id or "", "product": product_id}
        return self._every_page("licenses", params, token, License.from_resource)

    def machines_of(self, token: Token, *, product_id: str) -> list[Machine]:
        """The machines of this product's licenses that the token's user may see, newest
        first."""
        return self._every_page("machines", {"product": product_id}, token, Machine.from_resource)

    def _every_page(self, path: str, params: dict, token: Token, read) -> list:
        """Page after page until Keygen's `links.next` is empty, at most MAX_PAGES."""
        found: list = []
        for number in range(1, MAX_PAGES + 1):
            paged = {**params, "page[number]": str(number), "page[size]": PAGE_SIZE}
            document = self._request(
                "GET", path, params=paged, authorization=_bearer(token.value), own_quota=True
            )
            found += self._parse(lambda doc: [read(item) for item in doc["data"]], document)
            links = document.get("links")
            if not (isinstance(links, dict) and links.get("next")):
                break
        return found

    def machine_as(self, token: Token, machine_id: str) -> Machine:
        """One machine, read with the person's token: KeygenNotFound unless it is theirs to
        see. Keygen also finds machines by fingerprint, so callers pass ids they checked."""
        path = "machines/" + quote(machine_id, safe="")
        document = self._request("GET", path, authorization=_bearer(token.value), own_quota=True)
        return self._parse(lambda doc: Machine.from_resource(doc["data"]), document)

    def license_as(self, token: Token, license_id: str) -> License:
        path = "licenses/" + quote(license_id, safe="")
        document = self._request("GET", path, authorization=_bearer(token.value), own_quota=True)
        return self._parse(License.from_document, document)

    def policy_as(self, token: Token, policy_id: str) -> Policy:
        """A policy of one of the person's licenses (PolicyPolicy#show?: `bearer.policies`)."""
        path = "policies/" + quote(policy_id, safe="")
        document = self._request("GET", path, authorization=_bearer(token.value), own_quota=True)
        return self._parse(Policy.from_document, document)

    def delete_machine(self, machine_id: str) -> None:
        """Deactivate a machine with the product token. A user may not delete a machine of a
        protected license (MachinePolicy#destroy?), and the portal's policies are protected, so
        the portal checks ownership with the person's token first, then calls this."""
        self._request("DELETE", "machines/" + quote(machine_id, safe=""), expect=204)

    def request_password_reset(self, email: str) -> None:
        """`POST /passwords` with `meta.deliver: false`: Keygen sends no email of its own, and
        broadcasts `user.password-reset` with the reset token to the webhook endpoints. 204
        whether or not the address is known."""
        body = {"meta": {"email": email.lower(), "deliver": False}}
        self._request("POST", "passwords", json=body, expect=204)

    def reset_password(self, user_id: str, reset_token: str, password: str) -> None:
        """Set the password with the reset token: sent by nobody (Users::PasswordPolicy#reset?
        allows no bearer or the user themselves). Keygen then revokes every token of the user.
        A wrong token is KeygenNotFound, one older than a day KeygenAccessDenied (401), a
        password Keygen refuses KeygenInvalid (422)."""
        path = f"users/{quote(user_id, safe='')}/actions/reset-password"
        body = {"meta": {"passwordResetToken": reset_token, "newPassword": password}}
        self._request("POST", path, json=body, anonymous=True, own_quota=True)
