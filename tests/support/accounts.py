"""Self-service in the tests: customers with licenses and machines in the emulator, made through
its API and control plane, and a browser (the test client) that signs in through the real form."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import requests
from werkzeug.serving import make_server

from support.http import csrf_token_from
from support.leaks import PASSWORD, secret
from support.portal import KeygenWorld


@dataclass
class Customer:
    email: str
    user_id: str
    licenses: list[str] = field(default_factory=list)
    password: str = PASSWORD

    def keys(self, world: KeygenWorld) -> list[str]:
        found = {lic["id"]: lic["key"] for lic in world.licenses()}
        return [secret(found[lic]) for lic in self.licenses]


def admin_token(world: KeygenWorld) -> str:
    """A fresh admin of the account (the emulator keeps admins across resets)."""
    _, token = world.emulator.add_admin(world.account, email=f"admin-{uuid.uuid4().hex}@x.io")
    return secret(token)


def api(world: KeygenWorld, method: str, path: str, token: str, body: dict | None = None):
    url = f"{world.url}/v1/accounts/{world.account}/{path}"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/vnd.api+json"}
    return requests.request(method, url, json=body, headers=headers, timeout=10)


def customer(
    world: KeygenWorld,
    email: str,
    *policies: str,
    password: str = PASSWORD,
    machines: dict[int, list[dict]] | None = None,
) -> Customer:
    """A Keygen user with a license under each policy (the portal's unless told) and, for the
    license at index i, the machines in `machines[i]` (name, platform, hostname, ...)."""
    admin = admin_token(world)
    attributes = {"email": email, "password": secret(password), "firstName": "Clark"}
    response = api(
        world, "POST", "users", admin, {"data": {"type": "users", "attributes": attributes}}
    )
    assert response.status_code == 201, response.text
    person = Customer(email, response.json()["data"]["id"], password=password)
    for policy in policies or (world.policy,):
        relationships = {
            "policy": {"data": {"type": "policies", "id": policy}},
            "owner": {"data": {"type": "users", "id": person.user_id}},
        }
        body = {"data": {"type": "licenses", "relationships": relationships}}
        response = api(world, "POST", "licenses", admin, body)
        assert response.status_code == 201, response.text
        person.licenses.append(response.json()["data"]["id"])
    for index, seeded in (machines or {}).items():
        for machine in seeded:
            world.emulator.add_machine(person.licenses[index], **machine)
    person.keys(world)  # every key is a secret of the run
    return person


def machine_ids(world: KeygenWorld, license_id: str) -> list[str]:
    return [
        m["id"] for m in world.emulator.machines(world.account) if m["license_id"] == license_id
    ]


def sign_in(client, email: str, password: str = PASSWORD):
    """Post the sign-in form as a browser would; returns the answer."""
    page = client.get("/sign-in")
    data = {"csrf_token": csrf_token_from(page.get_data(as_text=True)), "email": email}
    data["password"] = password
    return client.post("/sign-in", data=data)


def csrf_of(client, path: str) -> str:
    return csrf_token_from(client.get(path).get_data(as_text=True))


@contextmanager
def serving(app, port: int) -> Iterator[str]:
    """The app on 127.0.0.1:port over real HTTP, from a thread (Keygen's webhooks need one)."""
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True, name=f"portal:{port}")
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
