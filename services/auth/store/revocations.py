"""Logouts whose tombstone did not reach Redis: flagged on the primary until one is written.

A logout on a replica cut off from Redis leaves the session's cache entry saying "active", and
replicas that do reach Redis would trust it. So the logout sets `sessions.tombstone_pending` on
the primary (`flag`), and every auth replica polls the primary for flagged sessions every
interval (`poll`) and treats them as revoked (`includes`) whatever Redis says. Any replica whose
Redis works writes their tombstones and clears the flags (`repair`); replicas may race at it,
which is harmless: a tombstone only ever replaces a tombstone or an entry it must replace.

A replica relies on what its polls told it for `lease` seconds after the start of its last
successful poll, and `flag` answers only after `lease` seconds. Hence once a logout has been
answered, every replica has either polled after the flag was committed or stopped relying on
Redis for sessions (`current` is False: session reads go to the primary). This holds however
slow a replica's polls are or whether they fail (waiting for this replica's own next poll plus
a margin instead would assume that the others poll on time). Every replica must therefore run
with the same GATEHOUSE_HEARTBEAT_INTERVAL.

    pending = PendingTombstones(primary, cache, interval)
    await pending.poll(); pending.start()        # then it polls and repairs every interval
    pending.includes(session_id) -> bool         # flagged at the last successful poll
    pending.current -> bool                      # that poll is recent enough to rely on
    await pending.flag(session_id)               # raises DatabaseError if the primary fails
    await pending.close()
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime

from services.auth.store.cache import RedisCache, SessionTombstone
from services.auth.store.database import Database, DatabaseError
from services.foundation.tasks import every, stop_task

log = logging.getLogger(__name__)

# A replica polls every interval plus the poll's own duration, so its last successful poll
# started at most one interval plus two poll durations ago. Three intervals leave two intervals
# of slack for slow polls or a busy event loop before the replica falls back to reading
# sessions from the primary; a degraded logout pays those three intervals once.
LEASE_INTERVALS = 3
# Tombstones written and flags cleared per repair round: bounds one Redis pipeline and one
# UPDATE however many logouts a long Redis outage flagged.
REPAIR_BATCH = 500

_FLAG = "UPDATE sessions SET tombstone_pending = 1 WHERE id = %s"
_FLAGGED = "SELECT id, expires_at FROM sessions WHERE tombstone_pending = 1"
_CLEAR = "UPDATE sessions SET tombstone_pending = 0 WHERE tombstone_pending = 1 AND id IN ({ids})"


class PendingTombstones:
    def __init__(self, primary: Database, cache: RedisCache, interval: float) -> None:
        self._primary = primary
        self._cache = cache
        self._interval = interval
        self.lease = LEASE_INTERVALS * interval
        self._flagged: dict[str, datetime] = {}  # session id -> expiry, as of the last poll
        self._polled_at: float | None = None  # monotonic start of the last successful poll
        self._poll_failing = False
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        # Separate loops: a repair waiting on an unreachable Redis must not delay the polls.
        self._tasks = [
            asyncio.create_task(
                every(self._interval, self.poll, "pending tombstone poll"),
                name="pending-tombstone-poll",
            ),
            asyncio.create_task(
                every(self._interval, self.repair, "pending tombstone repair"),
                name="pending-tombstone-repair",
            ),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            await stop_task(task)

    def includes(self, session_id: str) -> bool:
        """Whether the session was flagged at the last successful poll: it is revoked."""
        return session_id in self._flagged

    @property
    def current(self) -> bool:
        """Whether the last successful poll started within `lease` seconds: only then may a
        session that `includes` does not know be taken as live on Redis's word."""
        return self._polled_at is not None and time.monotonic() - self._polled_at < self.lease

    async def flag(self, session_id: str) -> None:
        """Flag a revoked session whose tombstone Redis did not take, then wait `lease`
        seconds: by then every replica treats it as revoked (see the module docstring)."""
        await self._primary.execute("flag_pending_tombstone", _FLAG, (session_id,))
        await asyncio.sleep(self.lease)

    async def poll(self) -> None:
        """Read the flagged sessions from the primary; never raises."""
        started = time.monotonic()
        try:
            rows = await self._primary.fetch_all("poll_pending_tombstones", _FLAGGED)
        except DatabaseError as exc:
            if not self._poll_failing:
                log.warning(
                    "cannot read the sessions whose logout did not reach Redis (%s); sessions"
                    " are read from the primary until this poll succeeds again",
                    exc,
                )
            self._poll_failing = True
            return
        if self._poll_failing:
            log.info("the poll for sessions whose logout did not reach Redis works again")
        self._poll_failing = False
        self._flagged = {row["id"]: row["expires_at"] for row in rows}
        self._polled_at = started

    async def repair(self) -> None:
        """Write the tombstones of flagged sessions to Redis and clear their flags; what fails
        is tried again next round. Never raises."""
        batch = list(self._flagged.items())[:REPAIR_BATCH]
        if not batch:
            return
        tombstones = [SessionTombstone(session_id, expires_at) for session_id, expires_at in batch]
        if not await self._cache.refill(tombstones):
            return  # Redis is out of reach from here too; the cache module logs why
        ids = [session_id for session_id, _ in batch]
        sql = _CLEAR.format(ids=", ".join(["%s"] * len(ids)))
        try:
            cleared = await self._primary.execute("clear_pending_tombstones", sql, ids)
        except DatabaseError as exc:
            log.warning(
                "tombstones of %d revoked sessions are in Redis but their flags could not be"
                " cleared (%s); trying again in %g s",
                len(ids),
                exc,
                self._interval,
            )
            return
        if cleared:
            log.info("wrote %d tombstones that logouts could not write to Redis", cleared)
