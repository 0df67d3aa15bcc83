"""Discovery records through a real etcd: register, watch, malformed records, outages."""

from __future__ import annotations

import asyncio
import uuid

from devstack.ports import wait_until_async
from services.foundation.discovery import ReplicaWatcher, ServiceRecord, registration


def record(instance_id: str, port: int = 7000) -> ServiceRecord:
    return ServiceRecord(instance_id, "127.0.0.1", port, 1, 1, "test", "2026-11-23T00:00:00Z")


def test_record_round_trip_and_validation() -> None:
    original = record("a-1")
    assert ServiceRecord.from_json("a-1", original.to_json()) == original
    for bad in (
        b"not json",
        b"[]",
        b'{"host":"h"}',
        b'{"host":"h","port":0,"protocol_min":1,"protocol_max":1}',
        b'{"host":"h","port":1,"protocol_min":2,"protocol_max":1}',
        b'{"host":"h","port":true,"protocol_min":1,"protocol_max":1}',
        b"[" * 100_000,  # past the JSON parser's recursion limit
        # Hosts no resolver takes: each made every call to the replica raise UnicodeError.
        b'{"host":".","port":1,"protocol_min":1,"protocol_max":1}',
        b'{"host":"' + b"a" * 64 + b'.example","port":1,"protocol_min":1,"protocol_max":1}',
        b'{"host":"\\udcff","port":1,"protocol_min":1,"protocol_max":1}',
        b'{"host":"x\\u0000y","port":1,"protocol_min":1,"protocol_max":1}',
        # Kept by every HTTP worker for each record seen: a megabyte each, at will.
        b'{"host":"h","port":1,"protocol_min":1,"protocol_max":1,"release":"' + b"r" * 201 + b'"}',
        b'{"host":"h","port":1,"protocol_min":1,"protocol_max":1,"started_at":"'
        + b"s" * 201
        + b'"}',
    ):
        try:
            ServiceRecord.from_json("x", bad)
        except ValueError:
            continue
        raise AssertionError(f"accepted malformed record {bad!r}")
    for host in (
        "10.0.0.7",
        "fd00::7",
        "fe80::1%eth0",
        "auth-0.auth.gatehouse.svc.cluster.local",
        "auth.gatehouse.svc.cluster.local.",  # a trailing dot: no search-domain expansion
        "gatehouse_auth_1",  # a Compose container name
    ):
        published = record("x").to_json().replace(b"127.0.0.1", host.encode())
        assert ServiceRecord.from_json("x", published).host == host
    for instance_id in ("", "x" * 254, "a b", "../x", "\u202eevil"):
        try:
            ServiceRecord.from_json(instance_id, original.to_json())
        except ValueError:
            continue
        raise AssertionError(f"accepted the instance id {instance_id!r}")


async def test_registration_is_seen_and_removed(data_stores) -> None:
    endpoints = data_stores.etcd_access()
    prefix = f"/test-{uuid.uuid4().hex}/auth/"
    seen: list[dict[str, ServiceRecord]] = []
    watcher = ReplicaWatcher(endpoints, prefix, seen.append)
    await watcher.start()
    key = registration(endpoints, prefix, record("replica-1"), ttl=5)
    await key.start()
    await wait_until_async(lambda: "replica-1" in watcher.records, 5.0, "the record to be watched")
    assert watcher.records["replica-1"] == record("replica-1")
    await key.stop()
    await wait_until_async(
        lambda: "replica-1" not in watcher.records, 5.0, "the record to disappear"
    )
    await watcher.stop()


