"""A write that timed out must never land after a later acknowledged write (issue 13).

A nickname change is sent to an auth replica under SIGSTOP: the HTTP tier gives up at the call
deadline and answers 503, while the frame waits in the frozen replica's socket buffer. The
client changes the nickname again, through the other replica, and is told it worked. When the
frozen replica resumes it reads the first frame: by its own clock the call has just arrived,
so without the caller's send time it would run it and overwrite the acknowledged change.

Its own small stack (one HTTP process with one worker, a short call deadline, auth replicas
started one at a time so that the first change can only reach the frozen one), under discovery
prefixes of its own so the shared stack never sees it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devstack.gatehouse import Gatehouse, Service
from devstack.ports import wait_until_async
from devstack.stack import DataStores
from tests.system.conftest import TEST_SETTINGS
from tests.system.support import (
    bearer,
    current_samples,
    sample_sum,
    scrape,
    signed_up_token,
    stack_of_its_own,
)

CALL_TIMEOUT = 1.5
LEASE_TTL = float(TEST_SETTINGS["GATEHOUSE_LEASE_TTL"])


@pytest.fixture(scope="module")
def late_write_stack(
    data_stores: DataStores, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gatehouse]:
    settings = {
        **TEST_SETTINGS,
        "GATEHOUSE_HTTP_WORKERS": "1",
        "GATEHOUSE_CALL_TIMEOUT": str(CALL_TIMEOUT),
    }
    state_dir = Path(tmp_path_factory.mktemp("late"))
    with stack_of_its_own(data_stores, state_dir, "late", settings) as stack:
        stack.start(1, 1)
        yield stack


def profile_changes_seen(auth: Service) -> float:
    """Profile changes the replica has run or refused unrun as expired."""
    samples = scrape(f"http://127.0.0.1:{auth.ports['ops']}/metrics")
    run = sample_sum(samples, "gatehouse_auth_rpc_handler_seconds_count", method="update_profile")
    refused = sample_sum(samples, "gatehouse_auth_rpc_expired_total", method="update_profile")
    return run + refused


def pool_connections(http: Service, replica: str) -> float:
    return sample_sum(current_samples(http), "gatehouse_http_pool_connections", replica=replica)


@pytest.mark.slow
async def test_a_change_that_timed_out_on_a_frozen_replica_never_overwrites_a_later_one(
    late_write_stack: Gatehouse,
) -> None:
    stack = late_write_stack
    frozen, http = stack.auth[0], stack.http[0]
    async with httpx.AsyncClient(base_url=stack.url(0), timeout=30.0, trust_env=False) as client:
        _, token = await signed_up_token(client)
        seen_before = await asyncio.to_thread(profile_changes_seen, frozen)

        frozen.process.pause()
        try:
            # The only replica: the change waits in its socket buffer until the deadline.
            timed_out = await client.patch(
                "/api/v1/me", headers=bearer(token), json={"nickname": "first"}
            )
            assert timed_out.status_code == 503, timed_out.text
            # A second replica; the frozen one leaves discovery once its lease lapses.
            healthy = await asyncio.to_thread(stack.start_auth)
            await wait_until_async(
                lambda: asyncio.to_thread(
                    lambda: (
                        pool_connections(http, frozen.name) == 0
                        and pool_connections(http, healthy.name) >= 1
                    )
                ),
                LEASE_TTL + 15,
                "the HTTP tier to drop the frozen replica and connect to the new one",
            )
            acknowledged = await client.patch(
                "/api/v1/me", headers=bearer(token), json={"nickname": "second"}
            )
            assert acknowledged.status_code == 200, acknowledged.text
            assert acknowledged.json()["nickname"] == "second"
        finally:
            frozen.process.resume()

        # The resumed replica reads the first change from its socket buffer: wait until it has
        # run it or refused it, then read back what the user last saw acknowledged.
        await wait_until_async(
            lambda: asyncio.to_thread(lambda: profile_changes_seen(frozen) > seen_before),
            15.0,
            "the resumed replica to handle the change it held",
        )
        me = await client.get("/api/v1/me", headers=bearer(token))
        assert me.status_code == 200, me.text
        assert me.json()["nickname"] == "second", "the change that failed overwrote a later one"
