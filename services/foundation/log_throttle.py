"""Warnings that repeat per request, bounded to one line per kind and interval.

A failure seen by every request (a database down, an unreachable service) would otherwise log a
line per request: a log storm exactly when the logs are read. `RepeatedWarnings.warn(kind, ...)`
logs the first line of a kind, then at most one per `interval`, saying how many it held back.

    warnings = RepeatedWarnings(logging.getLogger(__name__), interval=10.0)
    warnings.warn("database_unavailable", "database unavailable: %s", exc)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable

# Kinds remembered at most; they come from a closed set in practice (statuses, reasons).
_MAX_KINDS = 256


class RepeatedWarnings:
    def __init__(
        self,
        logger: logging.Logger,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._last: dict[Hashable, float] = {}
        self._held_back: dict[Hashable, int] = {}

    def warn(
        self,
        kind: Hashable,
        message: str,
        *args: object,
        exc_info: bool = False,
        level: int = logging.WARNING,
    ) -> None:
        """`exc_info`: add the exception being handled, as logging does (on the lines logged);
        `level`: the lines' level (a client's misbehaviour is worth an info line, not more)."""
        now = self._clock()
        last = self._last.get(kind)
        if last is not None and now - last < self._interval:
            self._held_back[kind] = self._held_back.get(kind, 0) + 1
            return
        if last is None and len(self._last) >= _MAX_KINDS:
            self._last.clear()
            self._held_back.clear()
        held_back = self._held_back.pop(kind, 0)
        suffix = f" ({held_back} more like it held back)" if held_back else ""
        self._logger.log(level, message + suffix, *args, exc_info=exc_info)
        self._last[kind] = now
