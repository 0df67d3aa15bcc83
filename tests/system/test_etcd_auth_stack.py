"""The whole stack with etcd serving TLS only and auth on, a user per tier (as the chart)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from devstack.gatehouse import Gatehouse
from devstack.ports import wait_until_async
from devstack.stack import DataStores
from services.foundation.discovery import ServiceRecord, registration
from services.foundation.etcd_access import EtcdAccess
from tests.conftest import TEST_SETTINGS
from tests.system.support import (
    current_samples,
    known_replicas_per_worker,
    sample_sum,
    signed_up_token,
)

REFUSED = "gatehouse_http_discovery_records_refused_total"
WORKERS = 2


@pytest.fixture(scope="module")
def secured_stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataStores]:
    stores = DataStores.start(tmp_path_factory.mktemp("etcd-auth-stores"), etcd_auth=True)
    try:
        yield stores
    finally:
        stores.stop()


@pytest.fixture(scope="module")
def secured_gatehouse(
    secured_stores: DataStores, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gatehouse]:
    settings = dict(
        TEST_SETTINGS,
        GATEHOUSE_AUTH_REPLICA_CIDRS="127.0.0.0/8",
        GATEHOUSE_HTTP_WORKERS=str(WORKERS),
    )
    system = Gatehouse(
        secured_stores, tmp_path_factory.mktemp("etcd-auth-gatehouse"), settings=settings
    )
    try:
        system.start_auth()
        system.start_http()
        yield system
    finally:
        system.stop()


@pytest.fixture
async def client(secured_gatehouse: Gatehouse) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=secured_gatehouse.url(), timeout=15.0, trust_env=False
    ) as http:
        yield http


async def test_signup_and_login_work_with_etcd_auth_and_tls(
    secured_stores: DataStores, client: httpx.AsyncClient
) -> None:
    assert secured_stores.etcd_security is not None
    assert secured_stores.etcd.url.startswith("https://")
    await signed_up_token(client)


async def test_a_discovery_record_outside_the_cidrs_gets_no_calls(
    secured_stores: DataStores, secured_gatehouse: Gatehouse, client: httpx.AsyncClient
) -> None:
    """A record planted by whoever holds the auth identity, pointing off the allowed network
    (a relay), is ignored by every HTTP worker while the real replica keeps serving."""
    assert secured_stores.etcd_security is not None
    env = secured_stores.tier_env("auth")
    writer = EtcdAccess(
        endpoints=(secured_stores.etcd_endpoint,),
        username=env["GATEHOUSE_ETCD_USERNAME"],
        password_file=env["GATEHOUSE_ETCD_PASSWORD_FILE"],
        ca_file=str(secured_stores.etcd_security.ca_path),
    )
    rogue = ServiceRecord("rogue-relay", "10.66.0.1", 7000, 1, 99, "rogue", "2026-12-03T00:00:00Z")
    http = secured_gatehouse.http[0]
    planted = registration(writer, "/gatehouse/services/auth/", rogue, ttl=10)
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
