"""What one drill's samples say: latency windows, failures by status, recovery time.

Pure functions over `Sample`s, so the report's arithmetic is unit-tested without a stack.
Times are seconds since the drill's load started; a sample's latency counts from the moment
its request was due (open loop), so a stalled server is charged for every request it held.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from drills.http1 import Via

TIMEOUT = 0  # status of a request that got no answer within the client's timeout
CONNECTION_ERROR = -1  # status of a request whose connection failed or broke


class Kind(StrEnum):
    READ = "read"
    SIGNUP = "signup"
    NICKNAME = "nickname"
    LOGIN = "login"
    LOGOUT = "logout"


WRITES = frozenset({Kind.SIGNUP, Kind.NICKNAME, Kind.LOGIN, Kind.LOGOUT})


@dataclass(frozen=True)
class Sample:
    kind: Kind
    due: float  # when the request was due, s since the load started
    latency: float  # s from `due` to the answer (or to the failure)
    status: int  # HTTP status, or TIMEOUT / CONNECTION_ERROR
    retry_after: bool = False  # the answer carried a Retry-After header
    via: Via | None = None  # the connection it went on (None: none was made, or not known)
    error: str = ""  # why a request got no answer
    # s from `due` until the request was written (the client's own queueing: its event loop's
    # lateness, a free slot, a connection); None when it never was
    waited: float | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def done(self) -> float:
        return self.due + self.latency


@dataclass(frozen=True)
class Window:
    """[start, end) of due time: before, during or after the fault."""

    name: str
    start: float
    end: float

    def holds(self, sample: Sample) -> bool:
        return self.start <= sample.due < self.end


@dataclass(frozen=True)
class Latency:
    count: int
    failures: int
    p50: float  # seconds; NaN without samples
    p99: float
    max: float


def percentile(sorted_values: Sequence[float], percent: float) -> float:
    """Nearest-rank percentile of already sorted values (NaN for none)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(percent / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def latency(samples: Iterable[Sample]) -> Latency:
    """Latency of every answered or failed request (timeouts count with their wait)."""
    chosen = list(samples)
    values = sorted(s.latency for s in chosen)
    return Latency(
        count=len(chosen),
        failures=sum(1 for s in chosen if not s.ok),
        p50=percentile(values, 50),
        p99=percentile(values, 99),
        max=values[-1] if values else math.nan,
    )


def client_waits(samples: Iterable[Sample]) -> Latency:
    """How long requests waited in the client before they were written (due -> written)."""
    values = sorted(s.waited for s in samples if s.waited is not None)
    return Latency(
        count=len(values),
        failures=0,
        p50=percentile(values, 50),
        p99=percentile(values, 99),
        max=values[-1] if values else math.nan,
    )


def status_label(status: int) -> str:
    if status == TIMEOUT:
        return "timeout"
    if status == CONNECTION_ERROR:
        return "connection"
    return str(status)


def failures_by_status(samples: Iterable[Sample]) -> dict[str, int]:
    """Failed requests per kind and status, e.g. {"read 503": 4, "signup connection": 1}."""
    counted = Counter(f"{s.kind} {status_label(s.status)}" for s in samples if not s.ok)
    return dict(sorted(counted.items()))


def recovery_seconds(samples: Iterable[Sample], fault_start: float, fault_end: float) -> float:
    """Seconds from the end of the fault until the last failure of a request due since its
    start was over; 0 when nothing failed after the fault ended."""
    last_failure = max(
        (s.done for s in samples if not s.ok and s.due >= fault_start), default=fault_end
    )
    return max(0.0, last_failure - fault_end)


def success_ratio(samples: Iterable[Sample]) -> float:
    """Share of successful requests (1.0 when there were none: nothing failed)."""
    chosen = list(samples)
    if not chosen:
        return 1.0
    return sum(1 for s in chosen if s.ok) / len(chosen)


def windows(fault_start: float, fault_end: float, load_end: float) -> tuple[Window, ...]:
    return (
        Window("before", 0.0, fault_start),
        Window("during", fault_start, fault_end),
        Window("after", fault_end, max(load_end, fault_end)),
    )
