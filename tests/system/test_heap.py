"""Warm profile reads cause no garbage collection in the HTTP workers (services.foundation.heap).

Against the shared system's first HTTP process (two workers, real auth replicas): 64
connections read one profile in closed loops, 6,400 reads in all. With CPython's default
collector thresholds this load ran about a hundred young collections per thousand reads in each
worker, and a full one (which walks every object of the worker) per thousand
(docs/performance.md); with the workers' heap settled after start-up, it runs next to none.
"""

from __future__ import annotations

import asyncio

import httpx

from devstack.gatehouse import Gatehouse
from tests.system.raw_http import RawConnection, request_head
from tests.system.support import bearer, current_samples, sample_sum, signed_up_token

CONNECTIONS = 64
READS_PER_CONNECTION = 100
COLLECTIONS = "gatehouse_http_gc_collections_total"


async def closed_loop(connection: RawConnection, read: bytes, reads: int) -> list[int]:
    statuses = []
    for _ in range(reads):
        await connection.send(read)
        statuses.append((await connection.answer(timeout=30.0)).status)
    return statuses


async def test_warm_reads_run_no_full_collection_and_next_to_no_young_one(
    gatehouse: Gatehouse,
) -> None:
    http = gatehouse.http[0]
    async with httpx.AsyncClient(base_url=gatehouse.url(0), trust_env=False) as client:
        _, token = await signed_up_token(client)
    read = request_head("GET", "/api/v1/me", bearer(token))
    connections = [await RawConnection.open(http.ports["http"]) for _ in range(CONNECTIONS)]
    try:
        # Warm: the token verified in each worker, the RPC pools open.
        await asyncio.gather(*(closed_loop(c, read, 1) for c in connections))
        before = current_samples(http)
        answers = await asyncio.gather(
            *(closed_loop(c, read, READS_PER_CONNECTION) for c in connections)
        )
        after = current_samples(http)
    finally:
        for connection in connections:
            connection.close()

    statuses = [status for loop in answers for status in loop]
    assert statuses == [200] * CONNECTIONS * READS_PER_CONNECTION

    def collections(generation: str) -> float:
        return sample_sum(after, COLLECTIONS, generation=generation) - sample_sum(
            before, COLLECTIONS, generation=generation
        )

    assert collections("2") == 0
    # Caches growing (latency windows, the token cache) may add a few; the defaults ran ~700.
    assert collections("0") <= len(statuses) / 1000
