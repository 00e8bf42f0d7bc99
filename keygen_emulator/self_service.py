"""Seeding and inspection for what a customer does after signing up: machines on their
licenses, second factors, bans, webhook endpoints and the tokens the API minted.

A mixin of state.Emulator (which holds `store`, `lock`, `clock` and `webhooks`); the control
plane (wsgi.py) exposes each method to tests that run the emulator as another process.
"""

from __future__ import annotations

from keygen_emulator import people
from keygen_emulator.formats import iso, parse_time
from keygen_emulator.machines import new_machine


class SelfServiceState:
    def add_machine(self, license_id: str, **attributes) -> str:
        """A machine activated on the license: name, platform, hostname, fingerprint, ip,
        last_heartbeat and created (ISO 8601 or epoch seconds)."""
        for moment in ("last_heartbeat", "created"):
            if isinstance(attributes.get(moment), str):
                attributes[moment] = parse_time(attributes[moment])
        with self.lock:
            lic = self.store.licenses.get(license_id.lower())
            if lic is None:
                raise KeyError(f"no license {license_id!r}")
            return new_machine(self.store, lic, self.clock(), **attributes)["id"]

    def ban_user(self, user: str) -> None:
        with self.lock:
            self._user(user)["banned"] = True

    def enable_second_factor(self, user: str) -> str:
        """Turn on a TOTP second factor for the user; returns its base32 secret."""
        with self.lock:
            return people.enable_second_factor(self._user(user))

    def add_webhook_endpoint(self, account: str, url: str, subscriptions=("*",)) -> dict:
        """An endpoint (as made in Keygen's dashboard), and the account's verify key."""
        with self.lock:
            account_id = self.store.require_account(account)
        endpoint = self.webhooks.add_endpoint(account_id, url, subscriptions=subscriptions)
        return {**endpoint, "public_key": self.webhooks.public_key(account_id)}

    def public_key(self, account: str) -> str:
        with self.lock:
            account_id = self.store.require_account(account)
        return self.webhooks.public_key(account_id)

    def machines(self, account: str | None = None) -> list[dict]:
        with self.lock:
            account_id = None if account is None else self.store.require_account(account)
            return [
                {**m, "last_heartbeat": iso(m["last_heartbeat"]), "created": iso(m["created"])}
                for m in self.store.machines.values()
                if account_id in (None, m["account_id"])
            ]

    def tokens(self, account: str | None = None) -> list[dict]:
        """The tokens, without their values: id, kind, bearer and expiry."""
        with self.lock:
            account_id = None if account is None else self.store.require_account(account)
            return [
                {
                    "id": t["id"],
                    "kind": t["kind"],
                    "bearer_type": t["bearer_type"],
                    "bearer_id": t["bearer_id"],
                    "expiry": iso(t["expiry"]),
                    "name": t["name"],
                }
                for t in self.store.tokens.values()
                if account_id in (None, t["account_id"])
            ]

    def _user(self, ref: str) -> dict:
        store = self.store
        user = store.users.get(ref.lower())
        if user is None:
            matches = [u for u in store.users.values() if u["email"] == ref.strip().lower()]
            user = matches[0] if matches else None
        if user is None:
            raise KeyError(f"no user {ref!r}")
        return user
