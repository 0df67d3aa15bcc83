"""Against the running system: reads with a logged-out token do not grow the auth replicas
(issue 11 §5). Each such read used to keep about 0.8 KB in the replica that answered it."""

from __future__ import annotations

import asyncio

import httpx

from devstack.gatehouse import Gatehouse
from devstack.ports import HOST
from drills.http1 import Http1Pool
from tests.system.support import bearer, new_username, rss_bytes

WARM_UP_READS = 2_000
MEASURED_READS = 20_000
CONCURRENCY = 16
RSS_GROWTH_BOUND = 8 * 1024 * 1024  # bytes, both replicas together


async def read_many(gatehouse: Gatehouse, token: str, count: int) -> None:
    """`count` reads over both HTTP processes; the drills' HTTP/1.1 client, not httpx, whose
    CPU per request was several times what the system spent answering it."""
    pools = [
        Http1Pool(HOST, service.ports["http"], local_address=None, max_connections=CONCURRENCY)
        for service in gatehouse.http
    ]
    remaining = iter(range(count))

    async def reader(pool: Http1Pool) -> None:
        for _ in remaining:
            answer = await pool.request("GET", "/api/v1/me", headers=bearer(token), timeout=15.0)
            assert answer.status_code == 401, answer.text

    try:
        await asyncio.gather(*(reader(pools[i % len(pools)]) for i in range(CONCURRENCY)))
    finally:
        for pool in pools:
            await pool.aclose()


async def test_reads_with_a_logged_out_token_leave_the_replicas_rss_flat(
    gatehouse: Gatehouse, clients: list[httpx.AsyncClient]
) -> None:
    username = new_username("rss")
    credentials = {"username": username, "password": "password1"}
    assert (await clients[0].post("/api/v1/users", json=credentials)).status_code == 201
    token = (await clients[0].post("/api/v1/sessions", json=credentials)).json()["token"]
    assert (
        await clients[0].delete("/api/v1/sessions/current", headers=bearer(token))
    ).status_code == 204
    await read_many(gatehouse, token, WARM_UP_READS)
    pids = [service.process.pid for service in gatehouse.auth]
    before = sum(rss_bytes(pid) for pid in pids)
    await read_many(gatehouse, token, MEASURED_READS)
    growth = sum(rss_bytes(pid) for pid in pids) - before
    print(f"auth replicas' RSS grew by {growth / 2**20:.2f} MiB over {MEASURED_READS} reads")
    assert growth < RSS_GROWTH_BOUND, f"RSS grew by {growth / 2**20:.1f} MiB"
