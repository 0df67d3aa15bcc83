"""Children devstack starts while this process's etcd client (gRPC) is busy start reliably."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from devstack import DataStores
from devstack.ports import wait_until_async
from devstack.process import ManagedProcess

CHILDREN = 200


def exited(child: ManagedProcess) -> Callable[[], bool]:
    return lambda: child.returncode is not None


async def test_children_start_while_the_etcd_client_is_busy(
    data_stores: DataStores, tmp_path: Path
) -> None:
    client = data_stores.etcd_client()
    busy = True

    async def keep_busy() -> None:
        while busy:
            await client.get(b"/spawn-test")

    callers = [asyncio.create_task(keep_busy()) for _ in range(4)]
    exits: list[int | None] = []
    try:
        for number in range(CHILDREN):
            child = ManagedProcess(f"true-{number}", ["/bin/true"], tmp_path / "true.log")
            await asyncio.to_thread(child.start)
            await wait_until_async(exited(child), 5.0, f"{child.name} to exit")
            exits.append(child.returncode)
    finally:
        busy = False
        await asyncio.gather(*callers, return_exceptions=True)
        await client.close()
    failed = [code for code in exits if code != 0]
    assert failed == [], f"{len(failed)} of {CHILDREN} children died before exec: {failed[:5]}"
