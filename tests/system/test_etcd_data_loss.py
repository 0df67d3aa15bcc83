"""etcd losing its data under a running stack, as its own processes see it: emptied, then
bootstrapped again (the chart's Job), while a client reads with its token."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from devstack.gatehouse import DEFAULT_JWT_KEYS_PREFIX, Gatehouse, Service
from devstack.ports import HOST, wait_until_async
from devstack.stack import DataStores
from services.foundation.etcd import parse_endpoint
from tests.auth.tcp_proxy import TcpProxy
from tests.system.conftest import TEST_SETTINGS
from tests.system.support import bearer, current_samples, sample_sum, signed_up_token

HELD_OVER = "gatehouse_http_jwt_keys_held_over"
READ_PAUSE = 0.02  # paces the reader: about 50 reads a second
READ_LIMIT_SECONDS = 90.0


@dataclass
class LossStack:
    system: Gatehouse
    http: Service
    # Between the auth replicas and etcd: cut, it keeps them from publishing their keys again
    # before the HTTP process has seen the emptied etcd (their sync could come first).
    auth_link: TcpProxy


@pytest.fixture
async def loss_stack(tmp_path: Path) -> AsyncIterator[LossStack]:
    """Data stores of its own (etcd as the chart runs it, auth on), two auth replicas and one
    HTTP process: the test empties etcd, which the session's stack shares."""
    stores = await asyncio.to_thread(DataStores.start, tmp_path / "stores", etcd_auth=True)
    system = Gatehouse(stores, tmp_path / "gatehouse", settings=dict(TEST_SETTINGS))
    auth_link = await TcpProxy.start(*parse_endpoint(stores.etcd_endpoint))
    try:
        via_link = {"GATEHOUSE_ETCD_ENDPOINTS": f"{HOST}:{auth_link.port}"}
        started = [system.start_auth(via_link, wait=False) for _ in range(2)]
        started.append(system.start_http(wait=False))
        for service in started:
            await asyncio.to_thread(service.wait_ready)
        yield LossStack(system, system.http[0], auth_link)
    finally:
        await asyncio.to_thread(system.stop)
        await auth_link.close()
        await asyncio.to_thread(stores.stop)


@pytest.mark.slow
async def test_tokens_keep_working_while_an_emptied_etcd_is_bootstrapped_again(
    loss_stack: LossStack,
) -> None:
    """The emptied etcd holds no published key until each auth replica's next key sync. The
    HTTP process took it as it is and dropped every key: every token was refused (401), and
    the process reported itself unready, until then. It now keeps the keys it held until they
    are published again."""
    stores = loss_stack.system.stores
    assert stores.etcd_security is not None
    statuses: Counter[int] = Counter()
    done = asyncio.Event()

    def held_over() -> float:
        return sample_sum(current_samples(loss_stack.http), HELD_OVER)

    def http_saw_the_loss() -> bool:
        log = loss_stack.http.process.log_path.read_text(errors="replace")
        return any(
            "etcd's revision went back" in line and DEFAULT_JWT_KEYS_PREFIX in line
            for line in log.splitlines()
        )

    async def published_again() -> bool:
        etcd = stores.etcd_client()
        try:
            return bool(list(await etcd.get_prefix(DEFAULT_JWT_KEYS_PREFIX.encode())))
        finally:
            await etcd.close()

    url = loss_stack.system.url()
    async with httpx.AsyncClient(base_url=url, timeout=10.0, trust_env=False) as client:
        username, token = await signed_up_token(client)

        async def read_until_done() -> None:
            deadline = time.monotonic() + READ_LIMIT_SECONDS
            while not done.is_set() and time.monotonic() < deadline:
                response = await client.get("/api/v1/me", headers=bearer(token))
                statuses[response.status_code] += 1
                # Paced by the wait for the end, with the pause as its deadline.
                with suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), READ_PAUSE)

        reader = asyncio.create_task(read_until_done())
        try:
            loss_stack.auth_link.cut()
            await asyncio.to_thread(stores.etcd.restart_emptied)
            await asyncio.to_thread(stores.etcd_security.bootstrap)
            await wait_until_async(
                http_saw_the_loss,
                30.0,
                "the HTTP process to take the emptied etcd",
                where=loss_stack.http.process.log_path,
            )
            held_at_the_loss = held_over()
            loss_stack.auth_link.restore()
            await wait_until_async(published_again, 60.0, "the keys to be published again")
            await wait_until_async(
                lambda: held_over() == 0, 10.0, "the HTTP process to take the published keys"
            )
        finally:
            done.set()
            await reader
        login = await client.post(
            "/api/v1/sessions", json={"username": username, "password": "password1"}
        )
    assert set(statuses) == {200}, statuses
    assert sum(statuses.values()) > 10, statuses
    assert held_at_the_loss >= 1
    assert login.status_code == 200, login.text
