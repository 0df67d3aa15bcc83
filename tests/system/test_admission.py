"""A closed loop of clients is not an overload: against real processes (one Granian worker,
one auth replica), a loop of many more connections than the worker runs requests at once gets
every answer, later, and no refusal.

The queue target is set far above anything the test can reach, so what is checked is the
behaviour (requests wait in line for a slot), not a latency on a loaded machine.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devstack.gatehouse import Gatehouse, Service
from devstack.stack import DataStores
from tests.system.conftest import TEST_SETTINGS
from tests.system.raw_http import RawConnection, request_head
from tests.system.support import bearer, sample_sum, scrape, signed_up_token

CONCURRENCY = 4
# More than the worker's concurrency, and more than the 64 requests in progress at which the
# count-based admission this replaced answered 503.
CONNECTIONS = 150
ROUNDS = 3


@pytest.fixture(scope="module")
def narrow_worker(
    data_stores: DataStores, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    run = uuid.uuid4().hex[:8]
    settings = {
        **TEST_SETTINGS,
        "GATEHOUSE_HTTP_WORKERS": "1",
        "GATEHOUSE_ADMISSION_CONCURRENCY": str(CONCURRENCY),
        "GATEHOUSE_ADMISSION_QUEUE_TARGET": "60",
        "GATEHOUSE_DISCOVERY_PREFIX": f"/gatehouse-admission-{run}/auth/",
        "GATEHOUSE_JWT_KEYS_PREFIX": f"/gatehouse-admission-{run}/jwt-keys/",
    }
    stack = Gatehouse(data_stores, Path(tmp_path_factory.mktemp("admission")), settings=settings)
    try:
        stack.start_auth()
        yield stack.start_http()
    finally:
        stack.stop()


def shed_requests(http: Service) -> float:
    samples = scrape(f"http://127.0.0.1:{http.ports['ops']}/metrics")
    return sample_sum(samples, "gatehouse_http_shed_requests_total")


async def test_a_closed_loop_wider_than_the_concurrency_gets_only_answers(
    narrow_worker: Service,
) -> None:
    port = narrow_worker.ports["http"]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False) as client:
        _, token = await signed_up_token(client)
    read = request_head("GET", "/api/v1/me", bearer(token))
    # Opened before the loop starts, so that every first request arrives in one burst.
    connections = [await RawConnection.open(port) for _ in range(CONNECTIONS)]
    shed_before = shed_requests(narrow_worker)

    async def closed_loop(connection: RawConnection) -> list[int]:
        statuses = []
        for _ in range(ROUNDS):
            await connection.send(read)
            statuses.append((await connection.answer(timeout=60.0)).status)
        return statuses

    try:
        answers = await asyncio.gather(*(closed_loop(c) for c in connections))
    finally:
        for connection in connections:
            connection.close()
    assert answers == [[200] * ROUNDS] * CONNECTIONS
    assert shed_requests(narrow_worker) == shed_before
