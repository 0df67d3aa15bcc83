"""The drills: one fault each, injected into a running stack under load, and lifted again.

Blocking devstack calls run in threads so the load keeps its schedule. A fault action that
kills a process restarts it itself if it is still dead afterwards, so the drills work whether
or not the stack supervises its processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from devstack.gatehouse import Service, http_status
from drills.load import bearer
from drills.measure import Kind, Sample, status_label
from drills.runner import Drill, DrillContext, Phases
from drills.stack import (
    client_ends_held_by,
    discovered_replicas,
    discovery_record,
    worker_pids,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LEASE_TTL = 10.0  # GATEHOUSE_LEASE_TTL's default
DEFAULT_ETCD_OUTAGE = 300.0  # §7: at least 5 minutes
POLL = 0.05  # seconds between two looks at a condition that has no event


async def _poll_until(condition: Callable[[], bool], deadline: float) -> float | None:
    """Seconds until `condition()` held (None: not before `deadline`, a monotonic time)."""
    started = time.monotonic()
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if await asyncio.to_thread(condition):
                return time.monotonic() - started
        await asyncio.sleep(POLL)  # a process or a record: no event to wait on
    return None


async def _restart_if_dead(context: DrillContext, service: Service) -> None:
    if not service.process.alive:
        context.notes.append(f"{service.name} was still dead; the drill restarted it")
        await asyncio.to_thread(service.start)


async def primary_outage(context: DrillContext) -> None:
    primary = context.stores.primary
    await context.until(context.phases.before)
    context.begin("MariaDB primary stopped")
    try:
        await asyncio.to_thread(primary.stop)
        await context.until(context.fault_start_or_now() + context.phases.fault)
    finally:
        if not primary.process.alive:
            await asyncio.to_thread(primary.start)
        context.end("MariaDB primary accepts connections again")
    # The replica reconnects within a second (MASTER_CONNECT_RETRY=1); the next drill on these
    # stores starts from a replica in step.
    await asyncio.to_thread(context.stores.replication.wait_caught_up)


async def http_worker_kill(context: DrillContext) -> None:
    """SIGKILL one of the HTTP process's workers (§2: only requests in flight on it may fail).

    A request was on the dead worker if its connection was: the connections the victim holds
    are read from /proc right before the kill, and every failed request says which connection
    it went on. Each such connection may fail one request (HTTP/1.1 carries one at a time;
    one written on it just before the client saw it close is the request a browser would
    retry, RFC 9110 §9.2.2). Any other failure counts against the target."""
    http = context.system.http[0]
    await context.until(context.phases.before)
    before = await asyncio.to_thread(worker_pids, http, ready_only=True)
    if len(before) < 2:
        raise RuntimeError(f"{http.name} has {len(before)} ready workers; the drill needs two")
    victim = min(before)
    # Read in the event loop, not a thread: nothing is sent between this look and the kill.
    held = client_ends_held_by(victim, http.ports["http"])
    in_flight = context.load.in_flight
    os.kill(victim, signal.SIGKILL)
    context.begin(f"SIGKILL of worker pid {victim} of {http.name}")
    killed_at = context.fault_start_or_now()

    def judge(samples: list[Sample]) -> None:
        failed = [sample for sample in samples if not sample.ok]
        on_victim = [s for s in failed if s.via is not None and s.via.local in held]
        context.metrics["requests in flight at the kill"] = in_flight
        context.metrics["connections the dead worker held"] = len(held)
        context.metrics["failures on the dead worker's connections"] = len(on_victim)
        context.metrics["failures beyond the requests on the dead worker"] = len(failed) - len(
            on_victim
        )
        context.notes.append(
            f"the dead worker held {len(held)} connections; {in_flight} requests were in flight "
            f"(on either worker) at the kill; {len(on_victim)} of {len(failed)} failed requests "
            "went on the dead worker's connections"
        )
        # Those on the victim first, then the others nearest the kill.
        others = sorted(
            (s for s in failed if s not in on_victim), key=lambda s: abs(s.done - killed_at)
        )
        described = [*on_victim, *others][:FAILURE_NOTES]
        context.notes += [_failure_note(s, killed_at, held) for s in described]

    context.judges.append(judge)
    deadline = time.monotonic() + context.phases.fault

    def replaced() -> bool:
        return bool(worker_pids(http, ready_only=True) - before)

    took = await _poll_until(replaced, deadline)
    context.metrics["new worker answering after"] = float("nan") if took is None else took
    await context.until(context.fault_start_or_now() + context.phases.fault)
    await _restart_if_dead(context, http)
    context.end("the fault window closes")


FAILURE_NOTES = 10  # failed requests described one by one in a drill's notes, at most


def _failure_note(sample: Sample, killed_at: float, held: set[tuple[str, int]]) -> str:
    """One failed request: when it was due and failed relative to the kill, and its connection."""
    if sample.via is None:
        where = "no connection"
    else:
        address, port = sample.via.local
        age = "reused" if sample.via.reused else "new"
        owner = "held by the dead worker" if sample.via.local in held else "not the dead worker's"
        where = f"{age} connection from {address}:{port}, {owner}"
    return (
        f"{sample.kind} due {sample.due - killed_at:+.3f} s from the kill failed at "
        f"{sample.done - killed_at:+.3f} s ({status_label(sample.status)}: "
        f"{sample.error or 'answered'}) on a {where}"
    )


async def redis_freeze(context: DrillContext) -> None:
    redis = context.stores.redis
    await context.until(context.phases.before)
    context.begin("Redis under SIGSTOP")
    try:
        await asyncio.to_thread(redis.process.pause)
        await context.until(context.fault_start_or_now() + context.phases.fault)
    finally:
        await asyncio.to_thread(redis.process.resume)
        context.end("Redis under SIGCONT")


async def auth_replica_freeze(context: DrillContext) -> None:
    victim = context.system.auth[0]
    await context.until(context.phases.before)
    context.begin(f"{victim.name} under SIGSTOP (one of two replicas)")
    try:
        await asyncio.to_thread(victim.process.pause)
        await context.until(context.fault_start_or_now() + context.phases.fault)
    finally:
        await asyncio.to_thread(victim.process.resume)
        context.end(f"{victim.name} under SIGCONT")


async def http_restart(context: DrillContext) -> None:
    """Stop the HTTP process and start it again on its port while clients keep reading with
    valid tokens: none of them may get a 401 because the new process lacks the signing keys."""
    http = context.system.http[0]
    tokens = [account.token for account in context.load_accounts()]
    await context.until(context.phases.before)
    context.begin(f"{http.name} stopped (SIGTERM) and started again")
    await asyncio.to_thread(http.process.stop)
    await asyncio.to_thread(http.process.start)
    ready_deadline = time.monotonic() + max(30.0, context.phases.fault)
    ready = asyncio.Event()
    # Readers that start with the process, before it is ready: the load's open loop alone
    # would rarely land in the first few tens of milliseconds.
    probes = [
        asyncio.create_task(_probe_reads(context, tokens, index, ready)) for index in range(16)
    ]
    took = await _poll_until(lambda: http_status(http.ready_url) == 200, ready_deadline)
    context.metrics["ready after restart"] = float("nan") if took is None else took
    await asyncio.sleep(1.0)  # the probes read on for a second after readiness
    ready.set()
    await asyncio.gather(*probes)
    await _restart_if_dead(context, http)
    await context.until(context.fault_start_or_now() + context.phases.fault)
    context.end("the fault window closes")


PROBE_LIMIT = 3000  # reads per probe reader, at most


async def _probe_reads(
    context: DrillContext, tokens: list[str], index: int, done: asyncio.Event
) -> None:
    client = context.clients[index % len(context.clients)]
    for count in range(PROBE_LIMIT):
        if done.is_set():
            return
        due = context.load.now()
        try:
            answer = await client.get("/api/v1/me", headers=bearer(tokens[count % len(tokens)]))
        except Exception:  # noqa: BLE001 - refused while the process starts: pause, retry
            await asyncio.sleep(0.002)  # the port is not open yet; a short pause, then again
            continue
        context.extra_samples.append(
            Sample(Kind.READ, due, context.load.now() - due, answer.status_code)
        )


async def auth_replica_kill(context: DrillContext) -> None:
    victim = context.system.auth[0]
    lease_ttl = context.setting("GATEHOUSE_LEASE_TTL", DEFAULT_LEASE_TTL)
    record = await asyncio.to_thread(discovery_record, context.system, victim.name)
    started_at = None if record is None else record.get("started_at")
    await context.until(context.phases.before)
    await asyncio.to_thread(victim.process.kill)
    context.begin(f"SIGKILL of {victim.name} (one of two replicas)")

    def record_gone_or_replaced() -> bool:
        now = discovery_record(context.system, victim.name)
        return now is None or now.get("started_at") != started_at

    took = await _poll_until(record_gone_or_replaced, time.monotonic() + lease_ttl + 15.0)
    context.metrics["dead replica's record outlived its lease TTL by"] = (
        float("nan") if took is None else max(0.0, took - lease_ttl)
    )
    await context.until(context.fault_start_or_now() + context.phases.fault)
    await _restart_if_dead(context, victim)
    context.end(f"{victim.name} serves again")


def _exited(service: Service) -> Callable[[], bool]:
    return lambda: not service.process.alive


async def rolling_restart(context: DrillContext) -> None:
    """As a Deployment's rollout: start a new replica, once it serves SIGTERM an old one."""
    http = context.system.http[0]
    old = list(context.system.auth)
    await context.until(context.phases.before)
    context.begin(f"rolling restart of {len(old)} auth replicas")
    for leaving in old:
        fresh = await asyncio.to_thread(context.system.start_auth)

        def everyone_knows(count: int) -> bool:
            known = discovered_replicas(http)
            return bool(known) and all(k == count for k in known)

        await _poll_until(lambda: everyone_knows(len(old) + 1), time.monotonic() + 30.0)
        leaving.terminate()
        exited = await _poll_until(_exited(leaving), time.monotonic() + 60.0)
        if exited is None:
            context.notes.append(f"{leaving.name} did not exit within 60 s of SIGTERM")
        await _poll_until(lambda: everyone_knows(len(old)), time.monotonic() + 30.0)
        context.report(f"{leaving.name} replaced by {fresh.name}")
    context.end("every replica replaced")


