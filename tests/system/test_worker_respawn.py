"""SIGKILL of one HTTP worker under load, under Granian and Hypercorn: only the requests in
flight at the kill may fail, and a new worker answers within 2 s of the kill, with the dead
worker's live metrics and heartbeat gone. (That new connections go to the other worker while
the dead one's slot has none is tests/system/test_worker_listeners.py's.) A replacement killed again soon after its start is replaced too (after a short backoff),
rather than stopping the server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from devstack import DataStores
from devstack.gatehouse import Gatehouse, Service
from devstack.ports import wait_until_async
from services.http.workers.respawn import STUCK_CHECK_SECONDS
from tests.conftest import TEST_SETTINGS
from tests.system.support import bearer, current_samples, new_username, sample_sum

# Clients each sending one request at a time, each on a new connection: a request of the
# load is in flight on the killed worker only if that worker had accepted its connection.
CONCURRENCY = 6
MAX_REQUESTS = 5000
NEW_WORKER_ANSWERS_WITHIN = 2.0
# New connections tried while the other worker is frozen, each waited for this long: with even
# odds of landing on the frozen worker, all of them would one time in a million.
FROZEN_PROBES = 20
FROZEN_PROBE_TIMEOUT = 1.0
# Requests served after the new worker answered, before the load stops.
SERVED_AFTER_REPLACEMENT = 100


@dataclass(frozen=True)
class Outcome:
    started: float
    ended: float
    error: str | None


@pytest.fixture(scope="module")
def stack(data_stores: DataStores, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gatehouse]:
    run = uuid.uuid4().hex[:8]
    settings = {
        **TEST_SETTINGS,
        "GATEHOUSE_HTTP_WORKERS": "2",
        "GATEHOUSE_DISCOVERY_PREFIX": f"/gatehouse-respawn-{run}/auth/",
        "GATEHOUSE_JWT_KEYS_PREFIX": f"/gatehouse-respawn-{run}/jwt-keys/",
    }
    system = Gatehouse(data_stores, Path(tmp_path_factory.mktemp("respawn")), settings=settings)
    try:
        system.start_auth()
        yield system
    finally:
        system.stop()


async def ready_workers(ops_url: str) -> set[int]:
    async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
        listed = (await client.get(f"{ops_url}/workers")).json()["workers"]
    return {worker["pid"] for worker in listed if worker["ready"]}


async def listed_workers(ops_url: str) -> set[int]:
    async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
        listed = (await client.get(f"{ops_url}/workers")).json()["workers"]
    return {worker["pid"] for worker in listed}


async def signed_up_token(base_url: str) -> str:
    username = new_username("respawn")
    async with httpx.AsyncClient(base_url=base_url, timeout=10.0, trust_env=False) as client:
        created = await client.post(
            "/api/v1/users", json={"username": username, "password": "password1"}
        )
        assert created.status_code == 201, created.text
        login = await client.post(
            "/api/v1/sessions", json={"username": username, "password": "password1"}
        )
        assert login.status_code == 200, login.text
        return str(login.json()["token"])


async def read_loop(
    base_url: str, token: str, stop: asyncio.Event, outcomes: list[Outcome]
) -> None:
    async with httpx.AsyncClient(
        base_url=base_url,
        timeout=10.0,
        trust_env=False,
        limits=httpx.Limits(max_keepalive_connections=0),
    ) as client:
        while not stop.is_set() and len(outcomes) < MAX_REQUESTS:
            started = time.monotonic()
            error: str | None
            try:
                response = await client.get("/api/v1/me", headers=bearer(token))
                error = None if response.status_code == 200 else f"{response.status_code}"
            except httpx.TransportError as exc:
                error = f"{type(exc).__name__}: {exc}"
            outcomes.append(Outcome(started, time.monotonic(), error))


async def answered_while_frozen(base_url: str, frozen_pid: int) -> float:
    """GET /healthz on new connections while `frozen_pid` is stopped, until another worker
    answers one; when it did. Each worker has a socket of its own and the kernel
    gives a new connection to either (services.http.workers.slot_listeners), so a connection may
    land on the frozen worker's: it gets no answer and the next one is tried."""
    os.kill(frozen_pid, signal.SIGSTOP)
    try:
        async with httpx.AsyncClient(
            base_url=base_url,
            timeout=FROZEN_PROBE_TIMEOUT,
            trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        ) as client:
            for _ in range(FROZEN_PROBES):
                try:
                    response = await client.get("/healthz")
                except httpx.TimeoutException:
                    continue
                assert response.status_code == 200, response.text
                return time.monotonic()
        raise AssertionError(f"none of {FROZEN_PROBES} new connections answered")
    finally:
        os.kill(frozen_pid, signal.SIGCONT)


