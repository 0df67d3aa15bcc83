"""How far each read replica has applied the primary's history, from a heartbeat row.

`HeartbeatWriter` bumps `replication_heartbeat` (id 1) on the primary to the primary's NOW(6)
every interval, and always strictly forward. `ReplicaFreshness` reads that row on every replica
at the same interval: the value a replica holds is the primary time up to which it has applied
the binlog. Primary times (commit times, `gh:since`) are read after the commit they stand for,
and past the heartbeat row then committed (`Database.server_time`), so a beat of at least that
value committed after the write, and a replica holding it has applied the write, whatever the
primary's clock did meanwhile (a failover to a host whose clock is behind, a clock stepped back).
It uses no GTID or engine-specific function, so it works on MariaDB, MySQL 8.4 and Aurora alike.

A replica whose poll fails counts as not fresh until a poll succeeds again: reads then go to the
primary. Neither class ever raises into its callers; failures are logged when the state changes.
A replica that answers but whose applied heartbeat stays put for STALLED_AFTER_SECONDS while
the primary is up (its replication stopped on an error, or is stuck) is logged once, and again
once it applies the primary's history again; reads needing newer data go to the primary
meanwhile. While the primary is down its heartbeat stops, so nothing counts as stalled then.

The heartbeat is also the primary's health probe (health.py): one at a time, each with a
deadline (GATEHOUSE_PRIMARY_PROBE_TIMEOUT), and it alone opens and closes the breaker that makes
writes fail fast while the primary is down. `ReplicaFreshness.wait_applied_everywhere` lets a
degraded logout wait until every read replica holds its revocation flag (revocations.py).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from services.auth.metrics import REPLICA_LAG
from services.auth.store.database import Database, DatabaseError
from services.auth.store.health import PrimaryHealth
from services.foundation.tasks import every, stop_task

log = logging.getLogger(__name__)

# The row is created by migration 0001 (MySQL 8.4 deprecates VALUES() in ON DUPLICATE KEY
# UPDATE, so no upsert). Each beat moves it strictly forward, to the primary's NOW(6) or, while
# that is behind the row (a failover to a host whose clock is behind, a clock stepped back), one
# microsecond past it: so a beat always commits a value above every primary time read before it
# (`Database.server_time` reads times past the row), and the proof in docs/design.md needs no
# clock to be right or monotonic.
_BUMP_HEARTBEAT = (
    "UPDATE replication_heartbeat SET beat = GREATEST(beat + INTERVAL 1 MICROSECOND, NOW(6))"
    " WHERE id = 1"
)
_READ_HEARTBEAT = "SELECT beat FROM replication_heartbeat WHERE id = 1"
# A replica that applies no beat for this long while the primary is up has stopped replicating
# (an error on its SQL thread) or is stuck behind a long transaction: worth one warning.
STALLED_AFTER_SECONDS = 30.0


class HeartbeatWriter:
    """Bumps the heartbeat row every interval and reports each outcome to the primary's health
    (`primary.health`, or a health of its own for a pool opened without one)."""

    def __init__(
        self, primary: Database, interval: float, *, probe_timeout: float | None = None
    ) -> None:
        self._primary = primary
        self._interval = interval
        self._probe_timeout = primary.timeout if probe_timeout is None else probe_timeout
        self.health = primary.health if primary.health is not None else PrimaryHealth()
        self._task: asyncio.Task[None] | None = None

    @property
    def primary_reachable(self) -> bool:
        """Whether the last heartbeat reached the primary in time."""
        return self.health.available

    def start(self) -> None:
        self._task = asyncio.create_task(
            every(self._interval, self.beat, "heartbeat"), name="replication-heartbeat"
        )

    async def close(self) -> None:
        await stop_task(self._task)

    async def beat(self) -> None:
        """Write one heartbeat, within the probe deadline."""
        try:
            async with asyncio.timeout(self._probe_timeout):
                await self._primary.execute("heartbeat", _BUMP_HEARTBEAT, probe=True)
        except TimeoutError:
            self.health.probe_failed(f"a heartbeat took over {self._probe_timeout:g} s")
        except DatabaseError as exc:
            self.health.probe_failed(f"heartbeat failed: {exc}")
        else:
            self.health.probe_succeeded()


class ReplicaFreshness:
    def __init__(
        self,
        primary: Database,
        replicas: Sequence[Database],
        interval: float,
        *,
        stalled_after: float = STALLED_AFTER_SECONDS,
    ) -> None:
        self._primary = primary
        self._replicas = tuple(replicas)
        self._interval = interval
        self._stalled_after = stalled_after
        # When (time.monotonic) each answering replica last showed a new beat, or the primary
        # was last seen down; the replicas whose stall was logged.
        self._advanced_at: dict[Database, float] = {}
        self._stalled: set[Database] = set()
        # Primary time each replica has applied up to; None while its last poll failed.
        self._applied: dict[Database, datetime | None] = dict.fromkeys(self._replicas)
        self._last_known: dict[Database, datetime] = {}
        self._unusable: set[Database] = set()
        self._polled = asyncio.Condition()  # notified after every poll
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._replicas:
            self._task = asyncio.create_task(
                every(self._interval, self.poll, "replica heartbeat poll"), name="replica-freshness"
            )

    async def close(self) -> None:
        await stop_task(self._task)

    def pick_reader(self, required: datetime) -> Database:
        """A random replica that has applied the primary's history up to `required`, else the
        primary."""
        fresh = [
            replica
            for replica, applied in self._applied.items()
            if applied is not None and applied >= required
        ]
        return random.choice(fresh) if fresh else self._primary

    @property
    def replicas(self) -> tuple[Database, ...]:
        return self._replicas

    def applied_through(self, replica: Database) -> datetime | None:
        return self._applied[replica]

    def applied_everywhere(self, required: datetime) -> bool:
        """Whether every replica's last poll showed the primary's history applied through
        `required` (true without replicas)."""
        return all(
            applied is not None and applied >= required for applied in self._applied.values()
        )

    async def wait_applied_everywhere(self, required: datetime, timeout: float) -> bool:
        """Wait at most `timeout` seconds until `applied_everywhere(required)`; whether it is.
        Needs the polling loop (`start`)."""
        try:
            async with asyncio.timeout(timeout), self._polled:
                await self._polled.wait_for(lambda: self.applied_everywhere(required))
        except TimeoutError:
            return False
        return True

    def lag_seconds(self, replica: Database) -> float | None:
        """Seconds since the primary time the replica last showed it had applied (local clock,
        so it includes up to a heartbeat interval and any clock skew); None if never seen."""
        last_known = self._last_known.get(replica)
        if last_known is None:
            return None
        return max(0.0, (datetime.now(UTC) - last_known).total_seconds())

    async def poll(self) -> None:
        """Read every replica's heartbeat once."""
        await asyncio.gather(*(self._poll_one(replica) for replica in self._replicas))
        async with self._polled:
            self._polled.notify_all()

    async def _poll_one(self, replica: Database) -> None:
        try:
            row = await replica.fetch_one("replica_heartbeat", _READ_HEARTBEAT)
            if row is None:
                raise DatabaseError(
                    f"replica {replica.address.label} has no heartbeat row: is it replicating "
                    "from the primary, which got the row from migration 0001?"
                )
        except DatabaseError as exc:
            if replica not in self._unusable:
                log.warning(
                    "replica %s is not used for reads until it answers: %s",
                    replica.address.label,
                    exc,
                )
                self._unusable.add(replica)
            self._applied[replica] = None
            self._advanced_at.pop(replica, None)  # down is logged above, not as a stall
        else:
            if replica in self._unusable:
                log.info(
                    "replica %s answers its heartbeat again: used for fresh reads",
                    replica.address.label,
                )
                self._unusable.discard(replica)
            self._note_progress(replica, row["beat"])
            self._applied[replica] = row["beat"]
            self._last_known[replica] = row["beat"]
        lag = self.lag_seconds(replica)
        REPLICA_LAG.labels(replica.address.label).set(float("nan") if lag is None else lag)

    def _note_progress(self, replica: Database, beat: datetime) -> None:
        """Log once when `replica` has applied no new beat for `stalled_after` seconds while
        the primary was up, and once when it applies one again."""
        now = time.monotonic()
        health = self._primary.health
        if health is not None and not health.available:
            self._advanced_at[replica] = now  # no beats are written: the wait starts over
            return
        if beat != self._last_known.get(replica):
            self._advanced_at[replica] = now
            if replica in self._stalled:
                self._stalled.discard(replica)
                log.info(
                    "replica %s applies the primary's history again (%.1f s behind)",
                    replica.address.label,
                    max(0.0, (datetime.now(UTC) - beat).total_seconds()),
                )
            return
        stalled_for = now - self._advanced_at.setdefault(replica, now)
        if replica not in self._stalled and stalled_for >= self._stalled_after:
            self._stalled.add(replica)
            log.warning(
                "replica %s has applied nothing from the primary for %.0f s although both"
                " answer: its replication has stopped (an error: see SHOW REPLICA STATUS on it)"
                " or is stuck; reads of newer data go to the primary",
                replica.address.label,
                stalled_for,
            )