async def test_a_record_deleted_or_replaced_under_a_live_lease_is_written_again(
    data_stores,
) -> None:
    """`etcdctl del` (or an `etcdctl put`) while the lease lives on: the record comes back at
    the next refresh, within a third of the TTL, not when the lease ends."""
    endpoints = data_stores.etcd_access()
    prefix = f"/test-{uuid.uuid4().hex}/auth/"
    watcher = ReplicaWatcher(endpoints, prefix, lambda _records: None)
    key = registration(endpoints, prefix, record("replica-1"), ttl=3)
    client = data_stores.etcd_client()
    try:
        await watcher.start()
        await key.start()
        await wait_until_async(lambda: "replica-1" in watcher.records, 5.0, "the registration")
        await client.delete(f"{prefix}replica-1".encode())
        await wait_until_async(lambda: "replica-1" not in watcher.records, 5.0, "the delete")
        await wait_until_async(
            lambda: watcher.records.get("replica-1") == record("replica-1"),
            5.0,
            "the deleted record to be written again",
        )
        await client.put(f"{prefix}replica-1".encode(), record("replica-1", port=7999).to_json())
        await wait_until_async(
            lambda: watcher.records.get("replica-1") == record("replica-1", port=7999),
            5.0,
            "the replacement",
        )
        await wait_until_async(
            lambda: watcher.records.get("replica-1") == record("replica-1"),
            5.0,
            "the replaced record to be written again",
        )
        assert key.held  # repaired under its lease: the replica never left discovery

        # Under another live lease (a second process with the same instance id): not swapped
        # back and forth between the two, and not counted as held, until that lease ends.
        other = await client.lease(30)
        await client.put(
            f"{prefix}replica-1".encode(), record("replica-1", port=7998).to_json(), lease=other.id
        )
        await wait_until_async(lambda: not key.held, 5.0, "the key to be found held by another")
        assert watcher.records.get("replica-1") == record("replica-1", port=7998)
        await client.revoke_lease(other.id)
        await wait_until_async(
            lambda: key.held and watcher.records.get("replica-1") == record("replica-1"),
            5.0,
            "the record to be written again once the other lease ended",
        )
    finally:
        await key.stop()
        await watcher.stop()
        await client.close()


async def test_malformed_records_are_skipped(data_stores, caplog) -> None:
    endpoints = data_stores.etcd_access()
    prefix = f"/test-{uuid.uuid4().hex}/auth/"
    malformed: list[int] = []
    watcher = ReplicaWatcher(endpoints, prefix, lambda records: None, malformed.append)
    await watcher.start()
    client = data_stores.etcd_client()
    await client.put(f"{prefix}broken".encode(), b"{not json")
    # A name that is not UTF-8, seen first as a watch event, then in every snapshot.
    await client.put(prefix.encode() + b"\xff\xfe", b"{not json")
    await client.put(f"{prefix}good".encode(), record("good").to_json())
    await wait_until_async(lambda: "good" in watcher.records, 5.0, "the good record")
    assert set(watcher.records) == {"good"}
    assert any("malformed discovery record" in r.getMessage() for r in caplog.records)
    # A flood of them, one change each, is not a line each.
    caplog.clear()
    for number in range(50):
        await client.put(f"{prefix}bad{number}".encode(), b"{not json")
    await client.put(f"{prefix}last".encode(), record("last").to_json())
    await wait_until_async(lambda: "last" in watcher.records, 5.0, "the record after the flood")
    logged = [r for r in caplog.records if "malformed discovery record" in r.getMessage()]
    assert len(logged) <= 1
    # Their count ("broken" and the 50) is told, those whose line was held back included.
    assert malformed[-1] == 1 + 50
    await client.delete_prefix(prefix.encode())
    await client.close()
    await watcher.stop()


async def test_watcher_keeps_last_set_while_etcd_is_down_and_resyncs(data_stores) -> None:
    endpoints = data_stores.etcd_access()
    prefix = f"/test-{uuid.uuid4().hex}/auth/"
    watcher = ReplicaWatcher(endpoints, prefix, lambda records: None)
    await watcher.start()
    key = registration(endpoints, prefix, record("survivor"), ttl=30)
    await key.start()
    await wait_until_async(lambda: "survivor" in watcher.records, 5.0, "the record to be watched")
    await asyncio.to_thread(data_stores.etcd.stop)
    try:
        await wait_until_async(
            lambda: not key.held, 15.0, "the lease keeper to notice etcd is gone"
        )
        assert "survivor" in watcher.records  # last known set kept
    finally:
        await asyncio.to_thread(data_stores.etcd.start)
    late = registration(endpoints, prefix, record("late"), ttl=30)
    await late.start()
    await wait_until_async(
        lambda: "late" in watcher.records and key.held, 20.0, "watch and lease to recover"
    )
    await late.stop()
    await key.stop()
    await watcher.stop()
