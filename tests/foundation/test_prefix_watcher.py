"""The prefix watch against a real etcd: every change of a transaction is reported, not only its
first (one transaction's events share one revision); and it syncs over a link on which each
connection's first bytes are slow; a member that loses its leader ends the watch; an etcd
that lost its data is watched as it is now, with the entries held before kept for a grace
(paused while etcd is away), and a read in flight across the loss does not roll it back."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import aetcd
import pytest

from devstack import DataStores
from devstack.etcd import Etcd
from devstack.ports import HOST, free_port, wait_until, wait_until_async
from services.foundation.etcd import PrefixWatcher, connect, parse_endpoint
from services.foundation.etcd_access import EtcdAccess
from tests.auth.tcp_proxy import TcpProxy
from tests.loop_time import past

GRACE = 4.0


async def test_every_key_a_transaction_puts_or_deletes_reaches_the_watcher(
    data_stores: DataStores,
) -> None:
    prefix = f"/test-{uuid.uuid4().hex}/keys/"
    reported: list[dict[str, bytes]] = []
    watcher = PrefixWatcher(data_stores.etcd_access(), prefix, reported.append)
    client = data_stores.etcd_client()
    try:
        await watcher.start()
        await wait_until_async(watcher.synced.is_set, 5.0, "the watch to read the prefix")
        puts = [client.transactions.put(f"{prefix}{name}".encode(), b"v") for name in "ab"]
        await client.transaction(compare=[], success=puts, failure=[])
        await wait_until_async(
            lambda: watcher.values == {"a": b"v", "b": b"v"}, 5.0, "both puts to be watched"
        )

        # A key withdrawn under both of its names (services.auth.signing.etcd_records.withdraw).
        deletes = [client.transactions.delete(f"{prefix}{name}".encode()) for name in "ab"]
        await client.transaction(compare=[], success=deletes, failure=[])
        await wait_until_async(lambda: watcher.values == {}, 5.0, "both deletes to be watched")
        assert reported[-1] == {}
    finally:
        await watcher.stop()
        await client.close()


async def test_the_watch_syncs_when_each_connection_is_answered_late(
    data_stores: DataStores,
) -> None:
    """etcd's first bytes on each connection (here the TLS server hello) arrive 1.2 s late.

    gRPC core also takes `grpc.min_reconnect_backoff_ms` as the shortest connect timeout
    (20 s by default): at 200 ms every attempt gave up within about a second, and the watch
    never synced, connecting again and again."""
    proxy = await TcpProxy.start(*parse_endpoint(data_stores.etcd_endpoint), first_reply_delay=1.2)
    access = dataclasses.replace(data_stores.etcd_access(), endpoints=(f"{HOST}:{proxy.port}",))
    watcher = PrefixWatcher(access, f"/test-{uuid.uuid4().hex}/keys/", lambda _values: None)
    try:
        await watcher.start()
        await wait_until_async(watcher.synced.is_set, 10.0, "the watch to sync through the proxy")
        assert proxy.connections <= 2, f"{proxy.connections} connections to sync"
    finally:
        await watcher.stop()
        await proxy.close()


@pytest.fixture
def three_members(tmp_path: Path) -> Iterator[list[Etcd]]:
    """A three-member etcd cluster of its own (plaintext, no users)."""
    names = ("m0", "m1", "m2")
    peer_ports = {name: free_port() for name in names}
    cluster = ",".join(f"{name}=http://{HOST}:{peer_ports[name]}" for name in names)
    members = [
        Etcd(
            tmp_path / name,
            name=f"etcd-{name}",
            member=name,
            peer_port=peer_ports[name],
            initial_cluster=cluster,
        )
        for name in names
    ]
    try:
        for member in members:
            member.launch()
        for member in members:
            wait_until(member.healthy, 30.0, f"{member.name} to join a healthy cluster")
        yield members
    finally:
        for member in members:
            member.process.resume()  # a paused member takes its SIGTERM only once resumed
            member.stop()


async def test_a_member_that_loses_its_leader_ends_the_watch(
    three_members: list[Etcd], caplog: pytest.LogCaptureFixture
) -> None:
    """Two of three members hang: the third, cut off from any quorum, loses its leader but
    keeps its clients' streams open and answers their keepalives. Without require-leader a
    watch on it stays open and delivers nothing for as long as that lasts (a partitioned
    member, to the HTTP tier: a stale replica set and key set for ever); with it, that member
    ends the watch within a few election timeouts (500 ms here) and the watcher tries
    another member."""
    kept, *hung = reversed(three_members)
    access = EtcdAccess(endpoints=tuple(member.endpoint for member in (kept, *hung)))
    prefix = f"/test-{uuid.uuid4().hex}/keys/"
    watcher = PrefixWatcher(access, prefix, lambda _values: None)
    caplog.set_level(
        logging.DEBUG, logger="services.foundation.etcd"
    )  # a retry may be a debug line
    try:
        await watcher.start()
        await wait_until_async(watcher.synced.is_set, 10.0, "the watch to read the prefix")
        caplog.clear()
        for member in hung:
            member.process.pause()
        await wait_until_async(
            lambda: any(
                f"watch of {prefix} interrupted" in record.getMessage() for record in caplog.records
            ),
            10.0,
            f"the watch on {kept.name} to end once it has no leader",
        )
    finally:
        await watcher.stop()


async def test_an_etcd_that_lost_its_data_is_watched_as_it_is_now(tmp_path: Path) -> None:
    """etcd emptied and started afresh counts its revisions from 1 again. The watcher kept
    the set it had, as of a revision the new history would take that many changes to reach,
    and ignored every newer one until then: the HTTP tier with stale replicas and keys."""
    etcd = Etcd(tmp_path / "etcd", name="etcd-wiped")
    etcd.start()
    access = EtcdAccess(endpoints=(etcd.endpoint,))
    prefix = "/gatehouse/keys/"
    watcher = PrefixWatcher(access, prefix, lambda _values: None)
    client = connect(access, 0)
    try:
        await watcher.start()
        for version in range(20):  # history the new one will not reach soon
            await client.put(f"{prefix}old".encode(), str(version).encode())
        await wait_until_async(
            lambda: watcher.values == {"old": b"19"}, 10.0, "the old history to be watched"
        )
        await client.close()
        etcd.restart_emptied()
        client = connect(access, 0)
        await client.put(f"{prefix}new".encode(), b"v")
        await wait_until_async(
            lambda: watcher.values == {"new": b"v"}, 20.0, "the emptied etcd's keys to be watched"
        )
    finally:
        await watcher.stop()
        await client.close()
        etcd.stop()


async def test_after_a_data_loss_the_earlier_entries_stay_for_the_grace_unless_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With a reset grace the entries of the lost history are still reported until the new
    history writes their names (its value then, and a delete after), or the grace ends: an
    emptied etcd no longer drops every signing key at once until the auth replicas publish
    again. The grace counts only the time the watch works: nobody can publish while etcd is
    out of reach."""
    caplog.set_level(logging.DEBUG, logger="services.foundation.etcd")
    etcd = Etcd(tmp_path / "etcd", name="etcd-wiped")
    etcd.start()
    access = EtcdAccess(endpoints=(etcd.endpoint,))
    prefix = "/gatehouse/keys/"
    reports: list[dict[str, bytes]] = []
    watcher = PrefixWatcher(access, prefix, reports.append, reset_grace=GRACE)
    client = connect(access, 0)
    try:
        await watcher.start()
        for version in range(20):  # history the new one will not reach soon
            await client.put(f"{prefix}kept".encode(), str(version).encode())
        for name in ("rewritten", "deleted"):
            await client.put(f"{prefix}{name}".encode(), b"old")
        before = {"kept": b"19", "rewritten": b"old", "deleted": b"old"}
        await wait_until_async(
            lambda: watcher.values == before, 10.0, "the old history to be watched"
        )
        await client.close()
        etcd.restart_emptied()
        client = connect(access, 0)
        await client.put(f"{prefix}rewritten".encode(), b"again")
        await client.put(f"{prefix}new".encode(), b"v")
        during = {"kept": b"19", "rewritten": b"again", "deleted": b"old", "new": b"v"}
        await wait_until_async(
            lambda: watcher.values == during, 20.0, "the new history beside the held-over entries"
        )
        # A held-over name the new history writes and deletes is gone at once, grace or not.
        await client.put(f"{prefix}deleted".encode(), b"again")
        await client.delete(f"{prefix}deleted".encode())
        del during["deleted"]
        await wait_until_async(
            lambda: watcher.values == during, 5.0, "the deleted entry to leave at once"
        )

        def interruptions() -> int:
            return sum("interrupted" in record.getMessage() for record in caplog.records)

        seen = interruptions()
        await client.close()
        etcd.stop()
        await wait_until_async(lambda: interruptions() > seen, 10.0, "the watch to see etcd gone")
        await past(GRACE)  # past the grace's end, had the outage not paused it
        assert watcher.values == during
        etcd.start()
        client = connect(access, 0)
        after = {"rewritten": b"again", "new": b"v"}
        await wait_until_async(
            lambda: watcher.values == after, 20.0, "the held-over entry to leave after the grace"
        )
        first_without_kept = next(n for n, values in enumerate(reports) if "kept" not in values)
        assert reports[first_without_kept:] == [after], reports  # held until the grace ended
    finally:
        await watcher.stop()
        await client.close()
        etcd.stop()


