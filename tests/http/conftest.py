"""Fixtures of the HTTP tier's tests: an app running against real etcd and a stub replica."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from devstack import DataStores
from tests.http.gateway import Gateway, running_gateway


@pytest.fixture(scope="module")
async def shared_gateway(data_stores: DataStores) -> AsyncIterator[Gateway]:
    async with running_gateway(data_stores) as gateway:
        yield gateway


@pytest.fixture
def gateway(shared_gateway: Gateway) -> Gateway:
    """The module's running app, its stub replica reset to answer OK."""
    shared_gateway.reset()
    return shared_gateway
