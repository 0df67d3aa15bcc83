"""When to log the outages of something that may flap: a warning when it goes down and a line
when it is back, at most one such pair per interval, however often it goes down and comes back.

An outage whose warning is held back (it began within the interval of the last one logged) is
logged by a later failure if it lasts past the interval, and its end is not logged at all; the
next warning counts the outages held back since the last one logged.

    outages = OutageLog(interval=10.0)
    held_back = outages.failed()      # on every failed check, the first of an outage or not
    if held_back is not None:
        log.warning("... is down (%d more short outages since the last one logged)", held_back)
    if outages.recovered():           # on a check that succeeds
        log.info("... is back")

`failed(cause)` (a word from a small set, e.g. the exception's class) also tells, in
`new_cause`, when a logged outage fails in a way it had not yet: etcd back but refusing the
password is another problem than etcd away, and worth its own warning (one per cause).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable


class OutageLog:
    def __init__(self, interval: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._down_since: float | None = None
        self._logged = False  # whether the current outage's warning was logged
        self._logged_at: float | None = None
        self._held_back = 0
        self._causes: set[Hashable] = set()
        # Whether the last failed() of a logged outage had a cause it had not had before.
        self.new_cause = False

    @property
    def is_down(self) -> bool:
        return self._down_since is not None

    @property
    def down_for(self) -> float:
        """Seconds since the current outage began; 0 when up."""
        return 0.0 if self._down_since is None else self._clock() - self._down_since

    def failed(self, cause: Hashable | None = None) -> int | None:
        """Report a failed check. When the outage's warning is due now, the number of outages
        held back since the last one logged; None when it is not (logged already, or held back
        for now)."""
        now = self._clock()
        if self._down_since is None:
            self._down_since = now
            self._logged = False
            self._held_back += 1
            self._causes = set()
        fresh = cause is not None and cause not in self._causes
        if cause is not None:
            self._causes.add(cause)
        self.new_cause = self._logged and fresh
        if self._logged or (self._logged_at is not None and now - self._logged_at < self._interval):
            return None
        self._logged = True
        self._logged_at = now
        held_back, self._held_back = self._held_back - 1, 0
        return held_back

    def recovered(self) -> bool:
        """Report a check that succeeded; whether the end of an outage is to be logged (its
        warning was)."""
        if self._down_since is None:
            return False
        self._down_since = None
        return self._logged
