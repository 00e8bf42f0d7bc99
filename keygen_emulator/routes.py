"""The endpoints of the Keygen API the portal uses, and who may see and do what.

Each method is one route; pipeline.Call has already applied the middleware, found the account and
the API version. Authorization follows `app/policies/{user,license,policy,token}_policy.rb` and the
controllers' `authorized_scope`: what a bearer may not see is a 404, not a 403.
"""

from __future__ import annotations

import base64
import re
import uuid

import flask

from keygen_emulator import documents, listing
from keygen_emulator.deployment import licensed_user_limit_error
from keygen_emulator.errors import (
    DENIED_ANONYMOUS,
    DENIED_BEARER,
    DENIED_OTHER_PRODUCT,
    Halt,
    forbidden,
    invalid,
    not_found,
    too_long,
)
from keygen_emulator.formats import (
    UUID_RE,
    legacy_key,
    license_key,
    parse_time,
)
from keygen_emulator.machines import MachineRoutes
from keygen_emulator.passwords import PasswordRoutes
from keygen_emulator.pipeline import Call
from keygen_emulator.schema import LICENSE_SCHEMAS, MAX_ATTRIBUTES, USER_SCHEMAS
from keygen_emulator.state import ROLES
from keygen_emulator.tokens import TokenRoutes

_STAFF_READ = frozenset(ROLES[1:])
_STAFF_CREATE = frozenset({"admin", "developer", "sales_agent"})
_STAFF_WRITE = frozenset({"admin", "developer"})
_GROUP_SETTERS = frozenset({"product", "admin", "developer", "sales_agent", "support_agent"})
# The email format of the model (`email_check` in app/models/user.rb), approximated.
_EMAIL_RE = re.compile(r"[^@\s]+@(?:[^@\s.]+\.)+[^@\s.]+")


