"""One drill from start to verdict: fresh stack, seeded accounts, load, fault, verification.

The fault runs while the load does; it marks when the fault began and when it was lifted, so
the samples split into before / during / after. Once the load is over the stack is left to
settle, every acknowledged write is checked, and the metrics meet the drill's targets.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import uvloop

from devstack.gatehouse import Gatehouse
from devstack.stack import DataStores, Report
from drills import measure
from drills.ledger import Account, Ledger, verify
from drills.load import LoadShape, MixedLoad, open_clients, open_pools
from drills.machine import MachineWatch
from drills.measure import WRITES, Kind, Sample
from drills.stack import drill_settings, fresh_stack
from drills.targets import Check, evaluate, targets_for

MS = 1000.0
# The load never runs longer than its phases plus this, whatever a fault action takes.
LOAD_SPARE_SECONDS = 120.0
LATE_NOTE_SECONDS = 0.1


@dataclass(frozen=True)
class Phases:
    before: float  # seconds of load before the fault
    fault: float  # seconds the fault lasts (or the window watched after an instant fault)
    after: float  # seconds of load once the fault is lifted


@dataclass
class DrillContext:
    """What a fault action gets: the stack, the load's clock, and where to note its figures."""

    system: Gatehouse
    load: MixedLoad
    phases: Phases
    settings: dict[str, str]
    report: Report
    clients: list[httpx.AsyncClient]
    ledger: Ledger
    short: bool
    fault_start: float | None = None
    fault_end: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    extra_samples: list[Sample] = field(default_factory=list)
    # Figures that need every sample: called once the load is over, they fill `metrics`.
    judges: list[Callable[[list[Sample]], None]] = field(default_factory=list)

    @property
    def stores(self) -> DataStores:
        return self.system.stores

    def setting(self, name: str, default: float) -> float:
        return float(self.settings.get(name, default))

    async def until(self, moment: float) -> None:
        """Wait until the load's clock reads `moment` (the drill's schedule, not a sync)."""
        pause = moment - self.load.now()
        if pause > 0:
            await asyncio.sleep(pause)

    def fault_start_or_now(self) -> float:
        return self.load.now() if self.fault_start is None else self.fault_start

    def load_accounts(self) -> list[Account]:
        """The seeded accounts the reads use, each with a valid session token."""
        return list(self.ledger.accounts.values())

    def ledger_logged_out(self, token: str) -> None:
        self.ledger.logged_out.append(token)

    def begin(self, what: str) -> None:
        self.fault_start = self.load.now()
        self.report(f"fault at {self.fault_start:.1f} s: {what}")

    def end(self, what: str) -> None:
        self.fault_end = self.load.now()
        self.report(f"fault lifted at {self.fault_end:.1f} s: {what}")


FaultAction = Callable[[DrillContext], Awaitable[None]]
Prepare = Callable[[DrillContext], Awaitable[None]]


@dataclass(frozen=True)
class Drill:
    name: str
    title: str
    fault: FaultAction
    full: Phases
    short: Phases
    rate: float = 100.0  # operations per second in the full drill
    short_rate: float = 40.0
    mix: dict[Kind, float] | None = None
    prepare: Prepare | None = None


@dataclass
class DrillResult:
    name: str
    title: str
    short: bool
    rate: float
    phases: Phases
    fault_start: float
    fault_end: float
    load_end: float
    requests: dict[str, int]
    failures: dict[str, int]
    writes_checked: int
    lost: list[str]
    windows: dict[str, dict[str, measure.Latency]]  # window -> "reads"/"writes" -> latency
    metrics: dict[str, float]
    checks: list[Check]
    notes: list[str]
    wall_seconds: float

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)


def run_drill(
    drill: Drill,
    state_dir: Path,
    *,
    short: bool,
    report: Report,
    settings: dict[str, str] | None = None,
    stores: DataStores | None = None,
    fault_seconds: float | None = None,
) -> DrillResult:
    """Run `drill` on a fresh stack (fresh Gatehouse processes on `stores` when given)."""
    started = time.monotonic()
    phases = drill.short if short else drill.full
    if fault_seconds is not None:
        phases = Phases(phases.before, fault_seconds, phases.after)
    effective = drill_settings(settings)
    with fresh_stack(state_dir, effective, stores=stores, report=report) as system:
        result = uvloop.run(_drive(drill, system, phases, effective, short, report))
    result.wall_seconds = time.monotonic() - started
    return result


