"""Writes that revoke sessions, on the real primary and Redis, when the answer to their COMMIT
is lost (the primary froze or failed over after the COMMIT was durable, or the clock read after
it timed out): the revocations may have landed, so their sessions must be refused as if they
had, not served from the cache until they expire. And every revoking write starts only before
its caller's deadline."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from datetime import datetime

import aiomysql
import pymysql
import pytest
from prometheus_client import REGISTRY

from services.auth.accounts import AccountStore
from services.auth.store.database import Database, DatabaseError, DeadlinePassed, Transaction
from tests.auth.test_accounts import PASSWORD_HASH, log_in, register

# A revoking write of `user_id`, made by the session `current` (which some of them keep).
Revocation = Callable[[AccountStore, int, str, str], Awaitable[object]]


async def end_sessions(store: AccountStore, user_id: int, current: str, other: str) -> object:
    return await store.end_sessions(user_id)


async def end_session(store: AccountStore, user_id: int, current: str, other: str) -> object:
    return await store.end_session(user_id, other)


async def end_named_sessions(store: AccountStore, user_id: int, current: str, other: str) -> object:
    return await store.end_named_sessions(user_id, [other])


async def change_password(store: AccountStore, user_id: int, current: str, other: str) -> object:
    return await store.change_password(user_id, current, PASSWORD_HASH, 1)


async def delete_account(store: AccountStore, user_id: int, current: str, other: str) -> object:
    return await store.delete_account(user_id, current, free_username=False)


REVOCATIONS = [end_sessions, end_session, end_named_sessions, change_password, delete_account]


def in_doubt() -> float:
    return REGISTRY.get_sample_value("gatehouse_auth_revocations_in_doubt_total") or 0.0


async def revoked_on_the_primary(primary: Database, session_id: str) -> bool:
    row = await primary.fetch_one(
        "test_revoked", "SELECT revoked_at FROM sessions WHERE id = %s", (session_id,)
    )
    assert row is not None
    return row["revoked_at"] is not None


@pytest.mark.parametrize("revocation", REVOCATIONS, ids=lambda revocation: revocation.__name__)
async def test_a_revocation_whose_commit_answer_is_lost_is_recorded_all_the_same(
    store: AccountStore,
    primary: Database,
    monkeypatch: pytest.MonkeyPatch,
    revocation: Revocation,
) -> None:
    user = await register(store)
    current, other = await log_in(store, user), await log_in(store, user)
    # Both sessions read once: the cache holds them, and answers from it from now on.
    assert await store.session_profile(user.id, current) is not None
    assert await store.session_profile(user.id, other) is not None

    async def answer_lost(self: Transaction) -> datetime:
        raise DatabaseError("the connection was lost after COMMIT (the test's fault)")

    monkeypatch.setattr(Transaction, "server_time", answer_lost)
    before = in_doubt()
    with pytest.raises(DatabaseError, match="the test's fault"):
        await revocation(store, user.id, current, other)
    monkeypatch.undo()

    assert await revoked_on_the_primary(primary, other), "the COMMIT landed"
    assert await store.session_profile(user.id, other) is None
    assert in_doubt() == before + 1


async def test_a_commit_whose_connection_was_lost_is_in_doubt_and_one_refused_is_not(
    store: AccountStore, primary: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The COMMIT's own answer: a lost connection (client error 2013) after the server
    committed leaves the sessions revoked; an error of the server's (below 2000) means it did
    not commit, and nothing is recorded."""
    commit = aiomysql.Connection.commit

    async def committed_then_lost(self: aiomysql.Connection) -> None:
        await commit(self)
        raise pymysql.err.OperationalError(2013, "Lost connection to server during query")

    async def refused(self: aiomysql.Connection) -> None:
        raise pymysql.err.OperationalError(1180, "Got error 1 during COMMIT")

    for fault, landed in ((committed_then_lost, True), (refused, False)):
        user = await register(store)
        await log_in(store, user)
        other = await log_in(store, user)
        assert await store.session_profile(user.id, other) is not None
        before = in_doubt()
        monkeypatch.setattr(aiomysql.Connection, "commit", fault)
        with pytest.raises(DatabaseError):
            await store.end_sessions(user.id)
        monkeypatch.undo()
        assert await revoked_on_the_primary(primary, other) is landed
        assert (await store.session_profile(user.id, other) is None) is landed
        assert in_doubt() == before + (1 if landed else 0)


