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


@dataclass(frozen=True)
class License:
    id: str
    key: str = field(repr=False)
    policy_id: str | None
    owner_id: str | None
    metadata: dict[str, Any]
    expiry: str | None
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
        return cls(
            id=data["id"],
            key=attributes["key"],
            policy_id=_related_id(relationships.get("policy")),
            owner_id=_related_id(owner),
            metadata=attributes.get("metadata") or {},
            expiry=attributes.get("expiry"),
            product_id=_related_id(relationships.get("product")),
            name=attributes.get("name"),
            status=attributes.get("status"),
        )


@dataclass(frozen=True)
class Policy:
    id: str
    product_id: str | None
    name: str | None = None

    @classmethod
    def from_document(cls, document: dict) -> Policy:
        data = document["data"]
        return cls(
            id=data["id"],
            product_id=_related_id(data["relationships"].get("product")),
            name=(data.get("attributes") or {}).get("name"),
        )


@dataclass(frozen=True)
class Bearer:
    """Who the token belongs to (`GET /me`)."""

    id: str
    type: str  # "products", "users", ...
    token_kind: str | None  # "product-token", ...

    @property
    def is_product(self) -> bool:
        return self.type == "products"

    @classmethod
    def from_document(cls, document: dict) -> Bearer:
        data = document["data"]
        included = document.get("included") or []
        token = next((i for i in included if i.get("type") == "tokens"), {})
        kind = (token.get("attributes") or {}).get("kind")
        return cls(id=data["id"], type=data["type"], token_kind=kind)


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