@pytest.mark.slow
@pytest.mark.parametrize("server", ["granian", "hypercorn"])
async def test_a_killed_worker_is_replaced_while_the_other_keeps_serving(
    stack: Gatehouse, server: str
) -> None:
    service = await asyncio.to_thread(stack.start_http, {"GATEHOUSE_HTTP_SERVER": server})
    try:
        await _kill_one_worker_under_load(service)
    finally:
        await asyncio.to_thread(service.process.stop)


async def both_workers_ready(ops_url: str, log: Path) -> list[int]:
    """The pids of the service's two workers, once both are ready."""

    async def two_ready() -> bool:
        return len(await ready_workers(ops_url)) == 2

    await wait_until_async(two_ready, 30.0, "both workers ready", where=log)
    return sorted(await ready_workers(ops_url))


async def _kill_one_worker_under_load(service: Service) -> None:
    base_url = f"http://127.0.0.1:{service.ports['http']}"
    ops_url = f"http://127.0.0.1:{service.ports['ops']}"
    log = service.process.log_path
    victim, survivor = await both_workers_ready(ops_url, log)
    token = await signed_up_token(base_url)

    stop = asyncio.Event()
    outcomes: list[Outcome] = []
    loaders = [
        asyncio.create_task(read_loop(base_url, token, stop, outcomes)) for _ in range(CONCURRENCY)
    ]
    try:
        await wait_until_async(
            lambda: sum(o.error is None for o in outcomes) >= 50, 30.0, "load served", where=log
        )

        def served_since(moment: float) -> int:
            return sum(o.error is None and o.started > moment for o in outcomes)

        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)

        async def replacement_ready() -> bool:
            return bool(await ready_workers(ops_url) - {victim, survivor})

        # A worker writes its first heartbeat once it can serve (its lifespan has started).
        await wait_until_async(
            replacement_ready,
            10.0,
            "a new worker ready",
            where=log,
            abort=service.process.exit_reason,
            max_interval=0.05,
        )
        ready_at = time.monotonic()
        (replacement,) = await ready_workers(ops_url) - {victim, survivor}
        answered_at = await answered_while_frozen(base_url, survivor)

        await wait_until_async(
            lambda: served_since(answered_at) >= SERVED_AFTER_REPLACEMENT,
            20.0,
            "load served after the replacement",
            where=log,
        )
    finally:
        stop.set()
        await asyncio.gather(*loaders)

    failures = [o for o in outcomes if o.error is not None]
    in_flight_at_kill = [o for o in outcomes if o.started < killed_at <= o.ended]
    print(
        f"{service.name}: {len(outcomes)} requests, {len(failures)} failed "
        f"({len(in_flight_at_kill)} in flight at the kill); "
        f"{served_since(killed_at) - served_since(ready_at)} served before a new worker was "
        f"ready, {ready_at - killed_at:.3f} s after the kill; it answered a probe at "
        f"{answered_at - killed_at:.3f} s"
    )
    # Only the requests that were in progress at the kill may fail (at most those of the victim).
    stray = [o for o in failures if not o.started < killed_at <= o.ended]
    assert not stray, [o.error for o in stray]
    assert len(failures) <= min(CONCURRENCY, len(in_flight_at_kill))
    assert ready_at - killed_at <= NEW_WORKER_ANSWERS_WITHIN, ready_at - killed_at
    assert service.process.alive

    # The dead worker is forgotten: no heartbeat, no live gauge; the restart is counted.
    assert victim not in await listed_workers(ops_url)
    samples = current_samples(service)
    gauge_pids = {labels["pid"] for labels, _ in samples["gatehouse_http_discovered_replicas"]}
    assert str(victim) not in gauge_pids and str(replacement) in gauge_pids, gauge_pids
    restarts = sample_sum(samples, "gatehouse_http_worker_restarts_total", cause="SIGKILL")
    assert restarts == 1, samples.get("gatehouse_http_worker_restarts_total")

    # Killed again within seconds of its start: Granian alone would call it a crash loop and exit.
    os.kill(replacement, signal.SIGKILL)

    async def second_replacement_ready() -> bool:
        return bool(await ready_workers(ops_url) - {victim, survivor, replacement})

    await wait_until_async(
        second_replacement_ready,
        10.0,
        "a second replacement ready",
        where=log,
        abort=service.process.exit_reason,
    )
    assert (await ready_workers(ops_url)) >= {survivor}
    restarts = sample_sum(
        current_samples(service), "gatehouse_http_worker_restarts_total", cause="SIGKILL"
    )
    assert restarts == 2


