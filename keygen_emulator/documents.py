"""JSON:API documents for users, licenses, products, policies and tokens.

Attribute and relationship sets follow `app/serializers/*_serializer.rb`. Links always use the
account's id, never its slug. Older API versions change a few shapes (`app/migrations/*`).
"""

from __future__ import annotations

from typing import Any

from keygen_emulator.formats import camel, camel_keys, iso, version_tuple
from keygen_emulator.schema import MAX_ATTRIBUTES

INACTIVE_AFTER = 90 * 24 * 3600
_ABSENT = object()


def metadata(value: dict, version: str) -> dict:
    # At 1.4 and below, nested metadata keys come back as stored (snake_case).
    return camel_keys(value, deep=version_tuple(version) > (1, 4))


def user_document(user: dict, version: str, now: float, licenses: dict) -> dict:
    base = f"/v1/accounts/{user['account_id']}"
    here = f"{base}/users/{user['id']}"
    first, last = user["first_name"], user["last_name"]
    active = now - user["created"] < INACTIVE_AFTER or any(
        lic["owner_id"] == user["id"] for lic in licenses.values()
    )
    return {
        "id": user["id"],
        "type": "users",
        "attributes": {
            "fullName": None if first is None or last is None else f"{first} {last}",
            "firstName": first,
            "lastName": last,
            "email": user["email"],
            "status": "BANNED" if user.get("banned") else "ACTIVE" if active else "INACTIVE",
            "role": user["role"].replace("_", "-"),
            "metadata": metadata(user["metadata"], version),
            "created": iso(user["created"]),
            "updated": iso(user["updated"]),
        },
        "relationships": {
            "account": _account(user["account_id"]),
            "group": {"links": {"related": f"{here}/group"}, "data": None},
            **{
                camel(name): {"links": {"related": f"{here}/{name.replace('_', '-')}"}}
                for name in ("products", "licenses", "machines", "tokens", "second_factors")
            },
        },
        "links": {"self": here},
    }


def license_document(lic: dict, version: str, now: float, *, reveal: bool = False) -> dict:
    """``reveal``: the answer that creates the license, the only one that shows a legacy
    encrypted key (`attribute :key, unless:` in app/serializers/license_serializer.rb)."""
    here = f"/v1/accounts/{lic['account_id']}/licenses/{lic['id']}"
    maxima = {camel(name): lic[name] for name in MAX_ATTRIBUTES}
    key = {} if lic["encrypted"] and not reveal else {"key": lic["key"]}
    return {
        "id": lic["id"],
        "type": "licenses",
        "attributes": {
            "name": lic["name"],
            **key,
            "expiry": iso(lic["expiry"]),
            "status": _license_status(lic, now),
            "uses": 0,
            "suspended": lic["suspended"],
            "scheme": lic["scheme"],
            "encrypted": lic["encrypted"],
            "strict": False,
            "floating": True,
            "protected": lic["protected"],
            "version": None,
            **maxima,
            "requireHeartbeat": False,
            "requireCheckIn": False,
            "lastValidated": None,
            "lastCheckIn": None,
            "nextCheckIn": None,
            "lastCheckOut": None,
            "metadata": metadata(lic["metadata"], version),
            "created": iso(lic["created"]),
            "updated": iso(lic["updated"]),
        },
        "relationships": _license_relationships(lic, here, version),
        "links": {"self": here},
    }


def _license_status(lic: dict, now: float) -> str:
    expiry = lic["expiry"]
    if lic["suspended"]:
        return "SUSPENDED"
    if expiry is not None and expiry <= now:
        return "EXPIRED"
    if expiry is not None and expiry - now < 3 * 24 * 3600:
        return "EXPIRING"
    if now - lic["created"] >= INACTIVE_AFTER:
        return "INACTIVE"
    return "ACTIVE"


