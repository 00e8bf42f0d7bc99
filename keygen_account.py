"""The doctor's questions about the Keygen account itself: whether it is protected, and the key
its webhooks are signed with. Part of keygen_api (KeygenClient inherits these): the rest of the
portal calls them from there. Facts are from keygen-api's source: app/policies/user_policy.rb,
app/policies/account_policy.rb, app/serializers/account_serializer.rb and config/routes.rb.
"""

from __future__ import annotations

from keygen_errors import KeygenAccessDenied, KeygenInvalid
from keygen_records import User

# An address Keygen's validation refuses (no dot in the domain), so that the probe in
# account_is_protected can never create a user.
PROBE_EMAIL = "doctor-check@invalid"


class AccountCalls:
    """Mixed into KeygenClient, whose `account`, `_request`, `_parse` and `delete_user` these
    use."""

    def account_is_protected(self, *, timeout: tuple[float, float] | None = None) -> bool:
        """Whether Keygen refuses users created without a token (app/policies/user_policy.rb,
        `create?`).

        Asked with an anonymous create whose email Keygen's validation refuses: a protected
        account refuses the request before looking at the data (403), an unprotected one
        validates it (422 EMAIL_INVALID). Either way nothing is created.
        """
        body = {"data": {"type": "users", "attributes": {"email": PROBE_EMAIL}}}
        try:
            document = self._request(
                "POST", "users", json=body, expect=201, timeout=timeout, anonymous=True
            )
        except KeygenAccessDenied as error:
            # An account without an active subscription refuses everyone with 403 too, before
            # asking who calls (app/controllers/concerns/current_account_constraints.rb).
            titles = " ".join(str(e.get("title", "")) for e in error.errors).lower()
            if error.status == 403 and "subscription" not in titles:
                return True
            raise
        except KeygenInvalid as error:
            if error.status == 422:
                return False
            raise
        # Keygen accepted the address after all: anyone can create users. Remove ours.
        self.delete_user(self._parse(User.from_document, document).id, timeout=timeout)
        return False

    def account_webhook_key(self, *, timeout: tuple[float, float] | None = None) -> str | None:
        """The Ed25519 key the account's webhooks verify with, as the account's document has
        it (`meta.keys.ed25519`; reading it needs `account.read`); None without
        KEYGEN_ACCOUNT_ID, since Keygen serves that document only under /v1/accounts/<id>, or
        from a Keygen whose document has no such key."""
        if not self.account:
            return None
        document = self._request("GET", "", timeout=timeout)

        def ed25519(doc: dict) -> str | None:
            key = (doc.get("meta") or {}).get("keys", {}).get("ed25519")
            return key if isinstance(key, str) and key else None

        return self._parse(ed25519, document)
