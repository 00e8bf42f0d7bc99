"""Machines: seeded through the control plane (the emulator does not activate them), read and
deleted through the API as `app/controllers/api/v1/machines_controller.rb` does.

Who sees and deletes what follows `app/policies/machine_policy.rb`: a product its own product's
machines; a user the machines of the licenses they own (the `for_user` scope), and deletes one
only when its license is not protected (`destroy?`). What a bearer may not see is a 404, as the
controller looks machines up in its `authorized_scope`. A machine is found by id or fingerprint
(`FindByAliasService`, `aliases: :fingerprint`).
"""

from __future__ import annotations

import uuid

import flask

from keygen_emulator import listing
from keygen_emulator.errors import DENIED_BEARER, forbidden, not_found
from keygen_emulator.formats import UUID_RE, iso

STAFF_READ = frozenset({"admin", "developer", "sales_agent", "support_agent", "read_only"})
STAFF_DELETE = frozenset({"admin", "developer", "sales_agent"})


def new_machine(store, lic: dict, now: float, **attributes) -> dict:
    """A machine of license `lic`: name, platform, hostname, fingerprint, last_heartbeat (epoch
    seconds or None), created (epoch seconds, default now)."""
    fingerprint = attributes.get("fingerprint") or uuid.uuid4().hex
    taken = any(
        m["license_id"] == lic["id"] and m["fingerprint"] == fingerprint
        for m in store.machines.values()
    )
    if taken:  # app/models/machine.rb: fingerprint unique per license (per policy by default)
        raise ValueError("a machine with this fingerprint exists for the license")
    created = attributes.get("created") or now
    machine = {
        "id": str(uuid.uuid4()),
        "account_id": lic["account_id"],
        "license_id": lic["id"],
        "product_id": lic["product_id"],
        "owner_id": attributes.get("owner_id"),
        "fingerprint": fingerprint,
        "name": attributes.get("name"),
        "platform": attributes.get("platform"),
        "hostname": attributes.get("hostname"),
        "ip": attributes.get("ip"),
        "last_heartbeat": attributes.get("last_heartbeat"),
        "created": created,
    }
    store.machines[machine["id"]] = machine
    return machine


class MachineRoutes:
    """The machine endpoints, for pipeline.Call's subclass (routes.Api)."""

    def machines_index(self) -> flask.Response:
        self.authenticate(required=True)
        query = self.request.args
        with self.emu.lock:
            found = [
                m
                for m in self.emu.store.machines.values()
                if m["account_id"] == self.account["id"]
                and self._sees_machine(m)
                and self._machine_matches(m, query)
            ]
            found.sort(key=lambda m: m["created"], reverse=True)
            shown, extra = listing.paginate(found, query, self.request.path)
            data = [self._machine_doc(m) for m in shown]
        return self.render(200, {"data": data, **extra})

    def machines_show(self) -> flask.Response:
        self.authenticate(required=True)
        with self.emu.lock:
            machine = self._find_machine(self.args["id"])
            if machine is None:
                raise not_found("machine", self.args["id"])
            document = self._machine_doc(machine)
        return self.render(200, {"data": document})

    def machines_destroy(self) -> flask.Response:
        self.authenticate(required=True)
        role = self.role()
        with self.emu.lock:
            machine = self._find_machine(self.args["id"])
            if machine is None:
                raise not_found("machine", self.args["id"])
            lic = self.emu.store.licenses[machine["license_id"]]
            if role == "user":
                if lic["protected"]:  # `destroy?`: `!record.license.protected?`
                    raise forbidden(DENIED_BEARER)
            elif role != "product" and role not in STAFF_DELETE:
                raise forbidden(DENIED_BEARER)
            self.emu.store.machines.pop(machine["id"], None)
        return self.render(204, None)

    def _find_machine(self, ident: str) -> dict | None:
        store, account_id = self.emu.store, self.account["id"]
        machine = store.machines.get(ident.lower()) if UUID_RE.fullmatch(ident) else None
        if machine is None:
            machine = next(
                (
                    m
                    for m in sorted(store.machines.values(), key=lambda m: m["created"])
                    if m["account_id"] == account_id and m["fingerprint"] == ident
                ),
                None,
            )
        if machine is None or machine["account_id"] != account_id:
            return None
        return machine if self._sees_machine(machine) else None

    def _sees_machine(self, machine: dict) -> bool:
        role = self.role()
        if role == "product":
            return machine["product_id"] == self.bearer["id"]
        if role == "user":
            lic = self.emu.store.licenses.get(machine["license_id"]) or {}
            me = self.bearer["id"]
            return machine["owner_id"] == me or lic.get("owner_id") == me
        return role in STAFF_READ

    def _machine_matches(self, machine: dict, query) -> bool:
        """The index's scopes that matter here: license, product, owner, user."""
        lic = self.emu.store.licenses.get(machine["license_id"]) or {}
        checks = {
            "license": lambda v: v.lower() in (machine["license_id"], lic.get("key", "").lower()),
            "product": lambda v: machine["product_id"] == v.lower(),
            "owner": lambda v: machine["owner_id"] == v.lower(),
            "user": lambda v: v.lower() in (machine["owner_id"], lic.get("owner_id")),
        }
        return all(check(query[name]) for name, check in checks.items() if name in query)

    def _machine_doc(self, machine: dict) -> dict:
        return machine_document(machine)


def machine_document(machine: dict) -> dict:
    """As `app/serializers/machine_serializer.rb` writes it."""
    base = f"/v1/accounts/{machine['account_id']}"
    here = f"{base}/machines/{machine['id']}"
    owner = machine["owner_id"] and {"type": "users", "id": machine["owner_id"]}
    last = machine["last_heartbeat"]
    return {
        "id": machine["id"],
        "type": "machines",
        "attributes": {
            "fingerprint": machine["fingerprint"],
            "cores": None,
            "memory": None,
            "disk": None,
            "ip": machine["ip"],
            "hostname": machine["hostname"],
            "platform": machine["platform"],
            "name": machine["name"],
            "requireHeartbeat": False,
            "heartbeatStatus": "ALIVE" if last else "NOT_STARTED",
            "heartbeatDuration": None,
            "maxProcesses": None,
            "lastCheckOut": None,
            "lastHeartbeat": iso(last),
            "nextHeartbeat": None,
            "metadata": {},
            "created": iso(machine["created"]),
            "updated": iso(machine["created"]),
        },
        "relationships": {
            "account": {
                "links": {"related": base},
                "data": {"type": "accounts", "id": machine["account_id"]},
            },
            "product": {
                "links": {"related": f"{here}/product"},
                "data": {"type": "products", "id": machine["product_id"]},
            },
            "group": {"links": {"related": f"{here}/group"}, "data": None},
            "license": {
                "links": {"related": f"{here}/license"},
                "data": {"type": "licenses", "id": machine["license_id"]},
            },
            "owner": {"links": {"related": f"{here}/owner"}, "data": owner or None},
            "components": {"links": {"related": f"{here}/components"}},
            "processes": {"links": {"related": f"{here}/processes"}},
        },
        "links": {"self": here},
    }
