"""Impatient clients: a login whose HTTP client gives up does not cost a password hash.

Its own small stack (one auth replica with one hashing thread at a slow bcrypt cost, one HTTP
process, under each HTTP server), under discovery prefixes of its own so the shared stack
never sees it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devstack.gatehouse import Gatehouse, Service
from devstack.ports import wait_until_async
from devstack.stack import DataStores
from tests.system.conftest import TEST_SETTINGS
from tests.system.support import new_username, sample_sum, scrape

# One hash at cost 13 takes about 0.5 s here: impatient clients pile up behind it.
SLOW_COST = "13"
IMPATIENT_CLIENTS = 6


@pytest.fixture(scope="module", params=["granian", "hypercorn"])
def slow_hashing_stack(
    request: pytest.FixtureRequest,
    data_stores: DataStores,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gatehouse]:
    run = uuid.uuid4().hex[:8]
    settings = {
        **TEST_SETTINGS,
        "GATEHOUSE_HTTP_SERVER": request.param,
        "GATEHOUSE_BCRYPT_COST": SLOW_COST,
        "GATEHOUSE_HASH_THREADS": "1",
        "GATEHOUSE_HTTP_WORKERS": "1",
        "GATEHOUSE_DISCOVERY_PREFIX": f"/gatehouse-cancel-{run}/auth/",
        "GATEHOUSE_JWT_KEYS_PREFIX": f"/gatehouse-cancel-{run}/jwt-keys/",
    }
    stack = Gatehouse(data_stores, Path(tmp_path_factory.mktemp("cancel")), settings=settings)
    try:
        stack.start(1, 1)
        yield stack
    finally:
        stack.stop()


def hashes(auth: Service, outcome: str) -> float:
    samples = scrape(f"http://127.0.0.1:{auth.ports['ops']}/metrics")
    return sample_sum(samples, "gatehouse_auth_password_hashes_total", outcome=outcome)


def queue_depth(auth: Service) -> float:
    samples = scrape(f"http://127.0.0.1:{auth.ports['ops']}/metrics")
    return sample_sum(samples, "gatehouse_auth_hash_queue_depth")


async def impatient_login(url: str, username: str, source: str) -> None:
    """From its own address: six concurrent attempts from one address at one account would
    meet the login throttle (each counts until its outcome is known), not the hash queue."""
    transport = httpx.AsyncHTTPTransport(local_address=source)
    async with httpx.AsyncClient(
        base_url=url, timeout=0.3, trust_env=False, transport=transport
    ) as client:
        with pytest.raises(httpx.TimeoutException):
            await client.post(
                "/api/v1/sessions", json={"username": username, "password": "password1"}
            )


@pytest.mark.slow
async def test_logins_abandoned_by_their_clients_skip_their_hashes(
    slow_hashing_stack: Gatehouse,
) -> None:
    stack = slow_hashing_stack
    auth = stack.auth[0]
    username = new_username("impatient")
    async with httpx.AsyncClient(base_url=stack.url(0), timeout=30.0, trust_env=False) as client:
        created = await client.post(
            "/api/v1/users", json={"username": username, "password": "password1"}
        )
        assert created.status_code == 201, created.text
        computed_before = hashes(auth, "computed")
        cancelled_before = hashes(auth, "skipped_cancelled")

        # Each gives up after 0.3 s; one thread hashing 0.5 s each would take about 3 s.
        await asyncio.gather(
            *(
                impatient_login(stack.url(0), username, f"127.0.0.{150 + i}")
                for i in range(IMPATIENT_CLIENTS)
            )
        )

        # /metrics is a copy up to a second old: wait until it counts every abandoned login.
        def settled() -> bool:
            counted = hashes(auth, "computed") + hashes(auth, "skipped_cancelled")
            return queue_depth(auth) == 0 and (
                counted - computed_before - cancelled_before >= IMPATIENT_CLIENTS
            )

        await wait_until_async(
            lambda: asyncio.to_thread(settled),
            15.0,
            "the auth replica's hash queue to empty and count every abandoned login",
        )
        computed = hashes(auth, "computed") - computed_before
        cancelled = hashes(auth, "skipped_cancelled") - cancelled_before
        # The first hash was running when its client left; at most one more may have started
        # before its cancel arrived. The rest were skipped.
        assert computed <= 2, f"{computed} hashes computed for {IMPATIENT_CLIENTS} abandoned logins"
        assert computed + cancelled == IMPATIENT_CLIENTS

        login = await client.post(
            "/api/v1/sessions", json={"username": username, "password": "password1"}
        )
        assert login.status_code == 200, login.text
