"""The permissions the portal's product token needs (Keygen EE), and what each one is for.
Part of keygen_api (which re-exports them).

Keygen EE can narrow a token to some of its product's permissions, and then refuses every other
call with 403 "token lacks permission to perform action" (`verify_permissions!` in
app/policies/application_policy.rb). Whoever adds a call adds its permission here: the doctor
lists the ones the token lacks.
"""

from __future__ import annotations

# Every permission the product token always needs, and what for (add a new call's here and in
# ENDPOINT_PERMISSIONS).
NEEDED_PERMISSIONS: dict[str, str] = {
    "product.read": "checking the token (GET /me)",
    "policy.read": "checking KEYGEN_POLICY_ID",
    "user.create": "creating each user",
    "user.read": "finding the same person before a signup, a user after a timeout, lost keys",
    "user.delete": "undoing a signup whose license failed",
    "license.create": "issuing each license",
    "license.read": "showing a key again, emailing it, and lost-key recovery",
}
# The permission each endpoint the client calls needs (its policy's verify_permissions!; /me
# is ProductPolicy#me?), by endpoint_name().
ENDPOINT_PERMISSIONS: dict[str, str] = {
    "me": "product.read",
    "policies.show": "policy.read",
    "users.create": "user.create",
    "users.show": "user.read",
    "users.index": "user.read",
    "users.destroy": "user.delete",
    "licenses.create": "license.create",
    "licenses.show": "license.read",
    "licenses.index": "license.read",
    # Only to delete a LEGACY_ENCRYPT license whose key was lost with Keygen's answer; without
    # it the portal logs the license for the operator instead, so NEEDED_PERMISSIONS omits it.
    "licenses.destroy": "license.delete",
    "machines.destroy": "machine.delete",
    # Only for the doctor's check of KEYGEN_PUBLIC_KEY, which says so when it is refused.
    "accounts.show": "account.read",
}
WILDCARD_PERMISSION = "*"  # app/models/permission.rb


# SELF_SERVICE: the product token frees a machine once the person's own token showed it is
# theirs (a user may not delete a machine of a protected license: app/policies/machine_policy.rb).
SELF_SERVICE_PERMISSIONS: dict[str, str] = {
    "machine.delete": "freeing a customer's machine (SELF_SERVICE)",
}


def needed_permissions(*, self_service: bool) -> dict[str, str]:
    """The permissions the product token needs, and what for, with these features on."""
    return {**NEEDED_PERMISSIONS, **(SELF_SERVICE_PERMISSIONS if self_service else {})}


def missing_permissions(
    granted: tuple[str, ...] | None, needed: dict[str, str] = NEEDED_PERMISSIONS
) -> list[str]:
    """The ``needed`` permissions a token with these (effective) permissions lacks; none for
    Keygen CE (None: it has no permissions) or a wildcard."""
    if granted is None or WILDCARD_PERMISSION in granted:
        return []
    return [permission for permission in needed if permission not in granted]