async def replica_lag(context: DrillContext) -> None:
    """The replica applies nothing; for the second half Redis is down too, so that reads reach
    the databases and only the freshness check keeps them off the lagging replica."""
    replication = context.stores.replication
    redis = context.stores.redis
    await context.until(context.phases.before)
    context.begin("replica's SQL thread stopped: it lags further every write")
    try:
        await asyncio.to_thread(replication.stop_sql_thread)
        await context.until(context.fault_start_or_now() + context.phases.fault / 2)
        context.report("Redis stopped as well: reads go to the databases")
        await asyncio.to_thread(redis.stop)
        await context.until(context.fault_start_or_now() + context.phases.fault)
    finally:
        if not redis.process.alive:
            await asyncio.to_thread(redis.start)
        await asyncio.to_thread(replication.start_sql_thread)
        context.end("replica's SQL thread and Redis started")
    await asyncio.to_thread(replication.wait_caught_up)


CACHED_LOGOUTS = 25


async def prepare_cached_logouts(context: DrillContext) -> None:
    """Sessions read once (cached as active in Redis), then logged out: after Redis comes back
    empty, each must still be refused."""
    client = context.clients[0]
    accounts = context.load_accounts()
    for index in range(CACHED_LOGOUTS):
        account = accounts[index % len(accounts)]
        login = await client.post(
            "/api/v1/sessions", json={"username": account.username, "password": account.password}
        )
        login.raise_for_status()
        token = login.json()["token"]
        (await client.get("/api/v1/me", headers=bearer(token))).raise_for_status()
        gone = await client.delete("/api/v1/sessions/current", headers=bearer(token))
        if gone.status_code != 204:
            raise RuntimeError(f"preparing: logout answered {gone.status_code} {gone.text}")
        context.ledger_logged_out(token)


