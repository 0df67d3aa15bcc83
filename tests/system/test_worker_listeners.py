"""Which HTTP worker takes a new connection, under Granian and Hypercorn: each worker listens on a socket of its own that
the main process holds, the kernel spreads connections over the workers, and a slot whose
worker is dead, not yet serving (its replacement here waits for etcd, so it does not serve for
as long as the test keeps etcd out of reach) or no longer beating gets none."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections import Counter
from pathlib import Path

import httpx
import pytest

from devstack.gatehouse import Gatehouse, Service
from devstack.ports import HOST, wait_until_async
from devstack.stack import DataStores
from drills.stack import socket_inodes
from services.foundation.etcd import parse_endpoint
from tests.auth.tcp_proxy import TcpProxy
from tests.system.raw_http import RawConnection
from tests.system.support import current_samples

WORKERS = 2
# Held open at once, then counted per worker: each worker must hold at least this many. With
# an even random split (64 draws, standard deviation 4) fewer than 16 is 4 deviations off.
SPREAD_CONNECTIONS = 64
SPREAD_AT_LEAST = 16
# New connections opened one after another while one slot has no serving worker: with the
# kernel's choice over both slots each would have even odds of waiting for that slot.
PROBES = 20
PROBE_TIMEOUT = 3.0
# How long a new worker waits for etcd before it beats: longer than the test keeps it away.
ETCD_WAIT_SECONDS = "120"

_LISTEN, _ESTABLISHED = "0A", "01"
_STEERING = "new connections go to HTTP worker"
HEALTHZ = f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()


def _port_sockets(port: int, state: str) -> set[str]:
    """Inodes of this host's TCP sockets on local `port` in `state` (/proc/net/tcp's codes)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state:
                inodes.add(fields[9])
    return inodes


def sockets_by_worker(workers: list[int], port: int, state: str) -> dict[int, set[str]]:
    on_port = _port_sockets(port, state)
    return {pid: socket_inodes(pid) & on_port for pid in workers}


async def serving_workers(ops: str) -> list[int]:
    async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
        try:
            listed = (await client.get(f"{ops}/workers")).json()["workers"]
        except httpx.TransportError:
            return []
    return sorted(int(worker["pid"]) for worker in listed)


async def probe_new_connections(port: int) -> Counter[int | str]:
    """GET /healthz on PROBES new connections, one after another: the statuses."""
    statuses = Counter[int | str]()
    for _ in range(PROBES):
        connection = await RawConnection.open(port)
        try:
            await connection.send(HEALTHZ)
            statuses[(await connection.answer(PROBE_TIMEOUT)).status] += 1
        except TimeoutError:
            statuses["no answer"] += 1
        finally:
            connection.close()
    return statuses


async def connections_taken(port: int, workers: list[int]) -> dict[int, int]:
    """Open SPREAD_CONNECTIONS at once and count, while all are open, each worker's share."""
    held = [await RawConnection.open(port) for _ in range(SPREAD_CONNECTIONS)]
    try:
        for connection in held:  # answered, so accepted by some worker
            await connection.send(HEALTHZ)
            assert (await connection.answer(10.0)).status == 200
        return {
            pid: len(inodes)
            for pid, inodes in sockets_by_worker(workers, port, _ESTABLISHED).items()
        }
    finally:
        for connection in held:
            connection.close()


def steering_samples(service: Service) -> tuple[list[float], list[float]]:
    """gatehouse_http_workers_serving and gatehouse_http_connection_steering, as the main
    process last set them."""
    samples = current_samples(service)
    serving = [value for _, value in samples.get("gatehouse_http_workers_serving", [])]
    steering = [value for _, value in samples.get("gatehouse_http_connection_steering", [])]
    return serving, steering


def last_steering(log: Path) -> str | None:
    """Where the supervisor last said new connections go ("HTTP workers 1, 2")."""
    lines = [line for line in log.read_text().splitlines() if _STEERING in line]
    if not lines:
        return None
    return str(json.loads(lines[-1])["message"]).removeprefix("new connections go to ")


