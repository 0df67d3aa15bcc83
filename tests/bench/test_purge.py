"""`python -m bench.purge` at toy size on the session's data stores: every phase runs, the
purge empties the table at the rates it was given, and the reads were measured throughout.
It tests the script, not the figures."""

from __future__ import annotations

import secrets
from pathlib import Path

from bench.purge import DEFAULT_RATE, MAX_RATE, measure, parse, report
from devstack import DataStores


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
