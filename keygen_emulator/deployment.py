"""How the emulated Keygen is deployed, and what its accounts and tokens may do: the switches for
every behaviour that differs between Keygen Cloud (the defaults) and the other setups a vendor
runs. Each rule names the keygen-api file that defines it.

- ``edition``: "EE" (Cloud) or "CE". Only EE has environments (`Keygen-Environment`) and token
  permissions (`app/controllers/concerns/current_environment_scope.rb`, `app/models/token.rb`).
- ``newest_version``: the newest API version the server knows; "1.7" is self-hosted CE/EE
  v1.3.0 to v1.4.x (`config/initializers/request_migrations.rb`, `lib/keygen/version.rb`).
- ``mode``: "multiplayer" (Cloud) finds the account of an un-prefixed /v1/<resource> route by the
  Host's custom domain (``cnames``); "singleplayer" (self-hosted) serves its one account there,
  and refuses any other on /v1/accounts/<id>/ (`app/services/resolve_account_service.rb`).
- ``hosts``: a self-hosted server answers only its KEYGEN_HOST/KEYGEN_HOSTS; another Host gets
  403 with an empty body (`config/environments/production.rb`, Rails' host authorization).
- ``domain``: /v1/accounts/<id>/ routes exist only under Keygen's own domain (`config/routes.rb`,
  `constraints domain: Keygen::DOMAIN`); None: under any Host.
- ``delete_delay``: owned licenses outlive their deleted user by this many seconds, as
  `dependent: :destroy_async` does (`app/models/user.rb`); None: at once.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from keygen_emulator.errors import invalid

EDITIONS = ("EE", "CE")
MODES = ("multiplayer", "singleplayer")
WILDCARD = "*"

# What a product may be allowed to do (`PRODUCT_PERMISSIONS` in app/models/permission.rb); a
# product's role has all of them unless told otherwise.
PRODUCT_PERMISSIONS = (
    *("account.read", "arch.read", "channel.read", "constraint.read", "engine.read"),
    *("artifact.create", "artifact.delete", "artifact.read", "artifact.update"),
    *("component.create", "component.delete", "component.read", "component.update"),
    *("entitlement.read", "group.create", "group.delete", "group.licenses.read"),
    *("group.machines.read", "group.owners.attach", "group.owners.detach", "group.owners.read"),
    *("group.read", "group.update", "group.users.read"),
    *("key.create", "key.delete", "key.read", "key.update"),
    *("license.check-in", "license.check-out", "license.create", "license.delete"),
    *("license.entitlements.attach", "license.entitlements.detach", "license.group.update"),
    *("license.owner.update", "license.policy.update", "license.read", "license.reinstate"),
    *("license.renew", "license.revoke", "license.suspend", "license.tokens.generate"),
    *("license.update", "license.usage.decrement", "license.usage.increment"),
    *("license.usage.reset", "license.user.update", "license.users.attach"),
    *("license.users.detach", "license.validate"),
    *("machine.check-out", "machine.create", "machine.delete", "machine.group.update"),
    *("machine.heartbeat.ping", "machine.heartbeat.reset", "machine.owner.update"),
    *("machine.proofs.generate", "machine.read", "machine.update"),
    *("package.create", "package.delete", "package.read", "package.update", "platform.read"),
    *("policy.create", "policy.delete", "policy.entitlements.attach"),
    *("policy.entitlements.detach", "policy.pool.pop", "policy.read", "policy.update"),
    *("process.create", "process.delete", "process.heartbeat.ping", "process.read"),
    *("process.update", "product.read", "product.update"),
    *("release.constraints.attach", "release.constraints.detach", "release.create"),
    *("release.delete", "release.download", "release.package.update", "release.publish"),
    *("release.read", "release.update", "release.upgrade", "release.upload", "release.yank"),
    *("token.generate", "token.read", "token.regenerate", "token.revoke"),
    *("user.ban", "user.create", "user.delete", "user.group.update", "user.read"),
    *("user.tokens.generate", "user.unban", "user.update"),
    *("webhook-endpoint.create", "webhook-endpoint.delete", "webhook-endpoint.read"),
)

# The permission each route's policy verifies first (`verify_permissions!` in
# app/policies/{account,profile,user,license,policy,token}_policy.rb; /me is
# ProductPolicy#me?).
ROUTE_PERMISSIONS = {
    "accounts.show": "account.read",
    "me": "product.read",
    "users.create": "user.create",
    "users.show": "user.read",
    "users.destroy": "user.delete",
    "licenses.create": "license.create",
    "licenses.index": "license.read",
    "licenses.show": "license.read",
    "licenses.destroy": "license.delete",
    "policies.show": "policy.read",
    "tokens.create": "token.generate",
    "tokens.destroy": "token.revoke",
}

# Routes behind `require_active_subscription!` (app/controllers/api/v1/*_controller.rb).
SUBSCRIBED_ROUTES = frozenset(
    {"users.index", "users.create", "users.destroy", "licenses.create", "licenses.index"}
    | {"licenses.show"}
    | {"licenses.destroy", "policies.show"}
)


@dataclass
class Deployment:
    """The switches; the defaults are Keygen Cloud's."""

    edition: str = "EE"
    newest_version: str = "1.8"
    mode: str = "multiplayer"
    hosts: tuple[str, ...] = ()  # (): every Host is served
    domain: str | None = None  # None: account routes under any Host
    cnames: dict[str, str] = field(default_factory=dict)  # custom domain -> account id
    delete_delay: float | None = None

    def check(self) -> None:
        if self.edition not in EDITIONS:
            raise ValueError(f"edition must be one of {', '.join(EDITIONS)}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        major, _, minor = self.newest_version.partition(".")
        if major != "1" or not minor.isdigit() or not 0 <= int(minor) <= 8:
            raise ValueError("newest_version must be 1.0 to 1.8")
        if self.delete_delay is not None and self.delete_delay < 0:
            raise ValueError("delete_delay cannot be negative")

    def versions(self) -> frozenset[str]:
        """The API versions this server accepts: 1.0 up to its newest."""
        newest = int(self.newest_version.split(".")[1])
        return frozenset(f"1.{minor}" for minor in range(newest + 1))

    def serves_host(self, host: str) -> bool:
        return not self.hosts or host_name(host) in self.hosts

    def serves_account_routes(self, host: str) -> bool:
        if self.domain is None:
            return True
        name = host_name(host)
        return name == self.domain or name.endswith("." + self.domain)


def host_name(host: str) -> str:
    """The Host header without its port, lower-cased."""
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0].lower() if host.count(":") == 1 else host.lower()


