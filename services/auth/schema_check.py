"""Whether the database holds every migration of this release, before and after a replica
registers in discovery.

With the migrations not run at start (the chart's default: its migrate Job runs them), a
replica on an older schema (the Job disabled or skipped, or still running at an install) would
serve and fail every call that touches what a missing migration adds. So a replica reads
`schema_migrations` (as the application user may) before it registers, and while one of its
release's migrations is missing it stays not ready, out of discovery, saying what to run.

A primary out of reach at start is not waited for (reads go on without it, from the read
replicas): the replica registers, asks again every SCHEMA_POLL_SECONDS, and if the schema then
turns out to lack a migration it leaves discovery until the migration is applied.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from services.auth.store.database import Database, DatabaseError
from services.auth.store.migrate import schema_lag, warn_of_unknown
from services.foundation.etcd import LeasedKey

log = logging.getLogger(__name__)

SCHEMA_POLL_SECONDS = 5.0
DRAINING = "draining"


class Readiness(Protocol):
    not_ready_because: str | None


async def wait_for_schema(
    readiness: Readiness,
    primary: Database,
    poll_seconds: float = SCHEMA_POLL_SECONDS,
    *,
    wait_for_primary: bool = False,
) -> bool:
    """True once the database holds every migration of this release, not ready meanwhile
    (naming the missing versions). A primary that cannot be asked: False at once, unless a
    check already found a migration missing or `wait_for_primary`: then asked again every
    `poll_seconds`. False too once the replica is draining (its reason is left as it is)."""
    said_pending: list[str] = []
    while True:
        if readiness.not_ready_because == DRAINING:
            return False
        try:
            lag = await schema_lag(primary)
        except DatabaseError as exc:
            if not (wait_for_primary or said_pending):
                log.warning(
                    "could not check the schema's migrations (%s): serving, and asking again"
                    " every %g s",
                    exc,
                    poll_seconds,
                )
                return False
            await asyncio.sleep(poll_seconds)
            continue
        if not said_pending:
            warn_of_unknown(lag.unknown)
        if not lag.pending:
            if said_pending:
                log.info("the database has every migration of this release now")
            return True
        readiness.not_ready_because = (
            f"the database lacks migrations {', '.join(lag.pending)} of this release: run"
            " `python -m services.auth migrate` (the chart's migrate Job) as the migration user"
        )
        if lag.pending != said_pending:
            log.warning("not ready: %s", readiness.not_ready_because)
            said_pending = lag.pending
        await asyncio.sleep(poll_seconds)


async def recheck_schema(
    readiness: Readiness,
    primary: Database,
    announcement: LeasedKey,
    poll_seconds: float = SCHEMA_POLL_SECONDS,
) -> None:
    """For a replica that registered without confirming its schema: ask until the primary
    answers; if a migration of this release is missing, leave discovery, wait not ready until
    it is applied, and register again (unless the replica began draining meanwhile)."""
    while True:
        await asyncio.sleep(poll_seconds)
        try:
            lag = await schema_lag(primary)
        except DatabaseError:
            continue
        break
    warn_of_unknown(lag.unknown)
    if not lag.pending:
        log.info("the schema, unchecked at start, holds every migration of this release")
        return
    if readiness.not_ready_because == DRAINING:
        return
    readiness.not_ready_because = (
        f"leaving discovery: the database lacks migrations {', '.join(lag.pending)}"
    )
    log.warning("%s", readiness.not_ready_because)
    await announcement.stop()
    if not await wait_for_schema(readiness, primary, poll_seconds, wait_for_primary=True):
        return  # draining
    await announcement.start()
    if readiness.not_ready_because != DRAINING:  # not begun while the lease was granted
        readiness.not_ready_because = None
    log.info("registered in discovery again: the schema holds every migration of this release")
