"""The system under faults: a lagging replica, dead or draining auth replicas, Redis outages."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from devstack.gatehouse import Gatehouse, Service
from devstack.ports import wait_until_async
from devstack.stack import DataStores
from services.auth.snowflake import DATABASE_WORKER_ID, decode_id
from services.foundation.metrics import FLUSH_SECONDS, RENDER_INTERVAL_SECONDS
from tests.system.conftest import TEST_SETTINGS
from tests.system.support import (
    bearer,
    current_samples,
    known_replicas_per_worker,
    new_username,
    sample_sum,
    scrape,
    signed_up_token,
)

LEASE_TTL = float(TEST_SETTINGS["GATEHOUSE_LEASE_TTL"])


def profile_reads_served(auth: Service) -> float:
    samples = scrape(f"http://127.0.0.1:{auth.ports['ops']}/metrics")
    return sample_sum(
        samples, "gatehouse_auth_rpc_handler_seconds_count", method="get_profile", status="OK"
    )


async def wait_every_http_worker_knows(gatehouse: Gatehouse, count: int, timeout: float) -> None:
    def all_agree() -> bool:
        for index in range(len(gatehouse.http)):
            per_worker = known_replicas_per_worker(gatehouse.url(index))
            if not per_worker or any(known != count for known in per_worker):
                return False
        return True

    await wait_until_async(
        lambda: asyncio.to_thread(all_agree),
        timeout,
        f"every HTTP worker knows {count} auth replicas",
    )


@pytest.mark.slow
async def test_read_your_writes_with_the_replica_stopped(
    redis_restored: None,
    gatehouse: Gatehouse,
    data_stores: DataStores,
    clients: list[httpx.AsyncClient],
) -> None:
    served_before = [profile_reads_served(auth) for auth in gatehouse.auth[:2]]
    await asyncio.to_thread(data_stores.replication.stop_sql_thread)
    try:
        for redis_up in (True, False):
            if not redis_up:
                await asyncio.to_thread(data_stores.redis.stop)
            _username, token = await signed_up_token(clients[0])
            # Without Redis a profile change raises the write floor, which the stopped replica
            # cannot apply: it is committed but answered 503 after the confirm timeout (as a
            # logout then is), so fewer rounds; read-your-writes must hold either way.
            for round_number in range(12 if redis_up else 3):
                client = clients[round_number % 2]
                me = await client.get("/api/v1/me", headers=bearer(token))
                assert me.status_code == 200, me.text
                nickname = f"n{round_number}-{redis_up}"
                patched = await client.patch(
                    "/api/v1/me", headers=bearer(token), json={"nickname": nickname}
                )
                if redis_up:
                    assert patched.status_code == 200, patched.text
                else:
                    assert patched.status_code == 503, patched.text
                    assert "Retry-After" in patched.headers
                seen = await clients[(round_number + 1) % 2].get(
                    "/api/v1/me", headers=bearer(token)
                )
                assert seen.json()["nickname"] == nickname, "a read missed the user's own write"
    finally:
        await asyncio.to_thread(data_stores.redis.start)
        await asyncio.to_thread(data_stores.replication.start_sql_thread)

    # /metrics is a copy up to a second old: wait for it to show the reads.
    def both_served() -> bool:
        served_after = [profile_reads_served(auth) for auth in gatehouse.auth[:2]]
        return all(
            after > before for before, after in zip(served_before, served_after, strict=True)
        )

    await wait_until_async(
        lambda: asyncio.to_thread(both_served), 5.0, "both auth replicas served profile reads"
    )


@pytest.mark.slow
async def test_kill_9_of_an_auth_replica_loses_no_read(
    gatehouse: Gatehouse, clients: list[httpx.AsyncClient]
) -> None:
    _, token = await signed_up_token(clients[0])
    victim = await asyncio.to_thread(gatehouse.start_auth)
    await wait_every_http_worker_knows(gatehouse, 3, 10.0)
    failures: list[str] = []
    stop = asyncio.Event()

    served = {"reads": 0}

    async def read_loop(client: httpx.AsyncClient) -> int:
        reads = 0
        while not stop.is_set():
            response = await client.get("/api/v1/me", headers=bearer(token))
            reads += 1
            served["reads"] += 1
            if response.status_code != 200:
                failures.append(f"{response.status_code} {response.text}")
        return reads

    readers = [asyncio.create_task(read_loop(clients[i % 2])) for i in range(8)]
    try:
        await wait_until_async(
            lambda: profile_reads_served(victim) > 20, 10.0, "the new replica serves reads"
        )
        killed_at = time.monotonic()
        await asyncio.to_thread(victim.process.kill)
        await wait_every_http_worker_knows(gatehouse, 2, LEASE_TTL + 2)
        noticed_after = time.monotonic() - killed_at
        after_change = served["reads"] + 50
        await wait_until_async(
            lambda: served["reads"] >= after_change, 10.0, "50 more reads after the change"
        )
    finally:
        stop.set()
        reads = sum(await asyncio.gather(*readers))
        gatehouse.auth.remove(victim)
    assert failures == [], f"{len(failures)} of {reads} reads failed: {failures[:3]}"
    assert noticed_after <= LEASE_TTL + 2
    assert reads > 50


@pytest.mark.slow
async def test_sigterm_of_an_auth_replica_fails_no_call(
    gatehouse: Gatehouse, clients: list[httpx.AsyncClient]
) -> None:
    _, token = await signed_up_token(clients[0])
    leaving = await asyncio.to_thread(gatehouse.start_auth)
    await wait_every_http_worker_knows(gatehouse, 3, 10.0)
    failures: list[str] = []
    stop = asyncio.Event()
    counts = {"reads": 0, "signups": 0}

    async def read_loop(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            response = await client.get("/api/v1/me", headers=bearer(token))
            counts["reads"] += 1
            if response.status_code != 200:
                failures.append(f"read {response.status_code} {response.text}")

    async def signup_loop(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            response = await client.post(
                "/api/v1/users", json={"username": new_username("t"), "password": "password1"}
            )
            counts["signups"] += 1
            if response.status_code != 201:
                failures.append(f"signup {response.status_code} {response.text}")

    workers = [asyncio.create_task(read_loop(clients[i % 2])) for i in range(6)]
    workers += [asyncio.create_task(signup_loop(clients[i % 2])) for i in range(2)]
    try:
        await wait_until_async(
            lambda: profile_reads_served(leaving) > 20, 10.0, "the new replica serves reads"
        )
        leaving.terminate()
        await wait_until_async(
            lambda: not leaving.process.alive, 20.0, "the replica exits after draining"
        )
        await wait_every_http_worker_knows(gatehouse, 2, 5.0)
        reads_after, signups_after = counts["reads"] + 30, counts["signups"] + 2
        await wait_until_async(
            lambda: counts["reads"] >= reads_after and counts["signups"] >= signups_after,
            10.0,
            "more reads and signups after the replica is gone",
        )
    finally:
        stop.set()
        await asyncio.gather(*workers)
        gatehouse.auth.remove(leaving)
    assert leaving.process.returncode == 0, leaving.process.tail()
    assert failures == [], f"{len(failures)} failed calls (of {counts}): {failures[:3]}"
    assert counts["reads"] > 50 and counts["signups"] > 5


@pytest.mark.slow
async def test_redis_outage_keeps_logins_and_reads_and_never_revives_a_logout(
    redis_restored: None, data_stores: DataStores, clients: list[httpx.AsyncClient]
) -> None:
    client = clients[0]
    _, cached_token = await signed_up_token(client)
    assert (
        await client.get("/api/v1/me", headers=bearer(cached_token))
    ).status_code == 200  # now cached
    await asyncio.to_thread(data_stores.redis.stop)
    try:
        username, token = await signed_up_token(client)
        me = await clients[1].get("/api/v1/me", headers=bearer(token))
        assert me.status_code == 200 and me.json()["username"] == username
        assert (
            await client.delete("/api/v1/sessions/current", headers=bearer(token))
        ).status_code == 204
        assert (await client.get("/api/v1/me", headers=bearer(token))).status_code == 401
    finally:
        await asyncio.to_thread(data_stores.redis.start)
    for http_client in clients:
        assert (await http_client.get("/api/v1/me", headers=bearer(token))).status_code == 401
        assert (
            await http_client.get("/api/v1/me", headers=bearer(cached_token))
        ).status_code == 200


@pytest.mark.slow
async def test_logout_while_redis_hangs_is_not_undone_by_its_stale_cache(
    redis_restored: None, data_stores: DataStores, clients: list[httpx.AsyncClient]
) -> None:
    client = clients[0]
    _, token = await signed_up_token(client)
    assert (
        await client.get("/api/v1/me", headers=bearer(token))
    ).status_code == 200  # cached as active
    await asyncio.to_thread(data_stores.redis.process.pause)
    try:
        assert (
            await client.delete("/api/v1/sessions/current", headers=bearer(token))
        ).status_code == 204
    finally:
        await asyncio.to_thread(data_stores.redis.process.resume)
    # Redis kept its data (it was only frozen): the stale "active" entry is still there.
    for http_client in clients:
        assert (await http_client.get("/api/v1/me", headers=bearer(token))).status_code == 401


@pytest.mark.slow
async def test_etcd_outage_keeps_the_known_replicas_serving(
    gatehouse: Gatehouse, data_stores: DataStores, clients: list[httpx.AsyncClient]
) -> None:
    username, token = await signed_up_token(clients[0])
    await asyncio.to_thread(data_stores.etcd.stop)
    try:
        for client in clients:
            me = await client.get("/api/v1/me", headers=bearer(token))
            assert me.status_code == 200, me.text
            login = await client.post(
                "/api/v1/sessions", json={"username": username, "password": "password1"}
            )
            assert login.status_code == 200, login.text
        for index in range(len(gatehouse.http)):
            assert all(known == 2 for known in known_replicas_per_worker(gatehouse.url(index)))
    finally:
        await asyncio.to_thread(data_stores.etcd.start)
    # Registrations come back once etcd does (leases may have lapsed meanwhile).
    await wait_every_http_worker_knows(gatehouse, 2, LEASE_TTL + 10)
    created = await clients[1].post(
        "/api/v1/users", json={"username": new_username(), "password": "password1"}
    )
    assert created.status_code == 201, created.text


def user_id_source(auth: Service) -> str:
    samples = scrape(f"http://127.0.0.1:{auth.ports['ops']}/metrics")
    using = [
        labels["source"]
        for labels, value in samples.get("gatehouse_auth_user_id_source", [])
        if value == 1
    ]
    assert len(using) == 1, using
    return using[0]


async def wait_for_user_id_source(gatehouse: Gatehouse, source: str, timeout: float) -> None:
    for auth in gatehouse.auth:

        async def in_use(auth: Service = auth) -> bool:
            return await asyncio.to_thread(user_id_source, auth) == source

        await wait_until_async(in_use, timeout, f"{auth.name} to take user ids from {source}")


@pytest.mark.slow
async def test_signups_continue_through_an_etcd_outage_longer_than_the_lease(
    gatehouse: Gatehouse, data_stores: DataStores, clients: list[httpx.AsyncClient]
) -> None:
    await wait_every_http_worker_knows(gatehouse, 2, LEASE_TTL + 10)
    await asyncio.to_thread(data_stores.etcd.process.pause)
    try:
        # Past the lease TTL every replica has dropped its worker id: what an outage and a
        # partition both look like from the replica.
        await wait_for_user_id_source(gatehouse, "database", LEASE_TTL + 5)
        created_ids: list[int] = []
        for round_number in range(6):
            client = clients[round_number % len(clients)]
            created = await client.post(
                "/api/v1/users", json={"username": new_username(), "password": "password1"}
            )
            assert created.status_code == 201, created.text
            created_ids.append(int(created.json()["id"]))
        assert all(decode_id(user_id).worker_id == DATABASE_WORKER_ID for user_id in created_ids)
        assert len(set(created_ids)) == len(created_ids)
    finally:
        await asyncio.to_thread(data_stores.etcd.process.resume)
    await wait_for_user_id_source(gatehouse, "etcd", LEASE_TTL + 15)
    await wait_every_http_worker_knows(gatehouse, 2, LEASE_TTL + 10)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def http_samples_sum(gatehouse: Gatehouse, name: str, **labels: str) -> float:
    return sum(sample_sum(current_samples(service), name, **labels) for service in gatehouse.http)


@pytest.mark.slow
async def test_a_frozen_auth_replica_fails_no_read_and_holds_reads_only_briefly(
    gatehouse: Gatehouse, clients: list[httpx.AsyncClient]
) -> None:
    frozen_for, readers, max_reads = 4.0, 6, 6000
    _, token = await signed_up_token(clients[0])
    await wait_every_http_worker_knows(gatehouse, 2, 10.0)
    frozen = gatehouse.auth[0]
    reads: list[tuple[float, float, int]] = []  # (started, seconds, status)
    stop = asyncio.Event()

    async def read_loop(client: httpx.AsyncClient) -> None:
        while not stop.is_set() and len(reads) < max_reads:
            started = time.monotonic()
            response = await client.get("/api/v1/me", headers=bearer(token))
            reads.append((started, time.monotonic() - started, response.status_code))

    async def signup(client: httpx.AsyncClient) -> int:
        response = await client.post(
            "/api/v1/users", json={"username": new_username("f"), "password": "password1"}
        )
        return response.status_code

    def out_of_rotation() -> float:
        return http_samples_sum(
            gatehouse, "gatehouse_http_replicas_out_of_rotation", replica=frozen.name
        )

    register_attempts_before = http_samples_sum(
        gatehouse, "gatehouse_http_rpc_seconds_count", method="register"
    )
    loops = [asyncio.create_task(read_loop(clients[i % 2])) for i in range(readers)]
    signups: list[asyncio.Task[int]] = []
    try:
        await wait_until_async(lambda: len(reads) >= 100, 10.0, "reads under way")
        frozen.process.pause()
        frozen_at = time.monotonic()
        try:
            # Signups during the freeze: least outstanding sends some to the frozen replica,
            # where they wait; none may be sent a second time.
            signups = [asyncio.create_task(signup(clients[i % 2])) for i in range(6)]
            await wait_until_async(
                lambda: asyncio.to_thread(lambda: out_of_rotation() >= 1),
                2.0,
                "the frozen replica out of rotation",
            )
            await wait_until_async(
                lambda: time.monotonic() - frozen_at >= frozen_for or len(reads) >= max_reads,
                frozen_for + 1,
                "the freeze to last its time",
            )
        finally:
            frozen.process.resume()
        resumed_at = time.monotonic()
        await wait_until_async(
            lambda: asyncio.to_thread(lambda: out_of_rotation() == 0),
            5.0,
            "the replica back in rotation",
        )
    finally:
        stop.set()
        await asyncio.gather(*loops)
    signup_statuses = await asyncio.gather(*signups)
    signups_ended = time.monotonic()
    failed = [(round(seconds, 3), status) for _, seconds, status in reads if status != 200]
    assert failed == [], f"{len(failed)} of {len(reads)} reads failed: {failed[:5]}"
    settled = [seconds for started, seconds, _ in reads if frozen_at + 1.0 <= started < resumed_at]
    assert len(settled) >= 50, len(settled)
    # Without health pings the reads caught on the frozen replica wait out the whole freeze.
    held_longest = max(seconds for started, seconds, _ in reads if started >= frozen_at - 1.0)
    assert held_longest <= frozen_for / 2, f"a read took {held_longest:.2f}s"
    # 0.5 s, not the 0.1 s target: on a starved CI machine the other replica may itself miss a
    # ping for a moment, and the last replica in rotation never leaves; a read caught then
    # moves at the attempt timeout (0.5 s). Without the fix such reads wait out the freeze.
    assert percentile(settled, 0.99) <= 0.5, (
        f"p99 {percentile(settled, 0.99):.3f}s, max {max(settled):.3f}s of {len(settled)} reads"
    )
    # A signup held by the frozen replica may fail: frozen longer than the lease TTL, it lost
    # its worker id (issue 13 §7). It must never be sent again to the other replica.
    assert set(signup_statuses) <= {201, 503} and 201 in signup_statuses, signup_statuses

    def register_attempts() -> float:
        return (
            http_samples_sum(gatehouse, "gatehouse_http_rpc_seconds_count", method="register")
            - register_attempts_before
        )

    # /metrics is rendered at most once per RENDER_INTERVAL_SECONDS and a busy worker flushes
    # its latencies every FLUSH_SECONDS (a fresh-clone suite read 5 calls for 6 signups right
    # after they ended): only a scrape later than both counts every call, a repeat included.
    exact_from = signups_ended + RENDER_INTERVAL_SECONDS + FLUSH_SECONDS
    await wait_until_async(
        lambda: asyncio.to_thread(
            lambda: time.monotonic() > exact_from and register_attempts() >= len(signups)
        ),
        10.0,
        "every signup's call counted",
    )
    assert register_attempts() == len(signups), "a signup was sent more than once"
