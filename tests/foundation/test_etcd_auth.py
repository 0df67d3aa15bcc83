"""etcd with TLS and per-tier users, bootstrapped as the chart does, against a real etcd 3.4."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import aetcd
import pytest

from devstack.certs import CertificateAuthority
from devstack.etcd_auth import (
    AUTH_USER,
    BOOTSTRAP_ATTEMPTS,
    CLIENT_CERTIFICATE_NAME,
    HTTP_USER,
    SecuredEtcd,
)
from devstack.ports import wait_until_async
from services.auth import etcd_bootstrap
from services.auth.etcd_bootstrap import run_etcd_bootstrap
from services.auth.settings import EtcdBootstrapSettings
from services.foundation.config import load_settings
from services.foundation.discovery import ReplicaWatcher, ServiceRecord, registration
from services.foundation.etcd import LeasedKey, connect
from services.foundation.etcd_access import EtcdAccess

# Short, so that a test outlives a token: etcd refuses the minimum below 1 s.
TOKEN_TTL = 2
DISCOVERY = "/gatehouse/services/auth/"
KEYS = "/gatehouse/jwt-keys/"
WORKER_IDS = "/gatehouse/worker-ids/"
ROTATION = "/gatehouse/keys/rotation/"
READ = aetcd.rpc.auth_pb2.Permission.READ
READWRITE = aetcd.rpc.auth_pb2.Permission.READWRITE


@pytest.fixture(scope="module")
def secured_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredEtcd]:
    etcd = SecuredEtcd(tmp_path_factory.mktemp("secured-etcd"), auth_token_ttl=TOKEN_TTL)
    etcd.start()
    try:
        etcd.bootstrap()
        yield etcd
    finally:
        etcd.stop()


@pytest.fixture
def fresh_etcd(tmp_path: Path) -> Iterator[SecuredEtcd]:
    """An etcd of its own, started, its authentication still off (no run yet)."""
    etcd = SecuredEtcd(tmp_path, auth_token_ttl=TOKEN_TTL)
    etcd.start()
    try:
        yield etcd
    finally:
        etcd.stop()


def access(etcd: SecuredEtcd, user: str) -> EtcdAccess:
    env = etcd.client_env(user)
    return EtcdAccess(
        endpoints=(env["GATEHOUSE_ETCD_ENDPOINTS"],),
        username=user,
        password_file=env["GATEHOUSE_ETCD_PASSWORD_FILE"],
        ca_file=env["GATEHOUSE_ETCD_CA_FILE"],
        cert_file=env["GATEHOUSE_ETCD_CERT_FILE"],
        key_file=env["GATEHOUSE_ETCD_KEY_FILE"],
    )


def record(instance_id: str, host: str = "127.0.0.1") -> ServiceRecord:
    return ServiceRecord(instance_id, host, 7000, 1, 1, "test", "2026-12-03T00:00:00Z")


async def refused(
    client: aetcd.Client, operation: str, key: bytes, because: str = "permission denied"
) -> bool:
    try:
        if operation == "put":
            await client.put(key, b"x")
        else:
            await client.get(key)
    except aetcd.exceptions.ClientError as exc:
        return because in str(exc)
    return False


async def test_http_identity_cannot_write_discovery_nor_read_elsewhere(secured_etcd) -> None:
    client = connect(access(secured_etcd, HTTP_USER), 0)
    try:
        assert await refused(client, "put", f"{DISCOVERY}rogue".encode())
        assert await refused(client, "put", f"{KEYS}rogue".encode())
        assert await refused(client, "get", f"{WORKER_IDS}0".encode())
        assert await refused(client, "get", f"{ROTATION}state".encode())
        assert await refused(client, "get", b"/elsewhere")
        # What it needs still works: reading discovery and the published keys.
        await client.get_prefix(DISCOVERY.encode())
        await client.get_prefix(KEYS.encode())
    finally:
        await client.close()


async def test_auth_identity_writes_its_prefixes_only(secured_etcd) -> None:
    client = connect(access(secured_etcd, AUTH_USER), 0)
    try:
        for prefix in (DISCOVERY, KEYS, WORKER_IDS, ROTATION):
            await client.put(f"{prefix}probe".encode(), b"ok")
            await client.delete(f"{prefix}probe".encode())
        assert await refused(client, "put", b"/gatehouse/elsewhere")
        assert await refused(client, "put", b"/gatehouse/services/http/x")
        assert await refused(client, "get", b"/elsewhere")
    finally:
        await client.close()


async def test_a_client_needs_both_a_password_and_a_certificate_of_the_client_ca(
    secured_etcd: SecuredEtcd, tmp_path: Path
) -> None:
    """The certificate alone names no user, so it is allowed nothing; a password without a
    certificate of the client CA (none, or one of another CA) does not get past TLS."""
    client = connect(secured_etcd.anonymous(), 0)
    try:
        assert await refused(client, "get", f"{DISCOVERY}x".encode())
    finally:
        await client.close()
    tier = access(secured_etcd, AUTH_USER)
    other_ca = CertificateAuthority(tmp_path / "other-ca").issue(
        CLIENT_CERTIFICATE_NAME, client=True
    )
    for without in (
        dataclasses.replace(tier, cert_file="", key_file=""),
        dataclasses.replace(
            tier, cert_file=str(other_ca.cert_path), key_file=str(other_ca.key_path)
        ),
    ):
        client = connect(without, 0)
        try:
            with pytest.raises(aetcd.exceptions.ConnectionFailedError):
                await client.get(f"{DISCOVERY}x".encode())
        finally:
            await client.close()
    client = connect(tier, 0)
    try:
        await client.get(f"{DISCOVERY}x".encode())
    finally:
        await client.close()
    plaintext = connect((secured_etcd.endpoint,), 0)
    with pytest.raises(aetcd.exceptions.ClientError):
        await plaintext.get(f"{DISCOVERY}x".encode())
    await plaintext.close()


async def test_bootstrap_is_idempotent(secured_etcd) -> None:
    before = {role: await role_permissions(secured_etcd, role) for role in (AUTH_USER, HTTP_USER)}
    assert before[AUTH_USER] == {
        (prefix.encode(), READWRITE) for prefix in (DISCOVERY, KEYS, WORKER_IDS, ROTATION)
    }
    assert before[HTTP_USER] == {(prefix.encode(), READ) for prefix in (DISCOVERY, KEYS)}
    secured_etcd.bootstrap()
    secured_etcd.bootstrap()
    after = {role: await role_permissions(secured_etcd, role) for role in (AUTH_USER, HTTP_USER)}
    assert after == before
    # The users still log in with their files' passwords after the reruns.
    client = connect(access(secured_etcd, HTTP_USER), 0)
    try:
        await client.get_prefix(DISCOVERY.encode())
    finally:
        await client.close()


class FailingRuns:
    """subprocess.run whose first `failures` bootstrap runs fail as a run whose etcd call
    overran its deadline does; the later ones run."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.runs = 0
        self._run = subprocess.run

    def __call__(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.runs += 1
        if self.runs <= self.failures:
            return subprocess.CompletedProcess(argv, 1, "", "ConnectionTimeoutError: Deadline")
        return self._run(argv, **kwargs)


def test_a_failed_bootstrap_run_is_run_again(
    secured_etcd: SecuredEtcd, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = FailingRuns(BOOTSTRAP_ATTEMPTS - 1)
    monkeypatch.setattr(subprocess, "run", runs)
    secured_etcd.bootstrap()
    assert runs.runs == BOOTSTRAP_ATTEMPTS


def test_a_bootstrap_failing_every_run_stops_after_its_attempts(
    secured_etcd: SecuredEtcd, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = FailingRuns(BOOTSTRAP_ATTEMPTS + 5)
    monkeypatch.setattr(subprocess, "run", runs)
    with pytest.raises(RuntimeError, match="etcd-bootstrap exited 1: ConnectionTimeoutError"):
        secured_etcd.bootstrap()
    assert runs.runs == BOOTSTRAP_ATTEMPTS


async def test_bootstrap_revokes_a_stray_permission(secured_etcd) -> None:
    stray = aetcd.rpc.auth_pb2.Permission(permType=READWRITE, key=b"/stray", range_end=b"")
    await as_root(
        secured_etcd,
        "RoleGrantPermission",
        aetcd.rpc.AuthRoleGrantPermissionRequest(name=HTTP_USER, perm=stray),
    )
    assert (b"/stray", READWRITE) in await role_permissions(secured_etcd, HTTP_USER)
    secured_etcd.bootstrap()
    assert (b"/stray", READWRITE) not in await role_permissions(secured_etcd, HTTP_USER)


async def test_bootstrap_revokes_a_role_a_tier_user_holds_beside_its_own(secured_etcd) -> None:
    # The HTTP user once given the auth role (by hand, or an older release): with it, it could
    # publish a discovery record or a signing key, which only the auth replicas may write.
    await as_root(
        secured_etcd,
        "UserGrantRole",
        aetcd.rpc.AuthUserGrantRoleRequest(user=HTTP_USER, role=AUTH_USER),
    )
    assert await user_roles(secured_etcd, HTTP_USER) == {HTTP_USER, AUTH_USER}
    secured_etcd.bootstrap()
    assert await user_roles(secured_etcd, HTTP_USER) == {HTTP_USER}
    client = connect(access(secured_etcd, HTTP_USER), 0)
    try:
        assert await refused(client, "put", f"{DISCOVERY}rogue".encode())
        assert await refused(client, "put", f"{KEYS}rogue".encode())
    finally:
        await client.close()


async def plant_a_root_user(etcd: SecuredEtcd, name: str) -> None:
    """What anyone who reached etcd before a first bootstrap turned auth on could leave: a user
    of their own with the root role, and a role of their own."""
    await as_root(etcd, "UserAdd", aetcd.rpc.AuthUserAddRequest(name=name, password="planted"))
    await as_root(etcd, "UserGrantRole", aetcd.rpc.AuthUserGrantRoleRequest(user=name, role="root"))
    await as_root(etcd, "RoleAdd", aetcd.rpc.AuthRoleAddRequest(name=f"{name}-role"))


async def users_and_roles(etcd: SecuredEtcd) -> tuple[set[str], set[str]]:
    users = await as_root(etcd, "UserList", aetcd.rpc.AuthUserListRequest())
    roles = await as_root(etcd, "RoleList", aetcd.rpc.AuthRoleListRequest())
    return set(users.users), set(roles.roles)


async def test_a_bootstrap_of_gatehouses_own_etcd_deletes_planted_users_and_roles(
    fresh_etcd: SecuredEtcd,
) -> None:
    fresh_etcd.bootstrap()
    await plant_a_root_user(fresh_etcd, "planted")
    # Without the setting (an etcd other applications may share): named, left alone.
    log = fresh_etcd.bootstrap_logged()
    assert "planted" in (await users_and_roles(fresh_etcd))[0]
    assert "'planted'" in log and "GATEHOUSE_ETCD_DEDICATED" in log
    log = fresh_etcd.bootstrap_logged(dedicated=True)
    managed = {"root", AUTH_USER, HTTP_USER}
    assert await users_and_roles(fresh_etcd) == (managed, managed)
    assert "deleted etcd users ['planted'] and roles ['planted-role']" in log


async def test_the_run_that_turns_auth_on_deletes_signing_keys_written_before(
    fresh_etcd: SecuredEtcd,
) -> None:
    """While auth is off, anyone who reaches etcd can publish a signing key (served in the
    JWKS, trusted by the HTTP tier) or a rotation state; on Gatehouse's own etcd the run that
    turns auth on deletes them, and later runs touch nothing there."""
    anonymous = connect(fresh_etcd.anonymous(), 0)
    try:
        await anonymous.put(f"{KEYS}planted".encode(), b'{"public_key": "attacker"}')
        await anonymous.put(f"{ROTATION}state".encode(), b'{"keys": {}}')
        await anonymous.put(f"{DISCOVERY}left-alone".encode(), b"{}")
    finally:
        await anonymous.close()
    log = fresh_etcd.bootstrap_logged(dedicated=True)
    assert f"deleted 1 key(s) under {KEYS}" in log
    assert f"deleted 1 key(s) under {ROTATION}" in log
    root = connect(fresh_etcd.access("root"), 0)
    try:
        assert len(await root.get_prefix(KEYS.encode())) == 0
        assert len(await root.get_prefix(ROTATION.encode())) == 0
        assert (await root.get(f"{DISCOVERY}left-alone".encode())) is not None
        # A replica's key, published once auth is on, outlives the next runs.
        await root.put(f"{KEYS}published".encode(), b"{}")
        fresh_etcd.bootstrap_logged(dedicated=True)
        assert (await root.get(f"{KEYS}published".encode())) is not None
    finally:
        await root.close()


async def test_a_user_planted_while_the_first_run_goes_on_does_not_survive_it(
    fresh_etcd: SecuredEtcd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The planter races the run: its user, given the root role right before the run turns
    auth on, is swept once auth is on."""
    await run_racing(
        fresh_etcd,
        monkeypatch,
        [
            ("UserAdd", aetcd.rpc.AuthUserAddRequest(name="racer", password="x")),
            ("UserGrantRole", aetcd.rpc.AuthUserGrantRoleRequest(user="racer", role="root")),
        ],
    )
    managed = {"root", AUTH_USER, HTTP_USER}
    assert (await users_and_roles(fresh_etcd))[0] == managed


async def test_a_tier_user_changed_while_the_first_run_goes_on_is_set_right_as_root(
    fresh_etcd: SecuredEtcd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Right before auth goes on, the racer gives the HTTP user its own password and the root
    role: the run sets the tiers up again as root afterwards."""
    await run_racing(
        fresh_etcd,
        monkeypatch,
        [
            ("UserAdd", aetcd.rpc.AuthUserAddRequest(name=HTTP_USER, password="racer")),
            (
                "UserChangePassword",
                aetcd.rpc.AuthUserChangePasswordRequest(name=HTTP_USER, password="racer"),
            ),
            ("UserGrantRole", aetcd.rpc.AuthUserGrantRoleRequest(user=HTTP_USER, role="root")),
        ],
    )
    assert await user_roles(fresh_etcd, HTTP_USER) == {HTTP_USER}
    client = connect(access(fresh_etcd, HTTP_USER), 0)  # with the file's password
    try:
        assert await refused(client, "put", f"{KEYS}racer".encode())
    finally:
        await client.close()


async def test_a_replica_that_writes_back_once_its_user_exists_keeps_what_it_wrote(
    fresh_etcd: SecuredEtcd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """etcd emptied under running replicas: the bootstrap Job's run turns auth on again and
    makes the tiers' users, and a replica logs in as soon as its user has its role and writes
    back the rotation state and its key. The run deleted the keys and state it found after it
    had made the users, and so deleted those too."""
    calls = etcd_bootstrap._Caller.__call__
    written: list[str] = []

    async def writing_back(
        caller: etcd_bootstrap._Caller, method: str, request: Any, **kwargs: Any
    ) -> object:
        reply = await calls(caller, method, request, **kwargs)
        if method == "UserGrantRole" and request.user == AUTH_USER and not written:
            replica = connect(access(fresh_etcd, AUTH_USER), 0)
            try:
                for key in (f"{ROTATION}state", f"{KEYS}written-back"):
                    await replica.put(key.encode(), b"{}")
                    written.append(key)
            finally:
                await replica.close()
        return reply

    monkeypatch.setattr(etcd_bootstrap._Caller, "__call__", writing_back)
    environ = {**fresh_etcd.bootstrap_env(), "GATEHOUSE_ETCD_DEDICATED": "true"}
    await run_etcd_bootstrap(load_settings(EtcdBootstrapSettings, environ))

    assert len(written) == 2
    root = connect(access(fresh_etcd, "root"), 0)
    try:
        for key in written:
            assert (await root.get(key.encode())) is not None, key
    finally:
        await root.close()


async def test_a_user_made_by_a_planted_root_user_during_the_sweep_is_swept_too(
    fresh_etcd: SecuredEtcd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user planted with root's role while auth was off logs in once auth is on and, right
    after the run listed the users to delete, makes another root user, which writes a signing
    key while the tiers are set up. The run swept its first listing only, so the second user
    lived until the end and its key survived it."""
    calls = etcd_bootstrap._Caller.__call__
    listings = 0
    wrote = False

    def as_user(name: str | None, password: str | None) -> EtcdAccess:
        return dataclasses.replace(fresh_etcd.anonymous(), username=name, password=password)

    async def auth_call(
        name: str | None, password: str | None, method: str, request: object
    ) -> None:
        client = connect(as_user(name, password), 0)
        try:
            await client.connect()
            await getattr(client.auth_stub, method)(request, metadata=client.metadata)
        finally:
            await client.close()

    async def racing(
        caller: etcd_bootstrap._Caller, method: str, request: Any, **kwargs: Any
    ) -> object:
        nonlocal listings, wrote
        reply = await calls(caller, method, request, **kwargs)
        if method == "UserList" and listings == 0:
            listings += 1
            await auth_call(
                "planted",
                "planted",
                "UserAdd",
                aetcd.rpc.AuthUserAddRequest(name="second", password="s"),
            )
            await auth_call(
                "planted",
                "planted",
                "UserGrantRole",
                aetcd.rpc.AuthUserGrantRoleRequest(user="second", role="root"),
            )
        elif method == "RoleAdd" and request.name == AUTH_USER and not wrote:
            wrote = True
            with suppress(Exception):  # refused once the second user is gone
                client = connect(as_user("second", "s"), 0)
                try:
                    await client.put(f"{KEYS}planted".encode(), b"{}")
                finally:
                    await client.close()
        return reply

    # Auth off: anyone may.
    await auth_call(
        None, None, "UserAdd", aetcd.rpc.AuthUserAddRequest(name="planted", password="planted")
    )
    await auth_call(None, None, "RoleAdd", aetcd.rpc.AuthRoleAddRequest(name="root"))
    await auth_call(
        None, None, "UserGrantRole", aetcd.rpc.AuthUserGrantRoleRequest(user="planted", role="root")
    )
    monkeypatch.setattr(etcd_bootstrap._Caller, "__call__", racing)
    environ = {**fresh_etcd.bootstrap_env(), "GATEHOUSE_ETCD_DEDICATED": "true"}
    await run_etcd_bootstrap(load_settings(EtcdBootstrapSettings, environ))

    assert listings == 1 and wrote
    root = connect(access(fresh_etcd, "root"), 0)
    try:
        assert (await root.get(f"{KEYS}planted".encode())) is None
    finally:
        await root.close()
    assert (await users_and_roles(fresh_etcd))[0] == {"root", AUTH_USER, HTTP_USER}


async def test_a_run_whose_root_password_was_changed_meanwhile_fails_and_says_so(
    fresh_etcd: SecuredEtcd, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(etcd_bootstrap.EtcdBootstrapError, match="compromised"):
        await run_racing(
            fresh_etcd,
            monkeypatch,
            [
                (
                    "UserChangePassword",
                    aetcd.rpc.AuthUserChangePasswordRequest(name="root", password="racer"),
                )
            ],
        )


async def run_racing(
    etcd: SecuredEtcd, monkeypatch: pytest.MonkeyPatch, racer: list[tuple[str, object]]
) -> None:
    """A dedicated bootstrap run in process, the racer's calls made (errors ignored) right
    before the run turns auth on."""
    calls = etcd_bootstrap._Caller.__call__

    async def racing(
        caller: etcd_bootstrap._Caller, method: str, request: object, **kwargs: Any
    ) -> object:
        if method == "AuthEnable":
            for racer_method, racer_request in racer:
                with suppress(etcd_bootstrap.EtcdBootstrapError):
                    await calls(caller, racer_method, racer_request)
        return await calls(caller, method, request, **kwargs)

    monkeypatch.setattr(etcd_bootstrap._Caller, "__call__", racing)
    environ = {**etcd.bootstrap_env(), "GATEHOUSE_ETCD_DEDICATED": "true"}
    await run_etcd_bootstrap(load_settings(EtcdBootstrapSettings, environ))


async def user_roles(etcd: SecuredEtcd, user: str) -> set[str]:
    reply = await as_root(etcd, "UserGet", aetcd.rpc.AuthUserGetRequest(name=user))
    return set(reply.roles)


async def as_root(etcd: SecuredEtcd, method: str, request: object) -> Any:
    client = connect(etcd.access("root"), 0)
    try:
        await client.connect()
        return await getattr(client.auth_stub, method)(request, metadata=client.metadata)
    finally:
        await client.close()


async def role_permissions(etcd: SecuredEtcd, role: str) -> set[tuple[bytes, int]]:
    reply = await as_root(etcd, "RoleGet", aetcd.rpc.AuthRoleGetRequest(role=role))
    return {(perm.key, perm.permType) for perm in reply.perm}


async def test_clients_outlive_their_auth_token(secured_etcd) -> None:
    """A lease kept alive, a watch and an idle client keep working past the token's TTL."""
    watcher = ReplicaWatcher(access(secured_etcd, HTTP_USER), DISCOVERY, lambda records: None)
    announcement = registration(access(secured_etcd, AUTH_USER), DISCOVERY, record("r1"), ttl=3)
    idle = connect(access(secured_etcd, HTTP_USER), 0)
    await watcher.start()
    await announcement.start()
    try:
        await idle.get_prefix(DISCOVERY.encode())  # authenticates; then stays unused
        await wait_until_async(lambda: "r1" in watcher.records, 10.0, "the record to be seen")
        token_issued = time.monotonic()
        await wait_until_async(
            lambda: time.monotonic() - token_issued > 3 * TOKEN_TTL,
            3 * TOKEN_TTL + 5.0,
            "three token lifetimes to pass",
        )
        assert announcement.held and "r1" in watcher.records
        # The idle client's token has expired: its next call gets a new one.
        names = [kv.key for kv in await idle.get_prefix(DISCOVERY.encode())]
        assert f"{DISCOVERY}r1".encode() in names
        # The watch opened before still delivers changes.
        second = registration(access(secured_etcd, AUTH_USER), DISCOVERY, record("r2"), ttl=3)
        await second.start()
        try:
            await wait_until_async(lambda: "r2" in watcher.records, 10.0, "a new record seen")
        finally:
            await second.stop()
    finally:
        await idle.close()
        await announcement.stop()
        await watcher.stop()


async def test_a_certificate_of_the_client_ca_named_root_is_root_without_a_password(
    fresh_etcd: SecuredEtcd,
) -> None:
    """Why the client CA must sign for Gatehouse alone (the chart's is Helm's, its key in a
    Secret): etcd takes a certificate's common name as the user of a call without a token."""
    fresh_etcd.bootstrap()
    named_root = CertificateAuthority(fresh_etcd.state_dir / "client-ca").issue("root", client=True)
    as_root = dataclasses.replace(
        fresh_etcd.anonymous(),
        cert_file=str(named_root.cert_path),
        key_file=str(named_root.key_path),
    )
    client = connect(as_root, 0)
    try:
        await client.put(b"/outside-every-role", b"written by a certificate alone")
    finally:
        await client.close()
    # And the stack's own certificate, which names no user, is refused the same call.
    assert await refused_with(fresh_etcd.anonymous(), "put", b"/outside-every-role")
    # Its own gateway never called it with a certificate of another CA.
    assert "rejected connection" not in fresh_etcd.etcd.log_path.read_text()


async def refused_with(target: EtcdAccess, operation: str, key: bytes) -> bool:
    client = connect(target, 0)
    try:
        return await refused(client, operation, key)
    finally:
        await client.close()


async def test_a_key_held_without_a_client_certificate_says_what_to_check(
    secured_etcd: SecuredEtcd, caplog: pytest.LogCaptureFixture
) -> None:
    """etcd's refusal reaches the client as gRPC's "Unwrap failed (TSI_DATA_CORRUPTED)", which
    names no certificate: the warning says what to check."""
    without = dataclasses.replace(access(secured_etcd, AUTH_USER), cert_file="", key_file="")
    caplog.set_level(logging.WARNING, logger="services.foundation.etcd")
    held = LeasedKey(without, f"{DISCOVERY}no-certificate", b"{}", ttl=5)
    await held.start()
    try:
        await wait_until_async(
            lambda: any("GATEHOUSE_ETCD_CERT_FILE" in r.getMessage() for r in caplog.records),
            10,
            "a warning naming GATEHOUSE_ETCD_CERT_FILE",
        )
        assert not held.held
    finally:
        await held.stop()
