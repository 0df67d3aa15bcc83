"""The whole stack with etcd serving TLS only and auth on, a user per tier (as the chart)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from devstack.gatehouse import Gatehouse
from devstack.ports import wait_until_async
from devstack.stack import DataStores
from services.foundation.discovery import ServiceRecord, registration
from tests.conftest import TEST_SETTINGS
from tests.system.support import (
    current_samples,
    known_replicas_per_worker,
    sample_sum,
    signed_up_token,
    stack_of_its_own,
)

REFUSED = "gatehouse_http_discovery_records_refused_total"
WORKERS = 2


@pytest.fixture(scope="module")
def secured_gatehouse(
    data_stores: DataStores, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gatehouse]:
    """A stack of its own (its own discovery prefix, so a planted record reaches only it) on
    the shared data stores, whose etcd serves TLS with auth on."""
    settings = dict(
        TEST_SETTINGS,
        GATEHOUSE_AUTH_REPLICA_CIDRS="127.0.0.0/8",
        GATEHOUSE_HTTP_WORKERS=str(WORKERS),
    )
    with stack_of_its_own(
        data_stores, tmp_path_factory.mktemp("etcd-auth-gatehouse"), "etcd-auth", settings
    ) as system:
        system.start(1, 1)
        yield system


@pytest.fixture
async def client(secured_gatehouse: Gatehouse) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=secured_gatehouse.url(), timeout=15.0, trust_env=False
    ) as http:
        yield http


async def test_signup_and_login_work_with_etcd_auth_and_tls(
    data_stores: DataStores, client: httpx.AsyncClient
) -> None:
    assert data_stores.etcd_security is not None
    assert data_stores.etcd.url.startswith("https://")
    await signed_up_token(client)


async def test_a_discovery_record_outside_the_cidrs_gets_no_calls(
    secured_gatehouse: Gatehouse, client: httpx.AsyncClient
) -> None:
    """A record planted by whoever holds the auth identity, pointing off the allowed network
    (a relay), is ignored by every HTTP worker while the real replica keeps serving."""
    writer = secured_gatehouse.tier_access("auth")
    rogue = ServiceRecord("rogue-relay", "10.66.0.1", 7000, 1, 99, "rogue", "2026-12-03T00:00:00Z")
    http = secured_gatehouse.http[0]
    planted = registration(
        writer, secured_gatehouse.settings["GATEHOUSE_DISCOVERY_PREFIX"], rogue, ttl=10
    )
    await planted.start()
    try:
        await wait_until_async(
            lambda: sample_sum(current_samples(http), REFUSED) >= WORKERS,
            15.0,
            "every HTTP worker to refuse the rogue record",
        )
        assert known_replicas_per_worker(secured_gatehouse.url()) == [1.0] * WORKERS
        await signed_up_token(client)
    finally:
        await planted.stop()
