"""The auth replica's lifecycle in-process: a part that fails to start stops every part started
before it, a SIGTERM drains and stops them all, and one during the start ends it at once."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from devstack import DataStores
from devstack.ports import HOST, free_port, wait_until_async
from services.auth.replica import run
from services.auth.settings import AuthSettings
from services.auth.store.dsn import parse_dsn
from tests.auth.conftest import migration_dsn
from tests.auth.tcp_proxy import TcpProxy
from tests.etcd_settings import etcd_settings

# Tasks the replica's parts run in the background while it serves ("publish jwt key" ends
# once the key is published, so it may be gone already).
SERVING_TASKS = {
    "ops",
    "worker-id-claim",
    "replication-heartbeat",
    "pending-tombstone-poll",
    "pending-tombstone-repair",
    "rpc connection sweeper",
    "session purge",
}
BACKGROUND_TASKS = SERVING_TASKS | {"publish jwt key"}


def replica_settings(data_stores: DataStores, dsn: str, **overrides: object) -> AuthSettings:
    namespace = f"/test-app-{uuid.uuid4().hex}/"
    values: dict[str, object] = {
        "mysql_primary_dsn": dsn,
        "mysql_migration_dsn": migration_dsn(data_stores, dsn),
        "redis_url": data_stores.redis_url,
        "peppers": {1: b"pepper"},
        "jwt_private_key": Ed25519PrivateKey.generate(),
        "device_cookie_secret": "d" * 32,
        "bcrypt_cost": 4,
        **etcd_settings(data_stores.etcd_access()),
        "discovery_prefix": f"{namespace}services/auth/",
        "jwt_keys_prefix": f"{namespace}jwt-keys/",
        "worker_id_prefix": f"{namespace}worker-ids/",
        "port": free_port(),
        "ops_port": free_port(),
        "drain_delay": 0.0,
        "drain_grace": 1.0,
    }
    values.update(overrides)
    return AuthSettings(**values)  # type: ignore[arg-type]


def background_tasks() -> set[str]:
    return {task.get_name() for task in asyncio.all_tasks() if not task.done()} & BACKGROUND_TASKS


async def test_a_part_that_fails_to_start_stops_the_parts_started_before_it(
    data_stores: DataStores, new_database: Callable[[], str]
) -> None:
    assert background_tasks() == set()
    settings = replica_settings(data_stores, new_database())
    with socket.socket() as taken:  # the RPC port is in use: the server cannot start
        taken.bind((HOST, settings.port))
        taken.listen()
        with pytest.raises(OSError):
            await run(settings)
    assert background_tasks() == set()


async def test_sigterm_stops_every_part(
    data_stores: DataStores, new_database: Callable[[], str]
) -> None:
    settings = replica_settings(data_stores, new_database())
    replica = asyncio.create_task(run(settings))
    await wait_until_async(
        lambda: background_tasks() >= SERVING_TASKS,
        20.0,
        "every part to be running",
        abort=lambda: f"the replica ended: {replica!r}" if replica.done() else None,
    )
    os.kill(os.getpid(), signal.SIGTERM)  # the replica's handler takes it, not the default
    assert await asyncio.wait_for(replica, 30.0) == 0
    assert background_tasks() == set()
    with socket.socket() as again:  # both ports are free again
        again.bind((HOST, settings.port))
    with socket.socket() as again:
        again.bind((HOST, settings.ops_port))


async def test_sigterm_while_the_migrations_wait_for_a_silent_primary_ends_the_start_at_once(
    data_stores: DataStores, new_database: Callable[[], str]
) -> None:
    """A primary that accepts connections and answers nothing (frozen, or a partition) holds the
    migrations of the start for up to 30 s; a SIGTERM then must not wait that long, or
    Kubernetes kills the pod mid-start at the end of its grace period."""
    dsn = new_database()
    address = parse_dsn(dsn)
    silent = await TcpProxy.start(address.host, address.port, first_reply_delay=60.0)
    try:
        migrations = migration_dsn(data_stores, dsn).replace(
            f":{address.port}/", f":{silent.port}/", 1
        )
        settings = replica_settings(data_stores, dsn, mysql_migration_dsn=migrations)
        replica = asyncio.create_task(run(settings))
        await wait_until_async(
            lambda: silent.connections > 0,
            10.0,
            "the migrations to connect to the silent primary",
            abort=lambda: f"the replica ended: {replica!r}" if replica.done() else None,
        )
        os.kill(os.getpid(), signal.SIGTERM)  # the replica's handler takes it, not the default
        assert await asyncio.wait_for(replica, 5.0) == 0
    finally:
        await silent.close()
    assert background_tasks() == set()


async def test_a_start_that_exits_ends_with_its_code_and_the_one_line_that_says_why(
    data_stores: DataStores,
    new_database: Callable[[], str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An operator socket that cannot be made ends the start with SystemExit(2). Raised in the
    start's own task, it escaped that task and the event loop: the process still exited 2, but
    after its one error line came another, 'background task start replica had failed:
    SystemExit(2)', with a traceback, for a misconfiguration."""
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    settings = replica_settings(
        data_stores, new_database(), operator_socket=str(not_a_folder / "operator.sock")
    )
    with pytest.raises(SystemExit) as exited:
        await run(settings)
    assert exited.value.code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "GATEHOUSE_OPERATOR_SOCKET" in errors[0], errors
    assert background_tasks() == set()
