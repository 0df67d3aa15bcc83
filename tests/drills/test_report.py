"""The drills' arithmetic and tables, without a stack: windows, percentiles, recovery, targets."""

from __future__ import annotations

import math

from drills.faults import BY_NAME, DRILLS
from drills.measure import (
    CONNECTION_ERROR,
    TIMEOUT,
    Kind,
    Sample,
    client_waits,
    failures_by_status,
    latency,
    percentile,
    recovery_seconds,
    success_ratio,
    windows,
)
from drills.report import drill_table, summary_table
from drills.runner import DrillResult, Phases, compute_metrics, latency_windows
from drills.targets import (
    HEALTHY_BASELINES,
    SHORT_OVER_HEALTHY,
    SHORT_P99_SLACK,
    TARGETS,
    Target,
    evaluate,
    targets_for,
)


def _read(due: float, latency_s: float, status: int = 200, retry_after: bool = False) -> Sample:
    return Sample(Kind.READ, due, latency_s, status, retry_after)


def test_nearest_rank_percentiles() -> None:
    values = [float(n) for n in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


def test_latency_counts_failures_and_timeouts_with_their_wait() -> None:
    figures = latency([_read(0, 0.010), _read(0, 0.020, 503), _read(0, 15.0, TIMEOUT)])
    assert (figures.count, figures.failures) == (3, 2)
    assert figures.p50 == 0.020
    assert figures.max == 15.0


def test_samples_fall_into_the_window_of_their_due_time() -> None:
    before, during, after = windows(fault_start=10.0, fault_end=30.0, load_end=40.0)
    late_answer = _read(9.9, 5.0)  # due before the fault, answered during it
    assert before.holds(late_answer) and not during.holds(late_answer)
    assert during.holds(_read(10.0, 0.001)) and not during.holds(_read(30.0, 0.001))
    assert after.holds(_read(39.9, 0.001))


def test_failures_are_counted_by_kind_and_status() -> None:
    samples = [
        _read(1, 0.01, 503),
        _read(2, 0.01, 503),
        _read(3, 0.01, CONNECTION_ERROR),
        Sample(Kind.SIGNUP, 4, 0.01, TIMEOUT),
        _read(5, 0.01, 200),
    ]
    assert failures_by_status(samples) == {
        "read 503": 2,
        "read connection": 1,
        "signup timeout": 1,
    }


def test_recovery_runs_to_the_end_of_the_last_failure_since_the_fault_began() -> None:
    samples = [
        _read(1.0, 0.1, 503),  # before the fault: not the fault's doing
        _read(12.0, 0.1, 503),
        _read(30.2, 0.5, 503),  # due after the end, failed until 30.7
        _read(31.0, 0.01),
    ]
    assert math.isclose(recovery_seconds(samples, 10.0, 30.0), 0.7)
    assert recovery_seconds([_read(12.0, 0.1, 503)], 10.0, 30.0) == 0.0
    assert recovery_seconds([_read(31.0, 0.01)], 10.0, 30.0) == 0.0


def test_success_ratio_of_nothing_is_full() -> None:
    assert success_ratio([]) == 1.0
    assert success_ratio([_read(0, 0.01), _read(0, 0.01, 503)]) == 0.5


def test_a_missing_or_unmeasured_metric_is_a_miss_never_a_pass() -> None:
    target = Target("failed reads", "at most", 0)
    assert target.passed(0) and not target.passed(1)
    assert not target.passed(None) and not target.passed(math.nan)
    share = Target("reads succeeding during the fault", "at least", 99.9, "%")
    assert share.passed(99.95) and not share.passed(99.8)
    (check,) = evaluate((target,), {})
    assert check.measured is None and not check.passed


def test_every_drill_has_targets_and_each_checks_lost_writes() -> None:
    assert set(TARGETS) == set(BY_NAME)
    for drill in DRILLS:
        metrics = [target.metric for target in TARGETS[drill.name]]
        assert "acknowledged writes lost" in metrics, drill.name
        assert drill.short.fault <= 5 < drill.full.fault or drill.name == "rolling-restart"


def test_fail_fast_metrics_of_a_primary_outage() -> None:
    samples = [
        _read(5.0, 0.005),
        _read(12.0, 0.004),
        _read(13.0, 0.003, 503),
        Sample(Kind.SIGNUP, 12.0, 0.040, 503, retry_after=True),
        Sample(Kind.LOGIN, 14.0, 0.150, 503, retry_after=True),  # slow to say no
        Sample(Kind.NICKNAME, 15.0, 0.030, 500),  # fast, but no 503 + Retry-After
        Sample(Kind.SIGNUP, 16.0, 20.0, 201),  # held through the outage, then served
    ]
    metrics = compute_metrics(samples, fault_start=10.0, fault_end=30.0, load_end=40.0)
    assert metrics["reads succeeding during the fault"] == 50.0
    assert metrics["slowest failed write or login during the fault"] == 20000.0
    assert metrics["failed writes or logins without 503 + Retry-After"] == 2
    assert metrics["failed reads"] == 1
    assert metrics["read p99 during the fault after its first second"] == 4.0
    assert metrics["read p99 before the fault"] == 5.0  # the read at 5.0 s alone
    assert math.isnan(metrics["write p99 before the fault"])  # no write before the fault


def test_the_table_shows_windows_targets_and_verdicts() -> None:
    samples = [_read(1.0, 0.002), _read(12.0, 0.003, 503), _read(35.0, 0.004)]
    metrics = compute_metrics(samples, 10.0, 30.0, 40.0)
    metrics["acknowledged writes lost"] = 1
    result = DrillResult(
        name="primary-outage",
        title="§1 MariaDB primary stopped",
        short=False,
        rate=100.0,
        phases=Phases(10.0, 20.0, 10.0),
        fault_start=10.0,
        fault_end=30.0,
        load_end=40.0,
        requests={"read": 3},
        failures=failures_by_status(samples),
        writes_checked=5,
        lost=["signup of d1 acknowledged, login now: 401"],
        windows=latency_windows(samples, 10.0, 30.0, 40.0),
        metrics=metrics,
        checks=evaluate(TARGETS["primary-outage"], metrics),
        notes=[],
        wall_seconds=45.0,
    )
    table = "\n".join(drill_table(result))
    assert "| failures by status | read 503 x1 |" in table
    assert "| acknowledged writes lost | 1 of 5 checked |" in table
    assert "| reads during (10.0-30.0 s) | 1 (1 failed): p50 3.0 / p99 3.0 / max 3.0 ms |" in table
    assert "acknowledged writes lost <= 0 | **miss** |" in table
    assert "signup of d1 acknowledged" in table
    assert not result.passed
    assert summary_table([result])[-1].startswith("| primary-outage | ")


def test_short_drills_relax_only_the_p99_bounds() -> None:
    for name, full in TARGETS.items():
        short = targets_for(name, short=True)
        assert targets_for(name, short=False) == full
        for before, after in zip(full, short, strict=True):
            expected = before.value * (
                SHORT_P99_SLACK if before.metric.startswith("read p99") else 1
            )
            assert after.value == expected, (name, before.metric)
    assert any(
        target.value != relaxed.value
        for target, relaxed in zip(
            TARGETS["redis-freeze"], targets_for("redis-freeze", short=True), strict=True
        )
    )


def test_a_short_drill_allows_twice_the_latency_the_stack_had_before_its_fault() -> None:
    """A slow machine makes a healthy stack slow too: reads at 384 ms p99 before a fault once,
    against 250 ms allowed during it; writes at up to 262 ms before a primary outage whose
    refusals were to take 100 ms. A fault must not make the stack much slower than that."""
    quiet = {"read p99 before the fault": 20.0, "write p99 before the fault": 30.0}
    slow = {"read p99 before the fault": 384.6, "write p99 before the fault": 262.5}
    for name, full in TARGETS.items():
        on_quiet = targets_for(name, short=True, healthy=quiet)
        on_slow = targets_for(name, short=True, healthy=slow)
        assert on_quiet == targets_for(name, short=True), name
        for target, relaxed in zip(full, on_slow, strict=True):
            baseline = HEALTHY_BASELINES.get(target.metric)
            if baseline is None:
                assert relaxed == target
            else:
                assert relaxed.value == slow[baseline] * SHORT_OVER_HEALTHY, target.metric
        assert targets_for(name, short=False, healthy=slow) == full
    relaxed_metrics = {target.metric for targets in TARGETS.values() for target in targets} & set(
        HEALTHY_BASELINES
    )
    assert relaxed_metrics == set(HEALTHY_BASELINES)  # each names a real target


def test_client_waits_count_only_requests_that_were_written() -> None:
    samples = [
        Sample(Kind.READ, 0.0, 0.010, 200, waited=0.001),
        Sample(Kind.READ, 0.1, 0.020, 200, waited=0.003),
        Sample(Kind.READ, 0.2, 0.030, CONNECTION_ERROR),  # never written: no connection
    ]
    waits = client_waits(samples)
    assert (waits.count, waits.p50, waits.max) == (2, 0.001, 0.003)
    assert math.isnan(client_waits([]).p99)