def in_environment(record_environment: str | None, current: dict | None) -> bool:
    """Whether a record is seen in the request's environment: `for_environment` in
    app/models/concerns/environmental.rb (strict in the global environment; a shared
    environment also sees the global one's records, an isolated one only its own)."""
    if current is None:
        return record_environment is None
    if current["isolation"] == "SHARED":
        return record_environment in (None, current["id"])
    return record_environment == current["id"]


def effective_permissions(token: dict, bearer_permissions: tuple[str, ...] | None) -> list[str]:
    """A token's permissions as Keygen reports and checks them (`Token#permissions` in
    app/models/token.rb): its own, intersected with its bearer's; a wildcard defers to the other
    side. None for the bearer: a role without permission checks (every permission)."""
    own = token.get("permissions")
    bearer = list(bearer_permissions) if bearer_permissions is not None else [WILDCARD]
    if own is None or WILDCARD in own:
        return bearer
    if WILDCARD in bearer:
        return list(own)
    return [p for p in bearer if p in own]


def licensed_user_limit_error(account: dict, licenses: dict) -> dict | None:
    """The 402's error when a new license would pass the account plan's licensed-user limit
    (`enforce_active_licensed_user_limit_on_account!` in app/models/license.rb, before create;
    `render_unprocessable_resource` answers 402 for its code)."""
    limit = account["licensed_user_limit"]
    if limit is None:
        return None
    mine = [lic for lic in licenses.values() if lic["account_id"] == account["id"]]
    owners = {lic["owner_id"] for lic in mine if lic["owner_id"]}
    if len(owners) + sum(1 for lic in mine if not lic["owner_id"]) < limit:
        return None
    detail = (
        f"Your tier's active licensed user limit of {limit:,} has been reached for your "
        "account. Please upgrade to a paid tier and add a payment method at "
        "https://app.keygen.sh/billing."
    )
    return invalid("licenses", "account", detail, "ACCOUNT_ALU_LIMIT_EXCEEDED", relationship=True)


