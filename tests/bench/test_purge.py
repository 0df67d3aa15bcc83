"""`python -m bench.purge` at toy size on the session's data stores: every phase runs, the
purge empties the table at the rates it was given, and the reads were measured throughout.
It tests the script, not the figures."""

from __future__ import annotations

import secrets
from pathlib import Path

from bench.purge import (
    DEFAULT_RATE,
    MAX_RATE,
    PURGE_AFTER,
    ExpiredRows,
    add_users,
    deletes_running,
    fill,
    measure,
    parse,
    purge_for,
    report,
)
from devstack import DataStores
from services.auth.store.database import Database
from services.auth.store.migrate import apply_migrations
from services.auth.store.session_purge import LOCK_WAIT_SECONDS, PurgeLimits


async def test_every_phase_runs_and_the_purge_empties_the_table(
    data_stores: DataStores, tmp_path: Path
) -> None:
    args = parse(
        ["--rows", "100000", "--default-seconds", "1", "--max-seconds", "0.2",
         "--compare-seconds", "0.5", "--baseline-seconds", "1", "--phase-limit", "60"]
    )  # fmt: skip
    # Enough rows that the fastest phases (25k rows/s on a quiet machine) leave some for each
    # way compared after them.
    database = f"bench_purge_{secrets.token_hex(4)}"
    try:
        figures = await measure(args, data_stores, tmp_path, database)
    finally:
        data_stores.primary.execute(f"DROP DATABASE IF EXISTS `{database}`")
    at_default, at_max = figures.purges
    # Batches of 500 at 1000 rows/s for 1 s: two batches may start within that second.
    assert 0 < at_default.rows <= 2 * 500 and DEFAULT_RATE == 1000
    assert at_max.rows > 0 and f"{MAX_RATE} rows/s" in at_max.label
    assert all(way.rows > 0 for way in figures.compared) and len(figures.compared) == 3
    purged = at_default.rows + at_max.rows + sum(way.rows for way in figures.compared)
    assert purged + figures.expired_left == args.rows
    assert [label for label, *_ in figures.reads] == [
        "before: no DDL, no purge",
        "during migration 0006",
        "purge at batch 500, 1000 rows/s",
        f"purge at batch 500, {MAX_RATE} rows/s",
        "purge unpaced: keyset batches by key",
        "purge unpaced: DELETE ... ORDER BY expires_at LIMIT",
        "purge unpaced: primary-key ranges, expired rows deleted",
        "after: no DDL, no purge",
    ]
    before = figures.reads[0]
    assert before[1] >= 100  # 200 reads/s for 1 s
    assert "| during migration 0006 |" in report(figures)


async def test_a_phase_ends_only_once_its_cut_off_delete_has_ended(data_stores: DataStores) -> None:
    """The time bound cuts the service's purge off on the client while its DELETE waits for a
    row lock on the server; the next phase must not start beside that DELETE (both deleting the
    same rows in different orders deadlock, MySQL error 1213)."""
    database = f"bench_purge_{secrets.token_hex(4)}"
    data_stores.create_database(database)
    dsn = data_stores.migration_dsn_of(database)
    primary: Database | None = None
    try:
        await apply_migrations(dsn, timeout=60.0)
        add_users(data_stores, database)
        fill(data_stores, database, 1000)
        expired = ExpiredRows(data_stores, database, limit=30.0)
        await expired.deleted_since_last()
        primary = await Database.open(dsn, role="primary", pool_size=1, timeout=30.0)
        with data_stores.primary.connect(database=database) as locker, locker.cursor() as cursor:
            cursor.execute("BEGIN")
            cursor.execute("SELECT id FROM sessions ORDER BY expires_at LIMIT 1 FOR UPDATE")
            # The purge's DELETE meets the lock at once and waits for it LOCK_WAIT_SECONDS; the
            # bound ends the phase on the client before that.
            assert LOCK_WAIT_SECONDS > 0.8
            unpaced = PurgeLimits(PURGE_AFTER, 500, rows_per_second=1e9)
            figures, _ = await purge_for(primary, unpaced, 0.8, expired)
            assert deletes_running(data_stores, database) == 0
            cursor.execute("ROLLBACK")
        assert figures.rows == 0  # the DELETE timed out on the lock and deleted nothing
    finally:
        if primary is not None:
            await primary.close()
        data_stores.primary.execute(f"DROP DATABASE IF EXISTS `{database}`")
