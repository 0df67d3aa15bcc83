"""What bounded each missed target, from the run's own CPU accounting, and the notes on what
beside the system under test may have moved a scenario's figures.

Profiles take a person (docs/performance.md has them); what a run can say by itself is where
the machine's CPU went while the target's scenario ran and what one answer cost, set against
the closed-loop peak of the same run.
"""

from __future__ import annotations

from collections import defaultdict

from bench.procstats import HOST_PAUSE_SECONDS, SAMPLE_SECONDS
from bench.scenarios import ScenarioResult
from bench.targets import TargetCheck

# A scenario whose cores the host kept (steal) for more than this share of their time gets a
# note; every scenario's share is in the report's CPU table ("host").
HOST_STEAL_NOTED = 0.02
# Target name prefix -> the scenario whose window explains it.
_SCENARIO_OF = {
    "profile read peak": "profile-warm-peak",
    "1000 connections": "profile-warm-1000conn",
    "70% of peak": "profile-warm-70pct",
    "login": "login",
    "signup": "signup",
    "reads during a login storm": "storm",
    "overload": "overload",
}
_GATEHOUSE_GROUPS = ("gatehouse http", "gatehouse auth", "redis")


def explain(
    results: dict[str, ScenarioResult], checks: list[TargetCheck], cpus: int,
    verify_seconds: float | None = None,
) -> list[str]:  # fmt: skip
    """One bullet per missed target: CPU shares in its scenario and the cost of an answer
    (`verify_seconds`: one bcrypt verify alone, what a login or signup cannot cost less than)."""
    lines = []
    for check in checks:
        if check.passed is not False:
            continue
        scenario = next((s for p, s in _SCENARIO_OF.items() if check.target.startswith(p)), None)
        result = results.get(f"gatehouse/{check.server}/{scenario}") if scenario else None
        if result is None or result.usage is None or result.usage.seconds <= 0:
            continue
        peak = results.get(f"gatehouse/{check.server}/profile-warm-peak")
        lines.append(f"- {check.server}, {check.target}: {_where_cpu_went(result, cpus)}"
                     f"{_answer_cost(result, peak, verify_seconds)}")  # fmt: skip
    if not lines:
        return []
    return [
        "## What bounded the missed targets in this run",
        "",
        "Shares of the machine's CPU during each target's scenario; *per 2xx* is the CPU time "
        "of the Gatehouse processes and Redis for one successful answer. A machine with no idle "
        "CPU bounds every figure measured on it.",
        "",
        *lines,
        "",
    ]


def cpu_shares(result: ScenarioResult, cpus: int) -> dict[str, float]:
    """Share of the machine's CPU per process group during the scenario (1.0 = every core)."""
    assert result.usage is not None
    capacity = result.usage.seconds * cpus
    seconds: dict[str, float] = defaultdict(float)
    for process in result.usage.processes:
        seconds[group(process.name)] += process.cpu_seconds
    seconds["load generators"] = result.usage.generator_cpu_seconds
    seconds["harness"] = result.usage.harness_cpu_seconds
    seconds["host"] = result.usage.machine_steal_seconds
    seconds["outside"] = result.usage.outside_cpu_seconds
    seconds["idle"] = max(0.0, capacity - result.usage.machine_busy_seconds)
    return {name: value / capacity for name, value in seconds.items()}


def group(name: str) -> str:
    """The report's name for a process: replicas and workers count with their tier."""
    if name.startswith("auth-"):
        return "gatehouse auth"
    if name.startswith("http-"):
        return "gatehouse http"
    return name.split(" worker ")[0].split(" (")[0]


def _where_cpu_went(result: ScenarioResult, cpus: int) -> str:
    shares = cpu_shares(result, cpus)
    named = sorted(
        ((name, share) for name, share in shares.items() if name != "idle" and share >= 0.01),
        key=lambda item: -item[1],
    )
    listed = ", ".join(f"{name} {share:.0%}" for name, share in named)
    return f"during `{result.scenario}` the machine was {shares['idle']:.0%} idle ({listed})"


def cpu_ms_per_success(result: ScenarioResult) -> float | None:
    """CPU ms of the Gatehouse processes and Redis per 2xx answer in the scenario's window."""
    if result.usage is None or not result.summary.goodput:
        return None
    used = sum(p.cpu_seconds for p in result.usage.processes if group(p.name) in _GATEHOUSE_GROUPS)
    return 1000 * used / (result.summary.goodput * result.usage.seconds)


def _answer_cost(
    result: ScenarioResult, peak: ScenarioResult | None, verify_seconds: float | None
) -> str:
    if result.scenario == "storm":  # its 2xx are the reads; the CPU went to the logins
        logins = result.notes.get("storm_logins_per_s")
        return f"; the storm's logins were answered at {logins:.1f}/s." if logins else "."
    cost = cpu_ms_per_success(result)
    if cost is None:
        return "."
    if result.scenario in ("login", "signup"):
        alone = (
            f" against {1000 * verify_seconds:.1f} ms for the verify alone"
            if verify_seconds
            else ""
        )
        return f"; {cost:.1f} ms of CPU per 2xx, password hashing included{alone}."
    reference = cpu_ms_per_success(peak) if peak is not None and peak is not result else None
    if reference is None:
        return f"; {cost:.2f} ms of CPU per 2xx."
    return (
        f"; {cost:.2f} ms of CPU per 2xx against {reference:.2f} ms under wrk at the peak "
        f"({cost / reference:.1f}x)."
    )


def load_notes(results: list[ScenarioResult], cpus: int) -> list[str]:
    """What in a scenario's run may have moved its figures beside the system under test: other
    processes' load, the host's steal, a late generator, warm reads among cold ones."""
    notes = []
    for r in results:
        if r.usage is not None and r.usage.seconds > 0:
            capacity = r.usage.seconds * cpus
            share = r.usage.outside_cpu_seconds / capacity
            if share > 0.10:
                notes.append(
                    f"{r.key}: {share:.0%} of the machine's CPU went to processes outside this "
                    "benchmark during the scenario: its figures understate the system."
                )
            steal, pauses = r.usage.machine_steal_seconds, r.usage.host_pauses
            if pauses or steal / capacity > HOST_STEAL_NOTED:
                paused = (
                    f"; in {pauses} sample{'s' if pauses > 1 else ''} ({SAMPLE_SECONDS:g} s apart) "
                    f"a vCPU had lost {HOST_PAUSE_SECONDS * 1000:.0f} ms or more, a pause of "
                    "what ran on it"
                    if pauses
                    else ""
                )
                notes.append(
                    f"{r.key}: the host kept {steal:.2f} CPU-seconds ({steal / capacity:.1%}) "
                    f"from this virtual machine during the scenario (steal){paused}: its "
                    "figures understate the system."
                )
        lag = r.notes.get("generator_lag_max_s")
        if lag is not None and lag > 0.05:
            notes.append(f"{r.key}: the open-loop generator sent a request up to {lag * 1000:.0f} ms "
                         "late (counted in the latency, as it must be).")  # fmt: skip
        if r.notes.get("cold_reused"):
            notes.append(
                f"{r.key}: {r.notes['cold_reused']:.0f} requests re-read a session (warm)."
            )
    return notes
