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
        )


@dataclass(frozen=True)
class Policy:
    id: str
    product_id: str | None
    # Whether its licenses' owners are kept from creating, changing or deleting licenses
    # themselves (app/policies/license_policy.rb); None when Keygen did not say.
    protected: bool | None = None

    @classmethod
    def from_document(cls, document: dict) -> Policy:
        data = document["data"]
        protected = (data.get("attributes") or {}).get("protected")
        return cls(
            id=data["id"],
            product_id=_related_id(data["relationships"].get("product")),
            protected=protected if isinstance(protected, bool) else None,
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


def _related_id(relationship: dict | None) -> str | None:
    data = (relationship or {}).get("data")
    return data.get("id") if isinstance(data, dict) else None
