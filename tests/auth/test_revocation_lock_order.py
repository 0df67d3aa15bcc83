"""Revocations of many sessions of a user against a password change, a lock or a deletion of
the same account, on the real primary: both lock the user's row before its sessions, so one
waits for the other instead of InnoDB rolling one back as a deadlock victim."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest

from devstack import DataStores
from services.auth import accounts
from services.auth.accounts import AccountStore
from services.auth.store.database import Database
from tests.auth.conftest import a_transaction_waits_for_a_lock
from tests.auth.test_accounts import register

Eventually = Callable[[Callable[[], Awaitable[bool]], str], Awaitable[None]]

# Ids (after the user's id) chosen so that the one the deletion locks first ("z") comes after two
# others both in the order of creation and in key order: whichever index a revocation walks, it
# has locked sessions the deletion needs by the time it waits for "z".
SESSION_NAMES = ["a1", "a2", "z", "a3", "a4"]
LOCKED_FIRST = "z"
# What a deletion (and, alike, a password change) locks first: the user's row and the caller's
# session.
ACCOUNT_AND_SESSION_FOR_DELETION = """
SELECT u.id FROM users u JOIN sessions s ON s.user_id = u.id
WHERE u.id = %s AND s.id = %s FOR UPDATE
"""
REVOKE_EVERY_SESSION = (
    "UPDATE sessions SET revoked_at = NOW(6) WHERE user_id = %s AND revoked_at IS NULL"
)

Revocation = Callable[[AccountStore, int], Awaitable[object]]


def session_id(user_id: int, name: str) -> str:
    return f"{user_id}-{name}"


async def end_sessions(store: AccountStore, user_id: int) -> object:
    return await store.end_sessions(user_id)


async def end_named_sessions(store: AccountStore, user_id: int) -> object:
    return await store.end_named_sessions(
        user_id, [session_id(user_id, name) for name in SESSION_NAMES]
    )


async def end_sessions_past_the_cap(store: AccountStore, user_id: int) -> object:
    # What a login runs once its session is stored (the cap is 1 here: every older one ends).
    await store._end_sessions_past_the_cap(user_id)
    return None


@pytest.mark.parametrize(
    "revocation",
    [end_sessions, end_named_sessions, end_sessions_past_the_cap],
    ids=["end_sessions", "end_named_sessions", "sessions_past_the_cap"],
)
async def test_a_revocation_of_many_sessions_waits_for_a_deletion_instead_of_deadlocking(
    store: AccountStore,
    primary: Database,
    data_stores: DataStores,
    database_name: str,
    eventually: Eventually,
    monkeypatch: pytest.MonkeyPatch,
    revocation: Revocation,
) -> None:
    user = await register(store)
    for name in SESSION_NAMES:
        await store.create_session(
            user.id,
            session_id(user.id, name),
            datetime.now(UTC) + timedelta(hours=1),
            password_changes=0,
        )
    monkeypatch.setattr(accounts, "MAX_SESSIONS_PER_USER", 1)

    async def revocation_waits_for_a_lock() -> bool:
        return await a_transaction_waits_for_a_lock(data_stores, database_name)

    async with primary.transaction("test_deletion") as deletion:
        await deletion.fetch_one(
            ACCOUNT_AND_SESSION_FOR_DELETION, (user.id, session_id(user.id, LOCKED_FIRST))
        )
        revoking = asyncio.ensure_future(revocation(store, user.id))
        await eventually(revocation_waits_for_a_lock, "the revocation waits for a row lock")
        # The deletion goes on to revoke every session: rows a revocation that locked sessions
        # first would hold while it waits for "z".
        revoked = await deletion.execute(REVOKE_EVERY_SESSION, (user.id,))
    assert revoked == len(SESSION_NAMES)
    await revoking  # not rolled back as a deadlock victim: it ran after the deletion committed
