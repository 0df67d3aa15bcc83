"""MySQL connection pools with a deadline on every operation.

A `Database` is one aiomysql pool: the primary (writes) or one read replica. Its operations
are a single statement (`fetch_one`, `fetch_all`, `execute`), several statements on one
connection (`statements`), or a transaction (`transaction`). Each operation, the wait for a pool
connection included, must finish within `timeout` seconds or it raises `DatabaseTimeout`;
the connection it used is then closed, never returned to the pool, because its protocol state
is unknown (a query may still be running on it).

A transaction given `not_after` (a loop.time() value: the caller's deadline) checks it once it
holds a connection and has begun, right before its first statement, and raises `DeadlinePassed`
if it has passed: an RPC caller that has given up and answered its client "failed" must not have
the write land later, after a write that client made next (docs/design.md, "Deadlines").

A pool opened with a `PrimaryHealth` (health.py) refuses every operation at once with
`PrimaryDown` while that breaker is open, except the heartbeat's probes (`probe=True`). Probes
have a connection of their own, outside the pool: a pool that callers have filled (writes queued
on one hot row's lock) must not hold the probe back past its deadline and pass for a primary
that is down, which would refuse every other caller's writes. A probe with none open borrows an
idle callers' connection instead of opening one (`_probe_pool_for`). A connection whose
statement the server refused for --read-only is closed, whoever used it (an old primary a
failover left up: only a new connection reaches the promoted one).

Connections use TLS as the DSN's ssl-mode says (dsn.py). They run in autocommit mode with charset
utf8mb4, time_zone '+00:00', the sql_mode `_SQL_MODE` and REPEATABLE READ, whatever the server's
defaults: an operator's server (a managed service's parameter group) may default to READ
COMMITTED, under which locking reads take no gap locks, and the sessions a revocation locks and
then updates would not be the same rows (a login committing in between would be revoked without
its tombstone); or to a sql_mode with NO_BACKSLASH_ESCAPES, under which aiomysql's escaping of
bytes (always with backslashes) would rewrite a picture's bytes or end its string literal early;
or without STRICT_TRANS_TABLES, under which a value that does not fit would be cut silently. DATETIME
values are timezone-aware UTC datetimes both ways: aware arguments are converted to UTC, naive
ones are refused (their meaning would depend on the clock of whoever built them).
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
import weakref
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Literal

import aiomysql
import pymysql
from pymysql.constants import FIELD_TYPE
from pymysql.converters import convert_datetime, decoders

from services.auth.metrics import DB_QUERY_SECONDS
from services.auth.settings import DatabaseSettings
from services.auth.store.dsn import MySQLAddress, parse_dsn
from services.auth.store.health import PrimaryHealth

Role = Literal["primary", "replica"]
Row = dict[str, Any]

# Idle connections older than this are replaced: proxies and NAT tables drop idle TCP
# connections silently, and a query on such a connection would only fail at its deadline.
_POOL_RECYCLE_SECONDS = 300
_DUPLICATE_ENTRY = 1062
_READ_ONLY = 1290  # ER_OPTION_PREVENTS_STATEMENT: the server runs with --read-only
_DUPLICATE_KEY_NAME = re.compile(r"for key '([^']*)'$")
_CONNECTION_ENDED = frozenset({1053, 1927})  # server shutdown, connection killed
# Every new connection's init_command: strict (a value that does not fit is refused, not cut),
# and none of the modes that change how the SQL here and aiomysql's quoting are read
# (NO_BACKSLASH_ESCAPES, ANSI_QUOTES, PAD_CHAR_TO_FULL_LENGTH, ...). Valid on MariaDB and MySQL 8.
_SQL_MODE = "STRICT_TRANS_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION"
_SESSION_SETTINGS = f"SET time_zone = '+00:00', sql_mode = '{_SQL_MODE}'"
# Run once on every new connection, apart from init_command (aiomysql's takes one statement, and
# multi-statements stay off). Not a variable: MariaDB 10.11 names it tx_isolation, MySQL 8
# transaction_isolation.
_ISOLATION = "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ"
_ISOLATION_SET: weakref.WeakSet[aiomysql.Connection] = weakref.WeakSet()
# The primary's time, but always past the heartbeat row it has committed (freshness.py): a write
# whose time is read after its commit is then covered only by a heartbeat that committed after it,
# even when NOW(6) is behind a heartbeat written earlier (a failover to a host whose clock is
# behind, a clock stepped back). Without the row (no migrations yet) it is NOW(6).
_SERVER_TIME_SQL = """
SELECT GREATEST(NOW(6), COALESCE(
    (SELECT beat + INTERVAL 1 MICROSECOND FROM replication_heartbeat WHERE id = 1), NOW(6)
)) AS now
"""


class DatabaseError(Exception):
    """A MySQL operation failed; the message says which server and operation."""


class DatabaseTimeout(DatabaseError):
    """A MySQL operation did not finish within its deadline."""


class PrimaryDown(DatabaseError):
    """Refused without a query: the primary counts as down (health.py). Nothing was written."""


class DeadlinePassed(Exception):
    """Refused before the first statement of a transaction: its `not_after` had passed (the
    caller gave up while this waited for a connection). Nothing was written."""


class StatementRejected(DatabaseError):
    """The server refused a statement (bad SQL, a constraint, a value that does not fit, a
    missing privilege); the connection stays usable. `code` is MySQL's error number."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class DuplicateKey(StatementRejected):
    """An INSERT or UPDATE hit a unique index. `key` is the index name (e.g. 'users_username')."""

    def __init__(self, message: str, key: str) -> None:
        super().__init__(message, _DUPLICATE_ENTRY)
        self.key = key


