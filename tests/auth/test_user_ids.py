"""User ids from the etcd worker id or the primary's id blocks: never the same id twice, through
etcd outages, partitions and clock steps (docs/design.md, "User ids")."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from itertools import pairwise

import aetcd
import pytest

from devstack import DataStores
from devstack.ports import wait_until_async
from services.auth.accounts import AccountStore
from services.auth.snowflake import (
    DATABASE_WORKER_ID,
    EPOCH_UNIX_MS,
    SEQUENCE_BITS,
    WorkerIdClaim,
    decode_id,
)
from services.auth.store.database import Database
from services.auth.store.id_blocks import IdBlocks, id_from_counter
from services.auth.user_ids import UserIds
from services.foundation.etcd import parse_endpoint
from tests.auth.tcp_proxy import TcpProxy

LEASE_TTL = 2
RESERVATION = b"reserved: user id blocks of the MySQL primary (never claim)"


@pytest.fixture
def prefix() -> str:
    return f"/test-{uuid.uuid4().hex}/worker-ids/"


@pytest.fixture
async def etcd(data_stores: DataStores) -> AsyncIterator[aetcd.Client]:
    client = data_stores.etcd_client()
    yield client
    await client.close()


async def _take_all_worker_ids_but(etcd: aetcd.Client, prefix: str, free: set[int]) -> None:
    for worker_id in range(DATABASE_WORKER_ID):
        if worker_id not in free:
            await etcd.put(f"{prefix}{worker_id}".encode(), b"someone-else")


async def test_etcd_never_grants_the_database_worker_id_and_reserves_it(
    data_stores: DataStores, etcd: aetcd.Client, prefix: str
) -> None:
    # Every id etcd may grant is taken: only the database's 1023 is free.
    await _take_all_worker_ids_but(etcd, prefix, free=set())
    claimer = WorkerIdClaim(data_stores.etcd_access(), prefix, "latecomer", lease_ttl=LEASE_TTL)
    await claimer.start()
    reserved_key = f"{prefix}{DATABASE_WORKER_ID}".encode()
    try:

        async def key_written() -> bool:
            return await etcd.get(reserved_key) is not None

        await wait_until_async(key_written, 10.0, "the key of worker id 1023 to be written")
        held = await etcd.get(reserved_key)
        assert held is not None
        assert (held.value, held.lease) == (RESERVATION, 0)  # a reservation, not a claim
        assert claimer.worker_id is None and claimer.next_id() is None
    finally:
        await claimer.stop()
        await etcd.delete_prefix(prefix.encode())


async def test_block_ids_of_concurrent_takers_are_unique_and_carry_the_database_worker_id(
    primary: Database,
) -> None:
    takers = [IdBlocks(primary, block_size) for block_size in (1, 7, 64)]
    started_ms = time.time_ns() // 1_000_000

    async def take(blocks: IdBlocks) -> list[int]:
        return [await blocks.next_id() for _ in range(150)]

    per_taker = await asyncio.gather(*(take(blocks) for blocks in takers))
    made = [user_id for ids in per_taker for user_id in ids]
    assert len(set(made)) == len(made)
    for ids in per_taker:
        assert all(earlier < later for earlier, later in pairwise(ids))
    parts = [decode_id(user_id) for user_id in made]
    assert {part.worker_id for part in parts} == {DATABASE_WORKER_ID}
    # Stamped with the primary's time, like etcd's ids with the replica's (within a minute:
    # earlier tests of this module may have moved the counter ahead).
    assert all(started_ms - 60_000 <= part.unix_ms for part in parts)


async def test_a_clock_step_back_does_not_repeat_block_ids(primary: Database) -> None:
    # Blocks were handed out while the primary's clock read an hour ahead; then the clock was
    # set right (an hour back). New blocks must continue after the old ones.
    ahead_ms = time.time_ns() // 1_000_000 + 3_600_000 - EPOCH_UNIX_MS
    await primary.execute(
        "test",
        "UPDATE user_id_blocks SET next_counter = GREATEST(next_counter, %s) WHERE id = 1",
        (ahead_ms << SEQUENCE_BITS,),
    )
    row = await primary.fetch_one("test", "SELECT next_counter FROM user_id_blocks WHERE id = 1")
    assert row is not None
    handed_out_end = int(row["next_counter"])
    handed_out = {id_from_counter(c) for c in range(handed_out_end - 1000, handed_out_end)}
    blocks = IdBlocks(primary, 300)
    made = [await blocks.next_id() for _ in range(600)]
    assert min(made) > max(handed_out)
    assert len(set(made)) == len(made)


async def test_a_partitioned_replica_and_the_next_holder_of_its_worker_id_never_make_one_id(
    data_stores: DataStores, etcd: aetcd.Client, prefix: str, store: AccountStore
) -> None:
    """Replica A is cut off from etcd (through a proxy) while B claims A's worker id: both keep
    making ids, and real signups, and none is made twice."""
    await _take_all_worker_ids_but(etcd, prefix, free={511})
    access = data_stores.etcd_access()
    host, port = parse_endpoint(data_stores.etcd_endpoint)
    proxy = await TcpProxy.start(host, port)
    through_proxy = dataclasses.replace(access, endpoints=(f"127.0.0.1:{proxy.port}",))
    claim_a = WorkerIdClaim(through_proxy, prefix, "replica-a", lease_ttl=LEASE_TTL)
    claim_b = WorkerIdClaim(access, prefix, "replica-b", lease_ttl=LEASE_TTL)
    ids_a = UserIds(claim_a, IdBlocks(store.primary, 4096))
    ids_b = UserIds(claim_b, IdBlocks(store.primary, 4096))
    made_a: list[int] = []
    made_b: list[int] = []
    await claim_a.start()
    try:
        await wait_until_async(lambda: claim_a.worker_id == 511, 10.0, "A to claim 511")
        made_a += [await ids_a.next_id() for _ in range(1000)]
        proxy.cut()
        await claim_b.start()  # B waits for a free worker id: 511, once A's lease expires
        await wait_until_async(lambda: claim_b.worker_id == 511, 15.0, "B to claim 511")
        assert ids_a.source == "database"  # A cannot tell this partition from an outage
        # Both make ids in the same milliseconds: with a shared worker id they would collide.
        for _ in range(20_000):
            made_a.append(await ids_a.next_id())
            made_b.append(await ids_b.next_id())
        assert ids_b.source == "etcd" and claim_b.worker_id == 511
        for index in range(40):  # signups on the primary, whose unique key is the last guard
            for ids, made in ((ids_a, made_a), (ids_b, made_b)):
                user = await store.create_user(
                    await ids.next_id(), f"p{uuid.uuid4().hex[:12]}", f"n{index}", b"x" * 60, 1
                )
                made.append(user.id)
        await etcd.delete(f"{prefix}100".encode())
        proxy.restore()
        await wait_until_async(lambda: claim_a.worker_id == 100, 20.0, "A to claim worker id 100")
        made_a += [await ids_a.next_id() for _ in range(1000)]
        made_b += [await ids_b.next_id() for _ in range(1000)]
    finally:
        await claim_a.stop()
        await claim_b.stop()
        await proxy.close()
        await etcd.delete_prefix(prefix.encode())
    assert not set(made_a) & set(made_b)
    assert len(set(made_a)) == len(made_a) and len(set(made_b)) == len(made_b)
    assert {decode_id(user_id).worker_id for user_id in made_b} == {511}


async def test_while_a_claim_is_held_ids_are_its_snowflakes_as_before(
    data_stores: DataStores, etcd: aetcd.Client, prefix: str, store: AccountStore
) -> None:
    claim = WorkerIdClaim(data_stores.etcd_access(), prefix, "replica-a", lease_ttl=LEASE_TTL)
    ids = UserIds(claim, IdBlocks(store.primary, 16))
    await claim.start()
    try:
        await wait_until_async(lambda: claim.worker_id is not None, 10.0, "the claim")
        before_ms = time.time_ns() // 1_000_000
        made = [await ids.next_id() for _ in range(5000)]
        after_ms = time.time_ns() // 1_000_000
        assert ids.source == "etcd"
        worker_id = claim.worker_id
    finally:
        await claim.stop()
        await etcd.delete_prefix(prefix.encode())
    assert all(earlier < later for earlier, later in pairwise(made))
    parts = [decode_id(user_id) for user_id in made]
    assert {part.worker_id for part in parts} == {worker_id}
    # Time-ordered by this host's clock; 4096 ids a millisecond may borrow a few ms ahead.
    assert before_ms <= parts[0].unix_ms and parts[-1].unix_ms <= after_ms + 2