@pytest.mark.slow
@pytest.mark.parametrize("server", ["granian", "hypercorn"])
async def test_a_worker_that_stops_beating_is_killed_and_replaced(
    stack: Gatehouse, server: str
) -> None:
    """A stopped worker (SIGSTOP: as a stuck event loop, it beats no more) holds connections it
    never answers, and the ops port stops counting it: the supervisor kills and replaces it."""
    service = await asyncio.to_thread(
        stack.start_http,
        {"GATEHOUSE_HTTP_SERVER": server, "GATEHOUSE_HTTP_WORKER_STUCK_TIMEOUT": "2"},
    )
    try:
        ops_url = f"http://127.0.0.1:{service.ports['ops']}"
        log = service.process.log_path
        frozen, other = await both_workers_ready(ops_url, log)
        os.kill(frozen, signal.SIGSTOP)
        try:

            async def replaced() -> bool:
                return len(await ready_workers(ops_url) - {frozen, other}) == 1

            await wait_until_async(
                replaced,
                20.0,
                "the stopped worker replaced",
                where=log,
                abort=service.process.exit_reason,
            )
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(frozen, signal.SIGCONT)
        assert "has not beaten for" in await asyncio.to_thread(log.read_text)
        restarts = sample_sum(
            current_samples(service), "gatehouse_http_worker_restarts_total", cause="stuck"
        )
        assert restarts == 1
    finally:
        await asyncio.to_thread(service.process.stop)


@pytest.mark.slow
async def test_a_worker_replaced_while_etcd_is_away_takes_no_connections_until_ready(
    stack: Gatehouse, data_stores: DataStores
) -> None:
    """The replacement of a killed worker cannot read the signing keys while etcd is away: it
    begins serving after its wait, not ready. The pod's /readyz turned 503 for the rest of the
    outage beside a worker that served (in a hostile drill against `make run`, the replacement
    also took its share of new connections and answered 98 of 1,040 reads 503). New
    connections go to the ready worker alone, and the pod stays ready."""
    service = await asyncio.to_thread(stack.start_http)
    base_url = f"http://127.0.0.1:{service.ports['http']}"
    ops_url = f"http://127.0.0.1:{service.ports['ops']}"
    log = service.process.log_path
    try:
        victim, survivor = await both_workers_ready(ops_url, log)
        token = await signed_up_token(base_url)
        await asyncio.to_thread(data_stores.etcd.process.pause)
        stop = asyncio.Event()
        outcomes: list[Outcome] = []
        loaders: list[asyncio.Task[None]] = []
        try:
            os.kill(victim, signal.SIGKILL)

            async def replacement_beats() -> bool:
                return bool(await listed_workers(ops_url) - {victim, survivor})

            # It beats once its wait for etcd (GATEHOUSE_CALL_TIMEOUT) is over, not ready.
            await wait_until_async(replacement_beats, 30.0, "the replacement to beat", where=log)
            beats_since = time.monotonic()
            assert await ready_workers(ops_url) == {survivor}

            async def pod_ready() -> bool:
                async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
                    return (await client.get(f"{ops_url}/readyz")).status_code == 200

            # Ready again once the main process's next look steers to the ready worker alone.
            await wait_until_async(pod_ready, 10.0, "the pod to be ready", where=log)
            loaders = [
                asyncio.create_task(read_loop(base_url, token, stop, outcomes))
                for _ in range(CONCURRENCY)
            ]
            # The load lasts past a few looks of the main process (one a second), which steer
            # new connections: reads sent before the first would prove nothing.
            looks = 3 * STUCK_CHECK_SECONDS

            def read_long_enough() -> bool:
                return len(outcomes) >= 200 and time.monotonic() - beats_since >= looks

            await wait_until_async(
                read_long_enough, 30.0, "200 reads on new connections over 3 looks", where=log
            )
        finally:
            stop.set()
            await asyncio.gather(*loaders)
            await asyncio.to_thread(data_stores.etcd.process.resume)
        failures = [o.error for o in outcomes if o.error is not None]
        assert not failures, failures[:5]

        async def both_ready_again() -> bool:
            return len(await ready_workers(ops_url)) == 2

        await wait_until_async(both_ready_again, 30.0, "the replacement ready", where=log)
    finally:
        await asyncio.to_thread(service.process.stop)