def _license_relationships(lic: dict, here: str, version: str) -> dict:
    owner = None if lic["owner_id"] is None else {"type": "users", "id": lic["owner_id"]}
    # `owner` was `user` up to 1.5 (rename_owner_relationship_to_user_for_license_migration.rb).
    old = version_tuple(version) <= (1, 5)
    owner_name = "user" if old else "owner"

    def related(name: str, data: Any = _ABSENT) -> dict:
        item: dict[str, Any] = {"links": {"related": f"{here}/{name}"}}
        if data is not _ABSENT:
            item["data"] = data
        return item

    relationships = {
        "account": _account(lic["account_id"]),
        "product": related("product", {"type": "products", "id": lic["product_id"]}),
        "policy": related("policy", {"type": "policies", "id": lic["policy_id"]}),
        "group": related("group", None),
        owner_name: related(owner_name, owner),
        "users": {
            **related("users"),
            "meta": {"count": len(lic["user_ids"]) + (0 if owner is None else 1)},
        },
        "machines": {
            **related("machines"),
            "meta": {"cores": 0, "memory": 0, "disk": 0, "count": 0},
        },
        "tokens": related("tokens"),
        "entitlements": related("entitlements"),
    }
    if old:  # multi-user licenses (the `users` relationship) came with 1.6
        del relationships["users"]
    return relationships


def account_document(account: dict) -> dict:
    """The attributes of app/serializers/account_serializer.rb the emulator keeps (its meta,
    the public keys, is added by the route)."""
    return {
        "id": account["id"],
        "type": "accounts",
        "attributes": {
            "name": account.get("slug") or "Emulated account",
            "slug": account.get("slug"),
            "apiVersion": account["api_version"],
            "status": "ACTIVE" if account["active"] else "CANCELED",
            "protected": account["protected"],
        },
        "links": {"self": f"/v1/accounts/{account['id']}"},
    }


def product_document(product: dict, permissions: list[str] | None = None) -> dict:
    """``permissions``: EE's (app/serializers/product_serializer.rb, `ee do`)."""
    here = f"/v1/accounts/{product['account_id']}/products/{product['id']}"
    extra = {} if permissions is None else {"permissions": sorted(permissions)}
    return {
        "id": product["id"],
        "type": "products",
        "attributes": {
            "name": product["name"],
            "code": None,
            "distributionStrategy": "LICENSED",
            "url": None,
            "platforms": None,
            **extra,
            "metadata": {},
            "created": iso(product["created"]),
            "updated": iso(product["created"]),
        },
        "relationships": {
            "account": _account(product["account_id"]),
            **{
                name: {"links": {"related": f"{here}/{name}"}}
                for name in ("policies", "licenses", "machines", "users", "tokens")
            },
        },
        "links": {"self": here},
    }


def policy_document(policy: dict) -> dict:
    here = f"/v1/accounts/{policy['account_id']}/policies/{policy['id']}"
    return {
        "id": policy["id"],
        "type": "policies",
        "attributes": {
            "name": policy.get("name"),
            "duration": policy["duration"],
            "protected": policy["protected"],
            "scheme": policy["scheme"],
            "encrypted": policy["encrypted"],
            "usePool": False,
            "metadata": {},
        },
        "relationships": {
            "account": _account(policy["account_id"]),
            "product": {
                "links": {"related": f"{here}/product"},
                "data": {"type": "products", "id": policy["product_id"]},
            },
        },
        "links": {"self": here},
    }


def token_document(
    token: dict, *, reveal: bool = False, permissions: list[str] | None = None
) -> dict:
    """`reveal` adds the token's value: only the answer that creates it shows it.
    ``permissions``: EE's, its effective ones (app/serializers/token_serializer.rb)."""
    base = f"/v1/accounts/{token['account_id']}"
    attributes: dict[str, Any] = {"kind": token["kind"]}
    if reveal:
        attributes["token"] = token["value"]
    attributes.update(
        expiry=iso(token["expiry"]),
        name=token["name"],
        **({} if permissions is None else {"permissions": sorted(permissions)}),
        created=iso(token["created"]),
        updated=iso(token["created"]),
    )
    bearer = {"type": token["bearer_type"], "id": token["bearer_id"]}
    return {
        "id": token["id"],
        "type": "tokens",
        "attributes": attributes,
        "relationships": {
            "account": _account(token["account_id"]),
            "bearer": {
                "links": {"related": f"{base}/{bearer['type']}/{bearer['id']}"},
                "data": bearer,
            },
        },
        "links": {"self": f"{base}/tokens/{token['id']}"},
    }


def _account(account_id: str) -> dict:
    return {
        "links": {"related": f"/v1/accounts/{account_id}"},
        "data": {"type": "accounts", "id": account_id},
    }
