"""Warm profile reads cause no garbage collection in the HTTP workers (services.foundation.heap).

32 connections read one profile in closed loops, 3,200 reads in all, through an HTTP process of
one worker and the shared system's auth replicas, so that the same 32 reads are in flight in the
worker on every run (with two workers, how they share the connections varies from run to run:
the kernel picks a worker for each at random; with the workers' old shared socket one took 33
to 63 of 64). With CPython's default collector thresholds
(GATEHOUSE_GC_YOUNG_THRESHOLD=0) a worker ran about a hundred young collections per thousand
reads and a full one (which walks every object of the worker) about every thousand
(docs/performance.md, "The garbage collector"); settled, as by default, next to none: a warm read
in flight holds ~145 container objects, so 32 hold ~4,600, below the young threshold of 7,000.
(64 in flight in one worker, ~9,300, pass it: 12-32 young collections per 6,400 reads.)
The run at CPython's defaults also shows that the workers publish their collections.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from devstack.gatehouse import Gatehouse, Service
from tests.system.raw_http import RawConnection, request_head
from tests.system.support import bearer, current_samples, sample_sum, signed_up_token

CONNECTIONS = 32  # half of GATEHOUSE_ADMISSION_CONCURRENCY's 64: two workers' even share
READS_PER_CONNECTION = 100
READS = CONNECTIONS * READS_PER_CONNECTION
COLLECTIONS = "gatehouse_http_gc_collections_total"


@dataclass
class Collections:
    young: float
    full: float


async def closed_loop(connection: RawConnection, read: bytes, reads: int) -> list[int]:
    statuses = []
    for _ in range(reads):
        await connection.send(read)
        statuses.append((await connection.answer(timeout=30.0)).status)
    return statuses


async def collections_during_reads(http: Service) -> Collections:
    """The workers' collections while READS warm reads of one profile go through `http`."""
    url = f"http://127.0.0.1:{http.ports['http']}"
    async with httpx.AsyncClient(base_url=url, trust_env=False) as client:
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
    assert [status for loop in answers for status in loop] == [200] * READS

    def new(generation: str) -> float:
        return sample_sum(after, COLLECTIONS, generation=generation) - sample_sum(
            before, COLLECTIONS, generation=generation
        )

    return Collections(young=new("0"), full=new("2"))


def one_worker_http(gatehouse: Gatehouse, extra: dict[str, str]) -> Iterator[Service]:
    http = gatehouse.start_http({"GATEHOUSE_HTTP_WORKERS": "1", **extra})
    try:
        yield http
    finally:
        http.process.stop()
        gatehouse.http.remove(http)  # other tests expect the system's own processes only


@pytest.fixture
def settled_http(gatehouse: Gatehouse) -> Iterator[Service]:
    yield from one_worker_http(gatehouse, {})


@pytest.fixture
def http_at_cpython_defaults(gatehouse: Gatehouse) -> Iterator[Service]:
    yield from one_worker_http(gatehouse, {"GATEHOUSE_GC_YOUNG_THRESHOLD": "0"})


async def test_settled_workers_run_no_full_collection_and_next_to_no_young_one(
    settled_http: Service,
) -> None:
    collections = await collections_during_reads(settled_http)
    assert collections.full == 0
    # 1 in each of 3 runs: the count the worker carried into the reads (up to ~5,000 from its
    # start-up and first reads) crossing the threshold once, with the reads in flight on top.
    assert collections.young <= 2


async def test_at_cpython_defaults_the_same_reads_run_collections_and_show_them(
    http_at_cpython_defaults: Service,
) -> None:
    collections = await collections_during_reads(http_at_cpython_defaults)
    assert collections.young > 10 * READS / 1000
