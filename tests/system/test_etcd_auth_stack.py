"""The whole stack with etcd serving TLS only and auth on, a user per tier (as the chart)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from devstack.gatehouse import Gatehouse
from devstack.stack import DataStores
from tests.conftest import TEST_SETTINGS
from tests.system.support import signed_up_token


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
    settings = dict(TEST_SETTINGS, GATEHOUSE_AUTH_REPLICA_CIDRS="127.0.0.0/8")
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
