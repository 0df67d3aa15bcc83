"""Whole-run percentiles from per-segment quantiles, and exact ones from samples."""

from __future__ import annotations

import math
import random

import pytest

from bench.latency import QUANTILE_GRID, Segment, exact_percentile, from_samples, merge


def _segment(latencies: list[float]) -> Segment:
    ordered = sorted(latencies)
    return Segment(
        seconds=1.0, count=len(ordered), statuses={200: len(ordered)}, timeouts=0,
        connection_errors=0, quantiles=[(q, exact_percentile(ordered, q)) for q in QUANTILE_GRID],
        max_latency=ordered[-1],
    )  # fmt: skip


def test_merging_segments_approximates_the_percentiles_of_all_samples() -> None:
    generator = random.Random(1)
    fast = [generator.uniform(0.001, 0.002) for _ in range(9000)]
    slow = [generator.uniform(0.050, 0.100) for _ in range(1000)]
    summary = merge([_segment(fast), _segment(slow)])
    everything = sorted(fast + slow)
    assert summary.answered == 10_000
    assert summary.p50 == pytest.approx(exact_percentile(everything, 50), rel=0.02)
    assert summary.p99 == pytest.approx(exact_percentile(everything, 99), rel=0.05)
    assert summary.max == max(slow)
    assert summary.rate == pytest.approx(5000)


def test_open_loop_rates_count_only_answers_inside_the_measured_time() -> None:
    due = [i / 100 for i in range(200)]  # 100 req/s for 2 s
    latency = [0.01] * 150 + [5.0] * 50  # the last 50 come back long after the schedule ended
    summary = from_samples(latency, [200] * 150 + [503] * 50, due, 2.0,
                           timeout_status=0, connection_error_status=-1)  # fmt: skip
    assert summary.answered == 200
    assert summary.rate == pytest.approx(75)
    assert summary.goodput == pytest.approx(75)
    assert summary.errors == {"503": 50}
    assert len(summary.series) == 2


def test_timeouts_are_errors_not_latencies() -> None:
    summary = from_samples([0.01, 10.0], [200, 0], [0.0, 0.5], 1.0, timeout_status=0,
                           connection_error_status=-1)  # fmt: skip
    assert summary.answered == 1
    assert summary.timeouts == 1
    assert summary.errors == {"timeout": 1}
    assert not math.isnan(summary.p99)
