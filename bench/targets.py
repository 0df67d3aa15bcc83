"""The issue's targets, checked against one run's results with the references of that run."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from bench.ceilings import BcryptCeiling
from bench.scenarios import ScenarioResult
from bench.suites import (
    ALL_CPUS_AFTER,
    ALL_CPUS_BEFORE,
    CEILING_AFTER,
    CEILING_BEFORE,
    CLOSED_LOOP_PREFIX,
)

PEAK_TARGET = 2800.0  # req/s on 2 cores: 1,400 per core, a Go implementation's figure
PEER_FACTOR = 2.0
BARE_FACTOR = 0.30
CPU_PER_READ = 0.15e-3  # seconds of CPU per warm read at the peak, every watched process
COLD_SIZE_FACTOR = 1.2
SMALL_SIZE, DESIGN_SIZE = 10_000, 10_000_000
THOUSAND_P99 = 0.005
SEVENTY_P99 = 0.020
LOGIN_SHARE = 0.9
SIGNUP_SHARE = 0.85
STORM_FACTOR = 2.0
OVERLOAD_GOODPUT = 0.9
SHED_P99 = 0.010
RSS_LIMIT = 100 * 1024 * 1024


@dataclass(frozen=True)
class TargetCheck:
    server: str
    target: str
    measured: str
    reference: str
    ratio: float | None
    passed: bool | None  # None: not measured in this run
    lower_is_better: bool = False  # the target is an upper bound (latency, memory)


def _ratio(a: float, b: float) -> float | None:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else None


def check(
    results: dict[str, ScenarioResult], server: str, bcrypt: BcryptCeiling
) -> list[TargetCheck]:
    """Every target for Gatehouse under `server`; keys are ScenarioResult.key."""

    def get(system: str, scenario: str) -> ScenarioResult | None:
        return results.get(f"{system}/{server}/{scenario}")

    checks: list[TargetCheck] = []

    def add(
        target: str,
        measured: str,
        reference: str,
        ratio: float | None,
        passed: bool | None,
        lower_is_better: bool = False,
    ) -> None:
        checks.append(
            TargetCheck(server, target, measured, reference, ratio, passed, lower_is_better)
        )

    def missing(target: str) -> None:
        add(target, "not run", "", None, None)

    peak = get("gatehouse", "profile-warm-peak")
    peer = get("fastapi-users", "profile-warm-peak")
    bare = get("starlette", "profile-warm-peak")
    if peak is None:
        missing("profile read peak >= 2,800 req/s")
    else:
        rate = peak.summary.rate
        add("profile read peak >= 2,800 req/s", f"{rate:,.0f} req/s", "2,800 req/s (Go: 1,400/core)",
            _ratio(rate, PEAK_TARGET), rate >= PEAK_TARGET)  # fmt: skip
        if peer is not None:
            ratio = _ratio(rate, peer.summary.rate)
            add("profile read peak >= 2x fastapi-users", f"{rate:,.0f} req/s",
                f"fastapi-users {peer.summary.rate:,.0f} req/s", ratio,
                ratio is not None and ratio >= PEER_FACTOR)  # fmt: skip
        else:
            missing("profile read peak >= 2x fastapi-users")
        bare_label = "profile read peak >= 0.30x bare Starlette"
        if bare is not None:
            ratio = _ratio(rate, bare.summary.rate)
            add(bare_label, f"{rate:,.0f} req/s", f"bare Starlette {bare.summary.rate:,.0f} req/s",
                ratio, ratio is not None and ratio >= BARE_FACTOR)  # fmt: skip
        else:
            missing(bare_label)
        _cpu_per_read(peak, bare, add, missing)

    for scenario, limit, label in (
        ("profile-warm-1000conn", THOUSAND_P99, "1000 connections at 1000 req/s: p99 <= 5 ms"),
        ("profile-warm-70pct", SEVENTY_P99, "70% of peak: p99 <= 20 ms"),
    ):
        result = get("gatehouse", scenario)
        if result is None:
            missing(label)
            continue
        p99 = result.summary.p99
        ok = p99 <= limit and result.summary.timeouts == 0 and not result.summary.errors
        add(label, f"p99 {p99 * 1000:.1f} ms at {result.summary.rate:,.0f} req/s"
            + (f"; errors {result.summary.errors}" if result.summary.errors else ""),
            f"{limit * 1000:.0f} ms", _ratio(p99, limit), ok, lower_is_better=True)  # fmt: skip

    closed_loops = sorted(
        (result for key, result in results.items()
         if result.system == "gatehouse" and result.server == server
         and result.scenario.startswith(CLOSED_LOOP_PREFIX)),
        key=lambda result: result.connections,
    )  # fmt: skip
    closed_label = "closed loops of 128 and 512 connections, 15 s: 0 non-2xx"
    if not closed_loops:
        missing(closed_label)
    else:
        refused = [sum(r.summary.errors.values()) for r in closed_loops]
        add(closed_label, "; ".join(
            f"{r.connections} conn.: {r.summary.goodput:,.0f} 2xx/s, p99 {r.summary.p99 * 1000:.0f} ms, "
            + (", ".join(f"{k}: {v:,}" for k, v in r.summary.errors.items()) or "0 non-2xx")
            for r in closed_loops
        ), "0 (before: 31% answered 503 at 128 connections)", None, not any(refused))  # fmt: skip

    for scenario, share, label in (
        ("login", LOGIN_SHARE, "login >= 0.9x bcrypt ceiling"),
        ("signup", SIGNUP_SHARE, "signup >= 0.85x bcrypt ceiling"),
    ):
        result = get("gatehouse", scenario)
        if result is None:
            missing(label)
            continue
        good = result.summary.goodput
        ceiling, reference = _bcrypt_reference(result, bcrypt)
        ratio = _ratio(good, ceiling)
        add(label, f"{good:,.1f} ok/s", reference, ratio, ratio is not None and ratio >= share)
        _against_every_cpu(scenario, result, ceiling, add)
    signup = get("gatehouse", "signup")
    if signup is not None and "lost_signups" in signup.notes:
        lost = signup.notes["lost_signups"]
        add("zero lost acknowledged signups", f"{lost:.0f} lost of {signup.notes['acknowledged']:.0f} acknowledged",
            "0", None, lost == 0)  # fmt: skip

    base, storm = get("gatehouse", "storm-baseline"), get("gatehouse", "storm")
    if base is None or storm is None:
        missing("reads during a login storm: p99 <= 2x without")
    else:
        ratio = _ratio(storm.summary.p99, base.summary.p99)
        ended_early = bool(storm.notes.get("storm_ended_early"))
        logins = storm.notes.get("storm_logins_per_s")
        add("reads during a login storm: p99 <= 2x without",
            f"p99 {storm.summary.p99 * 1000:.1f} ms"
            + (f"; storm {logins:.1f} logins/s" if logins is not None else "")
            + ("; the storm ended before the reads" if ended_early else ""),
            f"without storm {base.summary.p99 * 1000:.1f} ms", ratio,
            ratio is not None and ratio <= STORM_FACTOR and not storm.summary.timeouts and not ended_early,
            lower_is_better=True)  # fmt: skip

    overload = get("gatehouse", "overload")
    if overload is None or peak is None:
        missing("overload at 2x saturation")
    else:
        s = overload.summary
        ratio = _ratio(s.goodput, peak.summary.rate)
        add("overload: goodput >= 0.9x peak", f"{s.goodput:,.0f} 2xx/s of {overload.offered_rate:,.0f} offered",
            f"peak {peak.summary.rate:,.0f} req/s", ratio, ratio is not None and ratio >= OVERLOAD_GOODPUT)  # fmt: skip
        shed = overload.notes.get("shed_p99_s")
        shed_count = s.statuses.get(503, 0)
        add("overload: shed answered in <= 10 ms p99",
            f"{shed_count:,} shed, p99 {shed * 1000:.1f} ms" if shed is not None else "none shed",
            "10 ms", _ratio(shed, SHED_P99) if shed is not None else None,
            shed is not None and shed <= SHED_P99, lower_is_better=True)  # fmt: skip
        add("overload: no timeouts, no restarts",
            f"{s.timeouts} timeouts, {s.connection_errors} broken connections, {overload.restarts} restarts",
            "0", None, s.timeouts == 0 and overload.restarts == 0)  # fmt: skip

    _cold_reads_by_size(get, add, missing)

    peaks = [
        (usage.name, usage.lifetime_peak_rss_bytes)
        for result in results.values()
        if result.system == "gatehouse" and result.server == server and result.usage
        for usage in result.usage.processes
        if usage.name.startswith(("auth-", "http-"))
    ]
    if peaks:
        name, worst = max(peaks, key=lambda item: item[1])
        add("peak RSS of each Gatehouse process <= 100 MB", f"{worst / 2**20:.0f} MB ({name})",
            "100 MB", _ratio(worst, RSS_LIMIT), worst <= RSS_LIMIT, lower_is_better=True)  # fmt: skip
    return checks


def cpu_per_success(result: ScenarioResult) -> float | None:
    """CPU seconds of every process the run watched for this system (both tiers and the data
    stores) per 2xx answer; None without usage or answers."""
    successes = result.summary.goodput * result.summary.seconds
    if result.usage is None or successes <= 0:
        return None
    return sum(p.cpu_seconds for p in result.usage.processes) / successes


def _cpu_per_read(
    peak: ScenarioResult,
    bare: ScenarioResult | None,
    add: Callable[..., None],
    missing: Callable[[str], None],
) -> None:
    label = "CPU per read at the peak <= 0.15 ms"
    spent = cpu_per_success(peak)
    if spent is None:
        missing(label)
        return
    bare_spent = None if bare is None else cpu_per_success(bare)
    reference = "0.15 ms" + (f"; bare Starlette {bare_spent * 1000:.3f} ms" if bare_spent else "")
    add(label, f"{spent * 1000:.3f} ms", reference, _ratio(spent, CPU_PER_READ),
        spent <= CPU_PER_READ, lower_is_better=True)  # fmt: skip


def _cold_reads_by_size(
    get: Callable[[str, str], ScenarioResult | None],
    add: Callable[..., None],
    missing: Callable[[str], None],
) -> None:
    label = "cold read p99 at 10,000,000 users <= 1.2x at 10,000"
    small = get("gatehouse", f"profile-cold-{SMALL_SIZE}-open")
    large = get("gatehouse", f"profile-cold-{DESIGN_SIZE}-open")
    if small is None or large is None:
        missing(label)
        return
    ratio = _ratio(large.summary.p99, small.summary.p99)
    ok = ratio is not None and ratio <= COLD_SIZE_FACTOR and not large.summary.errors
    add(label, f"p99 {large.summary.p99 * 1000:.1f} ms", f"10,000 users: p99 {small.summary.p99 * 1000:.1f} ms",
        ratio, ok, lower_is_better=True)  # fmt: skip


def _beside(
    result: ScenarioResult, before_note: str, after_note: str
) -> tuple[float, float, float] | None:
    """(mean, before, after) of a figure measured right before and after a run; None when the
    run does not have both."""
    if before_note not in result.notes or after_note not in result.notes:
        return None
    before, after = result.notes[before_note], result.notes[after_note]
    return (before + after) / 2, before, after


def _against_every_cpu(
    scenario: str, result: ScenarioResult, ceiling: float, add: Callable[..., None]
) -> None:
    """Reported beside a hashing target: the run against bcrypt alone on every CPU at once
    (measured right before and after it), which splits its miss into what the machine loses
    when every core hashes and what the requests cost besides the hash."""
    measured = _beside(result, ALL_CPUS_BEFORE, ALL_CPUS_AFTER)
    if measured is None:
        return
    alone, before, after = measured
    add(f"{scenario}s vs bcrypt alone on every CPU at once (reported)",
        f"{result.summary.goodput:,.1f} ok/s",
        f"bcrypt alone {alone:,.1f}/s beside the run (before {before:,.1f}, after {after:,.1f}): "
        f"{alone / ceiling:.2f}x the ceiling", _ratio(result.summary.goodput, alone), None)  # fmt: skip


def _bcrypt_reference(result: ScenarioResult, bcrypt: BcryptCeiling) -> tuple[float, str]:
    """The ceiling a hashing run is held to: the mean of those measured right before and after
    it when it has them, else the one measured at the run's start; and how to show it."""
    measured = _beside(result, CEILING_BEFORE, CEILING_AFTER)
    if measured is None:
        return bcrypt.per_second, f"bcrypt ceiling {bcrypt.per_second:,.1f}/s (cost {bcrypt.cost})"
    ceiling, before, after = measured
    return ceiling, (
        f"bcrypt ceiling {ceiling:,.1f}/s beside the run (before {before:,.1f}, after "
        f"{after:,.1f}; {bcrypt.per_second:,.1f} at the bench's start; cost {bcrypt.cost})"
    )
