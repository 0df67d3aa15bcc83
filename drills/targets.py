"""The issue's targets for each drill, as data: a metric the drill measures, and its bound.

Each drill names its targets here; `evaluate` compares them with a finished drill's metrics.
A metric the drill could not measure counts as a miss, never as a pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal


@dataclass(frozen=True)
class Target:
    metric: str  # key in a drill's metrics
    bound: Literal["at most", "at least"]
    value: float
    unit: str = ""  # how the metric and value print: "", "%", "ms", "s"
    source: str = ""  # where the issue sets it, e.g. "§1"

    def passed(self, measured: float | None) -> bool:
        if measured is None or math.isnan(measured):
            return False
        if self.bound == "at most":
            return measured <= self.value
        return measured >= self.value

    def describe(self) -> str:
        sign = "<=" if self.bound == "at most" else ">="
        return f"{self.metric} {sign} {format_value(self.value, self.unit)}"


@dataclass(frozen=True)
class Check:
    target: Target
    measured: float | None

    @property
    def passed(self) -> bool:
        return self.target.passed(self.measured)


def format_value(value: float | None, unit: str) -> str:
    if value is None or math.isnan(value):
        return "not measured"
    if unit == "%":
        return f"{value:.2f}%"
    if unit == "ms":
        return f"{value:.1f} ms"
    if unit == "s":
        return f"{value:.2f} s"
    return f"{value:g}"


def evaluate(targets: tuple[Target, ...], metrics: dict[str, float]) -> list[Check]:
    return [Check(target, metrics.get(target.metric)) for target in targets]


# Every drill: no acknowledged write may be lost (§8: "verifies every acknowledged write").
NO_LOSS = Target("acknowledged writes lost", "at most", 0, source="§8")

TARGETS: dict[str, tuple[Target, ...]] = {
    "primary-outage": (
        Target("reads succeeding during the fault", "at least", 99.9, "%", "§1"),
        NO_LOSS,
        Target("slowest failed write or login during the fault", "at most", 100, "ms", "§1"),
        Target("failed writes or logins without 503 + Retry-After", "at most", 0, source="§1"),
        Target("recovery", "at most", 1.0, "s", "§1"),
    ),
    "http-worker-kill": (
        Target("failures beyond the requests on the dead worker", "at most", 0, source="§2"),
        Target("new worker answering after", "at most", 2.0, "s", "§2"),
        NO_LOSS,
    ),
    "redis-freeze": (
        Target("read p99 during the fault after its first second", "at most", 50, "ms", "§3"),
        Target("read max during the fault", "at most", 1000, "ms", "§3"),
        NO_LOSS,
    ),
    "auth-replica-freeze": (
        Target("read p99 during the fault after its first second", "at most", 100, "ms", "§4"),
        # §4 saw reads held for the whole 10 s deadline; a read moves off the frozen replica
        # once a ping goes unanswered.
        Target("read max during the fault", "at most", 1000, "ms", "§4"),
        Target("failed reads", "at most", 0, source="§4"),
        NO_LOSS,
    ),
    "http-restart": (
        Target("401 answers to valid tokens", "at most", 0, source="§5"),
        NO_LOSS,
    ),
    "auth-replica-kill": (
        Target("failed reads", "at most", 0, source="§4"),
        Target("dead replica's record outlived its lease TTL by", "at most", 1.0, "s", "§4"),
        NO_LOSS,
    ),
    "rolling-restart": (
        Target("failed requests", "at most", 0, source="§4"),
        NO_LOSS,
    ),
    "replica-lag": (
        Target("stale reads after the user's own write", "at most", 0, source="issue 13 intro"),
        Target("failed reads", "at most", 0, source="issue 13 intro"),
        NO_LOSS,
    ),
    "redis-restart-empty": (
        Target("logged-out tokens accepted again", "at most", 0, source="issue 13 intro"),
        NO_LOSS,
    ),
    "etcd-outage": (
        Target("failed signups", "at most", 0, source="§7"),
        Target("failed reads", "at most", 0, source="§7"),
        NO_LOSS,
    ),
    "connection-flood": (
        Target("read p99 during the fault", "at most", 50, "ms", "issue 13 intro"),
        Target("failed reads", "at most", 0, source="issue 13 intro"),
        NO_LOSS,
    ),
}


# The short drills of `make test` run on a shared 2-core CI machine where a healthy stack's read
# p99 alone reaches 80-300 ms (384 ms once just before a fault). Their read-p99 bounds are
# SHORT_P99_SLACK times the issue's. Their latency bounds are also SHORT_OVER_HEALTHY times the
# same run's figure before the fault when that is more (a write refused in 512 ms during a
# primary outage, when writes had taken up to 262 ms just before it): a fault must not make the
# stack much slower than it just was. Every other target (counts, lost writes) stays exact, and
# the full drill (`make drill`) measures the figures.
SHORT_P99_SLACK = 5.0
SHORT_OVER_HEALTHY = 2.0
# Each latency target, and the figure before the fault that a short run's bound may be
# SHORT_OVER_HEALTHY times.
HEALTHY_BASELINES = {
    "read p99 during the fault": "read p99 before the fault",
    "read p99 during the fault after its first second": "read p99 before the fault",
    "slowest failed write or login during the fault": "write p99 before the fault",
}


def targets_for(
    name: str, *, short: bool, healthy: Mapping[str, float] | None = None
) -> tuple[Target, ...]:
    """The targets a run of drill `name` is judged by; `healthy` holds the run's figures before
    the fault (its metrics), which a short run's latency bounds allow SHORT_OVER_HEALTHY
    times of."""
    if not short:
        return TARGETS[name]
    figures = healthy or {}

    def relaxed(target: Target) -> Target:
        value = target.value
        if target.metric.startswith("read p99"):
            value *= SHORT_P99_SLACK
        baseline = figures.get(HEALTHY_BASELINES.get(target.metric, ""), math.nan)
        if not math.isnan(baseline):
            value = max(value, baseline * SHORT_OVER_HEALTHY)
        return replace(target, value=value)

    return tuple(relaxed(target) for target in TARGETS[name])
