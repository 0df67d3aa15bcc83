"""The closed-loop target: any answer other than 2xx in either loop misses it."""

from __future__ import annotations

from bench.ceilings import BcryptCeiling
from bench.latency import Summary
from bench.scenarios import ScenarioResult
from bench.suites import CLOSED_LOOP_PREFIX
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
