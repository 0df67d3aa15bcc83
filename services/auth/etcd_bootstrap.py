"""Turn on etcd's authentication with one role and user per tier: idempotent.

`python -m services.auth etcd-bootstrap` (devstack, the tests and the chart's bootstrap Job run
this same code). Each run brings etcd to the same state, whatever it found:

- the root user and role that etcd requires before auth can be enabled;
- a role and user for the auth replicas, read-write on the prefixes they write;
- a role and user for the HTTP pods, read-only on the prefixes they watch;
- permissions a role holds beyond those are revoked, and roles a user holds beside its own
  (an HTTP user once given the auth role), the users' passwords set to the files';
- with GATEHOUSE_ETCD_DEDICATED (an etcd of Gatehouse's own, as the chart's), every
  other user and role deleted: until a first run turns auth on, anyone who reaches etcd may add
  a user with the root role, which would otherwise outlive every run; without it they are
  named in a warning;
- auth enabled; and with GATEHOUSE_ETCD_DEDICATED, when this run is the one that enabled it,
  the signing keys and the rotation state found deleted: no tier could write before, so they
  were planted (a key there is served in the JWKS and trusted by the HTTP tier). The auth
  replicas publish their keys again at their next sync.

While auth is off anyone who reaches etcd can also change a user's password or roles, so a
run that finds it off sets root's password and turns auth on first, and does the rest as root
once nobody else can undo it. Should root's password no longer work right after, someone
changed it in between: the run fails and says so.

`tier_permissions` is the one place that lists what each tier may touch.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import aetcd
import grpc

from services.auth.settings import AuthEtcdSettings, EtcdBootstrapSettings
from services.foundation.etcd import RPC_TIMEOUT, close_quietly, connect
from services.foundation.etcd_access import EtcdAccess, read_password_file

log = logging.getLogger(__name__)

READ = aetcd.rpc.auth_pb2.Permission.READ
READWRITE = aetcd.rpc.auth_pb2.Permission.READWRITE
ROOT = "root"


@dataclass(frozen=True)
class PrefixGrant:
    prefix: str
    permission: int  # READ or READWRITE

    @property
    def key(self) -> bytes:
        return self.prefix.encode()

    @property
    def range_end(self) -> bytes:
        """The first key after every key under the prefix (a prefix ends in '/')."""
        return self.key[:-1] + bytes([self.key[-1] + 1])


def tier_permissions(settings: AuthEtcdSettings) -> dict[str, tuple[PrefixGrant, ...]]:
    """Per tier ("auth", "http"), the prefixes it may use and how."""
    auth_prefixes = (
        settings.discovery_prefix,
        settings.worker_id_prefix,
        settings.jwt_keys_prefix,
        settings.jwt_rotation_prefix,
    )
    return {
        "auth": tuple(PrefixGrant(prefix, READWRITE) for prefix in auth_prefixes),
        "http": tuple(
            PrefixGrant(prefix, READ)
            for prefix in (settings.discovery_prefix, settings.jwt_keys_prefix)
        ),
    }


# Listings and deletions of the users found when authentication goes on, at most.
SWEEP_ROUNDS = 5


class EtcdBootstrapError(RuntimeError):
    """etcd refused a step; the message says which."""


async def run_etcd_bootstrap(settings: EtcdBootstrapSettings) -> None:
    root_password = read_password_file(settings.etcd_root_password_file)
    client, auth_was_on = await _root_client(settings.etcd_access, root_password)
    if not auth_was_on:
        # As little as possible while anyone may still write: root, then auth on. What the
        # tiers need is set up after, as root, where nobody else can undo it meanwhile.
        try:
            call = _Caller.of(client)
            await _ensure_user(call, ROOT, root_password, role=ROOT)
            if settings.etcd_dedicated:
                # Before too: should this run fail before the deletion below, the next one
                # finds auth still off and deletes them again.
                await _delete_planted_trust(client, settings)
            await call("AuthEnable", aetcd.rpc.AuthEnableRequest())
        finally:
            await close_quietly(client)
        try:
            client, _ = await _root_client(settings.etcd_access, root_password)
        except EtcdBootstrapError as exc:
            raise EtcdBootstrapError(
                f"{exc}, right after this run set root's password and turned authentication on:"
                " someone changed it meanwhile. Treat etcd as compromised: wipe its data and"
                " run the bootstrap again"
            ) from None
    try:
        await _converge(client, settings, root_password, wipe=not auth_was_on)
    finally:
        await close_quietly(client)
    log.info(
        "etcd auth on: users %s, %s and root", settings.etcd_auth_user, settings.etcd_http_user
    )


async def _converge(
    client: aetcd.Client, settings: EtcdBootstrapSettings, root_password: str, *, wipe: bool
) -> None:
    """As root, with auth on: root, the tiers' roles and users as `tier_permissions` says,
    the others (GATEHOUSE_ETCD_DEDICATED: deleted), and with `wipe` the planted keys, before
    any tier user can write."""
    users = {
        "auth": (settings.etcd_auth_user, read_password_file(settings.etcd_auth_password_file)),
        "http": (settings.etcd_http_user, read_password_file(settings.etcd_http_password_file)),
    }
    call = _Caller.of(client)
    await _ensure_user(call, ROOT, root_password, role=ROOT)
    if wipe and settings.etcd_dedicated:
        # Only root may write until the planted keys are gone: every other user and role goes
        # first (the tiers' are made again below). Deleting them last instead also deleted
        # what a replica wrote back as soon as its user existed (etcd emptied under running
        # replicas), and its key's tokens were refused until its next sync.
        await _sweep_to_root(call)
        await _delete_planted_trust(client, settings)
    for tier, grants in tier_permissions(settings).items():
        name, password = users[tier]
        await _ensure_role(call, name, grants)
        await _ensure_user(call, name, password, role=name)
    managed = {ROOT} | {name for name, _ in users.values()}
    await _handle_others(call, managed, remove=settings.etcd_dedicated)


async def _delete_planted_trust(client: aetcd.Client, settings: EtcdBootstrapSettings) -> None:
    """Delete the signing keys and rotation state written while authentication was off."""
    for prefix in (settings.jwt_keys_prefix, settings.jwt_rotation_prefix):
        deleted = await asyncio.wait_for(client.delete_prefix(prefix.encode()), RPC_TIMEOUT)
        if deleted.deleted:
            log.warning(
                "deleted %d key(s) under %s written while etcd authentication was off",
                deleted.deleted,
                prefix,
            )


async def _root_client(access: EtcdAccess, root_password: str) -> tuple[aetcd.Client, bool]:
    """A connected client as root once auth is on; before that, without a user. True when
    auth was on."""
    as_root = EtcdAccess(
        endpoints=access.endpoints,
        username=ROOT,
        password=root_password,
        ca_file=access.ca_file,
        cert_file=access.cert_file,
        key_file=access.key_file,
    )
    client = connect(as_root, 0)
    try:
        await asyncio.wait_for(client.connect(), RPC_TIMEOUT)
        return client, True
    except aetcd.exceptions.ClientError as exc:
        await close_quietly(client)
        if "authentication is not enabled" not in str(exc):
            raise EtcdBootstrapError(f"etcd refused root: {exc}") from None
    plain = EtcdAccess(endpoints=access.endpoints, ca_file=access.ca_file,
                       cert_file=access.cert_file, key_file=access.key_file)  # fmt: skip
    client = connect(plain, 0)
    await asyncio.wait_for(client.connect(), RPC_TIMEOUT)
    return client, False


class _Caller:
    def __init__(self, stub: aetcd.rpc.AuthStub, metadata: object) -> None:
        self._stub = stub
        self._metadata = metadata

    @classmethod
    def of(cls, client: aetcd.Client) -> _Caller:
        """Auth calls with `client`'s channel and credentials."""
        return cls(client.auth_stub or aetcd.rpc.AuthStub(client.channel), client.metadata)

    async def __call__(self, method: str, request: object, *, exists_ok: bool = False) -> object:
        try:
            return await getattr(self._stub, method)(
                request, timeout=RPC_TIMEOUT, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as exc:
            if exists_ok and "already exists" in (exc.details() or ""):
                return None
            raise EtcdBootstrapError(f"etcd {method}: {exc.details()}") from None


async def _ensure_role(call: _Caller, name: str, grants: tuple[PrefixGrant, ...]) -> None:
    await call("RoleAdd", aetcd.rpc.AuthRoleAddRequest(name=name), exists_ok=True)
    current = await call("RoleGet", aetcd.rpc.AuthRoleGetRequest(role=name))
    wanted = {(grant.key, grant.range_end, grant.permission) for grant in grants}
    for perm in getattr(current, "perm", ()):
        if (perm.key, perm.range_end, perm.permType) not in wanted:
            await call(
                "RoleRevokePermission",
                aetcd.rpc.AuthRoleRevokePermissionRequest(
                    role=name, key=perm.key, range_end=perm.range_end
                ),
            )
    for grant in grants:
        permission = aetcd.rpc.auth_pb2.Permission(
            permType=grant.permission, key=grant.key, range_end=grant.range_end
        )
        await call(
            "RoleGrantPermission",
            aetcd.rpc.AuthRoleGrantPermissionRequest(name=name, perm=permission),
        )


async def _ensure_user(call: _Caller, name: str, password: str, *, role: str) -> None:
    added = await call(
        "UserAdd", aetcd.rpc.AuthUserAddRequest(name=name, password=password), exists_ok=True
    )
    if added is None:  # it existed: its password becomes the file's
        await call(
            "UserChangePassword",
            aetcd.rpc.AuthUserChangePasswordRequest(name=name, password=password),
        )
    if role == ROOT:
        await call("RoleAdd", aetcd.rpc.AuthRoleAddRequest(name=ROOT), exists_ok=True)
    await call("UserGrantRole", aetcd.rpc.AuthUserGrantRoleRequest(user=name, role=role))
    await _revoke_other_roles(call, name, keep=role)


async def _revoke_other_roles(call: _Caller, name: str, *, keep: str) -> None:
    """A user's permissions are the union of its roles': narrowing its own role is not enough
    while it holds another (the HTTP user once given the auth role, or root's)."""
    current = await call("UserGet", aetcd.rpc.AuthUserGetRequest(name=name))
    for role in getattr(current, "roles", ()):
        if role != keep:
            log.warning("etcd user %s held the role %s too; revoked", name, role)
            await call("UserRevokeRole", aetcd.rpc.AuthUserRevokeRoleRequest(name=name, role=role))


async def _sweep_to_root(call: _Caller) -> None:
    """Delete every user and role but root's, again until a listing shows none: a planted user
    holding root's role can make another between a listing and its own deletion."""
    for _ in range(SWEEP_ROUNDS):
        if not await _handle_others(
            call, {ROOT}, remove=True, found="found when authentication went on"
        ):
            return
    raise EtcdBootstrapError(
        f"users kept appearing in etcd through {SWEEP_ROUNDS} rounds of deleting them: someone"
        " holds root's role. Treat etcd as compromised: wipe its data and run the bootstrap again"
    )


async def _handle_others(
    call: _Caller,
    managed: set[str],
    *,
    remove: bool,
    found: str = "which Gatehouse does not manage",
) -> bool:
    """Delete (`remove`) or name in a warning the users and roles not in `managed` (the roles
    are named after their users, and root's role after root); True if there were any."""
    users = await call("UserList", aetcd.rpc.AuthUserListRequest())
    roles = await call("RoleList", aetcd.rpc.AuthRoleListRequest())
    other_users = sorted(set(getattr(users, "users", ())) - managed)
    other_roles = sorted(set(getattr(roles, "roles", ())) - managed)
    if not other_users and not other_roles:
        return False
    if not remove:
        log.warning(
            "etcd holds users %s and roles %s that Gatehouse does not manage; left alone (on an "
            "etcd of Gatehouse's own, GATEHOUSE_ETCD_DEDICATED=true deletes them)",
            other_users,
            other_roles,
        )
        return True
    for user in other_users:
        await call("UserDelete", aetcd.rpc.AuthUserDeleteRequest(name=user))
    for role in other_roles:
        await call("RoleDelete", aetcd.rpc.AuthRoleDeleteRequest(role=role))
    log.warning("deleted etcd users %s and roles %s, %s", other_users, other_roles, found)
    return True
