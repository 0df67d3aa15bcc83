"""Readiness as real processes see it: an HTTP process is ready only with the signing keys and a
connected replica and never refuses a good token for want of its key; made-up key ids cost etcd
at most one read per second per worker; an auth replica registers once it can serve."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import aetcd
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from devstack.gatehouse import Gatehouse, Service
from devstack.ports import HOST, wait_until_async
from devstack.stack import DataStores
from services.auth.snowflake import WORKER_ID_COUNT
from services.foundation.etcd import parse_endpoint
from tests.auth.tcp_proxy import TcpProxy
from tests.system.conftest import TEST_SETTINGS
from tests.system.support import bearer, current_samples, new_username, sample_sum

HTTP_WORKERS = int(TEST_SETTINGS["GATEHOUSE_HTTP_WORKERS"])
REFRESHES = "gatehouse_http_jwt_key_refreshes_total"
# etcd's default --max-txn-ops
ETCD_TXN_OPS = 128


async def valid_token(client: httpx.AsyncClient) -> str:
    body = {"username": new_username(), "password": "password1"}
    assert (await client.post("/api/v1/users", json=body)).status_code == 201
    login = await client.post("/api/v1/sessions", json=body)
    assert login.status_code == 200, login.text
    token: str = login.json()["token"]
    return token


async def readyz(client: httpx.AsyncClient, url: str) -> tuple[int, str]:
    """Status and not-ready message of `url`; (0, "") while nothing answers."""
    try:
        response = await client.get(url)
    except httpx.TransportError:
        return 0, ""
    if response.status_code != 503:
        return response.status_code, ""
    return 503, str(response.json()["error"]["message"])


async def beating_workers(client: httpx.AsyncClient, ops: str) -> list[dict[str, object]]:
    """The workers the ops port lists from their heartbeats; [] while nothing answers."""
    try:
        response = await client.get(f"{ops}/workers")
    except httpx.TransportError:
        return []
    workers: list[dict[str, object]] = response.json()["workers"]
    return workers


@pytest.fixture
async def etcd(data_stores: DataStores) -> AsyncIterator[aetcd.Client]:
    client = data_stores.etcd_client()
    yield client
    await client.close()


@pytest.mark.slow
async def test_an_http_process_is_ready_only_with_keys_and_a_replica_and_refuses_no_good_token(
    gatehouse: Gatehouse, data_stores: DataStores, clients: list[httpx.AsyncClient]
) -> None:
    token = await valid_token(clients[0])
    etcd_host, etcd_port = parse_endpoint(data_stores.etcd_endpoint)
    proxy = await TcpProxy.start(etcd_host, etcd_port)
    proxy.cut()  # the new process starts with etcd out of reach: no keys, no replicas
    service = await asyncio.to_thread(
        gatehouse.start_http, {"GATEHOUSE_ETCD_ENDPOINTS": f"{HOST}:{proxy.port}"}, wait=False
    )
    base = f"http://{HOST}:{service.ports['http']}"
    ops = f"http://{HOST}:{service.ports['ops']}"
    ops_readyz = f"{ops}/readyz"
    statuses: Counter[int] = Counter()
    after_ready: Counter[int] = Counter()
    ready = asyncio.Event()
    stop = asyncio.Event()

    async def read_loop(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            # Whether the read is sent after the process said ready: one sent before may be
            # answered 503 by a worker not ready yet and only be read after ready.set().
            sent_after_ready = ready.is_set()
            try:
                response = await client.get("/api/v1/me", headers=bearer(token))
            except httpx.TransportError:
                await asyncio.sleep(0.01)  # not listening yet: pace the reconnects
                continue
            statuses[response.status_code] += 1
            if sent_after_ready:
                after_ready[response.status_code] += 1

    async with httpx.AsyncClient(base_url=base, timeout=15.0, trust_env=False) as client:
        readers = [asyncio.create_task(read_loop(client)) for _ in range(4)]
        try:
            # Every worker takes a share of the connections, none ready yet; once etcd
            # is back, each reconnects after its own (jittered) backoff.
            async def all_workers_beat() -> bool:
                return len(await beating_workers(client, ops)) == HTTP_WORKERS

            # Generous: the process starts its fork server and workers, and each worker's
            # lifespan waits GATEHOUSE_CALL_TIMEOUT (10 s) for etcd before it beats; on a busy
            # 2-core machine (load 20) the workers were spawned only 20 s after the launch.
            await wait_until_async(
                all_workers_beat,
                60.0,
                f"the new HTTP process's {HTTP_WORKERS} workers to report their readiness",
                where=service.process.log_path,
            )
            status, why = await readyz(client, ops_readyz)
            assert status == 503
            assert "signing keys are not loaded" in why, why
            assert "no auth replica is registered" in why, why
            await wait_until_async(
                lambda: sum(statuses.values()) >= 4, 30.0, "reads answered before readiness"
            )
            assert statuses[200] == 0
            proxy.restore()

            async def is_ready() -> bool:
                return (await readyz(client, ops_readyz))[0] == 200

            await wait_until_async(is_ready, 30.0, "readiness", where=service.process.log_path)
            ready.set()
            # Ready means every worker is: each one answers its share of the clients.
            workers = await beating_workers(client, ops)
            assert [worker["ready"] for worker in workers] == [True] * HTTP_WORKERS, workers
            await wait_until_async(
                lambda: after_ready.total() >= 100, 30.0, "100 reads after readiness"
            )
        finally:
            stop.set()
            await asyncio.gather(*readers)
            await asyncio.to_thread(service.process.stop)
            gatehouse.http.remove(service)
            await proxy.close()
    assert statuses[401] == 0, f"good tokens refused: {dict(statuses)}"
    assert set(after_ready) == {200}, dict(after_ready)
    assert statuses[503] > 0  # before readiness: "not ready", never "log in again"


@pytest.mark.slow
async def test_a_flood_of_made_up_key_ids_reads_etcd_at_most_once_a_second_per_worker(
    gatehouse: Gatehouse, clients: list[httpx.AsyncClient]
) -> None:
    service = gatehouse.http[0]
    forger = Ed25519PrivateKey.generate()
    before = sample_sum(current_samples(service), REFRESHES)
    answers: Counter[int] = Counter()
    duration = 2.0

    async def flood() -> None:
        deadline = time.monotonic() + duration
        while time.monotonic() < deadline:
            now = int(time.time())
            claims = {"sub": "42", "sid": "s", "iat": now, "exp": now + 60}
            forged = jwt.encode(
                claims, forger, algorithm="EdDSA", headers={"kid": uuid.uuid4().hex}
            )
            response = await clients[0].get("/api/v1/me", headers=bearer(forged))
            answers[response.status_code] += 1

    started = time.monotonic()
    await asyncio.gather(*(flood() for _ in range(8)))
    elapsed = time.monotonic() - started
    reads = sample_sum(current_samples(service), REFRESHES) - before
    assert set(answers) == {401}, dict(answers)
    assert answers[401] >= 100
    assert 1 <= reads <= HTTP_WORKERS * (math.ceil(elapsed) + 1), (reads, dict(answers))


async def fill_worker_ids(etcd: aetcd.Client, prefix: str) -> None:
    for first in range(0, WORKER_ID_COUNT, ETCD_TXN_OPS):
        await etcd.transaction(
            compare=[],
            success=[
                etcd.transactions.put(f"{prefix}{worker_id}".encode(), b"taken-by-the-test")
                for worker_id in range(first, min(first + ETCD_TXN_OPS, WORKER_ID_COUNT))
            ],
            failure=[],
        )


def log_count(service: Service, text: str) -> int:
    return service.process.log_path.read_text(errors="replace").count(text)


@pytest.mark.slow
async def test_an_auth_replica_registers_without_a_worker_id_once_its_key_is_published(
    gatehouse: Gatehouse, etcd: aetcd.Client
) -> None:
    """Signups take ids from the primary's blocks without a worker id, so a replica that
    cannot claim one (all taken here) still registers, after its key, and claims one later."""
    namespace = f"/test-registration-{uuid.uuid4().hex}/"
    worker_ids, discovery, jwt_keys = (
        f"{namespace}worker-ids/",
        f"{namespace}services/auth/",
        f"{namespace}jwt-keys/",
    )
    await fill_worker_ids(etcd, worker_ids)  # no worker id is free
    replica = await asyncio.to_thread(
        gatehouse.start_auth,
        {
            "GATEHOUSE_WORKER_ID_PREFIX": worker_ids,
            "GATEHOUSE_DISCOVERY_PREFIX": discovery,
            "GATEHOUSE_JWT_KEYS_PREFIX": jwt_keys,
        },
        wait=False,
    )
    try:

        async def registered() -> bool:
            return bool(list(await etcd.get_prefix(discovery.encode())))

        await wait_until_async(
            registered, 30.0, "the replica to register", where=replica.process.log_path
        )
        assert log_count(replica, "no etcd worker id after") == 1
        record = await etcd.get(f"{discovery}{replica.name}".encode())
        keys = list(await etcd.get_prefix(jwt_keys.encode()))
        assert record is not None and len(keys) == 1
        assert keys[0].mod_revision < record.create_revision
        await etcd.delete(f"{worker_ids}7".encode())

        async def claimed() -> bool:
            claim = await etcd.get(f"{worker_ids}7".encode())
            return claim is not None and claim.value == replica.name.encode()

        await wait_until_async(
            claimed,
            30.0,
            "the replica to claim the freed worker id",
            where=replica.process.log_path,
        )
    finally:
        await asyncio.to_thread(replica.process.stop)
        gatehouse.auth.remove(replica)
        await etcd.delete_prefix(namespace.encode())
