"""A fresh local stack per drill, started by devstack as `make run` starts it, and the probes
the drills need: the HTTP tier's worker processes, what its workers know, etcd's records."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from devstack.gatehouse import LOCAL_AUTH_REPLICAS, Gatehouse, Service, hash_threads_per_replica
from devstack.stack import DataStores, Report

# bcrypt at a low cost keeps logins from dominating two shared cores; the report says so.
DRILL_BCRYPT_COST = 4
HTTP_WORKERS = 2
DISCOVERY_PREFIX = "/gatehouse/services/auth/"  # GATEHOUSE_DISCOVERY_PREFIX's default
_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def drill_settings(overrides: dict[str, str] | None = None) -> dict[str, str]:
    settings = {
        "GATEHOUSE_BCRYPT_COST": str(DRILL_BCRYPT_COST),
        "GATEHOUSE_HTTP_WORKERS": str(HTTP_WORKERS),
        "GATEHOUSE_HASH_THREADS": hash_threads_per_replica(LOCAL_AUTH_REPLICAS),
    }
    settings.update(overrides or {})
    return settings


@contextmanager
def fresh_stack(
    state_dir: Path,
    settings: dict[str, str],
    *,
    stores: DataStores | None = None,
    report: Report,
) -> Iterator[Gatehouse]:
    """Data stores (unless given) plus two auth replicas and one HTTP process with two workers;
    everything started here is stopped on the way out."""
    own_stores = stores is None
    if stores is None:
        stores = DataStores.start(state_dir / "stores", report=lambda line: None)
    system = Gatehouse(stores, state_dir / "gatehouse", settings=settings)
    try:
        system.start(LOCAL_AUTH_REPLICAS, 1)
        report(f"stack up: {', '.join(s.name for s in [*system.auth, *system.http])}")
        yield system
    finally:
        system.stop()
        if own_stores:
            stores.stop()


def worker_pids(http: Service, *, ready_only: bool = False) -> set[int]:
    """The HTTP server's live worker processes, as its ops port lists them (GET /workers, from
    their heartbeats). They are forked by a fork server, so they are not children of the main
    process: its children are the fork server and multiprocessing's resource tracker, and
    killing the fork server takes every worker with it."""
    url = f"http://127.0.0.1:{http.ports['ops']}/workers"
    with _direct.open(url, timeout=2.0) as response:
        listed = json.loads(response.read())["workers"]
    return {int(worker["pid"]) for worker in listed if worker["ready"] or not ready_only}


def socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets process `pid` holds open (from /proc)."""
    inodes = set()
    for descriptor in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(descriptor)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def client_ends_held_by(pid: int, port: int) -> set[tuple[str, int]]:
    """The client ends (address, port) of the TCP connections to local `port` that process
    `pid` holds open: the connections a worker has accepted (IPv4, from /proc)."""
    inodes = socket_inodes(pid)
    ends = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
        if inode in inodes and state != _TCP_LISTEN and int(local.split(":")[1], 16) == port:
            ends.add(_address(remote))
    return ends


_TCP_LISTEN = "0A"


def _address(hex_address: str) -> tuple[str, int]:
    """/proc/net/tcp's "0100007F:1F40" as ("127.0.0.1", 8000)."""
    host, port = hex_address.split(":")
    return socket.inet_ntoa(int(host, 16).to_bytes(4, "little")), int(port, 16)


def discovered_replicas(http: Service) -> list[float]:
    """How many auth replicas each worker of `http` knows, from its /metrics page."""
    url = f"http://127.0.0.1:{http.ports['http']}/metrics"
    with _direct.open(url, timeout=2.0) as response:
        text = response.read().decode()
    return [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("gatehouse_http_discovered_replicas")
    ]


def discovery_record(system: Gatehouse, instance_id: str) -> dict[str, object] | None:
    """The replica's record in etcd, or None when there is none. Synchronous (callers poll it
    from a thread): etcd serves TLS with auth on, so this reads as root through a client of
    its own on a loop of its own."""

    async def read() -> bytes | None:
        client = system.stores.etcd_client(timeout=2)
        try:
            found = await client.get((DISCOVERY_PREFIX + instance_id).encode())
        finally:
            await client.close()
        return None if found is None else bytes(found.value)

    value = asyncio.run(read())
    if value is None:
        return None
    record: dict[str, object] = json.loads(value)
    return record
