"""No HTTP worker outlives its supervision, under Granian and Hypercorn: when the fork server
that forked the workers is SIGKILLed, its workers die with it and the main process replaces
them; when the main process is SIGKILLed, the fork server and the workers die with it and the
port closes (services.http.workers.parent_death)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devstack import DataStores
from devstack.gatehouse import Gatehouse, Service
from devstack.ports import wait_until_async
from tests.conftest import TEST_SETTINGS

WORKERS = 2
# The kernel kills a process's children as it exits: they are gone in well under this.
ORPHANS_GONE_WITHIN = 5.0


@pytest.fixture(scope="module")
def stack(data_stores: DataStores, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gatehouse]:
    run = uuid.uuid4().hex[:8]
    settings = {
        **TEST_SETTINGS,
        "GATEHOUSE_HTTP_WORKERS": str(WORKERS),
        "GATEHOUSE_DISCOVERY_PREFIX": f"/gatehouse-orphans-{run}/auth/",
        "GATEHOUSE_JWT_KEYS_PREFIX": f"/gatehouse-orphans-{run}/jwt-keys/",
    }
    system = Gatehouse(data_stores, Path(tmp_path_factory.mktemp("orphans")), settings=settings)
    try:
        system.start_auth()
        yield system
    finally:
        system.stop()


def running(pid: int) -> bool:
    """Whether `pid` runs (a zombie, exited but not reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


async def ready_workers(ops_url: str) -> set[int]:
    async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
        listed = (await client.get(f"{ops_url}/workers")).json()["workers"]
    return {worker["pid"] for worker in listed if worker["ready"]}


def accepts_connections(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1.0)
        return probe.connect_ex(("127.0.0.1", port)) == 0


async def start_with_ready_workers(stack: Gatehouse, server: str) -> tuple[Service, set[int]]:
    service = await asyncio.to_thread(stack.start_http, {"GATEHOUSE_HTTP_SERVER": server})
    ops_url = f"http://127.0.0.1:{service.ports['ops']}"

    async def all_ready() -> bool:
        return len(await ready_workers(ops_url)) == WORKERS

    await wait_until_async(all_ready, 30.0, "workers ready", where=service.process.log_path)
    return service, await ready_workers(ops_url)


def kill_all(pids: set[int]) -> None:
    """Clean up after a failed test: orphans would outlive it."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.parametrize("server", ["granian", "hypercorn"])
async def test_workers_die_with_their_fork_server_and_are_replaced(
    stack: Gatehouse, server: str
) -> None:
    service, workers = await start_with_ready_workers(stack, server)
    ops_url = f"http://127.0.0.1:{service.ports['ops']}"
    log = service.process.log_path
    try:
        (fork_server,) = {parent_of(pid) for pid in workers}
        assert fork_server != service.process.pid
        os.kill(fork_server, signal.SIGKILL)

        await wait_until_async(
            lambda: not any(running(pid) for pid in workers),
            ORPHANS_GONE_WITHIN,
            "the fork server's workers gone with it",
            where=log,
        )

        async def replaced() -> bool:
            return len(await ready_workers(ops_url) - workers) == WORKERS

        await wait_until_async(
            replaced, 30.0, "new workers ready", where=log, abort=service.process.exit_reason
        )
        new_workers = await ready_workers(ops_url)
        new_fork_servers = {parent_of(pid) for pid in new_workers}
        assert fork_server not in new_fork_servers and len(new_fork_servers) == 1
        async with httpx.AsyncClient(timeout=5.0, trust_env=False) as client:
            response = await client.get(f"http://127.0.0.1:{service.ports['http']}/healthz")
        assert response.status_code == 200, response.text
        assert service.process.alive
    finally:
        kill_all(workers)
        await asyncio.to_thread(service.process.stop)


@pytest.mark.slow
@pytest.mark.parametrize("server", ["granian", "hypercorn"])
async def test_a_killed_main_process_leaves_no_worker_on_the_port(
    stack: Gatehouse, server: str
) -> None:
    service, workers = await start_with_ready_workers(stack, server)
    fork_servers = {parent_of(pid) for pid in workers}
    descendants = workers | fork_servers
    try:
        # The main process only, not its process group: as an OOM kill would.
        os.kill(service.process.pid, signal.SIGKILL)

        await wait_until_async(
            lambda: not any(running(pid) for pid in {service.process.pid, *descendants}),
            ORPHANS_GONE_WITHIN,
            "the fork server and the workers gone with the main process",
            where=service.process.log_path,
        )
        await wait_until_async(
            lambda: not accepts_connections(service.ports["http"]),
            ORPHANS_GONE_WITHIN,
            "the HTTP port closed",
            where=service.process.log_path,
        )
    finally:
        kill_all(descendants)
        await asyncio.to_thread(service.process.kill)