class HeldAnswers:
    """A real etcd client whose prefix reads return only once the test releases them: a read
    answered by etcd before it lost its data, and handled after."""

    def __init__(self, client: aetcd.Client) -> None:
        self._client = client
        self.answered = asyncio.Event()
        self.release = asyncio.Event()

    async def get_prefix(self, prefix: bytes) -> object:
        snapshot = await self._client.get_prefix(prefix)
        self.answered.set()
        await self.release.wait()
        return snapshot

    async def close(self) -> None:
        await self._client.close()


async def test_a_read_answered_before_the_loss_does_not_roll_the_new_history_back(
    tmp_path: Path,
) -> None:
    """A reread in flight across the loss comes back with the lost history's higher revision
    after the watch took the new one. Taken, it brought back an entry the new history had
    deleted, and the watch then skipped every change until the new history passed that
    revision."""
    etcd = Etcd(tmp_path / "etcd", name="etcd-wiped")
    etcd.start()
    access = EtcdAccess(endpoints=(etcd.endpoint,))
    prefix = "/gatehouse/keys/"
    watcher = PrefixWatcher(access, prefix, lambda _values: None, reset_grace=60.0)
    client = connect(access, 0)
    try:
        await watcher.start()
        for version in range(20):  # history the new one will not reach soon
            await client.put(f"{prefix}deleted".encode(), str(version).encode())
        await client.put(f"{prefix}kept".encode(), b"old")
        before = {"deleted": b"19", "kept": b"old"}
        await wait_until_async(
            lambda: watcher.values == before, 10.0, "the old history to be watched"
        )
        held = HeldAnswers(connect(access, 0))
        watcher._reread_client = held  # the reread's connection, its answers held
        reread = asyncio.create_task(watcher.reread())
        await asyncio.wait_for(held.answered.wait(), 10.0)

        await client.close()
        etcd.restart_emptied()
        client = connect(access, 0)
        await client.put(f"{prefix}new".encode(), b"v")
        await wait_until_async(
            lambda: "new" in watcher.values, 20.0, "the new history to be watched"
        )
        await client.put(f"{prefix}deleted".encode(), b"again")
        await client.delete(f"{prefix}deleted".encode())
        now = {"kept": b"old", "new": b"v"}  # "kept" held over
        await wait_until_async(
            lambda: watcher.values == now, 10.0, "the new history's delete to be watched"
        )
        held.release.set()
        assert await reread is False
        assert watcher.values == now

        await client.put(f"{prefix}later".encode(), b"w")
        await wait_until_async(
            lambda: watcher.values == {**now, "later": b"w"},
            10.0,
            "a later change of the new history to be watched",
        )
    finally:
        await watcher.stop()
        await client.close()
        etcd.stop()
