"""The system tests use the session fixtures `gatehouse` and `clients` of tests/conftest.py,
shared with the browser tests (tests/web)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from devstack.gatehouse import Gatehouse
from tests.conftest import TEST_SETTINGS
from tests.system.throttle_support import wait_until_the_replicas_count_in_redis

__all__ = ["TEST_SETTINGS"]  # test_faults reads the lease TTL from here


@pytest.fixture
async def redis_restored(gatehouse: Gatehouse) -> AsyncIterator[None]:
    """For a test that stops, pauses or restarts the shared Redis: once it is over, every
    shared auth replica counts login attempts in Redis again, as the next test expects (the
    replicas' breakers stay open until a call probes them, and that call counts in memory)."""
    yield
    await wait_until_the_replicas_count_in_redis(gatehouse)
