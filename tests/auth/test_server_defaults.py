"""The store on a primary whose defaults differ from devstack's, as an operator's own server or a
managed service's parameter group may set them: each connection sets what the store relies on
(services/auth/store/database.py), so the server's defaults change nothing."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pytest

from devstack import DataStores
from services.auth import accounts
from services.auth.accounts import AccountStore
from services.auth.store.blobs import Blob, BlobTable
from services.auth.store.database import Database, StatementRejected, Transaction
from tests.auth.conftest import Eventually, a_transaction_waits_for_a_lock
from tests.auth.test_accounts import log_in, register
from tests.auth.test_blobs import new_key, webp


@contextmanager
def server_default(data_stores: DataStores, variable: str, value: str) -> Iterator[None]:
    """The primary's global `variable` set to `value` (connections opened meanwhile start with
    it), then back to what it was."""
    before = data_stores.primary.variable(variable)
    data_stores.primary.execute(f"SET GLOBAL {variable} = %s", (value,))
    try:
        yield
    finally:
        data_stores.primary.execute(f"SET GLOBAL {variable} = %s", (before,))


@pytest.fixture
def read_committed_by_default(data_stores: DataStores) -> Iterator[None]:
    # Requested before the store, so that every connection of the test opens under it.
    with server_default(data_stores, "tx_isolation", "READ-COMMITTED"):
        yield


@pytest.fixture
def no_backslash_escapes_by_default(data_stores: DataStores) -> Iterator[None]:
    mode = data_stores.primary.variable("sql_mode")
    with server_default(data_stores, "sql_mode", f"{mode},NO_BACKSLASH_ESCAPES"):
        yield


@pytest.fixture
def not_strict_by_default(data_stores: DataStores) -> Iterator[None]:
    with server_default(data_stores, "sql_mode", ""):
        yield


async def test_ending_every_session_tombstones_each_it_revokes_under_read_committed(
    read_committed_by_default: None,
    store: AccountStore,
    data_stores: DataStores,
    database_name: str,
    eventually: Eventually,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A login committing between end_sessions' locking read and its UPDATE: under READ
    COMMITTED (no gap locks) the UPDATE revoked it too, without its tombstone, and Redis went on
    serving it as live while MySQL had it revoked."""
    user = await register(store)
    kept = await log_in(store, user)
    await log_in(store, user)  # another device
    logins: list[asyncio.Future[str]] = []
    execute = Transaction.execute

    async def login_commits_or_waits() -> bool:
        waiting = await a_transaction_waits_for_a_lock(data_stores, database_name)
        return logins[0].done() or waiting

    async def execute_after_a_login(
        self: Transaction, sql: str, args: Sequence[object] = ()
    ) -> int:
        if sql == accounts._END_SESSIONS_BUT and not logins:
            logins.append(asyncio.ensure_future(log_in(store, user)))
            await eventually(login_commits_or_waits, "the login commits or waits for a lock")
        return await execute(self, sql, args)

    monkeypatch.setattr(Transaction, "execute", execute_after_a_login)
    await store.end_sessions(user.id, keep=kept)  # "log out my other devices"
    monkeypatch.undo()
    assert logins, "end_sessions found a session live and updated"
    late = await logins[0]
    assert await store.session_profile(user.id, kept) is not None  # the device kept goes on

    row = await store.primary.fetch_one(
        "test", "SELECT revoked_at FROM sessions WHERE id = %s", (late,)
    )
    assert row is not None
    served = await store.session_profile(user.id, late)
    assert (served is not None) == (row["revoked_at"] is None), (
        f"MySQL has the late login revoked_at={row['revoked_at']}, the store serves it: {served}"
    )


async def test_bytes_are_stored_unchanged_when_the_server_defaults_to_no_backslash_escapes(
    no_backslash_escapes_by_default: None, primary: Database
) -> None:
    """aiomysql escapes bytes arguments with backslashes whatever the sql_mode: under
    NO_BACKSLASH_ESCAPES a picture was stored with each NUL, backslash or newline byte
    rewritten, and one with a quote byte ended its string literal (a syntax error, or SQL)."""
    blobs = BlobTable(primary, [])
    key = new_key()
    data = webp(b'\x00\\\n\r\x1a"' + bytes(range(256)))
    await blobs.put(key, "image/webp", data)
    assert await blobs.get(key) == Blob("image/webp", data)

    quoted = new_key()
    await blobs.put(quoted, "image/webp", webp(b"', NOW(6)) -- "))
    assert await blobs.get(quoted) == Blob("image/webp", webp(b"', NOW(6)) -- "))


async def test_a_value_too_long_is_refused_when_the_server_defaults_to_a_lax_sql_mode(
    not_strict_by_default: None, primary: Database
) -> None:
    """Without STRICT_TRANS_TABLES the server cut a value that does not fit and stored the
    rest, with only a warning (which aiomysql passes to Python's warnings: printed once, not
    raised, outside pytest)."""
    key = new_key()
    with warnings.catch_warnings(), pytest.raises(StatementRejected, match="too long"):
        warnings.simplefilter("default")
        await primary.execute(
            "test",
            "INSERT INTO blobs (blob_key, content_type, data, created_at)"
            " VALUES (%s, %s, %s, NOW(6))",
            (key, "x" * 101, b"data"),
        )
    assert await BlobTable(primary, []).get(key) is None
