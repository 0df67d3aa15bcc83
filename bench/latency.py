"""Latency statistics shared by both load generators: per-interval segments and their merge.

A `Segment` summarises the answers of one interval (a wrk segment, or one second of an
open-loop run) as quantiles on a fixed grid. Merging segments treats each as a mixture
component weighted by its count, so whole-run percentiles come out of wrk's per-segment
statistics without its raw samples. Open-loop runs have every sample, so their whole-run
figures are computed exactly.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from dataclasses import dataclass, field

# Fine at the tail, where the targets are.
QUANTILE_GRID: tuple[float, ...] = (
    *range(1, 90),
    *(90 + i * 0.5 for i in range(18)),
    99.0, 99.25, 99.5, 99.75, 99.9, 99.95, 99.99, 100.0,
)  # fmt: skip
SUCCESS_STATUSES = range(200, 300)


@dataclass
class Segment:
    seconds: float
    count: int  # answers received (any status), timeouts excluded
    statuses: dict[int, int]
    timeouts: int
    connection_errors: int
    quantiles: list[tuple[float, float]]  # (percent, seconds), over the answers
    max_latency: float

    @property
    def successes(self) -> int:
        return sum(n for status, n in self.statuses.items() if status in SUCCESS_STATUSES)

    def percentile(self, percent: float) -> float:
        if not self.quantiles:
            return math.nan
        percents = [p for p, _ in self.quantiles]
        index = min(bisect.bisect_left(percents, percent), len(percents) - 1)
        return self.quantiles[index][1]


@dataclass
class Summary:
    """Whole-run figures of one load."""

    seconds: float
    answered: int
    statuses: dict[int, int]
    timeouts: int
    connection_errors: int
    p50: float
    p90: float
    p99: float
    max: float
    series: list[Segment] = field(default_factory=list)
    # Open loop: answers (and 2xx answers) that arrived within the measured seconds; answers
    # that came after the schedule ended count in the latencies but not in the rates.
    answered_in_time: int | None = None
    successes_in_time: int | None = None

    @property
    def rate(self) -> float:
        answered = self.answered if self.answered_in_time is None else self.answered_in_time
        return answered / self.seconds if self.seconds else 0.0

    @property
    def goodput(self) -> float:
        successes = sum(n for s, n in self.statuses.items() if s in SUCCESS_STATUSES)
        if self.successes_in_time is not None:
            successes = self.successes_in_time
        return successes / self.seconds if self.seconds else 0.0

    @property
    def errors(self) -> dict[str, int]:
        """Answers that were not 2xx by status, plus timeouts and broken connections."""
        errors = {str(s): n for s, n in sorted(self.statuses.items()) if s not in SUCCESS_STATUSES}
        if self.timeouts:
            errors["timeout"] = self.timeouts
        if self.connection_errors:
            errors["connection"] = self.connection_errors
        return errors


def merge(segments: list[Segment]) -> Summary:
    """Whole-run summary of consecutive segments (mixture of their quantile functions)."""
    statuses: Counter[int] = Counter()
    for segment in segments:
        statuses.update(segment.statuses)
    weighted = [(s, s.count) for s in segments if s.count > 0]
    total = sum(n for _, n in weighted)

    def percentile(percent: float) -> float:
        if not weighted:
            return math.nan
        # The smallest latency whose mixture CDF reaches `percent` (the CDF only rises).
        candidates = sorted({latency for s, _ in weighted for _, latency in s.quantiles})
        wanted = percent / 100 * total - 1e-9
        low, high = 0, len(candidates) - 1
        while low < high:
            middle = (low + high) // 2
            if sum(n * _cdf(s, candidates[middle]) for s, n in weighted) >= wanted:
                high = middle
            else:
                low = middle + 1
        return candidates[low]

    return Summary(
        seconds=sum(s.seconds for s in segments),
        answered=sum(s.count for s in segments),
        statuses=dict(statuses),
        timeouts=sum(s.timeouts for s in segments),
        connection_errors=sum(s.connection_errors for s in segments),
        p50=percentile(50),
        p90=percentile(90),
        p99=percentile(99),
        max=max((s.max_latency for s in segments if s.count), default=math.nan),
        series=segments,
    )


def _cdf(segment: Segment, latency: float) -> float:
    """Fraction of the segment's answers at or below `latency`, from its quantile grid."""
    values = [value for _, value in segment.quantiles]
    index = bisect.bisect_right(values, latency)
    return segment.quantiles[index - 1][0] / 100 if index else 0.0


def from_samples(
    latencies: list[float], statuses: list[int], due: list[float], seconds: float, *,
    timeout_status: int, connection_error_status: int, interval: float = 1.0,
) -> Summary:  # fmt: skip
    """Exact summary of an open-loop run, with one segment per `interval` of due time."""
    answered = [
        (d, latency, status)
        for d, latency, status in zip(due, latencies, statuses, strict=True)
        if status not in (timeout_status, connection_error_status)
    ]
    buckets = max(1, math.ceil(seconds / interval - 1e-9))
    per_bucket: list[list[tuple[float, int]]] = [[] for _ in range(buckets)]
    for d, latency, status in answered:
        per_bucket[min(buckets - 1, max(0, int(d / interval)))].append((latency, status))
    timeouts = [0] * buckets
    broken = [0] * buckets
    for d, status in zip(due, statuses, strict=True):
        slot = min(buckets - 1, max(0, int(d / interval)))
        if status == timeout_status:
            timeouts[slot] += 1
        elif status == connection_error_status:
            broken[slot] += 1
    series = [_segment_of(per_bucket[i], interval, timeouts[i], broken[i]) for i in range(buckets)]
    all_latencies = sorted(latency for _, latency, _ in answered)
    return Summary(
        seconds=seconds,
        answered=len(answered),
        statuses=dict(Counter(status for _, _, status in answered)),
        timeouts=sum(timeouts),
        connection_errors=sum(broken),
        p50=exact_percentile(all_latencies, 50),
        p90=exact_percentile(all_latencies, 90),
        p99=exact_percentile(all_latencies, 99),
        max=all_latencies[-1] if all_latencies else math.nan,
        series=series,
        answered_in_time=sum(1 for d, latency, _ in answered if d + latency <= seconds),
        successes_in_time=sum(
            1
            for d, latency, status in answered
            if d + latency <= seconds and status in SUCCESS_STATUSES
        ),
    )


def _segment_of(
    answers: list[tuple[float, int]], seconds: float, timeouts: int, broken: int
) -> Segment:
    latencies = sorted(latency for latency, _ in answers)
    return Segment(
        seconds=seconds,
        count=len(latencies),
        statuses=dict(Counter(status for _, status in answers)),
        timeouts=timeouts,
        connection_errors=broken,
        quantiles=[(q, exact_percentile(latencies, q)) for q in QUANTILE_GRID] if latencies else [],
        max_latency=latencies[-1] if latencies else math.nan,
    )


def exact_percentile(sorted_values: list[float], percent: float) -> float:
    """Nearest-rank percentile of already sorted values (NaN for none)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(percent / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]
