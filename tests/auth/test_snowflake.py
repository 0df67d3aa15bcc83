"""Snowflake ids, and worker ids claimed in a real etcd."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator
from itertools import pairwise

import aetcd
import pytest

from devstack import DataStores
from devstack.ports import free_port, wait_until_async
from services.auth.snowflake import (
    DATABASE_WORKER_ID,
    EPOCH_UNIX_MS,
    SnowflakeGenerator,
    WorkerIdClaim,
    decode_id,
)

LEASE_TTL = 2
T0 = EPOCH_UNIX_MS + 86_400_000  # 2024-01-02, in Unix milliseconds


class FakeClock:
    """A clock that only moves when told, or after a number of reads."""

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms
        self.reads = 0
        self.tick_after_reads: int | None = None

    def __call__(self) -> int:
        self.reads += 1
        if self.tick_after_reads is not None and self.reads > self.tick_after_reads:
            self.now_ms += 1
            self.tick_after_reads = None
        return self.now_ms


# Generator


def test_ids_are_unique_and_increasing_over_100k_calls() -> None:
    generator = SnowflakeGenerator(7)
    ids = [generator.next_id() for _ in range(100_000)]
    assert all(earlier < later for earlier, later in pairwise(ids))
    assert 0 < ids[0] < 2**63
    assert all(decode_id(snowflake_id).worker_id == 7 for snowflake_id in ids[::1000])


def test_fields_decode_back() -> None:
    generator = SnowflakeGenerator(1023, FakeClock(T0))
    first, second = generator.next_id(), generator.next_id()
    assert decode_id(first).unix_ms == T0
    assert decode_id(first).worker_id == 1023
    assert (decode_id(first).sequence, decode_id(second).sequence) == (0, 1)
    assert first == (86_400_000 << 22) | (1023 << 12)


def test_sequence_overflow_waits_for_the_next_millisecond() -> None:
    clock = FakeClock(T0)
    generator = SnowflakeGenerator(3, clock)
    ids = [generator.next_id() for _ in range(4096)]
    assert [decode_id(i).sequence for i in ids] == list(range(4096))
    clock.tick_after_reads = clock.reads + 50  # the clock moves while the generator spins
    overflowed = generator.next_id()
    assert decode_id(overflowed).unix_ms == T0 + 1
    assert decode_id(overflowed).sequence == 0
    assert clock.now_ms == T0 + 1  # it waited for the clock instead of running ahead


def test_clock_stepping_back_never_repeats_an_id() -> None:
    clock = FakeClock(T0)
    generator = SnowflakeGenerator(5, clock)
    before = [generator.next_id() for _ in range(10)]
    clock.now_ms = T0 - 60_000  # NTP stepped the clock back a minute
    # More ids than one millisecond holds: the timestamp is borrowed from the future
    # without waiting a minute for the clock.
    during = [generator.next_id() for _ in range(5000)]
    clock.now_ms = T0 + 10
    after = [generator.next_id() for _ in range(10)]
    ids = before + during + after
    assert all(earlier < later for earlier, later in pairwise(ids))
    assert {decode_id(i).unix_ms for i in during} == {T0, T0 + 1}
    assert decode_id(after[0]).unix_ms == T0 + 10


@pytest.mark.parametrize("worker_id", [-1, 1024])
def test_worker_id_out_of_range_is_refused(worker_id: int) -> None:
    with pytest.raises(ValueError, match=r"outside 0\.\.1023"):
        SnowflakeGenerator(worker_id)


# Claims in etcd


@pytest.fixture
def prefix() -> str:
    return f"/test-{uuid.uuid4().hex}/worker-ids/"


@pytest.fixture
async def etcd(data_stores: DataStores) -> AsyncIterator[aetcd.Client]:
    client = data_stores.etcd_client()
    yield client
    await client.close()


async def test_two_claimers_hold_different_ids_until_stopped(
    data_stores: DataStores, etcd: aetcd.Client, prefix: str
) -> None:
    access = data_stores.etcd_access()
    first = WorkerIdClaim(access, prefix, "replica-a", lease_ttl=LEASE_TTL)
    second = WorkerIdClaim(access, prefix, "replica-b", lease_ttl=LEASE_TTL)
    await first.start()
    await second.start()
    try:
        await wait_until_async(
            lambda: first.worker_id is not None and second.worker_id is not None,
            10.0,
            "both claims",
        )
        assert first.worker_id != second.worker_id
        assert first.generator is not None and first.generator.worker_id == first.worker_id
        for claimer, instance_id in ((first, "replica-a"), (second, "replica-b")):
            key = await etcd.get(f"{prefix}{claimer.worker_id}".encode())
            assert key is not None
            assert key.value == instance_id.encode()
            assert key.lease != 0
    finally:
        await first.stop()
        await second.stop()
    assert first.worker_id is None and first.generator is None
    # Revoked, not left to expire; only the reservation of the database's worker id stays.
    left = await etcd.get_prefix(prefix.encode())
    assert [(kv.key, kv.lease) for kv in left] == [(f"{prefix}{DATABASE_WORKER_ID}".encode(), 0)]
    await etcd.delete_prefix(prefix.encode())


async def test_taken_ids_are_skipped(
    data_stores: DataStores, etcd: aetcd.Client, prefix: str
) -> None:
    # Every id but one is taken: the claimer must find the free one.
    for worker_id in range(1024):
        if worker_id != 511:
            await etcd.put(f"{prefix}{worker_id}".encode(), b"someone-else")
    claimer = WorkerIdClaim(data_stores.etcd_access(), prefix, "latecomer", lease_ttl=LEASE_TTL)
    await claimer.start()
    try:
        await wait_until_async(lambda: claimer.worker_id is not None, 10.0, "the claim")
        assert claimer.worker_id == 511
    finally:
        await claimer.stop()
        await etcd.delete_prefix(prefix.encode())


async def test_revoked_lease_is_noticed_and_a_new_id_claimed(
    data_stores: DataStores, etcd: aetcd.Client, prefix: str
) -> None:
    claimer = WorkerIdClaim(data_stores.etcd_access(), prefix, "replica-a", lease_ttl=LEASE_TTL)
    await claimer.start()
    try:
        await wait_until_async(lambda: claimer.worker_id is not None, 10.0, "the first claim")
        key = f"{prefix}{claimer.worker_id}".encode()
        original = await etcd.get(key)
        assert original is not None
        await etcd.revoke_lease(original.lease)  # what an expired lease looks like

        async def reclaimed() -> bool:
            current = claimer.worker_id
            if current is None:
                return False
            held = await etcd.get(f"{prefix}{current}".encode())
            return (
                held is not None
                and held.lease not in (0, original.lease)
                and held.value == b"replica-a"
            )

        await wait_until_async(
            reclaimed, 10.0, "the claimer to notice the revoked lease and claim again"
        )
    finally:
        await claimer.stop()


async def test_deleted_key_is_noticed_and_a_new_id_claimed(
    data_stores: DataStores, etcd: aetcd.Client, prefix: str
) -> None:
    claimer = WorkerIdClaim(data_stores.etcd_access(), prefix, "replica-a", lease_ttl=LEASE_TTL)
    await claimer.start()
    try:
        await wait_until_async(lambda: claimer.worker_id is not None, 10.0, "the first claim")
        original = await etcd.get(f"{prefix}{claimer.worker_id}".encode())
        assert original is not None
        await etcd.delete(original.key)

        async def reclaimed() -> bool:
            held = [kv for kv in await etcd.get_prefix(prefix.encode()) if kv.lease != 0]
            return (
                claimer.worker_id is not None and len(held) == 1 and held[0].lease != original.lease
            )

        await wait_until_async(
            reclaimed, 10.0, "the claimer to notice the deleted key and claim again"
        )
        # The old lease was revoked, not kept alive for nothing.
        info = await etcd.get_lease_info(original.lease)
        assert info.TTL == -1
    finally:
        await claimer.stop()


async def test_unreachable_endpoint_does_not_block_start_and_the_next_is_tried(
    data_stores: DataStores, prefix: str
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    lonely = WorkerIdClaim((dead,), prefix, "replica-a", lease_ttl=LEASE_TTL)
    live = data_stores.etcd_access()
    rotating = WorkerIdClaim(
        dataclasses.replace(live, endpoints=(dead, *live.endpoints)),
        prefix,
        "replica-b",
        lease_ttl=LEASE_TTL,
    )
    await asyncio.wait_for(lonely.start(), 0.1)
    await asyncio.wait_for(rotating.start(), 0.1)
    try:
        await wait_until_async(
            lambda: rotating.worker_id is not None, 10.0, "a claim through the live endpoint"
        )
        assert lonely.worker_id is None and lonely.generator is None
    finally:
        await lonely.stop()
        await rotating.stop()


@pytest.mark.slow
async def test_id_is_dropped_while_etcd_is_down_and_claimed_again_after(
    data_stores: DataStores, prefix: str
) -> None:
    claimer = WorkerIdClaim(data_stores.etcd_access(), prefix, "replica-a", lease_ttl=LEASE_TTL)
    await claimer.start()
    try:
        await wait_until_async(lambda: claimer.worker_id is not None, 10.0, "the first claim")
        await asyncio.to_thread(data_stores.etcd.stop)
        try:
            # The lease may already be gone in etcd once its TTL passed: no id after that.
            await wait_until_async(
                lambda: claimer.generator is None, LEASE_TTL + 1.0, "the id to be dropped"
            )
        finally:
            await asyncio.to_thread(data_stores.etcd.start)
        await wait_until_async(
            lambda: claimer.worker_id is not None, 20.0, "a claim after etcd is back"
        )
    finally:
        await claimer.stop()


async def test_an_unreachable_etcd_logs_one_warning_not_one_per_retry(
    prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="services.auth.snowflake")
    claimer = WorkerIdClaim((f"127.0.0.1:{free_port()}",), prefix, "replica-a", lease_ttl=LEASE_TTL)

    def failures(level: int) -> int:
        return sum(
            1
            for record in caplog.records
            if record.levelno == level and record.getMessage().startswith("no Snowflake worker id")
        )

    await claimer.start()
    try:
        await wait_until_async(
            lambda: failures(logging.WARNING) + failures(logging.DEBUG) >= 3,
            15.0,
            "three failed claims",
        )
    finally:
        await claimer.stop()
    assert failures(logging.WARNING) == 1