async def redis_restart_empty(context: DrillContext) -> None:
    redis = context.stores.redis
    await context.until(context.phases.before)
    context.begin("Redis stopped; it restarts with no keys")
    try:
        await asyncio.to_thread(redis.stop)
    finally:
        await asyncio.to_thread(redis.start)
    await context.until(context.fault_start_or_now() + context.phases.fault)
    context.end("the fault window closes")


async def etcd_outage(context: DrillContext) -> None:
    etcd = context.stores.etcd
    await context.until(context.phases.before)
    context.begin(f"etcd stopped for {context.phases.fault:g} s")
    try:
        await asyncio.to_thread(etcd.stop)
        await context.until(context.fault_start_or_now() + context.phases.fault)
    finally:
        await asyncio.to_thread(etcd.start)
        context.end("etcd started")


async def connection_flood(context: DrillContext, idle: int, slowloris: int) -> None:
    """The flood runs as its own process (drills.flood): its CPU is not the load clients'."""
    http = context.system.http[0]
    seconds = context.phases.fault
    # Opening the connections (and starting the process) is the set-up; the fault is the
    # time they are held open.
    await context.until(context.phases.before)
    flood = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "drills.flood", "--port", str(http.ports["http"]),
        "--idle", str(idle), "--slowloris", str(slowloris), "--seconds", str(seconds),
        cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert flood.stdout is not None
        line = await asyncio.wait_for(flood.stdout.readline(), 60.0)
        opened = line.decode().removeprefix("opened ").strip()
        context.metrics["flood connections opened"] = float(opened) if opened else math.nan
        context.begin(f"{opened or 'no'} idle connections held, {slowloris} slowloris ones")
        await asyncio.wait_for(flood.wait(), seconds + 30.0)
    finally:
        if flood.returncode is None:
            flood.kill()
            await flood.wait()
        context.end("flood connections closed")


