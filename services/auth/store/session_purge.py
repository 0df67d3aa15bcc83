"""Purging expired sessions: batched deletes on the MySQL primary, one auth replica at a time.

Every auth replica runs `SessionPurge.run` every GATEHOUSE_SESSION_PURGE_INTERVAL. A run takes
the MySQL named lock 'gatehouse_session_purge' without waiting (it needs no etcd permission and
works during an etcd outage); a replica that does not get it skips its turn. The holder deletes
the rows whose `expires_at` is more than GATEHOUSE_SESSION_PURGE_AFTER in the past, in batches of
GATEHOUSE_SESSION_PURGE_BATCH_SIZE, at most GATEHOUSE_SESSION_PURGE_ROWS_PER_SECOND, until none is
left, then releases the lock.

Why deleting them is safe. A token's `exp` is its session's `expires_at` (tokens.py issues both
from one time), so the row of an expired session, revoked or not, guards nothing: the HTTP tier
refuses the token by itself (after a 5 s clock skew leeway), and an auth replica answers "no
session" for a missing row as for an expired one. Revocation relies on the rows of revoked
sessions until their tombstones are in Redis (revocations.py), but a cached "active" entry
carries the same expiry, so once that has passed on every host's clock it is refused too. The
margin only has to cover the clock differences between the primary (which sets the cut-off)
and the auth and HTTP hosts; it is at least 60 s.

How it stays gentle. Each batch reads up to a batch of keys from the `sessions_expires_at`
index (a consistent read, no locks), resuming after the last key of the previous batch so that
rows deleted but not yet purged by InnoDB are not scanned again, then deletes those rows by
primary key: row locks only, no gap locks, held for one short autocommit statement. Batches
are spaced so that none exceeds the rate. Every statement runs on one held connection, which
also holds the lock: if it dies, the lock is released with it, and the run stops instead of
purging unlocked; its `wait_timeout` makes the server drop it, and the lock, soon after this
replica vanishes. A run stops at once while the primary counts as down (health.py).

    purge = SessionPurge(primary, PurgeLimits(...))
    await purge.run() -> PurgeRun       # one run; never raises for MySQL trouble
    await purge.step()                  # `run` then `report(run)`: for `every`, one log line
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from services.auth.metrics import (
    SESSION_PURGE_BATCH_SECONDS,
    SESSION_PURGE_RUNS,
    SESSIONS_PURGED,
)
from services.auth.store.database import Database, DatabaseError, HeldStatements
from services.foundation.log_throttle import RepeatedWarnings

log = logging.getLogger(__name__)

LOCK_NAME = "gatehouse_session_purge"
# Seconds one purge may hold its lock idle beyond its longest pause before the server drops its
# connection (and the lock), should this replica vanish without closing it.
IDLE_MARGIN_SECONDS = 30
# A row lock held by someone else is waited for this long at most: the batch's own locks are
# held meanwhile, and the next run retries the batch.
LOCK_WAIT_SECONDS = 1
FAILURE_LOG_INTERVAL = 600.0

_FIRST_BATCH = """
SELECT id, expires_at FROM sessions FORCE INDEX (sessions_expires_at)
WHERE expires_at < %s
ORDER BY expires_at, id LIMIT %s
"""
# Resumes after the previous batch's last key (the index holds expires_at, then id).
_NEXT_BATCH = """
SELECT id, expires_at FROM sessions FORCE INDEX (sessions_expires_at)
WHERE expires_at < %s AND (expires_at > %s OR (expires_at = %s AND id > %s))
ORDER BY expires_at, id LIMIT %s
"""
_DELETE = "DELETE FROM sessions WHERE expires_at < %s AND id IN ({ids})"

Outcome = Literal["done", "lock_held_elsewhere", "failed"]
Pause = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class PurgeLimits:
    purge_after: timedelta  # how long past its expiry a row is kept
    batch_size: int
    rows_per_second: float

    @property
    def longest_pause(self) -> float:
        return self.batch_size / self.rows_per_second


@dataclass
class PurgeRun:
    outcome: Outcome
    rows: int = 0
    batches: int = 0
    seconds: float = 0.0
    error: DatabaseError | None = None


class SessionPurge:
    """`clock` and `pause` are the rate limit's time, replaceable in tests."""

    def __init__(
        self,
        primary: Database,
        limits: PurgeLimits,
        *,
        clock: Callable[[], float] = time.monotonic,
        pause: Pause = asyncio.sleep,
    ) -> None:
        self._primary = primary
        self._limits = limits
        self._clock = clock
        self._pause = pause
        self._warnings = RepeatedWarnings(log, FAILURE_LOG_INTERVAL)

    async def step(self) -> None:
        """One run, logged in one line."""
        self.report(await self.run())

    def report(self, run: PurgeRun) -> None:
        """Log `run` in one line: a failure at most once per FAILURE_LOG_INTERVAL, and none
        while the primary counts as down (its health line says so)."""
        if run.outcome == "failed" and run.error is not None:
            if self._primary.outage_explains(run.error):
                log.debug("session purge stopped by the primary outage: %s", run.error)
                return
            self._warnings.warn(
                "failed",
                "purging expired sessions stopped after %d rows (%s); the next run resumes",
                run.rows,
                run.error,
            )
        elif run.rows:
            log.info(
                "purged %d expired sessions in %.1f s (%d batches, %.0f rows/s)",
                run.rows,
                run.seconds,
                run.batches,
                run.rows / run.seconds if run.seconds > 0 else math.inf,
            )
        else:
            log.debug("session purge: %s, nothing deleted", run.outcome)

    async def run(self) -> PurgeRun:
        """Delete every purgeable row, unless another replica holds the lock."""
        started = self._clock()
        run = PurgeRun(outcome="done")
        try:
            async with self._primary.held_connection("purge_sessions") as statements:
                if await self._lock(statements):
                    await self._purge(statements, run)
                    await statements.execute("DO RELEASE_LOCK(%s)", (LOCK_NAME,))
                else:
                    run.outcome = "lock_held_elsewhere"
        except DatabaseError as exc:
            run.outcome = "failed"
            run.error = exc
        run.seconds = self._clock() - started
        SESSION_PURGE_RUNS.labels(run.outcome).inc()
        return run

    async def _lock(self, statements: HeldStatements) -> bool:
        idle_limit = math.ceil(self._limits.longest_pause) + IDLE_MARGIN_SECONDS
        await statements.execute(
            "SET SESSION wait_timeout = %s, innodb_lock_wait_timeout = %s",
            (idle_limit, LOCK_WAIT_SECONDS),
        )
        row = await statements.fetch_one("SELECT GET_LOCK(%s, 0) AS locked", (LOCK_NAME,))
        return row is not None and row["locked"] == 1

    async def _purge(self, statements: HeldStatements, run: PurgeRun) -> None:
        cutoff = await statements.server_time() - self._limits.purge_after
        last: tuple[datetime, str] | None = None
        while True:
            batch_started = self._clock()
            timer = time.perf_counter()
            if last is None:
                keys = await statements.fetch_all(_FIRST_BATCH, (cutoff, self._limits.batch_size))
            else:
                expires_at, session_id = last
                keys = await statements.fetch_all(
                    _NEXT_BATCH,
                    (cutoff, expires_at, expires_at, session_id, self._limits.batch_size),
                )
            if not keys:
                return
            ids = [row["id"] for row in keys]
            deleted = await statements.execute(
                _DELETE.format(ids=", ".join(["%s"] * len(ids))), (cutoff, *ids)
            )
            SESSION_PURGE_BATCH_SECONDS.observe(time.perf_counter() - timer)
            SESSIONS_PURGED.inc(deleted)
            run.rows += deleted
            run.batches += 1
            if len(keys) < self._limits.batch_size:
                return
            last = (keys[-1]["expires_at"], keys[-1]["id"])
            wait = batch_started + len(keys) / self._limits.rows_per_second - self._clock()
            if wait > 0:
                await self._pause(wait)
