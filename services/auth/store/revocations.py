"""What Redis missed, kept on the primary: logouts whose tombstone did not reach Redis (flagged
until one is written), and the write floor.

A logout on a replica cut off from Redis leaves the session's cache entry saying "active", and
replicas that do reach Redis would trust it. So the logout sets `sessions.tombstone_pending` on
the primary (`flag`), and every auth replica reads the flagged sessions every interval and
treats them as revoked (`includes`) whatever Redis says. Any replica whose Redis works writes
their tombstones and clears the flags (`repair`); replicas may race at it, which is harmless: a
tombstone only ever replaces a tombstone or an entry it must replace.

A profile change whose record (gh:w, the new profile) did not reach Redis leaves the old profile
there for replicas that reach Redis. So the writer raises the write floor, one row on the primary
(`write_floor`, migration 0008), to the write's commit time (`raise_write_floor`); every replica
reads it with the flags and takes max(gh:since, floor) as gh:since (`write_floor`, cache.py), so
the old entries no longer count, and a replica that reaches Redis raises gh:since to it.

The flags and the floor are read twice per interval: from the primary (`poll`) and from a
read replica (`poll_replicas`), so that a primary outage does not leave a replica blind to
them. A replica relies on what a poll told it for `lease` seconds after that poll's start;
`current` says whether some poll, of either kind, is that recent, and `includes` is the union
of both. When none is (a busy event loop delayed the loops), `refresh` polls a read replica at
once, one poll shared by every caller, rather than sending the session reads to the primary.

`flag` and `raise_write_floor` answer only once every read replica has applied the flag or the
floor (its applied heartbeat is past its commit, freshness.py), and then `lease` seconds more.
Hence once a logout or a write has been answered, every replica has either polled the primary
or a read replica after the flag or floor was there, or stopped relying on Redis (`current` is
False: sessions and profiles are read from MySQL).
This holds however slow or failing a replica's polls are, and whichever of the primary and the
read replicas it can still reach (docs/design.md, "Sessions and revocation" and "A primary
outage"). Every replica must therefore run with the same GATEHOUSE_HEARTBEAT_INTERVAL and the
same read replicas.

    pending = PendingTombstones(primary, cache, interval, freshness=freshness)
    await pending.poll(); pending.start()        # then it polls and repairs every interval
    pending.includes(session_id) -> bool         # flagged at the last successful polls
    pending.current -> bool                      # one of them is recent enough to rely on
    await pending.refresh() -> bool              # current, after a replica poll if it was not
    await pending.flag(session_id)               # raises DatabaseError if it cannot answer
    await pending.flag_many(session_ids)         # the same for several, with one wait
    pending.write_floor -> datetime              # the highest floor the polls have shown
    await pending.raise_write_floor(written_at)  # raises DatabaseError if it cannot answer
    await pending.close()
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from services.auth.metrics import WRITE_FLOOR_RAISES
from services.auth.store.cache import RedisCache, SessionTombstone
from services.auth.store.database import Database, DatabaseError
from services.auth.store.freshness import ReplicaFreshness
from services.foundation.tasks import every, stop_task

log = logging.getLogger(__name__)

# A replica polls every interval plus the poll's own duration, so its last successful poll
# started at most one interval plus two poll durations ago. Three intervals leave two intervals
# of slack for slow polls or a busy event loop before the replica falls back to reading
# sessions from MySQL; a degraded logout pays those three intervals once.
LEASE_INTERVALS = 3
# Tombstones written and flags cleared per repair round: bounds one Redis pipeline and one
# UPDATE however many logouts a long Redis outage flagged.
REPAIR_BATCH = 500
# How long a degraded logout waits for every read replica to apply its flag, by default.
CONFIRM_TIMEOUT = 3.0

_FLAG = "UPDATE sessions SET tombstone_pending = 1 WHERE id IN ({ids})"
# The flagged sessions and, in a row whose id is NULL, the write floor: one round trip, so a poll
# takes no longer than it did before the floor, and both are read after the poll's start.
_FLAGGED_AND_FLOOR = (
    "SELECT id, expires_at FROM sessions WHERE tombstone_pending = 1"
    " UNION ALL SELECT NULL, floor FROM write_floor WHERE id = 1"
)
_CLEAR = "UPDATE sessions SET tombstone_pending = 0 WHERE tombstone_pending = 1 AND id IN ({ids})"
_RAISE_FLOOR = "UPDATE write_floor SET floor = GREATEST(floor, %s) WHERE id = 1"
NO_FLOOR = datetime(1970, 1, 1, tzinfo=UTC)


class FlagNotReplicated(DatabaseError):
    """A degraded logout's flag, or a write's floor, did not reach every read replica in time:
    the write is recorded but not confirmed, and must be answered as a failure (the client
    retries it)."""


class PendingTombstones:
    def __init__(
        self,
        primary: Database,
        cache: RedisCache,
        interval: float,
        *,
        freshness: ReplicaFreshness | None = None,
        confirm_timeout: float = CONFIRM_TIMEOUT,
    ) -> None:
        self._primary = primary
        self._cache = cache
        self._interval = interval
        self._freshness = freshness
        self._replicas = freshness.replicas if freshness is not None else ()
        self._confirm_timeout = confirm_timeout
        self.lease = LEASE_INTERVALS * interval
        # session id -> expiry, as of the last successful poll of the primary / of a replica
        self._flagged: dict[str, datetime] = {}
        self._replica_flagged: dict[str, datetime] = {}
        # The highest write floor seen by any poll, or raised here (it only ever rises).
        self._write_floor = NO_FLOOR
        # monotonic start of the last successful poll of the primary / of a replica
        self._polled_at: float | None = None
        self._replica_polled_at: float | None = None
        self._poll_failing = False
        self._replica_poll_failing = False
        self._replica_poll: asyncio.Task[None] | None = None  # the one replica poll running
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        # Separate loops: a repair waiting on an unreachable Redis must not delay the polls,
        # and a poll waiting on a hung primary must not delay the replica's.
        loops = [
            (self.poll, "pending tombstone poll", "pending-tombstone-poll"),
            (self.repair, "pending tombstone repair", "pending-tombstone-repair"),
        ]
        if self._replicas:
            loops.append(
                (self.poll_replicas, "pending tombstone replica poll", "pending-tombstone-replica")
            )
        self._tasks = [
            asyncio.create_task(every(self._interval, step, what), name=name)
            for step, what, name in loops
        ]

    async def close(self) -> None:
        for task in self._tasks:
            await stop_task(task)
        await stop_task(self._replica_poll)

    def includes(self, session_id: str) -> bool:
        """Whether the session was flagged at the last successful poll of the primary or of a
        replica: it is revoked (a flag is cleared only once its tombstone is in Redis)."""
        return session_id in self._flagged or session_id in self._replica_flagged

    @property
    def write_floor(self) -> datetime:
        """The highest write floor the polls have shown: Redis's record of writes may lack
        writes committed before it. Rely on it only while `current`."""
        return self._write_floor

    @property
    def current(self) -> bool:
        """Whether a successful poll (of the primary or of a read replica) started within
        `lease` seconds: only then may a session that `includes` does not know be taken as live
        on Redis's word."""
        now = time.monotonic()
        return any(
            polled_at is not None and now - polled_at < self.lease
            for polled_at in (self._polled_at, self._replica_polled_at)
        )

    async def refresh(self) -> bool:
        """`current`, after polling a read replica now if no poll was recent enough."""
        if self.current:
            return True
        if not self._replicas:
            return False
        await self.poll_replicas()
        return self.current

    async def flag(self, session_id: str) -> None:
        """Flag a revoked session whose tombstone Redis did not take, wait until every read
        replica holds the flag, then `lease` seconds: by then every replica treats the session
        as revoked (see the module docstring). Raises DatabaseError when the primary fails, and
        FlagNotReplicated when a read replica does not apply the flag within the confirm
        timeout."""
        await self.flag_many([session_id])

    async def flag_many(self, session_ids: Sequence[str]) -> None:
        """`flag` for several sessions (a "log out everywhere", a password change, an account
        deletion), in batches of REPAIR_BATCH, with one wait for them all."""
        if not session_ids:
            return
        async with self._primary.statements("flag_pending_tombstone") as statements:
            for start in range(0, len(session_ids), REPAIR_BATCH):
                batch = session_ids[start : start + REPAIR_BATCH]
                await statements.execute(_FLAG.format(ids=", ".join(["%s"] * len(batch))), batch)
            flagged_at = await statements.server_time()  # after the autocommit of the flags
        await self._confirm(flagged_at, "a logout's revocation flag", "the logout")

    async def raise_write_floor(self, written_at: datetime) -> None:
        """Raise the write floor to `written_at`, the commit time of a write whose record Redis
        did not take, then wait as `flag` does: by then every replica either ignores Redis
        entries older than the write or has stopped relying on Redis. Raises DatabaseError when
        the primary fails, and FlagNotReplicated when a read replica does not apply the floor
        within the confirm timeout."""
        async with self._primary.statements("raise_write_floor") as statements:
            await statements.execute(_RAISE_FLOOR, (written_at,))
            raised_at = await statements.server_time()  # after the autocommit of the floor
        WRITE_FLOOR_RAISES.inc()
        self._write_floor = max(self._write_floor, written_at)
        await self._confirm(raised_at, "a write's floor", "the write")

    async def _confirm(self, committed_at: datetime, what: str, recorded: str) -> None:
        """Wait until every read replica has applied what committed at `committed_at`, then
        `lease` seconds (see the module docstring)."""
        if self._freshness is not None and not await self._freshness.wait_applied_everywhere(
            committed_at, self._confirm_timeout
        ):
            raise FlagNotReplicated(
                f"{what} did not reach every read replica within {self._confirm_timeout:g} s"
                f" (a replica lags or is down); {recorded} is recorded on the primary but not"
                " confirmed: retry it"
            )
        await asyncio.sleep(self.lease)

    async def poll(self) -> None:
        """Read the flagged sessions from the primary; never raises."""
        started = time.monotonic()
        try:
            flagged = await self._read_flags_and_floor(self._primary)
        except DatabaseError as exc:
            # An outage is logged once by the primary's health: it says nothing here, and does
            # not count as this poll's failure, so one of another kind afterwards is logged.
            if not self._poll_failing and not self._primary.outage_explains(exc):
                # With replicas, their poll stands in, so only a primary without replicas is
                # worth a warning.
                level = logging.INFO if self._replicas else logging.WARNING
                log.log(
                    level,
                    "cannot read the sessions whose logout did not reach Redis from the primary"
                    " (%s); %s until this poll succeeds again",
                    exc,
                    "the read replicas' flags stand in"
                    if self._replicas
                    else "sessions are read from MySQL",
                )
                self._poll_failing = True
            return
        self._poll_failing = False
        self._flagged = flagged
        self._polled_at = started

    async def poll_replicas(self) -> None:
        """Read the flagged sessions from one read replica that answers, or wait for the poll
        already doing it; never raises."""
        if self._replica_poll is None:
            poll = asyncio.ensure_future(self._poll_a_replica())
            self._replica_poll = poll
            poll.add_done_callback(self._replica_poll_done)
        # Shielded: a caller that gives up (its read was cancelled) leaves it to the others.
        await asyncio.shield(self._replica_poll)

    def _replica_poll_done(self, poll: asyncio.Task[None]) -> None:
        if self._replica_poll is poll:
            self._replica_poll = None

    async def _poll_a_replica(self) -> None:
        started = time.monotonic()
        for replica in random.sample(self._replicas, len(self._replicas)):
            try:
                flagged = await self._read_flags_and_floor(replica)
            except DatabaseError as exc:
                log.debug("replica poll of pending tombstones failed: %s", exc)
                continue
            if self._replica_poll_failing:
                log.info("a read replica answers the poll for flagged sessions again")
            self._replica_poll_failing = False
            self._replica_flagged = flagged
            self._replica_polled_at = started
            return
        if not self._replica_poll_failing:
            log.warning(
                "no read replica answers the poll for sessions whose logout did not reach Redis;"
                " %s",
                "the primary's poll stands in"
                if self._primary_poll_current()
                else "nor does the primary's: sessions are read from MySQL until one answers",
            )
        self._replica_poll_failing = True

    def _primary_poll_current(self) -> bool:
        """Whether a successful poll of the primary started within `lease` seconds."""
        return self._polled_at is not None and time.monotonic() - self._polled_at < self.lease

    async def _read_flags_and_floor(self, database: Database) -> dict[str, datetime]:
        """The flagged sessions (id -> expiry); raises the known write floor to the one
        `database` holds."""
        flagged: dict[str, datetime] = {}
        for row in await database.fetch_all("poll_pending_tombstones", _FLAGGED_AND_FLOOR):
            if row["id"] is None:
                self._write_floor = max(self._write_floor, row["expires_at"])
            else:
                flagged[row["id"]] = row["expires_at"]
        return flagged

    async def repair(self) -> None:
        """Write the tombstones of flagged sessions to Redis and clear their flags; what fails
        is tried again next round. Never raises."""
        flagged = {**self._replica_flagged, **self._flagged}
        batch = list(flagged.items())[:REPAIR_BATCH]
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
            if self._primary.outage_explains(exc):
                return  # the tombstones are in Redis; the flags are cleared once it is back
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