def _utc_datetime(value: bytes | str) -> datetime | str:
    parsed = convert_datetime(value)
    return parsed.replace(tzinfo=UTC) if isinstance(parsed, datetime) else parsed


_DECODERS = {**decoders, FIELD_TYPE.DATETIME: _utc_datetime, FIELD_TYPE.TIMESTAMP: _utc_datetime}


def _sql_value(value: object) -> object:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("pass timezone-aware datetimes to MySQL (naive ones are ambiguous)")
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


class Statements:
    """Statements on one pooled connection, in autocommit mode, all under one deadline."""

    def __init__(self, connection: aiomysql.Connection, where: str) -> None:
        self._connection = connection
        self._where = where

    async def fetch_one(self, sql: str, args: Sequence[object] = ()) -> Row | None:
        rows, _ = await self._run(sql, args)
        return rows[0] if rows else None

    async def fetch_all(self, sql: str, args: Sequence[object] = ()) -> list[Row]:
        rows, _ = await self._run(sql, args)
        return rows

    async def execute(self, sql: str, args: Sequence[object] = ()) -> int:
        """Run a statement; the number of rows it changed."""
        _, changed = await self._run(sql, args)
        return changed

    async def server_time(self) -> datetime:
        row = await self.fetch_one(_SERVER_TIME_SQL)
        assert row is not None, "a SELECT without FROM returns one row"
        now: datetime = row["now"]
        return now

    async def _run(self, sql: str, args: Sequence[object]) -> tuple[list[Row], int]:
        values = tuple(_sql_value(arg) for arg in args)
        try:
            async with self._connection.cursor(aiomysql.DictCursor) as cursor:
                # With args=None PyMySQL does no %-formatting: SQL without arguments may hold '%'.
                await cursor.execute(sql, values if values else None)
                rows = await cursor.fetchall()
                return list(rows), cursor.rowcount
        except pymysql.MySQLError as exc:
            code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
            if not _server_refused(code) or self._connection.closed:
                raise DatabaseError(f"{self._where} failed: {exc}") from exc
            if code == _DUPLICATE_ENTRY:
                match = _DUPLICATE_KEY_NAME.search(str(exc.args[1]))
                key = match.group(1).rsplit(".", 1)[-1] if match else ""
                raise DuplicateKey(
                    f"{self._where}: duplicate value for unique key {key!r}", key
                ) from exc
            raise StatementRejected(f"{self._where} was refused: {exc}", code) from exc
        except OSError as exc:
            raise DatabaseError(f"{self._where} failed: {exc}") from exc


def _reason(exc: BaseException) -> str:
    """`exc`'s message, with the TLS failure behind aiomysql's "Can't connect" if there is one
    (a certificate that does not verify must say so)."""
    if isinstance(exc.__cause__, ssl.SSLError):
        return f"{exc}: TLS failed: {exc.__cause__}"
    return str(exc)


def _server_refused(code: int) -> bool:
    """An error the server answered for one statement, leaving the connection usable
    (client-side errors are 2000-2999)."""
    return code >= 1000 and not 2000 <= code < 3000 and code not in _CONNECTION_ENDED


