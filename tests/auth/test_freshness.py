"""Heartbeat and replica freshness against the real primary and its replica."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import pytest
from prometheus_client import REGISTRY

from devstack import DataStores
from devstack.ports import free_port
from services.auth.store import freshness as freshness_module
from services.auth.store.database import Database, Role
from services.auth.store.freshness import HeartbeatWriter, ReplicaFreshness
from services.auth.store.health import PrimaryHealth

INTERVAL = 0.05
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)


async def primary_beat(primary: Database) -> datetime:
    row = await primary.fetch_one(
        "read_beat", "SELECT beat FROM replication_heartbeat WHERE id = 1"
    )
    assert row is not None
    beat: datetime = row["beat"]
    return beat


async def unreachable(role: Role) -> Database:
    return await Database.open(
        f"mysql://app:pw@127.0.0.1:{free_port()}/gatehouse", role=role, pool_size=1, timeout=0.5
    )


async def test_each_beat_moves_the_heartbeat_to_the_primary_clock(primary: Database) -> None:
    writer = HeartbeatWriter(primary, INTERVAL)
    await writer.beat()
    first = await primary_beat(primary)
    before_second = await primary.server_time()
    await writer.beat()
    second = await primary_beat(primary)
    assert first < second
    assert second >= before_second
    assert writer.primary_reachable


async def test_the_heartbeat_never_goes_back_and_always_moves_on(primary: Database) -> None:
    await primary.execute(
        "future", "UPDATE replication_heartbeat SET beat = '2999-01-01 00:00:00' WHERE id = 1"
    )
    try:
        await HeartbeatWriter(primary, INTERVAL).beat()
        first = await primary_beat(primary)
        assert first > datetime(2999, 1, 1, tzinfo=UTC)
        assert await primary.server_time() > first  # a write's time is past the beats before it
        await HeartbeatWriter(primary, INTERVAL).beat()
        assert await primary_beat(primary) > first
    finally:
        await primary.execute(
            "repair", "UPDATE replication_heartbeat SET beat = NOW(6) WHERE id = 1"
        )


async def test_an_unreachable_primary_is_reported_not_raised() -> None:
    primary = await unreachable("primary")
    try:
        writer = HeartbeatWriter(primary, INTERVAL)
        await writer.beat()
        assert not writer.primary_reachable
    finally:
        await primary.close()


async def test_a_caught_up_replica_is_picked_for_writes_before_its_heartbeat(
    primary: Database, replica: Database, freshness: ReplicaFreshness, data_stores: DataStores
) -> None:
    write_time = await primary.server_time()
    await HeartbeatWriter(primary, INTERVAL).beat()
    await asyncio.to_thread(data_stores.replication.wait_caught_up)
    await freshness.poll()
    applied = freshness.applied_through(replica)
    assert applied is not None and applied >= write_time
    assert freshness.pick_reader(write_time) is replica
    lag = freshness.lag_seconds(replica)
    assert lag is not None and lag < 5.0
    gauge = REGISTRY.get_sample_value(
        "gatehouse_auth_replica_lag_seconds", {"replica": replica.address.label}
    )
    assert gauge is not None and gauge < 5.0


async def test_a_stalled_replica_is_not_picked_for_newer_writes(
    primary: Database,
    replica: Database,
    freshness: ReplicaFreshness,
    data_stores: DataStores,
    stop_sql_thread: Callable[[], Awaitable[None]],
) -> None:
    writer = HeartbeatWriter(primary, INTERVAL)
    await writer.beat()
    await asyncio.to_thread(data_stores.replication.wait_caught_up)
    await freshness.poll()
    old_write = freshness.applied_through(replica)
    assert old_write is not None

    await stop_sql_thread()
    new_write = await primary.server_time()
    await writer.beat()
    await asyncio.to_thread(data_stores.replication.wait_received)  # fetched, not applied
    await freshness.poll()
    applied = freshness.applied_through(replica)
    assert applied is not None and applied < new_write
    assert freshness.pick_reader(new_write) is primary
    assert freshness.pick_reader(old_write) is replica


async def test_an_unreachable_replica_is_never_picked_and_never_raises(primary: Database) -> None:
    replica = await unreachable("replica")
    try:
        freshness = ReplicaFreshness(primary, [replica], INTERVAL)
        await freshness.poll()
        assert freshness.applied_through(replica) is None
        assert freshness.pick_reader(LONG_AGO) is primary
        assert freshness.lag_seconds(replica) is None
    finally:
        await replica.close()


async def test_without_replicas_every_read_goes_to_the_primary(primary: Database) -> None:
    freshness = ReplicaFreshness(primary, [], INTERVAL)
    freshness.start()
    await freshness.poll()
    assert freshness.pick_reader(LONG_AGO) is primary
    await freshness.close()


async def test_the_background_loops_keep_the_replica_fresh(
    primary: Database,
    replica: Database,
    freshness: ReplicaFreshness,
    eventually: Callable[[Callable[[], Awaitable[bool]], str], Awaitable[None]],
) -> None:
    writer = HeartbeatWriter(primary, INTERVAL)
    writer.start()
    freshness.start()
    try:
        write_time = await primary.server_time()

        async def replica_covers_the_write() -> bool:
            return freshness.pick_reader(write_time) is replica

        await eventually(
            replica_covers_the_write, "the polled replica has applied a heartbeat after the write"
        )
        assert writer.primary_reachable
    finally:
        await writer.close()
        await freshness.close()


async def test_a_replica_whose_replication_stopped_is_logged_once_and_its_recovery_too(
    primary: Database,
    replica: Database,
    data_stores: DataStores,
    stop_sql_thread: Callable[[], Awaitable[None]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    writer = HeartbeatWriter(primary, INTERVAL)
    freshness = ReplicaFreshness(primary, [replica], INTERVAL, stalled_after=0.0)
    label = replica.address.label

    def lines(word: str) -> list[str]:
        return [r.getMessage() for r in caplog.records if word in r.getMessage()]

    with caplog.at_level(logging.INFO, logger=freshness_module.__name__):
        await writer.beat()
        await asyncio.to_thread(data_stores.replication.wait_caught_up)
        await freshness.poll()
        await stop_sql_thread()
        for _ in range(3):  # beats the replica fetches but does not apply
            await writer.beat()
            await asyncio.to_thread(data_stores.replication.wait_received)
            await freshness.poll()
        assert len(lines("has applied nothing")) == 1
        assert label in lines("has applied nothing")[0]
        await asyncio.to_thread(data_stores.replication.start_sql_thread)
        await asyncio.to_thread(data_stores.replication.wait_caught_up)
        await freshness.poll()
        assert len(lines("applies the primary's history again")) == 1


async def test_no_replica_counts_as_stalled_while_the_primary_is_down(
    primary_dsn: str, replica: Database, caplog: pytest.LogCaptureFixture
) -> None:
    health = PrimaryHealth()
    primary = await Database.open(
        primary_dsn, role="primary", pool_size=1, timeout=2.0, health=health
    )
    try:
        health.probe_failed("a heartbeat timed out")  # no beats are written meanwhile
        freshness = ReplicaFreshness(primary, [replica], INTERVAL, stalled_after=0.0)
        with caplog.at_level(logging.INFO, logger=freshness_module.__name__):
            for _ in range(3):
                await freshness.poll()
        assert [r for r in caplog.records if "has applied nothing" in r.getMessage()] == []
    finally:
        health.probe_succeeded()
        await primary.close()
