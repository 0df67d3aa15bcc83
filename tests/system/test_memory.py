"""Against the running system: reads with a logged-out token do not grow the auth replicas
(issue 11 §5), each such read used to keep about 0.8 KB in the replica that answered it; and
picture uploads of megabytes leave no memory held in the HTTP workers once answered."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx

from devstack import DataStores
from devstack.gatehouse import Gatehouse, Service
from devstack.ports import HOST, wait_until_async
from devstack.process import children_of
from drills.http1 import Http1Pool
from tests.conftest import TEST_SETTINGS
from tests.system.support import bearer, new_username, rss_bytes, stack_of_its_own

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


UPLOADERS = 16  # distinct accounts on distinct addresses: each per-client cap admits them all
UPLOAD_ROUNDS = 4
UPLOAD_BYTES = 5 * 1024 * 1024  # GATEHOUSE_MAX_AVATAR_BYTES's default
# Both workers together. Measured here: 46-53 MiB kept when glibc adjusted its mmap threshold to
# the bodies (their freed buffers stayed in its heap and arenas), 22-26 MiB with the threshold
# set (services.foundation.allocator), the connections' and accounts' own memory among them.
UPLOAD_RSS_KEPT_BOUND = 36 * 1024 * 1024


def http_worker_pids(service: Service) -> list[int]:
    """The Granian workers of an HTTP process: the children of its worker fork server."""
    for child in service.process.child_pids():
        if "worker_preload" in Path(f"/proc/{child}/cmdline").read_text():
            return children_of(child)
    raise AssertionError(f"no worker fork server under {service.name}")


async def test_picture_uploads_leave_no_memory_held_in_the_http_workers(
    data_stores: DataStores, tmp_path: Path
) -> None:
    with stack_of_its_own(data_stores, tmp_path, "uploads-rss", dict(TEST_SETTINGS)) as stack:
        stack.start(1, 1)
        async with httpx.AsyncClient(base_url=stack.url(0), timeout=30.0, trust_env=False) as c:
            tokens = []
            for _ in range(UPLOADERS):
                credentials = {"username": new_username("up"), "password": "password1"}
                assert (await c.post("/api/v1/users", json=credentials)).status_code == 201
                tokens.append((await c.post("/api/v1/sessions", json=credentials)).json()["token"])
        workers = http_worker_pids(stack.http[0])
        assert len(workers) == int(TEST_SETTINGS["GATEHOUSE_HTTP_WORKERS"])
        before = sum(map(rss_bytes, workers))
        # Not a picture: refused (415) once read whole, or (503) by the upload limits.
        body = b"\x89PNG\r\n\x1a\n" + os.urandom(UPLOAD_BYTES - 8)
        answered: dict[int, int] = {}

        async def upload(uploader: int) -> None:
            transport = httpx.AsyncHTTPTransport(local_address=f"127.0.4.{uploader + 1}")
            async with httpx.AsyncClient(
                base_url=stack.url(0), timeout=60.0, trust_env=False, transport=transport
            ) as client:
                answer = await client.put(
                    "/api/v1/me/avatar", content=body, headers=bearer(tokens[uploader])
                )
            answered[answer.status_code] = answered.get(answer.status_code, 0) + 1

        for _ in range(UPLOAD_ROUNDS):
            await asyncio.gather(*(upload(uploader) for uploader in range(UPLOADERS)))
        assert set(answered) <= {415, 503} and answered.get(415, 0) >= UPLOADERS, answered

        def kept() -> int:
            return sum(map(rss_bytes, workers)) - before

        # A body still in a reference cycle goes with the worker's next collection: a moment.
        try:
            await wait_until_async(
                lambda: kept() < UPLOAD_RSS_KEPT_BOUND,
                5.0,
                f"the HTTP workers to keep under {UPLOAD_RSS_KEPT_BOUND >> 20} MiB",
            )
        finally:
            print(f"HTTP workers kept {kept() / 2**20:.1f} MiB after uploads answered {answered}")