async def test_a_revocation_that_failed_before_its_commit_revokes_nothing(
    store: AccountStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = await register(store)
    other = await log_in(store, user)
    assert await store.session_profile(user.id, other) is not None
    execute = Transaction.execute

    async def fails_at_the_update(self: Transaction, sql: str, args: object = ()) -> int:
        if sql.lstrip().upper().startswith("UPDATE SESSIONS"):
            raise DatabaseError("the connection was lost before COMMIT (the test's fault)")
        return await execute(self, sql, args)  # type: ignore[arg-type]

    monkeypatch.setattr(Transaction, "execute", fails_at_the_update)
    before = in_doubt()
    with pytest.raises(DatabaseError, match="the test's fault"):
        await store.end_sessions(user.id)
    monkeypatch.undo()
    assert await store.session_profile(user.id, other) is not None  # rolled back: still live
    assert in_doubt() == before


# The same writes, each given a deadline that has passed.
LateRevocation = Callable[[AccountStore, int, str, str, float], Awaitable[object]]
LATE_REVOCATIONS: dict[str, LateRevocation] = {
    "end_sessions": lambda store, user_id, current, other, late: store.end_sessions(
        user_id, not_after=late
    ),
    "end_session": lambda store, user_id, current, other, late: store.end_session(
        user_id, other, not_after=late
    ),
    "end_named_sessions": lambda store, user_id, current, other, late: store.end_named_sessions(
        user_id, [other], not_after=late
    ),
    "change_password": lambda store, user_id, current, other, late: store.change_password(
        user_id, current, PASSWORD_HASH, 1, not_after=late
    ),
    "delete_account": lambda store, user_id, current, other, late: store.delete_account(
        user_id, current, free_username=False, not_after=late
    ),
}


@pytest.mark.parametrize("name", LATE_REVOCATIONS)
async def test_a_revoking_write_does_not_start_after_its_deadline(
    store: AccountStore, primary: Database, name: str
) -> None:
    """A write its caller gave up on (and answered as failed) must not land afterwards: a
    password change that did would replace the one the user set when retrying."""
    user = await register(store)
    current, other = await log_in(store, user), await log_in(store, user)
    late = asyncio.get_running_loop().time() - 1
    with pytest.raises(DeadlinePassed):
        await LATE_REVOCATIONS[name](store, user.id, current, other, late)
    assert not await revoked_on_the_primary(primary, other)
    row = await primary.fetch_one(
        "test_user", "SELECT password_hash, deleted_at FROM users WHERE id = %s", (user.id,)
    )
    assert row is not None and row["deleted_at"] is None


@pytest.mark.parametrize("operation", ["lock_account", "delete_named_account", "unlock_account"])
async def test_an_operators_revoking_write_does_not_start_after_its_deadline(
    store: AccountStore, primary: Database, operation: str
) -> None:
    username = f"user_{secrets.token_hex(5)}"
    user = await register(store, username)
    session = await log_in(store, user)
    late = asyncio.get_running_loop().time() - 1
    if operation == "unlock_account":
        await store.lock_account(username)
    with pytest.raises(DeadlinePassed):
        if operation == "lock_account":
            await store.lock_account(username, not_after=late)
        elif operation == "unlock_account":
            await store.unlock_account(username, not_after=late)
        else:
            await store.delete_named_account(username, free_username=False, not_after=late)
    row = await primary.fetch_one(
        "test_lock", "SELECT locked_at, deleted_at FROM users WHERE id = %s", (user.id,)
    )
    assert row is not None and row["deleted_at"] is None
    if operation == "unlock_account":
        assert row["locked_at"] is not None, "still locked"
    else:
        assert row["locked_at"] is None
        assert not await revoked_on_the_primary(primary, session)