def lacks(permissions: list[str] | tuple[str, ...], action: str) -> bool:
    return WILDCARD not in permissions and action not in permissions


LEGACY_ENCRYPT = "LEGACY_ENCRYPT"
# What a Cloud account's plan and subscription allow, until set_account_state() says otherwise.
ACCOUNT_STATE = {"active": True, "daily_limit_reached": False, "licensed_user_limit": None}
_KEEP = object()


class Switches:
    """The Emulator's methods for the switches above and the states of accounts, tokens and
    licenses they act on. Mixed into state.Emulator, whose lock and store they use."""

    def configure(self, **switches) -> None:
        """Change the deployment: edition, newest_version, mode, hosts, domain, cnames,
        delete_delay. reset() restores Keygen Cloud's."""
        with self.lock:
            changed = Deployment(**{**vars(self.deployment), **switches})
            changed.hosts = tuple(h.lower() for h in changed.hosts)
            changed.check()
            self.deployment = changed

    def add_environment(self, account: str, code: str, *, isolation: str = "ISOLATED") -> str:
        """An environment of ``account`` (EE): ISOLATED sees only its own records, SHARED
        also the global environment's (app/models/environment.rb)."""
        if isolation not in ("ISOLATED", "SHARED"):
            raise ValueError("isolation must be ISOLATED or SHARED")
        with self.lock:
            account_id = self.store.require_account(account)
            if self.store.find_environment(account_id, code) is not None:
                raise ValueError("an environment with this code exists")
            environment_id = str(uuid.uuid4())
            self.store.environments[environment_id] = {
                "id": environment_id,
                "account_id": account_id,
                "code": code,
                "isolation": isolation,
            }
        return environment_id

    def set_account_state(
        self,
        account: str,
        *,
        active: bool | None = None,
        daily_limit_reached: bool | None = None,
        licensed_user_limit: object = _KEEP,
    ) -> None:
        """A lapsed subscription (not ``active``: 403), a used-up daily request limit (402) or
        a plan's licensed-user limit (402 on license create), from
        app/controllers/concerns/current_account_constraints.rb and app/models/license.rb."""
        with self.lock:
            account_ref = self.store.accounts[self.store.require_account(account)]
            if active is not None:
                account_ref["active"] = active
            if daily_limit_reached is not None:
                account_ref["daily_limit_reached"] = daily_limit_reached
            if licensed_user_limit is not _KEEP:
                account_ref["licensed_user_limit"] = licensed_user_limit

    def set_permissions(self, token: str, permissions: list[str] | None) -> None:
        """Narrow a token (EE) to these permissions; None: its bearer's. The token keeps them
        across reset()."""
        with self.lock:
            record = self.store.tokens.get(token)
            if record is None:
                raise KeyError("no such token")
            record["permissions"] = None if permissions is None else list(permissions)
            self.narrowed.add(token)

    def attach_user(self, license_id: str, user_id: str) -> None:
        """Attach a user to a license they do not own (`license_users`, multi-user licenses)."""
        with self.lock:
            lic = self.store.licenses[license_id.lower()]
            if user_id.lower() not in self.store.users:
                raise KeyError("no such user")
            lic["user_ids"].append(user_id.lower())

    def race(self, route: str, *, times: int = 1) -> None:
        """The next create on ``route`` loses a race with a twin request that went through:
        the record is created, and this request gets the 409 of Keygen's unique index
        (`rescue ActiveRecord::RecordNotUnique` in app/controllers/application_controller.rb)."""
        if route not in ("users.create", "licenses.create"):
            raise ValueError("only users.create and licenses.create race on a unique index")
        self.inject(route, status=409, when="after", times=times)

    def run_jobs(self) -> None:
        """Run the background deletions now, due or not."""
        with self.lock:
            self.store.run_jobs(None)

    def _restore_switches(self) -> None:
        """For reset(): the deployment it started with (Keygen Cloud's unless seeded
        otherwise), active accounts, tokens with their bearers' permissions."""
        self.deployment = self.base_deployment
        for account in self.store.accounts.values():
            account.update(ACCOUNT_STATE)
        for value in self.narrowed:
            if value in self.store.tokens:
                self.store.tokens[value]["permissions"] = None
        self.narrowed.clear()
