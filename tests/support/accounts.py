"""Self-service in the tests: customers with licenses and machines in the emulator, made through
its API and control plane, and a browser (the test client) that signs in through the real form."""

from __future__ import annotations

import threading
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


def product_token(world: KeygenWorld, policy: str) -> str:
    """The token of the product the policy belongs to (the portal's, or the other product's)."""
    store = world.emulator.store
    with world.emulator.lock:
        product = store.policies[policy]["product_id"]
        [token] = [v for v, t in store.tokens.items() if t["bearer_id"] == product]
    return secret(token)


def api(world: KeygenWorld, method: str, path: str, token: str, body: dict | None = None):
    url = f"{world.url}/v1/accounts/{world.account}/{path}"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/vnd.api+json"}
    return requests.request(method, url, json=body, headers=headers, timeout=10)


def customer(
    world: KeygenWorld,
    email: str,
    *policies: str,
    password: str | None = PASSWORD,
    machines: dict[int, list[dict]] | None = None,
) -> Customer:
    """A Keygen user with a license under each policy (the portal's unless told) and, for the
    license at index i, the machines in `machines[i]` (name, platform, hostname, ...). Made with
    the products' tokens, as the portal and a shop would: no admin outlives the test."""
    attributes = {"email": email, "firstName": "Clark"}
    if password is not None:
        attributes["password"] = secret(password)
    body = {"data": {"type": "users", "attributes": attributes}}
    response = api(world, "POST", "users", world.token, body)
    assert response.status_code == 201, response.text
    person = Customer(email, response.json()["data"]["id"], password=password or "")
    for policy in policies or (world.policy,):
        relationships = {
            "policy": {"data": {"type": "policies", "id": policy}},
            "owner": {"data": {"type": "users", "id": person.user_id}},
        }
        body = {"data": {"type": "licenses", "relationships": relationships}}
        response = api(world, "POST", "licenses", product_token(world, policy), body)
        assert response.status_code == 201, response.text
        person.licenses.append(response.json()["data"]["id"])
    for index, seeded in (machines or {}).items():
        for machine in seeded:
            world.emulator.add_machine(person.licenses[index], **machine)
    person.keys(world)  # every key is a secret of the run
    return person


def staff_member(world: KeygenWorld, email: str, role: str = "developer") -> str:
    """A user of a staff role with a password, as the account's admins would add one."""
    with world.emulator.lock:
        account = world.emulator.store.require_account(world.account)
        user = world.emulator.store.add_user(account, email, PASSWORD, None, None, role, {})
    return user["id"]


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
