"""When each session was last used (`sessions.last_seen_at`), without a write per read.

Every session check that finds a session live (GetProfile and the other reads) calls `seen`,
which only touches a dict: a session is noted at most once per GRANULARITY (a minute) by this
replica. One background task writes what was noted every GATEHOUSE_LAST_SEEN_INTERVAL seconds
in multi-row UPDATEs on the primary (FLUSH_CHUNK_ROWS each), which also skip rows written less
than GRANULARITY ago, so several replicas noting the same session change its row at most once
a minute.

Bounded: at most GATEHOUSE_LAST_SEEN_MAX_PENDING sessions wait for a flush (more are dropped
until the next flush: the column may be coarse), and as many are remembered as noted. While the
primary is down, or a flush fails, the noted times are kept (still bounded) for the next flush;
nothing is raised and a failure is logged once per streak (none while the primary counts as
down: its health line says so).

    last_seen = LastSeen(primary, interval=10.0, max_pending=10_000)
    last_seen.start()
    last_seen.seen(session_id)           # cheap; from the read path
    last_seen.pending(session_id)        # a noted time not yet written, or None
    await last_seen.flush()              # what the task does every interval
    await last_seen.close()
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from services.auth.metrics import LAST_SEEN_DROPPED, LAST_SEEN_FLUSHES
from services.auth.store.database import Database, DatabaseError, PrimaryDown
from services.foundation.tasks import every, stop_task

log = logging.getLogger(__name__)

# How coarse last_seen_at is: a session's row is written at most once per this many seconds.
GRANULARITY = 60.0
# Rows per UPDATE. The server walks `CASE id WHEN ...` branch by branch for every row, so one
# statement of n rows costs n² comparisons (10,000 rows: 0.7 s, 100,000 would outlast any
# deadline and fail on every flush); chunks keep the cost linear and each under its deadline.
FLUSH_CHUNK_ROWS = 500


class LastSeen:
    def __init__(
        self,
        primary: Database,
        *,
        interval: float,
        max_pending: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._primary = primary
        self._interval = interval
        self._max_pending = max_pending
        self._clock = clock
        self._pending: dict[str, datetime] = {}
        # session id -> monotonic time it was last noted; oldest first, at most max_pending
        self._noted: OrderedDict[str, float] = OrderedDict()
        self._warned = False  # a failure was logged and no flush has succeeded since
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(
            every(self._interval, self.flush, "last_seen flush"), name="last-seen-flush"
        )

    async def close(self) -> None:
        await stop_task(self._task)
        self._task = None

    def seen(self, session_id: str) -> None:
        """Note a use of the session now, unless it was noted less than GRANULARITY ago."""
        now = self._clock()
        noted_at = self._noted.get(session_id)
        if noted_at is not None and now - noted_at < GRANULARITY:
            return
        if session_id not in self._pending and len(self._pending) >= self._max_pending:
            LAST_SEEN_DROPPED.inc()
            return
        self._pending[session_id] = datetime.now(UTC)
        self._noted[session_id] = now
        self._noted.move_to_end(session_id)
        while len(self._noted) > self._max_pending:
            self._noted.popitem(last=False)

    def pending(self, session_id: str) -> datetime | None:
        return self._pending.get(session_id)

    async def flush(self) -> None:
        """Write the noted times, FLUSH_CHUNK_ROWS an UPDATE; keep what a failure left unwritten
        for the next flush."""
        if not self._pending:
            return
        noted, self._pending = list(self._pending.items()), {}
        try:
            for start in range(0, len(noted), FLUSH_CHUNK_ROWS):
                await self._write(dict(noted[start : start + FLUSH_CHUNK_ROWS]))
        except DatabaseError as exc:
            for session_id, at in noted[start:]:  # noted again meanwhile: the newer one wins
                if len(self._pending) < self._max_pending:
                    self._pending.setdefault(session_id, at)
            LAST_SEEN_FLUSHES.labels("skipped" if isinstance(exc, PrimaryDown) else "failed").inc()
            if not self._warned and not self._primary.outage_explains(exc):
                log.warning(
                    "session use (last_seen_at) not written (%s); kept for the next flush", exc
                )
                self._warned = True
            return
        LAST_SEEN_FLUSHES.labels("written").inc()
        if self._warned:
            log.info("session use (last_seen_at) is written again")
        self._warned = False

    async def _write(self, batch: dict[str, datetime]) -> None:
        cases = " ".join(["WHEN %s THEN %s"] * len(batch))
        ids = ", ".join(["%s"] * len(batch))
        args: list[object] = []
        for session_id, at in batch.items():
            args += [session_id, at]
        args += [*batch, datetime.now(UTC) - timedelta(seconds=GRANULARITY)]
        await self._primary.execute(
            "record_last_seen",
            f"UPDATE sessions SET last_seen_at = CASE id {cases} END"
            # Not an ended session's: a deletion erased its last use (and revoked it) after the
            # use was noted, and a session nobody can use again has nothing to show.
            f" WHERE id IN ({ids}) AND revoked_at IS NULL"
            " AND (last_seen_at IS NULL OR last_seen_at < %s)",
            args,
        )
