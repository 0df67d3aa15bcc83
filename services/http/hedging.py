"""What an idempotent call needs to decide on a second attempt: how slow is slow, and may it.

`LatencyWindow` keeps the latest answered attempts of one method and its p99, recomputed
every RECOMPUTE_EVERY observations (sorting 256 floats: microseconds, a few times a second).
`ExtraAttemptBudget` is a token bucket filled by calls: each call adds `ratio` of a token, an
extra attempt (a hedge, or a retry after the attempt timeout or an OVERLOADED answer) takes a
whole one. Over any stretch of time the extra attempts are at most `ratio` of the calls plus
`burst`, so in an overload, where every replica is slow, they cannot double the load.
"""

from __future__ import annotations

from collections import deque

WINDOW = 256
RECOMPUTE_EVERY = 32
MIN_SAMPLES = 32  # fewer than this says little about a p99
EXTRA_ATTEMPT_BURST = 10.0


class LatencyWindow:
    def __init__(self) -> None:
        self._samples: deque[float] = deque(maxlen=WINDOW)
        self._since_recompute = 0
        self.p99: float | None = None  # None until MIN_SAMPLES were seen

    def observe(self, seconds: float) -> None:
        self._samples.append(seconds)
        self._since_recompute += 1
        if self._since_recompute >= RECOMPUTE_EVERY and len(self._samples) >= MIN_SAMPLES:
            self._since_recompute = 0
            ordered = sorted(self._samples)
            self.p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


class ExtraAttemptBudget:
    def __init__(self, ratio: float, burst: float = EXTRA_ATTEMPT_BURST) -> None:
        self._ratio = ratio
        self._burst = burst if ratio > 0 else 0.0
        self._tokens = self._burst

    def on_call(self) -> None:
        self._tokens = min(self._burst, self._tokens + self._ratio)

    def take(self) -> bool:
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True
