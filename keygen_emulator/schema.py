"""Request-body schemas, checked as keygen-sh/typed_params checks them for Keygen.

Unknown keys are refused first, anywhere in the document (the Parameterizer runs first); then
presence, null, type, blank and value checks in schema order. The first failure is the answer:
400 with a pointer and no code. Schemas mirror the `typed_params` blocks of
`app/controllers/api/v1/{users,licenses,tokens}_controller.rb`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from keygen_emulator.errors import bad_param
from keygen_emulator.formats import UUID_RE, parse_time
from keygen_emulator.state import ROLES

MAX_ATTRIBUTES = ("max_machines", "max_cores", "max_memory", "max_disk", "max_uses")
MAX_ATTRIBUTES += ("max_processes", "max_users")

_MISSING = object()


@dataclass(frozen=True)
class Param:
    type: str  # object, string, boolean, integer, uuid, time
    optional: bool = False  # optional params also accept null
    nullable: bool = False
    blank: bool = False
    children: dict[str, Param] | None = None
    one_of: tuple[str, ...] = ()
    depth: int | None = None


def check(params: dict, schema: Param) -> Any:
    """The document's `data` once it passes `schema`; raises a 400 Halt otherwise."""
    _check_permitted(params, schema, [])
    _check_valid(params, schema, [])
    return params.get("data")


def _relation(*types: str, optional: bool = False, nullable: bool = False) -> Param:
    data = Param(
        "object",
        nullable=nullable,
        children={"type": Param("string", one_of=types), "id": Param("uuid")},
    )
    return Param("object", optional=optional, nullable=optional, children={"data": data})


def _document(data: Param) -> Param:
    return Param("object", children={"data": data})


def _user_schema(*, role: bool, group: bool) -> Param:
    attributes = {
        "first_name": Param("string", optional=True, blank=True),
        "last_name": Param("string", optional=True, blank=True),
        "email": Param("string"),
        "password": Param("string", optional=True),
        "metadata": Param("object", optional=True, blank=True, depth=2),
    }
    if role:
        values = ROLES + tuple(r.replace("_", "-") for r in ROLES if "_" in r)
        attributes["role"] = Param("string", optional=True, one_of=values)
    relationships = {"group": _relation("group", "groups", optional=True, nullable=True)}
    return _document(
        Param(
            "object",
            children={
                "type": Param("string", one_of=("user", "users")),
                "attributes": Param("object", children=attributes),
                "relationships": Param(
                    "object", optional=True, children=relationships if group else {}
                ),
            },
        )
    )


def _license_schema(*, privileged: bool) -> Param:
    attributes = {
        "name": Param("string", optional=True, blank=True),
        "key": Param("string", optional=True),
    }
    if privileged:
        attributes["protected"] = Param("boolean", optional=True)
        attributes["suspended"] = Param("boolean", optional=True)
        attributes["expiry"] = Param("time", optional=True)
        attributes.update({name: Param("integer", optional=True) for name in MAX_ATTRIBUTES})
    attributes["metadata"] = Param("object", optional=True, blank=True, depth=2)
    owner = _relation("user", "users", optional=True, nullable=True)
    data = {"type": Param("string", one_of=("license", "licenses"))}
    if privileged:
        data["id"] = Param("uuid", optional=True)
    data["attributes"] = Param("object", optional=True, children=attributes)
    data["relationships"] = Param(
        "object",
        children={
            "policy": _relation("policy", "policies"),
            "owner": owner,
            "user": owner,  # Keygen's alias: `param :owner, alias: :user`
            "group": _relation("group", "groups", optional=True, nullable=True),
        },
    )
    return _document(Param("object", children=data))


# Keyed by (may set the role, may set the group) and by "may set privileged attributes".
USER_SCHEMAS = {
    (role, group): _user_schema(role=role, group=group)
    for role in (False, True)
    for group in (False, True)
}
LICENSE_SCHEMAS = {flag: _license_schema(privileged=flag) for flag in (False, True)}
TOKEN_SCHEMA = Param(
    "object",
    children={
        "data": Param(
            "object",
            optional=True,
            children={
                "type": Param("string", one_of=("token", "tokens")),
                "attributes": Param(
                    "object",
                    optional=True,
                    children={
                        "expiry": Param("time", optional=True),
                        "name": Param("string", optional=True, blank=True),
                    },
                ),
            },
        ),
        # The second factor of Basic email:password (tokens_controller.rb).
        "meta": Param("object", optional=True, children={"otp": Param("string")}),
    },
)


def _check_permitted(value: Any, param: Param, path: list) -> None:
    if param.children is None or not isinstance(value, dict):
        return
    for key, child_value in value.items():
        child = param.children.get(key)
        if child is None:
            raise bad_param("unpermitted parameter", [*path, key])
        _check_permitted(child_value, child, [*path, key])


def _check_valid(value: Any, param: Param, path: list) -> None:
    if value is _MISSING:
        if not param.optional:
            raise bad_param("is missing", path)
        return
    if value is None:
        if not (param.optional or param.nullable):
            raise bad_param("cannot be null", path)
        return
    if param.children is not None and isinstance(value, dict):
        for key, child in param.children.items():
            _check_valid(value.get(key, _MISSING), child, [*path, key])
    received = _type_name(value)
    if param.type == "uuid":
        if received != "string" or not UUID_RE.fullmatch(value):
            raise bad_param(f"type mismatch (received {received} expected UUID string)", path)
    elif param.type == "time":
        if received != "string" or parse_time(value) is None:
            raise bad_param(f"failed to coerce {received} to time", path)
    elif received != param.type:
        raise bad_param(f"type mismatch (received {received} expected {param.type})", path)
    if param.children is None and _is_blank(value) and not param.blank:
        raise bad_param("cannot be blank", path)
    if param.one_of and value not in param.one_of:
        raise bad_param("is invalid", path)
    if param.depth is not None:
        too_deep = _depth_error(value, param.depth)
        if too_deep:
            raise bad_param(f"maximum depth of {param.depth} exceeded", [*path, *too_deep])


def _depth_error(value: Any, maximum: int, depth: int = 0) -> list | None:
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, child in items:
        if not isinstance(child, dict | list):
            continue
        if depth >= maximum:
            return [key]
        deeper = _depth_error(child, maximum, depth + 1)
        if deeper is not None:
            return [key, *deeper]
    return None


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    for kind, name in ((str, "string"), (int, "integer"), (float, "float"), (dict, "object")):
        if isinstance(value, kind):
            return name
    return "array" if isinstance(value, list) else "null"


def _is_blank(value: Any) -> bool:
    if isinstance(value, str):
        return not value.strip()
    return isinstance(value, dict | list) and not value
