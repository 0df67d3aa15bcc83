"""The report's account of what bounded a missed target, from one run's CPU figures."""

from __future__ import annotations

import pytest

from bench.bounds import cpu_shares, explain, load_notes
from bench.latency import Summary
from bench.procstats import ProcessUsage, WindowUsage
from bench.scenarios import ScenarioResult
from bench.targets import TargetCheck

CPUS = 2
SECONDS = 10.0


def _result(
    scenario: str, successes: int, cpu: dict[str, float], generator: float = 0.0
) -> ScenarioResult:
    summary = Summary(
        seconds=SECONDS, answered=successes, statuses={200: successes}, timeouts=0,
        connection_errors=0, p50=0.001, p90=0.002, p99=0.003, max=0.004,
    )  # fmt: skip
    processes = [
        ProcessUsage(name, pid, seconds, 1, 1) for pid, (name, seconds) in enumerate(cpu.items())
    ]
    busy = sum(cpu.values()) + generator
    usage = WindowUsage(SECONDS, processes, busy, generator, 0.0)
    return ScenarioResult("gatehouse", "granian", scenario, "wrk", 64, None, summary, usage)


def _check(target: str, passed: bool) -> TargetCheck:
    return TargetCheck("granian", target, "", "", None, passed)


def test_workers_and_replicas_count_with_their_tier() -> None:
    result = _result(
        "login", 300, {"auth-1": 8.0, "auth-2": 8.0, "http-1 worker 1": 1.0, "redis": 0.5}, 1.0
    )
    shares = cpu_shares(result, CPUS)
    assert shares["gatehouse auth"] == 0.8
    assert shares["gatehouse http"] == 0.05
    assert shares["load generators"] == 0.05
    assert round(shares["idle"], 3) == 0.075


def test_what_the_host_kept_is_its_own_share_not_outside_work() -> None:
    result = _result("login", 300, {"auth-1": 8.0, "http-1 worker 1": 1.0})
    assert result.usage is not None
    # 2 CPU-seconds of steal and 1 of another process, on top of what the run used.
    result.usage.machine_busy_seconds += 3.0
    result.usage.machine_steal_seconds = 2.0
    shares = cpu_shares(result, CPUS)
    assert shares["host"] == 0.1
    assert shares["outside"] == 0.05
    assert round(shares["idle"], 3) == 0.4


def test_a_scenario_the_host_kept_more_than_2_percent_of_the_cores_from_gets_a_note() -> None:
    kept, spared = (_result(name, 300, {"auth-1": 8.0}) for name in ("login", "signup"))
    for result, steal in ((kept, 0.6), (spared, 0.3)):  # 3% and 1.5% of 20 CPU-seconds
        assert result.usage is not None
        result.usage.machine_busy_seconds += steal
        result.usage.machine_steal_seconds = steal
    notes = load_notes([kept, spared], CPUS)
    assert len(notes) == 1 and "login" in notes[0], notes
    assert "the host kept 0.60 CPU-seconds (3.0%)" in notes[0]
    assert "pausing" not in notes[0]


@pytest.mark.parametrize(("pauses", "samples"), [(1, "1 sample"), (3, "3 samples")])
def test_a_scenario_the_host_paused_gets_a_note_however_little_it_kept(
    pauses: int, samples: str
) -> None:
    paused = _result("storm", 300, {"auth-1": 8.0})
    assert paused.usage is not None
    paused.usage.machine_busy_seconds += 0.1
    paused.usage.machine_steal_seconds = 0.1
    paused.usage.host_pauses = pauses
    (note,) = load_notes([paused], CPUS)
    assert f"in {samples} (0.25 s apart) a vCPU had lost 50 ms or more" in note, note


def test_a_missed_read_target_is_set_against_the_cost_of_a_read_at_the_peak() -> None:
    peak = _result(
        "profile-warm-peak", 60_000, {"http-1 worker 1": 9.0, "auth-1": 9.0, "redis": 1.2}
    )
    seventy = _result(
        "profile-warm-70pct", 40_000, {"http-1 worker 1": 9.0, "auth-1": 9.0, "redis": 1.2}
    )
    results = {r.key: r for r in (peak, seventy)}
    lines = explain(results, [_check("70% of peak: p99 <= 20 ms", False)], CPUS)
    bullet = next(line for line in lines if line.startswith("- "))
    assert "`profile-warm-70pct`" in bullet
    assert "0.48 ms of CPU per 2xx against 0.32 ms under wrk at the peak (1.5x)" in bullet
    assert "4% idle" in bullet


def test_targets_that_passed_get_no_explanation() -> None:
    login = _result("login", 300, {"auth-1": 18.0})
    assert explain({login.key: login}, [_check("login >= 0.9x bcrypt ceiling", True)], CPUS) == []
    missed = explain(
        {login.key: login}, [_check("login >= 0.9x bcrypt ceiling", False)], CPUS, 0.058
    )
    assert any(
        "gatehouse auth 90%" in line
        and "60.0 ms of CPU per 2xx, password hashing included against 58.0 ms for the verify alone"
        in line
        for line in missed
    )


def test_the_storm_names_its_login_rate_not_a_cost_per_read() -> None:
    storm = _result("storm", 2000, {"auth-1": 18.0})
    storm.notes["storm_logins_per_s"] = 28.25
    lines = explain(
        {storm.key: storm}, [_check("reads during a login storm: p99 <= 2x without", False)], CPUS
    )
    bullet = next(line for line in lines if line.startswith("- "))
    assert bullet.endswith("the storm's logins were answered at 28.2/s.")
    assert "per 2xx" not in bullet
