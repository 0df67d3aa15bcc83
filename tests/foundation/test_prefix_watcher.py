"""The prefix watch against a real etcd: every change of a transaction is reported, not only its
first (one transaction's events share one revision); and it syncs over a link on which each
connection's first bytes are slow."""

from __future__ import annotations

import dataclasses
import uuid

from devstack import DataStores
from devstack.ports import HOST, wait_until_async
from services.foundation.etcd import PrefixWatcher, parse_endpoint
from tests.auth.tcp_proxy import TcpProxy


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
