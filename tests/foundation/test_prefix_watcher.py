"""The prefix watch against a real etcd: every change of a transaction is reported, not only its
first (one transaction's events share one revision)."""

from __future__ import annotations

import uuid

from devstack import DataStores
from devstack.ports import wait_until_async
from services.foundation.etcd import PrefixWatcher


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
