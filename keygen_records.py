"""The Keygen resources the portal reads, as records made from Keygen's JSON:API documents.
Part of keygen_api (which re-exports them): the rest of the portal imports them from there."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class User:
    id: str
    email: str
    first_name: str | None
    last_name: str | None
    metadata: dict[str, Any]

    @classmethod
    def from_document(cls, document: dict) -> User:
        return cls.from_resource(document["data"])

    @classmethod
    def from_resource(cls, data: dict) -> User:
        attributes = data["attributes"]
        return cls(
            id=data["id"],
            email=attributes["email"],
            first_name=attributes.get("firstName"),
            last_name=attributes.get("lastName"),
            metadata=attributes.get("metadata") or {},
        )


# A policy whose keys Keygen returns only when it creates them: `attribute :key, unless:
# legacy_encrypted?` (app/serializers/license_serializer.rb, app/models/policy.rb). Every other
# scheme (none, ED25519_SIGN, RSA_2048_*) returns the key on every read.
UNREADABLE_KEY_SCHEMES = frozenset({"LEGACY_ENCRYPT"})


def keys_readable_later(attributes: dict) -> bool:
    """Whether Keygen shows a license's key again after its create (from the attributes of the
    license or of its policy: both carry `scheme` and `encrypted`)."""
    unreadable = attributes.get("scheme") in UNREADABLE_KEY_SCHEMES
    return not (unreadable and attributes.get("encrypted", True))


@dataclass(frozen=True)
class License:
    id: str
    key: str | None = field(repr=False)  # None: Keygen does not show it again (see above)
    policy_id: str | None
    owner_id: str | None
    metadata: dict[str, Any]
    expiry: str | None
    key_readable_later: bool = True
    # Read for the account page (self-service); the signup needs none of them.
    product_id: str | None = None
    name: str | None = None
    status: str | None = None  # ACTIVE, INACTIVE, EXPIRING, EXPIRED, SUSPENDED, BANNED

    @classmethod
    def from_document(cls, document: dict) -> License:
        return cls.from_resource(document["data"])

    @classmethod
    def from_resource(cls, data: dict) -> License:
        attributes = data["attributes"]
        relationships = data.get("relationships") or {}
        # API v1.6 renamed the license's `user` relationship to `owner`; accounts pinned to an
        # older version still answer with `user` when a proxy drops our Keygen-Version header.
        owner = relationships.get("owner") or relationships.get("user") or {}
        readable = keys_readable_later(attributes)
        return cls(
            id=data["id"],
            # Every read shows the key, unless the policy hides it after the create.
            key=attributes["key"] if readable else attributes.get("key"),
            policy_id=_related_id(relationships.get("policy")),
            owner_id=_related_id(owner),
            metadata=attributes.get("metadata") or {},
            expiry=attributes.get("expiry"),
            key_readable_later=readable,
            product_id=_related_id(relationships.get("product")),
            name=attributes.get("name"),
            status=attributes.get("status"),
        )


@dataclass(frozen=True)
class Policy:
    id: str
    product_id: str | None
    scheme: str | None = None
    keys_readable_later: bool = True
    name: str | None = None
    # Whether its licenses' owners are kept from creating, changing or deleting licenses
    # themselves (app/policies/license_policy.rb); None when Keygen did not say.
    protected: bool | None = None

    @classmethod
    def from_document(cls, document: dict) -> Policy:
        data = document["data"]
        attributes = data.get("attributes") or {}
        protected = attributes.get("protected")
        return cls(
            id=data["id"],
            product_id=_related_id(data["relationships"].get("product")),
            scheme=attributes.get("scheme"),
            keys_readable_later=keys_readable_later(attributes),
            name=attributes.get("name"),
            protected=protected if isinstance(protected, bool) else None,
        )


@dataclass(frozen=True)
class Bearer:
    """Who the token belongs to (`GET /me`)."""

    id: str
    type: str  # "products", "users", ...
    token_kind: str | None  # "product-token", ...
    # What the token may do, as Keygen EE reports it (the token's own permissions intersected
    # with its bearer's, app/models/token.rb); None from Keygen CE, which has none.
    permissions: tuple[str, ...] | None = None

    @property
    def is_product(self) -> bool:
        return self.type == "products"

    @classmethod
    def from_document(cls, document: dict) -> Bearer:
        data = document["data"]
        included = document.get("included") or []
        token = next((i for i in included if i.get("type") == "tokens"), {})
        attributes = token.get("attributes") or {}
        permissions = attributes.get("permissions")
        return cls(
            id=data["id"],
            type=data["type"],
            token_kind=attributes.get("kind"),
            permissions=tuple(permissions) if isinstance(permissions, list) else None,
        )


# -- Self-service: the person's token and machines ---------------------------------------------


@dataclass(frozen=True)
class Token:
    """A token made by `POST /tokens` (app/serializers/token_serializer.rb); its value is in
    that answer only."""

    id: str
    value: str = field(repr=False)
    kind: str  # "user-token", "admin-token", ...
    bearer_id: str | None
    expiry: str | None

    @classmethod
    def of_user(cls, token_id: str, value: str, user_id: str) -> Token:
        """A customer's token kept by the portal (account_sessions.py), made again."""
        return cls(id=token_id, value=value, kind="user-token", bearer_id=user_id, expiry=None)

    @property
    def is_customers(self) -> bool:
        """A user with the role `user`: staff roles have tokens of their own kind."""
        return self.kind == "user-token"

    @classmethod
    def from_document(cls, document: dict) -> Token:
        data = document["data"]
        attributes = data["attributes"]
        return cls(
            id=data["id"],
            value=attributes["token"],
            kind=attributes["kind"],
            bearer_id=_related_id(data["relationships"].get("bearer")),
            expiry=attributes.get("expiry"),
        )


@dataclass(frozen=True)
class Machine:
    """A device activated on a license (app/serializers/machine_serializer.rb)."""

    id: str
    license_id: str | None
    product_id: str | None
    fingerprint: str
    name: str | None
    platform: str | None
    hostname: str | None
    last_heartbeat: str | None
    created: str | None

    @classmethod
    def from_resource(cls, data: dict) -> Machine:
        attributes = data["attributes"]
        relationships = data.get("relationships") or {}
        return cls(
            id=data["id"],
            license_id=_related_id(relationships.get("license")),
            product_id=_related_id(relationships.get("product")),
            fingerprint=attributes["fingerprint"],
            name=attributes.get("name"),
            platform=attributes.get("platform"),
            hostname=attributes.get("hostname"),
            last_heartbeat=attributes.get("lastHeartbeat"),
            created=attributes.get("created"),
        )


def _related_id(relationship: dict | None) -> str | None:
    data = (relationship or {}).get("data")
    return data.get("id") if isinstance(data, dict) else None
