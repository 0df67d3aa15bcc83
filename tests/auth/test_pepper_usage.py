"""Counting hashes per pepper version walks the users table chunk by chunk, leaves deleted
accounts out, and stops at the call's deadline."""

from __future__ import annotations

import asyncio

import pytest

from services.auth.store.database import Database, DatabaseTimeout
from services.auth.store.pepper_usage import pepper_usage

_INSERT = """
INSERT INTO users (id, username, nickname, password_hash, pepper_version, version, created_at,
    updated_at, deleted_at)
VALUES (%s, %s, '', 'hash', %s, 1, NOW(6), NOW(6), IF(%s, NOW(6), NULL))
"""


@pytest.fixture
async def users(primary: Database) -> None:
    """Ids 1..10: versions 1, 2, 1, 2, ... ; ids 9 and 10 deleted (erased to version 0, and a
    version-1 row deleted without erasure)."""
    await primary.execute("pepper_usage_test", "DELETE FROM users")
    for user_id in range(1, 11):
        version = 0 if user_id == 10 else 1 + (user_id + 1) % 2
        await primary.execute(
            "pepper_usage_test", _INSERT, (user_id, f"pep{user_id}", version, user_id >= 9)
        )


@pytest.mark.parametrize("chunk_rows", [1, 3, 4, 10, 20_000])
async def test_live_hashes_are_counted_per_version_whatever_the_chunk(
    primary: Database, users: None, chunk_rows: int
) -> None:
    deadline = asyncio.get_running_loop().time() + 10
    # Live: ids 1-8, versions 1 (odd ids) and 2 (even ids).
    assert await pepper_usage(primary, deadline, chunk_rows) == {1: 4, 2: 4}


async def test_the_walk_stops_at_the_deadline(primary: Database, users: None) -> None:
    with pytest.raises(DatabaseTimeout, match="deadline"):
        await pepper_usage(primary, asyncio.get_running_loop().time() - 1, 1)
