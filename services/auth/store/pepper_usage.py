"""How many live accounts' password hashes use each pepper version (AdminPepperUsage).

The users table is walked in primary-key order, a chunk per statement, so that no statement
scans the whole table (each finishes well within GATEHOUSE_MYSQL_TIMEOUT) and the caller's
deadline is checked between chunks. Deleted accounts (their hash erased) are walked over,
not counted.
"""

from __future__ import annotations

import asyncio

from services.auth.store.database import Database, DatabaseTimeout

CHUNK_ROWS = 20_000
_CHUNK = """
SELECT pepper_version, SUM(deleted_at IS NULL) AS hashes, COUNT(*) AS walked, MAX(id) AS last_id
FROM (
    SELECT id, pepper_version, deleted_at FROM users WHERE id > %s ORDER BY id LIMIT %s
) AS chunk
GROUP BY pepper_version
"""


async def pepper_usage(
    database: Database, deadline: float, chunk_rows: int = CHUNK_ROWS
) -> dict[int, int]:
    """{pepper version: live hashes}, every version with at least one, by `deadline`
    (loop.time(); DatabaseTimeout past it)."""
    usage: dict[int, int] = {}
    after = 0
    loop = asyncio.get_running_loop()
    while True:
        if loop.time() >= deadline:
            raise DatabaseTimeout(
                "counting hashes per pepper version took past the call's deadline"
            )
        rows = await database.fetch_all("pepper_usage", _CHUNK, (after, chunk_rows))
        for row in rows:
            if int(row["hashes"]):
                version = int(row["pepper_version"])
                usage[version] = usage.get(version, 0) + int(row["hashes"])
        if sum(int(row["walked"]) for row in rows) < chunk_rows:
            return usage
        after = max(int(row["last_id"]) for row in rows)