async def full_flood(context: DrillContext) -> None:
    if context.short:
        await connection_flood(context, idle=300, slowloris=30)
    else:
        await connection_flood(context, idle=3000, slowloris=100)


# Read-heavy mix for §3's 300 reads/s: 0.9 of 333 operations/s.
READ_HEAVY = {Kind.READ: 0.90, Kind.SIGNUP: 0.03, Kind.NICKNAME: 0.04, Kind.LOGIN: 0.03}
FULL_BEFORE, FULL_AFTER = 10.0, 10.0
SHORT_BEFORE, SHORT_AFTER = 2.0, 3.0


FULL = {
    name: Phases(FULL_BEFORE, fault, FULL_AFTER)
    for name, fault in {"20 s": 20.0, "15 s": 15.0, "12 s": 12.0, "10 s": 10.0}.items()
}


def _short(fault: float) -> Phases:
    return Phases(SHORT_BEFORE, fault, SHORT_AFTER)


DRILLS: tuple[Drill, ...] = (
    Drill("primary-outage", "§1 MariaDB primary stopped", primary_outage,
          FULL["20 s"], _short(4)),
    Drill("http-worker-kill", "§2 SIGKILL of one HTTP worker", http_worker_kill,
          FULL["10 s"], _short(4)),
    Drill("redis-freeze", "§3 Redis under SIGSTOP, 300 reads/s", redis_freeze,
          FULL["15 s"], _short(4), rate=333.0, short_rate=111.0, mix=READ_HEAVY),
    Drill("auth-replica-freeze", "§4 one of two auth replicas under SIGSTOP",
          auth_replica_freeze, FULL["12 s"], _short(4)),
    Drill("http-restart", "§5 HTTP process restarted: valid tokens keep working",
          http_restart, FULL["10 s"], _short(4)),
    Drill("auth-replica-kill", "SIGKILL of one of two auth replicas", auth_replica_kill,
          FULL["15 s"], _short(5)),
    Drill("rolling-restart", "rolling restart: SIGTERM each auth replica in turn",
          rolling_restart, Phases(FULL_BEFORE, 0.0, FULL_AFTER), _short(0)),
    Drill("replica-lag", "replica lag: the replica applies nothing, Redis down for the second half", replica_lag,
          FULL["15 s"], _short(4)),
    Drill("redis-restart-empty", "Redis restarts empty", redis_restart_empty,
          FULL["10 s"], _short(3), prepare=prepare_cached_logouts),
    Drill("etcd-outage", "§7 etcd stopped: signups keep working", etcd_outage,
          Phases(FULL_BEFORE, DEFAULT_ETCD_OUTAGE, FULL_AFTER), _short(5)),
    Drill("connection-flood", "connection flood: idle connections plus slowloris",
          full_flood, FULL["20 s"], _short(4)),
)  # fmt: skip

BY_NAME = {drill.name: drill for drill in DRILLS}
