"""The targets: each row passes, misses or says it was not run, against its reference."""

from __future__ import annotations

from bench.ceilings import BcryptCeiling
from bench.latency import Summary
from bench.procstats import ProcessUsage, WindowUsage
from bench.scenarios import ScenarioResult
from bench.suites import (
    ALL_CPUS_AFTER,
    ALL_CPUS_BEFORE,
    CEILING_AFTER,
    CEILING_BEFORE,
    CLOSED_LOOP_PREFIX,
)
from bench.targets import TargetCheck, check

BCRYPT = BcryptCeiling(cost=10, verify_seconds=0.06, cpus=2)
LABEL = "closed loops of 128 and 512 connections, 15 s: 0 non-2xx"


def closed_loop(connections: int, statuses: dict[int, int], timeouts: int = 0) -> ScenarioResult:
    summary = Summary(
        seconds=15.0, answered=sum(statuses.values()), statuses=statuses, timeouts=timeouts,
        connection_errors=0, p50=0.03, p90=0.05, p99=0.08, max=0.2,
    )  # fmt: skip
    return ScenarioResult(
        "gatehouse", "granian", f"{CLOSED_LOOP_PREFIX}{connections}", "wrk", connections, None,
        summary, None,
    )  # fmt: skip


def closed_loop_check(*results: ScenarioResult) -> TargetCheck:
    checks = check({result.key: result for result in results}, "granian", BCRYPT)
    return next(c for c in checks if c.target == LABEL)


def test_closed_loops_with_only_2xx_pass() -> None:
    row = closed_loop_check(closed_loop(128, {200: 60_000}), closed_loop(512, {200: 58_000}))
    assert row.passed is True
    assert row.measured.index("128 conn.") < row.measured.index("512 conn.")
    assert row.measured.count("0 non-2xx") == 2


def test_a_refusal_or_a_timeout_in_either_loop_misses_the_target() -> None:
    refused = closed_loop_check(closed_loop(128, {200: 60_000}), closed_loop(512, {200: 9, 503: 1}))
    assert refused.passed is False
    assert "503: 1" in refused.measured
    late = closed_loop_check(closed_loop(128, {200: 60_000}, timeouts=1))
    assert late.passed is False


def test_no_closed_loop_run_is_reported_as_not_run() -> None:
    row = closed_loop_check()
    assert (row.measured, row.passed) == ("not run", None)


def timed(
    scenario: str,
    system: str = "gatehouse",
    *,
    answered: int,
    p99: float = 0.01,
    cpu_seconds: float = 0.0,
) -> ScenarioResult:
    summary = Summary(
        seconds=10.0, answered=answered, statuses={200: answered}, timeouts=0,
        connection_errors=0, p50=p99 / 2, p90=p99 / 2, p99=p99, max=p99,
    )  # fmt: skip
    usage = WindowUsage(
        seconds=10.0, processes=[ProcessUsage("auth-1", 1, cpu_seconds, 0, 0)],
        machine_busy_seconds=cpu_seconds, generator_cpu_seconds=0.0, harness_cpu_seconds=0.0,
    )  # fmt: skip
    return ScenarioResult(system, "granian", scenario, "wrk", 64, None, summary, usage)


def row(label: str, *results: ScenarioResult) -> TargetCheck:
    checks = check({result.key: result for result in results}, "granian", BCRYPT)
    return next(c for c in checks if c.target == label)


def test_the_peak_is_held_against_bare_starlette_and_its_cpu_per_read() -> None:
    bare = timed("profile-warm-peak", "starlette", answered=270_000, cpu_seconds=12.0)
    slow = timed("profile-warm-peak", answered=30_000, cpu_seconds=15.0)  # 0.5 ms per read
    fast = timed("profile-warm-peak", answered=90_000, cpu_seconds=9.0)  # 0.1 ms per read
    assert row("profile read peak >= 0.30x bare Starlette", slow, bare).passed is False
    assert row("profile read peak >= 0.30x bare Starlette", fast, bare).passed is True
    missed = row("CPU per read at the peak <= 0.15 ms", slow, bare)
    assert (missed.measured, missed.passed) == ("0.500 ms", False)
    assert "bare Starlette 0.044 ms" in missed.reference
    assert row("CPU per read at the peak <= 0.15 ms", fast).passed is True


def test_cold_reads_at_the_design_size_are_held_to_their_p99_at_ten_thousand() -> None:
    label = "cold read p99 at 10,000,000 users <= 1.2x at 10,000"
    small = timed("profile-cold-10000-open", answered=4000, p99=0.010)
    assert row(label, small).passed is None  # the design size was not run
    assert row(label, small, timed("profile-cold-10000000-open", answered=4000, p99=0.011)).passed
    late = row(label, small, timed("profile-cold-10000000-open", answered=4000, p99=0.013))
    assert late.passed is False and late.ratio is not None and round(late.ratio, 1) == 1.3


def hashing_run(scenario: str, answered: int, before: float, after: float) -> ScenarioResult:
    result = timed(scenario, answered=answered)  # over 10 s
    result.notes.update({CEILING_BEFORE: before, CEILING_AFTER: after})
    return result


def test_logins_and_signups_are_held_to_the_ceiling_measured_beside_them() -> None:
    # The bench's start measured 33.3 verifies/s (BCRYPT); the host then slowed to 28-30/s.
    login = row("login >= 0.9x bcrypt ceiling", hashing_run("login", 270, 28.0, 30.0))
    assert login.ratio is not None and abs(login.ratio - 27.0 / 29.0) < 1e-9
    assert login.passed is True
    assert "before 28.0, after 30.0" in login.reference
    assert "33.3 at the bench's start" in login.reference
    # ...or sped up to 36/s: 0.85x of the start's ceiling is 0.79x of the one beside the run.
    signup = row("signup >= 0.85x bcrypt ceiling", hashing_run("signup", 283, 36.0, 36.0))
    assert signup.ratio is not None and abs(signup.ratio - 28.3 / 36.0) < 1e-9
    assert signup.passed is False


def test_a_hashing_run_is_reported_against_bcrypt_alone_on_every_cpu() -> None:
    """What the machine loses when every core hashes, apart from what the logins cost."""
    result = hashing_run("login", 240, 30.0, 30.0)
    result.notes.update({ALL_CPUS_BEFORE: 26.0, ALL_CPUS_AFTER: 28.0})
    reported = row("logins vs bcrypt alone on every CPU at once (reported)", result)
    assert reported.passed is None
    assert reported.ratio is not None and abs(reported.ratio - 24.0 / 27.0) < 1e-9
    assert "bcrypt alone 27.0/s beside the run (before 26.0, after 28.0): 0.90x the ceiling" in (
        reported.reference
    )


def test_a_hashing_run_without_its_own_ceilings_uses_the_one_from_the_start() -> None:
    login = row("login >= 0.9x bcrypt ceiling", timed("login", answered=310))
    assert login.ratio is not None and abs(login.ratio - 31.0 / BCRYPT.per_second) < 1e-9
    assert login.passed is True
    assert "beside" not in login.reference