class HeldStatements(Statements):
    """Statements on a connection held across many of them (`Database.held_connection`): each
    one is refused at once while the primary counts as down, and has its own deadline, after
    which the connection is closed (a query may still be running on it)."""

    def __init__(
        self, connection: aiomysql.Connection, where: str, database: Database, operation: str
    ) -> None:
        super().__init__(connection, where)
        self._database = database
        self._operation = operation

    async def _run(self, sql: str, args: Sequence[object]) -> tuple[list[Row], int]:
        self._database.require_available(self._operation)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._database.timeout):
                return await super()._run(sql, args)
        except TimeoutError:
            self._connection.close()
            raise DatabaseTimeout(
                f"{self._where} did not finish a statement within {self._database.timeout:g} s;"
                " the server is slow, overloaded or unreachable: check its health and load"
            ) from None
        finally:
            DB_QUERY_SECONDS.labels(self._database.role, self._operation).observe(
                time.perf_counter() - started
            )


class Transaction(Statements):
    """Statements in one transaction. After a commit, `committed_at` is the server's clock
    read right after COMMIT: every change of the transaction is visible at that time.
    `commit_sent`: COMMIT was sent; should the transaction fail after, it may have landed
    (`commit_outcome_unknown` says)."""

    committed_at: datetime
    commit_sent = False
    commit_answered = False  # the server answered the COMMIT with success

    def commit_outcome_unknown(self, error: DatabaseError) -> bool:
        """Whether `error`, which ended this transaction, leaves unknown whether its COMMIT
        landed: sent and then no answer (a lost connection, a timeout), or answered and the
        clock read after it failed (it landed). Not when the server answered the COMMIT with
        an error of its own (codes below 2000; 2000 and up are the client's)."""
        if self.commit_answered:
            return True
        if not self.commit_sent:
            return False
        cause = error.__cause__
        refused = isinstance(cause, pymysql.MySQLError) and (
            bool(cause.args) and isinstance(cause.args[0], int) and cause.args[0] < 2000
        )
        return not refused


