"""A circuit breaker: the one place that decides whether a call may try Redis now.

    closed ──failure──▶ open ──cool-down over──▶ half-open (one probe) ──success──▶ closed
                          ▲                                │
                          └──────────────failure───────────┘

Closed, every call goes ahead. Open, every call is refused at once: the caller takes its
fallback (MySQL, in-memory counters) without waiting for anything. Once the cool-down is over,
the first call to ask gets the probe's admission (RedisCache sends the cache's probe in the
background and takes the fallback itself; a throttle script's probe is the call itself); every call is still refused while the probe is out, so a frozen
dependency costs one timeout per cool-down, never one per caller. Nobody waits for another
caller's attempt: admission is a synchronous decision.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Admission:
    """Leave for one call to try; hand it back with `succeeded`, `failed` or `abandoned`."""

    probe: bool


_NORMAL = Admission(probe=False)


class CircuitBreaker:
    def __init__(
        self,
        cool_down: float,
        on_change: Callable[[bool], None],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`on_change(opened)` is called once per transition to open (True) or closed (False)."""
        self._cool_down = cool_down
        self._on_change = on_change
        self._clock = clock
        self._open = False
        self._probe_at = 0.0  # when open: the earliest time a probe may go
        self._probing = False

    @property
    def is_open(self) -> bool:
        """Open or half-open: callers are being sent to the fallback."""
        return self._open

    def admit(self) -> Admission | None:
        """Leave to try now, or None: take the fallback."""
        if not self._open:
            return _NORMAL
        if self._probing or self._clock() < self._probe_at:
            return None
        self._probing = True
        return Admission(probe=True)

    def succeeded(self, admission: Admission) -> None:
        # Only the probe's answer closes: a call sent before the breaker opened proves nothing
        # about now.
        if admission.probe:
            self._probing = False
            self._close()

    def failed(self, admission: Admission) -> None:
        if admission.probe:
            self._probing = False
            self._probe_at = self._clock() + self._cool_down
        elif not self._open:
            self.trip()

    def abandoned(self, admission: Admission) -> None:
        """The call ended without a verdict on the dependency (cancelled, or stopped by another
        failure first): a probe's place is free again at once."""
        if admission.probe:
            self._probing = False

    def probe_overdue(self, grace: float) -> bool:
        """Open, with no probe out, and no caller has asked to try for `grace` seconds after a
        probe was due: nobody calls, so nothing would find the dependency back, and the breaker
        (its gauge, its alert) would say "open" for as long as the replica stays idle."""
        return self._open and not self._probing and self._clock() >= self._probe_at + grace

    def trip(self) -> None:
        """Open now (another breaker on the same dependency saw it fail); an open one stays as
        it is, with its probe if one is out."""
        if self._open:
            return
        self._open = True
        self._probing = False
        self._probe_at = self._clock() + self._cool_down
        self._on_change(True)

    def _close(self) -> None:
        if self._open:
            self._open = False
            self._on_change(False)