@pytest.mark.slow
@pytest.mark.parametrize("server", ["granian", "hypercorn"])
async def test_new_connections_spread_over_the_workers_and_skip_a_slot_without_one(
    gatehouse: Gatehouse, data_stores: DataStores, server: str
) -> None:
    etcd_host, etcd_port = parse_endpoint(data_stores.etcd_endpoint)
    proxy = await TcpProxy.start(etcd_host, etcd_port)
    service = await asyncio.to_thread(
        gatehouse.start_http,
        {
            "GATEHOUSE_HTTP_SERVER": server,
            "GATEHOUSE_ETCD_ENDPOINTS": f"{HOST}:{proxy.port}",
            "GATEHOUSE_HTTP_WORKERS": str(WORKERS),
            "GATEHOUSE_CALL_TIMEOUT": ETCD_WAIT_SECONDS,
            # The stopped worker of the last step is not killed meanwhile.
            "GATEHOUSE_HTTP_WORKER_STUCK_TIMEOUT": "50",
        },
    )
    port, ops = service.ports["http"], f"http://{HOST}:{service.ports['ops']}"
    log = service.process.log_path
    try:
        # The supervisor looks at the heartbeats once a second.
        async def steered_to_both() -> bool:
            steering = await asyncio.to_thread(last_steering, log)
            return steering == "HTTP workers 1, 2" and len(await serving_workers(ops)) == 2

        async def both_beat() -> bool:
            return len(await serving_workers(ops)) == 2

        await wait_until_async(both_beat, 30.0, "both workers serving", where=log)
        workers = await serving_workers(ops)
        listeners = sockets_by_worker(workers, port, _LISTEN)
        assert all(len(held) == 1 for held in listeners.values()), listeners
        assert len(set.union(*listeners.values())) == WORKERS, listeners
        # The main process holds them all: a worker's death does not close its slot's.
        main_holds = sockets_by_worker([service.process.pid], port, _LISTEN)[service.process.pid]
        assert main_holds == set.union(*listeners.values()), (main_holds, listeners)

        await wait_until_async(steered_to_both, 30.0, "connections steered to both", where=log)
        assert steering_samples(service) == ([WORKERS], [1])
        taken = await connections_taken(port, workers)
        assert sum(taken.values()) == SPREAD_CONNECTIONS, taken
        assert min(taken.values()) >= SPREAD_AT_LEAST, taken

        # etcd out of reach: a new worker's start waits for it, so the victim's slot has no
        # serving worker until the proxy is restored.
        proxy.cut()
        victim, survivor = workers
        os.kill(victim, signal.SIGKILL)

        async def steered_away() -> bool:
            steering = await asyncio.to_thread(last_steering, log)
            return steering is not None and steering.startswith("HTTP worker ")

        await wait_until_async(steered_away, 30.0, "new connections steered away", where=log)
        assert steering_samples(service) == ([1], [1])
        statuses = await probe_new_connections(port)
        assert await serving_workers(ops) == [survivor], "the replacement served too early"
        assert statuses == {200: PROBES}, statuses

        proxy.restore()
        await wait_until_async(steered_to_both, 60.0, "the replacement serving", where=log)
        replacement = next(pid for pid in await serving_workers(ops) if pid != survivor)
        # It took over its slot's socket, with whatever waited in its queue.
        replacement_listens = sockets_by_worker([replacement], port, _LISTEN)[replacement]
        assert replacement_listens == listeners[victim], (replacement_listens, listeners)
        taken = await connections_taken(port, [survivor, replacement])
        assert min(taken.values()) >= SPREAD_AT_LEAST, taken

        # A worker that stops beating (a stuck event loop; here the process stopped) gets no
        # new connections once its last beat is 4 s old (services.http.workers.respawn's
        # STALLED_AFTER_SECONDS), long before the stuck bound kills it.
        os.kill(survivor, signal.SIGSTOP)
        try:
            await wait_until_async(steered_away, 30.0, "connections steered off", where=log)
            statuses = await probe_new_connections(port)
        finally:
            os.kill(survivor, signal.SIGCONT)
        assert statuses == {200: PROBES}, statuses
    finally:
        proxy.restore()
        await asyncio.to_thread(service.process.stop)
        gatehouse.http.remove(service)  # other tests expect the system's own processes only
        await proxy.close()