class Database:
    def __init__(
        self,
        pool: aiomysql.Pool,
        address: MySQLAddress,
        *,
        role: Role,
        timeout: float,
        health: PrimaryHealth | None = None,
        probe_pool: aiomysql.Pool | None = None,
    ) -> None:
        self._pool = pool
        self._probe_pool = probe_pool if probe_pool is not None else pool
        self.address = address
        self.role: Role = role
        self.timeout = timeout
        self.health = health
        self._wakeups: set[asyncio.Task[None]] = set()
        # False after a probe failed on a borrowed connection (`_probe_pool_for`).
        self._probe_may_borrow = True

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        role: Role,
        pool_size: int,
        timeout: float,
        health: PrimaryHealth | None = None,
    ) -> Database:
        """A pool that connects lazily: opening it needs no reachable server. With `health`,
        it refuses every operation but probes while that breaker is open."""
        address = parse_dsn(dsn)
        pool = await _create_pool(address, pool_size, timeout)
        # The probes' own connection (see the module docstring); without health, none probes.
        probe_pool = await _create_pool(address, 1, timeout) if health is not None else None
        return cls(pool, address, role=role, timeout=timeout, health=health, probe_pool=probe_pool)

    @classmethod
    async def open_all(
        cls, settings: DatabaseSettings, *, primary_health: PrimaryHealth | None = None
    ) -> tuple[Database, list[Database]]:
        """A pool on the primary (gated by `primary_health`) and one on each read replica,
        sized and timed by `settings`."""
        size, timeout = settings.mysql_pool_size, settings.mysql_timeout
        primary = await cls.open(
            settings.mysql_primary_dsn,
            role="primary",
            pool_size=size,
            timeout=timeout,
            health=primary_health,
        )
        replicas = [
            await cls.open(dsn, role="replica", pool_size=size, timeout=timeout)
            for dsn in settings.mysql_replica_dsns
        ]
        return primary, replicas

    def __repr__(self) -> str:
        return f"<Database {self.role} {self.address.label}/{self.address.database}>"

    async def close(self) -> None:
        for pool in {self._pool, self._probe_pool}:
            pool.close()
            try:
                async with asyncio.timeout(self.timeout):
                    await pool.wait_closed()
            except TimeoutError:
                pool.terminate()

    async def fetch_one(self, operation: str, sql: str, args: Sequence[object] = ()) -> Row | None:
        async with self.statements(operation) as statements:
            return await statements.fetch_one(sql, args)

    async def fetch_all(self, operation: str, sql: str, args: Sequence[object] = ()) -> list[Row]:
        async with self.statements(operation) as statements:
            return await statements.fetch_all(sql, args)

    async def execute(
        self, operation: str, sql: str, args: Sequence[object] = (), *, probe: bool = False
    ) -> int:
        """`probe`: runs even while the health breaker is open (the heartbeat)."""
        async with self._checkout(operation, probe=probe) as connection:
            return await Statements(connection, self._where(operation)).execute(sql, args)

    async def server_time(self) -> datetime:
        async with self.statements("server_time") as statements:
            return await statements.server_time()

    @asynccontextmanager
    async def statements(
        self, operation: str, *, not_after: float | None = None
    ) -> AsyncIterator[Statements]:
        """One connection for several statements; `operation` names them in errors and metrics.
        `not_after`: as for `transaction`, for a write that one autocommitted statement makes."""
        async with self._checkout(operation) as connection:
            self._refuse_past(operation, not_after)
            yield Statements(connection, self._where(operation))

    @asynccontextmanager
    async def transaction(
        self, operation: str, *, not_after: float | None = None
    ) -> AsyncIterator[Transaction]:
        """BEGIN ... COMMIT on one connection; an error inside rolls back and is re-raised.
        `not_after`: raise `DeadlinePassed`, writing nothing, if loop.time() has reached it
        when the first statement is about to be sent."""
        async with self._checkout(operation) as connection:
            await connection.begin()
            try:
                self._refuse_past(operation, not_after)
            except DeadlinePassed:
                await connection.rollback()
                raise
            transaction = Transaction(connection, self._where(operation))
            try:
                yield transaction
            except StatementRejected:
                await connection.rollback()
                raise
            # Anything else (a timeout, a lost connection) closes the connection, which rolls back.
            transaction.commit_sent = True
            await connection.commit()
            transaction.commit_answered = True
            transaction.committed_at = await transaction.server_time()

    def _refuse_past(self, operation: str, not_after: float | None) -> None:
        if not_after is not None and asyncio.get_running_loop().time() >= not_after:
            raise DeadlinePassed(
                f"{self._where(operation)} not started: its caller's deadline passed while "
                "it waited for a connection"
            )

    @asynccontextmanager
    async def held_connection(self, operation: str) -> AsyncIterator[HeldStatements]:
        """One connection for as long as the block runs, for session state that outlives a
        statement (a named lock): the wait for it and each statement have their own deadline,
        not the block. Closed at the end, never returned to the pool, so that its session state
        (locks, variables) reaches no other caller; closing it releases its named locks."""
        self.require_available(operation)
        try:
            async with asyncio.timeout(self.timeout):
                connection = await self._acquire(operation)
        except TimeoutError:
            raise DatabaseTimeout(
                f"{self._where(operation)}: no connection within {self.timeout:g} s; the server"
                " is slow, overloaded or unreachable: check its health and load"
            ) from None
        except (pymysql.MySQLError, OSError) as exc:
            raise DatabaseError(f"{self._where(operation)} failed: {_reason(exc)}") from exc
        try:
            yield HeldStatements(connection, self._where(operation), self, operation)
        finally:
            self._release(connection, reusable=False)

    def outage_explains(self, error: DatabaseError) -> bool:
        """Whether `error` is already told by the primary's one down line (health.py): refused
        while down, or failed while the breaker is open (a statement that started just before
        the heartbeat noticed). Background jobs log nothing more for such failures."""
        return isinstance(error, PrimaryDown) or (
            self.health is not None and not self.health.available
        )

    def require_available(self, operation: str) -> None:
        """Raise `PrimaryDown` at once if this pool's health breaker is open."""
        if self.health is not None and not self.health.available:
            self.health.count_refusal(operation)
            raise PrimaryDown(
                f"{self._where(operation)} refused at once: the primary is down (its last"
                " heartbeat failed); reads still work, retry writes shortly"
            )

    @asynccontextmanager
    async def _checkout(
        self, operation: str, *, probe: bool = False
    ) -> AsyncIterator[aiomysql.Connection]:
        if not probe:
            self.require_available(operation)
        pool = self._probe_pool_for() if probe else self._pool
        borrowed = probe and pool is self._pool and self._probe_pool is not self._pool
        started = time.perf_counter()
        connection: aiomysql.Connection | None = None
        reusable = succeeded = False
        try:
            async with asyncio.timeout(self.timeout):
                connection = await self._acquire(operation, pool)
                try:
                    yield connection
                    reusable = succeeded = True
                except StatementRejected as exc:
                    # A probe's is closed all the same, and anyone's refused for read-only: a
                    # server refusing the heartbeat or a write takes no writes (an old primary
                    # left read-only by a failover that moved the DSN's address), and only a new
                    # connection can reach the one that does.
                    reusable = not probe and exc.code != _READ_ONLY
                    raise
                except DeadlinePassed:
                    reusable = not probe
                    raise
        except TimeoutError:
            raise DatabaseTimeout(
                f"{self._where(operation)} did not finish within {self.timeout:g} s; the server "
                "is slow, overloaded or unreachable: check its health and load"
            ) from None
        except (pymysql.MySQLError, OSError) as exc:  # connecting, BEGIN or COMMIT
            raise DatabaseError(f"{self._where(operation)} failed: {_reason(exc)}") from exc
        finally:
            if connection is not None:
                self._release(connection, reusable, pool)
            if probe:
                self._probe_may_borrow = succeeded or not borrowed
            DB_QUERY_SECONDS.labels(self.role, operation).observe(time.perf_counter() - started)

    def _probe_pool_for(self) -> aiomysql.Pool:
        """The pool the next probe takes its connection from.

        The probe's own, unless it has no connection open (its last one failed or overran) and
        the callers' pool has an idle one: that serves without a wait, where opening its own
        could fail for a primary at max_connections that still serves every connection already
        open. Not after a probe failed on a borrowed connection, though: the callers' idle
        connections may all be dead alike (a failover that left them open to a host that is
        gone), and borrowing each in turn would keep the primary counted down, every write
        refused, for one probe deadline per idle connection; the next probe opens its own."""
        if (
            self._probe_may_borrow
            and self._probe_pool is not self._pool
            and self._probe_pool.size == 0
            and self._pool.freesize > 0
        ):
            return self._pool
        return self._probe_pool

    async def _acquire(
        self, operation: str, pool: aiomysql.Pool | None = None
    ) -> aiomysql.Connection:
        """A connection of `pool` (the callers' by default), refused unused if the DSN asks for
        TLS and the server did not offer it: aiomysql would otherwise go on in plaintext. A new
        one is set to REPEATABLE READ first."""
        pool = self._pool if pool is None else pool
        connection: aiomysql.Connection = await pool.acquire()
        if self.address.ssl_mode != "disabled" and not connection._secure:
            self._release(connection, False, pool)
            raise DatabaseError(
                f"{self._where(operation)}: the server does not offer TLS, which ssl-mode="
                f"{self.address.ssl_mode} requires; enable TLS on the server"
            )
        if connection not in _ISOLATION_SET:
            try:
                await connection.query(_ISOLATION)
            except BaseException:
                self._release(connection, False, pool)
                raise
            _ISOLATION_SET.add(connection)
        return connection

    def _release(
        self, connection: aiomysql.Connection, reusable: bool, pool: aiomysql.Pool | None = None
    ) -> None:
        pool = self._pool if pool is None else pool
        if not reusable:
            connection.close()
        pool.release(connection)
        if connection.closed:
            # aiomysql 0.3.2 does not wake acquirers waiting for a free slot when a closed
            # connection comes back; without this they would wait until their deadline.
            wakeup = asyncio.get_running_loop().create_task(pool._wakeup())
            self._wakeups.add(wakeup)
            wakeup.add_done_callback(self._wakeups.discard)

    def _where(self, operation: str) -> str:
        return f"MySQL {self.role} {self.address.label}: {operation}"


async def _create_pool(address: MySQLAddress, size: int, timeout: float) -> aiomysql.Pool:
    """A pool of at most `size` connections, opened lazily (no server needed until used)."""
    return await aiomysql.create_pool(
        minsize=0,
        maxsize=size,
        pool_recycle=_POOL_RECYCLE_SECONDS,
        host=address.host,
        port=address.port,
        user=address.user,
        password=address.password,
        db=address.database,
        charset="utf8mb4",
        autocommit=True,
        init_command=_SESSION_SETTINGS,
        connect_timeout=timeout,
        conv=_DECODERS,
        ssl=address.ssl_context(),
    )