class Api(MachineRoutes, PasswordRoutes, TokenRoutes, Call):
    """A Keygen API request, answered by the method named after its route."""

    def me(self) -> flask.Response:
        self.authenticate(required=True)
        self.verify_permissions()
        bearer_permissions, token_permissions = self.permissions()
        with self.emu.lock:
            if self.role() == "product":
                document = documents.product_document(self.bearer, bearer_permissions)
            else:
                document = self._user_doc(self.bearer)
            token = documents.token_document(self.token, permissions=token_permissions)
        return self.render(200, {"data": document, "included": [token]})

    def accounts_show(self) -> flask.Response:
        """The account's document (app/policies/account_policy.rb, `show?`: its own account
        only); its meta holds the verify keys, ed25519 as base64 of the hex text
        (app/serializers/account_serializer.rb)."""
        self.authenticate(required=True)
        self.verify_permissions()
        ed25519 = self.emu.webhooks.public_key(self.account["id"])
        document = documents.account_document(self.account)
        meta = {"keys": {"ed25519": base64.b64encode(ed25519.encode()).decode()}}
        return self.render(200, {"data": document, "meta": meta})

    # Users

    def users_create(self) -> flask.Response:
        self.authenticate(required=False)
        role = self.role()
        schema = USER_SCHEMAS[(role in _STAFF_WRITE, role in _GROUP_SETTERS)]
        data = self.typed(schema)
        self.verify_permissions()
        if role is None and self.account["protected"]:
            raise forbidden(DENIED_ANONYMOUS)
        if role is not None and role != "product" and role not in _STAFF_CREATE:
            raise forbidden(DENIED_BEARER)
        attributes = data["attributes"]
        email = attributes["email"].strip().lower()
        password = attributes.get("password")
        first, last = attributes.get("first_name"), attributes.get("last_name")
        metadata = attributes.get("metadata") or {}
        new_role = (attributes.get("role") or "user").replace("-", "_")
        group = ((data.get("relationships") or {}).get("group") or {}).get("data")
        account_id = self.account["id"]
        with self.emu.lock:
            errors = self._user_errors(email, password, first, last, metadata, group)
            if errors:
                raise Halt(422, errors)
            user = self.emu.store.add_user(
                account_id,
                email,
                password,
                first,
                last,
                new_role,
                metadata,
                environment_id=self.environment and self.environment["id"],
            )
            document = self._user_doc(user)
        return self.render(201, {"data": document}, location=f"users/{user['id']}")

    def _user_errors(self, email, password, first, last, metadata, group) -> list[dict]:
        """The model's rules (app/models/user.rb), every failure in declaration order."""
        errors = []
        if not _EMAIL_RE.fullmatch(email) or ".." in email:
            errors.append(invalid("users", "email", "is invalid", "EMAIL_INVALID"))
        if len(email) > 255:
            errors.append(too_long("users", "email", 255))
        if (self.account["id"], email) in self.emu.store.emails:
            errors.append(invalid("users", "email", "has already been taken", "EMAIL_TAKEN"))
        if password is not None and len(password) < 6:
            detail = "is too short (minimum is 6 characters)"
            errors.append(invalid("users", "password", detail, "PASSWORD_TOO_SHORT"))
        if password is not None and len(password) > 72:
            errors.append(too_long("users", "password", 72))
        for name, value in (("first_name", first), ("last_name", last)):
            if value is not None and len(value) > 255:
                errors.append(too_long("users", name, 255))
        if len(metadata) > 64:
            detail = "too many keys (exceeded limit of 64 keys)"
            errors.append(invalid("users", "metadata", detail, "METADATA_TOO_LONG"))
        if group is not None:
            errors.append(
                invalid("users", "group", "must exist", "GROUP_NOT_FOUND", relationship=True)
            )
        return errors

    def users_show(self) -> flask.Response:
        self.authenticate(required=True)
        with self.emu.lock:
            user = self._find_user(self.args["id"])
            if user is None:
                raise not_found("user", self.args["id"].lower())
            self.verify_permissions()
            document = self._user_doc(user)
        return self.render(200, {"data": document})

    def users_index(self) -> flask.Response:
        """`index` of app/controllers/api/v1/users_controller.rb: the `roles` scope keeps users
        with the role user unless asked; `metadata[key]=value` filters; newest first."""
        self.authenticate(required=True)
        limit = listing.page_limit(self.request.args)
        filters = listing.metadata_filters(self.request.args)
        account_id = self.account["id"]
        with self.emu.lock:
            found = [
                (user["created"], n, user)
                for n, user in enumerate(self.emu.store.users.values())
                if user["account_id"] == account_id
                and user["role"] == "user"
                and self._sees_user(user)
                and listing.metadata_matches(user["metadata"], filters)
            ]
            found.sort(key=lambda item: item[:2], reverse=True)
            data = [self._user_doc(user) for _, _, user in found[:limit]]
        return self.render(200, {"data": data})

    def users_destroy(self) -> flask.Response:
        self.authenticate(required=True)
        role = self.role()
        with self.emu.lock:
            user = self._find_user(self.args["id"])
            if user is None:
                raise not_found("user", self.args["id"].lower())
            self.verify_permissions()
            if role == "product":
                # `record.products` in UserPolicy#destroy?: through the licenses the user owns
                # or is attached to (app/models/user.rb, `has_many :licenses, union_of:`).
                products = {
                    lic["product_id"]
                    for lic in self.emu.store.licenses.values()
                    if user["id"] == lic["owner_id"] or user["id"] in lic["user_ids"]
                }
                if products - {self.bearer["id"]}:
                    raise forbidden(DENIED_OTHER_PRODUCT)
            elif role not in _STAFF_WRITE:
                raise forbidden(DENIED_BEARER)
            self.emu.store.delete_user(user, self.emu.deployment.delete_delay)
        return self.render(204, None)

    # Licenses

    def licenses_create(self) -> flask.Response:
        self.authenticate(required=True)
        role = self.role()
        data = self.typed(LICENSE_SCHEMAS[role == "product" or role in _STAFF_CREATE])
        self.verify_permissions()
        attributes = data.get("attributes") or {}
        relationships = data["relationships"]
        policy_id = relationships["policy"]["data"]["id"].lower()
        owner_relationship = None
        for name, value in relationships.items():  # the last of owner/user wins
            if name in ("owner", "user"):
                owner_relationship = value
        owner_data = (owner_relationship or {}).get("data")
        owner_id = owner_data["id"].lower() if owner_data else None
        group = (relationships.get("group") or {}).get("data")
        license_id = (data.get("id") or "").lower() or None
        account_id = self.account["id"]
        with self.emu.lock:
            policy = self.emu.store.policies.get(policy_id)
            if policy is not None and (
                policy["account_id"] != account_id or not self.visible(policy)
            ):
                policy = None
            self._authorize_license(role, policy, owner_id)
            errors = self._license_errors(license_id, policy, owner_id, group, attributes)
            if errors:
                raise Halt(422, errors)
            over_limit = licensed_user_limit_error(self.account, self.emu.store.licenses)
            if over_limit:
                raise Halt(402, [over_limit])
            lic = self._add_license(license_id, policy, owner_id, attributes)
            document = self._license_doc(lic, reveal=True)
        return self.render(201, {"data": document}, location=f"licenses/{lic['id']}")

    def _authorize_license(self, role: str | None, policy: dict | None, owner_id: str | None):
        """`LicensePolicy#create?`: before the model's rules, so a foreign policy is a 403."""
        if role == "product":
            if policy is None or policy["product_id"] != self.bearer["id"]:
                raise forbidden(DENIED_BEARER)
        elif role == "user":  # only for themselves, and only under an unprotected policy
            if owner_id != self.bearer["id"] or (policy is not None and policy["protected"]):
                raise forbidden(DENIED_BEARER)
        elif role not in _STAFF_CREATE:
            raise forbidden(DENIED_BEARER)

    def _license_errors(self, license_id, policy, owner_id, group, attributes) -> list[dict]:
        """The model's rules (app/models/license.rb), every failure in declaration order."""
        store, account_id = self.emu.store, self.account["id"]
        owner = store.users.get(owner_id or "")
        missing = []
        if policy is None:  # the product comes from the policy, so it is missing too
            missing += [("policy", "POLICY_NOT_FOUND"), ("product", "PRODUCT_NOT_FOUND")]
        if owner_id and (owner is None or owner["account_id"] != account_id):
            missing.append(("owner", "OWNER_NOT_FOUND"))
        if group is not None:
            missing.append(("group", "GROUP_NOT_FOUND"))
        errors = [
            invalid("licenses", relation, "must exist", code, relationship=True)
            for relation, code in missing
        ]
        if license_id and license_id in store.licenses:
            detail = "must not conflict with another license"
            errors.append(invalid("licenses", "id", detail, "ID_CONFLICT"))
        key = attributes.get("key")
        if policy and key and UUID_RE.fullmatch(key):
            other = store.licenses.get(key.lower())
            if other is not None and other["account_id"] == account_id:
                detail = "must not conflict with another license's identifier (UUID)"
                errors.append(invalid("licenses", "key", detail, "KEY_CONFLICT"))
        if len(attributes.get("metadata") or {}) > 64:
            detail = "too many keys (exceeded limit of 64 keys)"
            errors.append(invalid("licenses", "metadata", detail, "METADATA_TOO_LONG"))
        if key is not None:
            errors += self._key_errors(key)
        name = attributes.get("name")
        if name is not None and len(name) > 1024:
            errors.append(too_long("licenses", "name", 1024))
        for attribute in MAX_ATTRIBUTES:
            value = attributes.get(attribute)
            low = 1 if attribute in ("max_machines", "max_cores") else 0
            if value is not None and not low <= value <= 2_147_483_647:
                detail = f"must be greater than or equal to {low}"
                code = f"{attribute.upper()}_INVALID"
                errors.append(invalid("licenses", attribute, detail, code))
        return errors

    def _key_errors(self, key: str) -> list[dict]:
        errors = []
        if key in ("action", "actions"):
            errors.append(invalid("licenses", "key", "is reserved", "KEY_NOT_ALLOWED"))
        if (self.account["id"], key) in self.emu.store.keys:
            errors.append(invalid("licenses", "key", "has already been taken", "KEY_TAKEN"))
        if len(key) > 102_400:
            errors.append(too_long("licenses", "key", 102_400))
        elif len(key) < 6:
            detail = "is too short (minimum is 6 characters)"
            errors.append(invalid("licenses", "key", detail, "KEY_TOO_SHORT"))
        return errors

    def _add_license(self, license_id, policy, owner_id, attributes) -> dict:
        now = self.emu.clock()
        expiry = attributes.get("expiry")
        expiry = None if expiry is None else parse_time(expiry)
        if expiry is None and policy["duration"]:
            expiry = now + policy["duration"]
        key = attributes.get("key")
        protected = attributes.get("protected")
        license_id = license_id or str(uuid.uuid4())
        if key is None:
            key = legacy_key(license_id) if policy["encrypted"] else license_key()
        lic = {
            "id": license_id,
            "account_id": self.account["id"],
            "environment_id": self.environment and self.environment["id"],
            "key": key,
            "scheme": policy["scheme"],
            "encrypted": policy["encrypted"],
            "user_ids": [],
            "name": attributes.get("name"),
            "policy_id": policy["id"],
            "product_id": policy["product_id"],
            "owner_id": owner_id,
            "metadata": attributes.get("metadata") or {},
            "expiry": expiry,
            # app/models/license.rb: unless the request says, the policy's.
            "protected": policy["protected"] if protected is None else bool(protected),
            "suspended": bool(attributes.get("suspended")),
            "created": now,
            "updated": now,
            "seq": next(self.emu.store.seq),
            **{name: attributes.get(name) for name in MAX_ATTRIBUTES},
        }
        self.emu.store.add_license(lic)
        return lic

    def licenses_show(self) -> flask.Response:
        self.authenticate(required=True)
        with self.emu.lock:
            lic = self._find_license(self.args["id"])
            if lic is None:
                raise not_found("license", self.args["id"])
            self.verify_permissions()
            document = self._license_doc(lic)
        return self.render(200, {"data": document})

    def licenses_destroy(self) -> flask.Response:
        self.authenticate(required=True)
        with self.emu.lock:
            lic = self._find_license(self.args["id"])
            if lic is None:
                raise not_found("license", self.args["id"])
            self.verify_permissions()
            if self.role() != "product" and self.role() not in _STAFF_WRITE:
                raise forbidden(DENIED_BEARER)
            self.emu.store.delete_license(lic)
        return self.render(204, None)

    def licenses_index(self) -> flask.Response:
        self.authenticate(required=True)
        query = self.request.args
        filters = [query[name] for name in ("owner", "user") if name in query]
        product = query.get("product", "").lower() or None
        account_id = self.account["id"]
        with self.emu.lock:
            found = [
                lic
                for lic in self.emu.store.licenses.values()
                if lic["account_id"] == account_id
                and self.visible(lic)
                and self._sees_license(lic)
                and all(self._owned_by(lic, value) for value in filters)
                and product in (None, lic["product_id"])
            ]
            self.verify_permissions()
            found.sort(key=lambda lic: (lic["created"], lic["seq"]), reverse=True)
            shown, extra = listing.paginate(found, query, self.request.path)
            data = [self._license_doc(lic) for lic in shown]
        return self.render(200, {"data": data, **extra})

    def _owned_by(self, lic: dict, value: str) -> bool:
        if lic["owner_id"] is None or not value:
            return False
        if UUID_RE.fullmatch(value):
            return lic["owner_id"] == value.lower()
        owner = self.emu.store.users.get(lic["owner_id"])
        return owner is not None and owner["email"] == value  # exact, as Keygen matches it

    # Policies

    def policies_show(self) -> flask.Response:
        # `set_policy` in app/controllers/api/v1/policies_controller.rb looks in the bearer's
        # authorized scope: a product token sees only its own product's policies.
        self.authenticate(required=True)
        with self.emu.lock:
            policy = self.emu.store.policies.get(self.args["id"].lower())
            role = self.role()
            visible = (
                policy is not None
                and policy["account_id"] == self.account["id"]
                and self.visible(policy)
            )
            if visible and role == "product":
                visible = policy["product_id"] == self.bearer["id"]
            elif visible and role == "user":  # `bearer.policies`: those of the user's licenses
                visible = any(
                    lic["policy_id"] == policy["id"] and lic["owner_id"] == self.bearer["id"]
                    for lic in self.emu.store.licenses.values()
                )
            elif visible and role not in _STAFF_READ:
                visible = False
            if not visible:
                raise not_found("policy", self.args["id"])
            self.verify_permissions()
            document = documents.policy_document(policy)
        return self.render(200, {"data": document})

    # Visibility (the controllers' authorized scopes) and documents

    def _find_user(self, ident: str) -> dict | None:
        """By id or email; a product sees only users with the role user."""
        store = self.emu.store
        ident = ident.lower()
        account_id = self.account["id"]
        user_id = ident if UUID_RE.fullmatch(ident) else store.emails.get((account_id, ident))
        user = store.users.get(user_id or "")
        if user is None or user["account_id"] != account_id or not self.visible(user):
            return None
        return user if self._sees_user(user) else None

    def _sees_user(self, user: dict) -> bool:
        """`User.accessible_by`: a product sees the users with the role user, staff everyone,
        a user itself."""
        role = self.role()
        if role == "product":
            return user["role"] == "user"
        if role in _STAFF_READ:
            return True
        return self.bearer is not None and user["id"] == self.bearer["id"]

    def _find_license(self, ident: str) -> dict | None:
        """By id or key."""
        store = self.emu.store
        account_id = self.account["id"]
        lic = store.licenses.get(ident.lower()) if UUID_RE.fullmatch(ident) else None
        if lic is None or lic["account_id"] != account_id:
            lic = store.licenses.get(store.keys.get((account_id, ident), ""))
        if lic is None or not self.visible(lic):
            return None
        return lic if self._sees_license(lic) else None

    def _sees_license(self, lic: dict) -> bool:
        role = self.role()
        if role == "product":
            return lic["product_id"] == self.bearer["id"]
        return role in _STAFF_READ or (role == "user" and lic["owner_id"] == self.bearer["id"])

    def _user_doc(self, user: dict) -> dict:
        now = self.emu.clock()
        return documents.user_document(user, self.version, now, self.emu.store.licenses)

    def _license_doc(self, lic: dict, *, reveal: bool = False) -> dict:
        return documents.license_document(lic, self.version, self.emu.clock(), reveal=reveal)
