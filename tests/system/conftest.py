"""The whole system as real processes: two auth replicas and two HTTP processes (as two pods)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from devstack.gatehouse import Gatehouse
from devstack.stack import DataStores

# Short leases and drains keep the fault scenarios fast; bcrypt at its minimum cost keeps
# signups cheap (one test elsewhere runs the default cost).
TEST_SETTINGS = {
    "GATEHOUSE_BCRYPT_COST": "4",
    "GATEHOUSE_LEASE_TTL": "3",
    "GATEHOUSE_DRAIN_DELAY": "1",
    "GATEHOUSE_DRAIN_GRACE": "10",
    "GATEHOUSE_HTTP_WORKERS": "2",
    "GATEHOUSE_EJECT_SECONDS": "1",
    "GATEHOUSE_HANDSHAKE_TIMEOUT": "1",
    "GATEHOUSE_LOG_LEVEL": "INFO",
}


@pytest.fixture(scope="session")
def gatehouse(data_stores: DataStores, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gatehouse]:
    system = Gatehouse(data_stores, tmp_path_factory.mktemp("gatehouse"), settings=dict(TEST_SETTINGS))
    try:
        system.start_auth()
        system.start_auth()
        system.start_http()
        system.start_http()
        yield system
    finally:
        system.stop()


@pytest.fixture
async def clients(gatehouse: Gatehouse) -> AsyncIterator[list[httpx.AsyncClient]]:
    """One HTTP client per HTTP process; no cookie jar, so every call says how it authenticates."""
    opened = [
        httpx.AsyncClient(base_url=gatehouse.url(i), timeout=15.0, cookies=None, trust_env=False)
        for i in range(len(gatehouse.http))
    ]
    yield opened
    for client in opened:
        await client.aclose()