async def _drive(
    drill: Drill,
    system: Gatehouse,
    phases: Phases,
    settings: dict[str, str],
    short: bool,
    report: Report,
) -> DrillResult:
    rate = drill.short_rate if short else drill.rate
    clients = open_clients(system.url())
    pools = open_pools(system.url())
    ledger = Ledger()
    load = MixedLoad(pools, ledger, seed=zlib.crc32(drill.name.encode()), name_prefix="d")
    context = DrillContext(system, load, phases, settings, report, clients, ledger, short)
    try:
        await load.seed_accounts(20 if short else 40)
        if drill.prepare is not None:
            await drill.prepare(context)
        seconds = phases.before + phases.fault + phases.after + LOAD_SPARE_SECONDS
        shape = LoadShape(rate, seconds, drill.mix) if drill.mix else LoadShape(rate, seconds)
        report(
            f"load: {rate:g} operations/s, {phases.before:g} s before the fault, "
            f"{phases.fault:g} s of fault, {phases.after:g} s after"
        )
        watch = MachineWatch.start()
        load.start_clock()
        load_task = asyncio.create_task(load.run(shape))
        progress = asyncio.create_task(_progress(load, report, 2.0 if short else 5.0))
        try:
            await drill.fault(context)
        finally:
            if context.fault_start is None:
                context.fault_start = load.now()
            if context.fault_end is None:
                context.fault_end = load.now()
            await context.until(context.fault_end + phases.after)
            load.stop()
            await load_task
            progress.cancel()
        load_end = load.now()
        machine = watch.stop()
        report("verifying every acknowledged write ...")
        verdict = await verify(clients[0], ledger)
    finally:
        for client in clients:
            await client.aclose()
        for pool in pools:
            await pool.aclose()
    samples = [*load.samples, *context.extra_samples]
    for judge in context.judges:
        judge(samples)
    metrics = compute_metrics(samples, context.fault_start, context.fault_end, load_end)
    metrics["acknowledged writes lost"] = verdict.lost_count
    metrics["stale reads after the user's own write"] = len(load.stale_reads)
    context.notes += [f"stale read: {line}" for line in load.stale_reads[:5]]
    metrics["logged-out tokens accepted again"] = verdict.revived_logouts
    metrics["load generator lateness max"] = load.lateness_max * MS
    metrics["load generator CPU"] = machine.generator_percent
    metrics["host CPU busy"] = machine.host_percent
    context.notes.append(machine.note())
    waits = measure.client_waits(s for s in samples if s.kind is Kind.READ)
    context.notes.append(
        f"reads waited in the load generator (due -> written, included in their latency): "
        f"p50 {waits.p50 * MS:.1f} / p99 {waits.p99 * MS:.1f} / max {waits.max * MS:.1f} ms"
    )
    if load.lateness_max > LATE_NOTE_SECONDS:
        context.notes.append(
            f"the load generator itself ran up to {load.lateness_max * MS:.0f} ms behind its "
            "schedule (CPU starved): latencies include that delay"
        )
    metrics.update(context.metrics)
    return DrillResult(
        name=drill.name,
        title=drill.title,
        short=short,
        rate=rate,
        phases=phases,
        fault_start=context.fault_start,
        fault_end=context.fault_end,
        load_end=load_end,
        requests=requests_by_kind(samples),
        failures=measure.failures_by_status(samples),
        writes_checked=verdict.checked,
        lost=verdict.lost,
        windows=latency_windows(samples, context.fault_start, context.fault_end, load_end),
        metrics=metrics,
        checks=evaluate(targets_for(drill.name, short=short, healthy=metrics), metrics),
        notes=context.notes,
        wall_seconds=0.0,
    )


async def _progress(load: MixedLoad, report: Report, every: float) -> None:
    while True:
        await asyncio.sleep(every)  # a progress line's period, not a synchronisation
        failed = sum(1 for s in load.samples if not s.ok)
        report(
            f"  {load.now():5.1f} s: {load.due} sent, {len(load.samples)} answered, "
            f"{failed} failed, {load.in_flight} in flight"
        )


def requests_by_kind(samples: list[Sample]) -> dict[str, int]:
    counts = {kind.value: 0 for kind in Kind}
    for sample in samples:
        counts[sample.kind.value] += 1
    return counts


def latency_windows(
    samples: list[Sample], fault_start: float, fault_end: float, load_end: float
) -> dict[str, dict[str, measure.Latency]]:
    return {
        window.name: {
            "reads": measure.latency(s for s in samples if s.kind is Kind.READ and window.holds(s)),
            "writes": measure.latency(s for s in samples if s.kind in WRITES and window.holds(s)),
        }
        for window in measure.windows(fault_start, fault_end, load_end)
    }


def compute_metrics(
    samples: list[Sample], fault_start: float, fault_end: float, load_end: float
) -> dict[str, float]:
    """The figures every drill measures; a drill's fault action adds its own."""
    during = [s for s in samples if fault_start <= s.due < fault_end]
    reads = [s for s in samples if s.kind is Kind.READ]
    reads_before = [s for s in reads if s.due < fault_start]
    writes_before = [s for s in samples if s.kind in WRITES and s.due < fault_start]
    reads_during = [s for s in during if s.kind is Kind.READ]
    settled_reads = [s for s in reads_during if s.due >= fault_start + 1.0]
    writes_during = [s for s in during if s.kind in WRITES]
    # Writes due in the outage (but its last 0.1 s) that failed or were held past its end:
    # how fast the stack says no.
    refused = [
        s for s in writes_during if s.due < fault_end - 0.1 and (not s.ok or s.done > fault_end)
    ]
    return {
        "requests": len(samples),
        "failed requests": sum(1 for s in samples if not s.ok),
        "failed reads": sum(1 for s in reads if not s.ok),
        "failed signups": sum(1 for s in samples if s.kind is Kind.SIGNUP and not s.ok),
        "reads succeeding during the fault": 100.0 * measure.success_ratio(reads_during),
        "read p99 before the fault": measure.latency(reads_before).p99 * MS,
        "write p99 before the fault": measure.latency(writes_before).p99 * MS,
        "read p99 during the fault": measure.latency(reads_during).p99 * MS,
        "read max during the fault": measure.latency(reads_during).max * MS,
        "read p99 during the fault after its first second": measure.latency(settled_reads).p99 * MS,
        "slowest failed write or login during the fault": max(
            (s.latency * MS for s in refused), default=0.0
        ),
        "failed writes or logins without 503 + Retry-After": sum(
            1 for s in refused if not (s.status == 503 and s.retry_after)
        ),
        "recovery": measure.recovery_seconds(samples, fault_start, fault_end),
        "401 answers to valid tokens": sum(1 for s in reads if s.status == 401),
    }
