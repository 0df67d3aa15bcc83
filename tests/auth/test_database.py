"""database.py against the real MariaDB: DSNs, UTC datetimes, deadlines, errors, transactions."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone

import pymysql
import pytest

from devstack import DataStores
from devstack.ports import HOST, free_port, wait_until_async
from services.auth.store.database import (
    Database,
    DatabaseError,
    DatabaseTimeout,
    DeadlinePassed,
    DuplicateKey,
    MySQLAddress,
    StatementRejected,
    parse_dsn,
)
from services.auth.store.freshness import HeartbeatWriter
from services.auth.store.health import PrimaryHealth
from tests.auth.conftest import MYSQL_TIMEOUT, migration_dsn
from tests.auth.tcp_proxy import TcpProxy

CREATE_SCRATCH = """
CREATE TABLE scratch (
    id INT NOT NULL PRIMARY KEY,
    name VARCHAR(20) NOT NULL,
    UNIQUE KEY scratch_name (name)
)
"""


@pytest.fixture(scope="module")
async def scratch_table(data_stores: DataStores, primary_dsn: str) -> None:
    # A schema change: the migration user's (the application user may not CREATE).
    dsn = migration_dsn(data_stores, primary_dsn)
    database = await Database.open(dsn, role="primary", pool_size=1, timeout=5.0)
    await database.execute("create_scratch", CREATE_SCRATCH)
    await database.close()


@pytest.fixture
async def single(primary_dsn: str, scratch_table: None) -> AsyncIterator[Database]:
    """A pool of one connection, so a reused connection is visible by its CONNECTION_ID()."""
    database = await Database.open(primary_dsn, role="primary", pool_size=1, timeout=MYSQL_TIMEOUT)
    await database.execute("clear_scratch", "DELETE FROM scratch")
    yield database
    await database.close()


async def connection_id(database: Database) -> int:
    row = await database.fetch_one("connection_id", "SELECT CONNECTION_ID() AS id")
    assert row is not None
    return int(row["id"])


def test_parse_dsn_decodes_percent_encoded_parts() -> None:
    address = parse_dsn("mysql://app%40x:p%3Ass%2Fw%40rd@db.internal:3307/gate%2Dhouse")
    assert address == MySQLAddress(
        host="db.internal", port=3307, user="app@x", password="p:ss/w@rd", database="gate-house"
    )
    assert "p:ss/w@rd" not in repr(address)
    assert parse_dsn("mysql://app:pw@db/gatehouse").port == 3306


@pytest.mark.parametrize(
    "dsn",
    [
        "postgres://app:hunter2@db:5432/gatehouse",
        "mysql://app:hunter2@db:port/gatehouse",
        "mysql://app:hunter2@db:3306",
        "mysql://app:hunter2@db:3306/gatehouse?ssl=true",
        "mysql://:hunter2@db:3306/gatehouse",
    ],
)
def test_parse_dsn_refuses_malformed_dsns_without_repeating_the_password(dsn: str) -> None:
    with pytest.raises(ValueError) as error:
        parse_dsn(dsn)
    assert "hunter2" not in str(error.value)


async def test_datetimes_are_aware_utc_both_ways(primary: Database) -> None:
    moment = datetime(2026, 3, 1, 14, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    row = await primary.fetch_one(
        "round_trip",
        "SELECT CAST(%s AS DATETIME(6)) AS moment, @@session.time_zone AS zone",
        (moment,),
    )
    assert row is not None
    assert row["zone"] == "+00:00"
    assert row["moment"] == moment
    assert row["moment"].utcoffset() == timedelta(0)
    assert abs(await primary.server_time() - datetime.now(UTC)) < timedelta(seconds=5)


async def test_naive_datetimes_are_refused(primary: Database) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        await primary.fetch_one("naive", "SELECT %s AS moment", (datetime(2026, 3, 1, 12, 0),))
    assert await primary.fetch_one("after", "SELECT 1 AS one") == {"one": 1}


async def test_a_query_past_its_deadline_fails_fast_and_its_connection_is_closed(
    single: Database,
) -> None:
    # A deadline of its own over the same pool. The statements around it keep the suite's:
    # on a loaded machine, opening the replacement connection alone can take 0.3 s.
    impatient = Database(single._pool, single.address, role="primary", timeout=0.3)
    before = await connection_id(single)
    started = time.monotonic()
    with pytest.raises(DatabaseTimeout, match=r"sleep did not finish within 0\.3 s"):
        await impatient.fetch_one("sleep", "SELECT SLEEP(5)")
    # Well before the statement's 5 s; a starved test process took 1.5 s once, not 0.6.
    assert time.monotonic() - started < 2.5
    # The pool holds one connection: a new id means the timed-out one was not reused.
    assert await connection_id(single) != before


async def test_waiting_for_a_connection_has_the_same_deadline() -> None:
    writers: list[asyncio.StreamWriter] = []

    async def never_greet(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)  # keep the socket open without ever answering

    silent_server = await asyncio.start_server(never_greet, "127.0.0.1", 0)
    port = silent_server.sockets[0].getsockname()[1]
    database = await Database.open(
        f"mysql://app:pw@127.0.0.1:{port}/gatehouse", role="replica", pool_size=1, timeout=0.3
    )
    try:
        started = time.monotonic()
        with pytest.raises(DatabaseTimeout, match=r"MySQL replica 127\.0\.0\.1"):
            await database.fetch_one("probe", "SELECT 1")
        assert time.monotonic() - started < 0.6
    finally:
        await database.close()
        for writer in writers:
            writer.close()
        silent_server.close()
        await silent_server.wait_closed()


async def test_an_unreachable_server_fails_at_once_with_a_clear_error() -> None:
    database = await Database.open(
        f"mysql://app:pw@127.0.0.1:{free_port()}/gatehouse",
        role="primary",
        pool_size=1,
        timeout=2.0,
    )
    try:
        started = time.monotonic()
        with pytest.raises(
            DatabaseError, match=r"MySQL primary 127\.0\.0\.1:[0-9]+: probe failed.*Can't connect"
        ):
            await database.fetch_one("probe", "SELECT 1")
        assert time.monotonic() - started < 1.0
    finally:
        await database.close()


async def test_a_killed_connection_frees_its_pool_slot_for_waiting_callers(
    primary_dsn: str, data_stores: DataStores
) -> None:
    database = await Database.open(primary_dsn, role="primary", pool_size=1, timeout=5.0)
    try:
        victim_id = await connection_id(database)
        sleeper = asyncio.create_task(database.fetch_one("sleeper", "SELECT SLEEP(30)"))
        # The sleeper must hold the only connection before the waiter asks for it.
        await wait_until_async(
            lambda: asyncio.to_thread(
                data_stores.primary.execute,
                "SELECT ID FROM information_schema.PROCESSLIST WHERE INFO = 'SELECT SLEEP(30)'",
            ),
            5.0,
            "the sleeper's query to run",
        )
        waiter = asyncio.create_task(database.fetch_one("waiter", "SELECT 1 AS one"))
        await asyncio.to_thread(data_stores.primary.execute, f"KILL CONNECTION {victim_id}")
        with pytest.raises(DatabaseError, match="sleeper failed"):
            await sleeper
        started = time.monotonic()
        assert await waiter == {"one": 1}
        assert time.monotonic() - started < 2.0  # woken at once, not at its 5 s deadline
    finally:
        await database.close()


async def test_a_pool_filled_by_slow_callers_does_not_pass_for_a_primary_that_is_down(
    primary_dsn: str, data_stores: DataStores
) -> None:
    """Writes queued on one hot row's lock can hold every pooled connection. The heartbeat must
    still reach the primary within its deadline: waiting for a pooled connection, it opened the
    breaker, and every other caller's writes were refused as if the primary were down."""
    health = PrimaryHealth()
    database = await Database.open(
        primary_dsn, role="primary", pool_size=2, timeout=5.0, health=health
    )
    heartbeat = HeartbeatWriter(database, 3600.0, probe_timeout=0.3)
    slow = f"SELECT SLEEP(3) AS hot_{secrets.token_hex(4)}"
    callers = [asyncio.create_task(database.fetch_one("slow", slow)) for _ in range(2)]

    async def pool_full() -> bool:
        running = await asyncio.to_thread(
            data_stores.primary.execute,
            "SELECT ID FROM information_schema.PROCESSLIST WHERE INFO = %s",
            (slow,),
        )
        return len(running) == 2

    try:
        await wait_until_async(pool_full, 5.0, "both pooled connections to run the slow query")
        await heartbeat.beat()
        assert health.available
    finally:
        for caller in callers:
            caller.cancel()
        await asyncio.gather(*callers, return_exceptions=True)
        await database.close()


async def test_duplicate_key_names_the_index_and_keeps_the_connection(single: Database) -> None:
    await single.execute("insert", "INSERT INTO scratch (id, name) VALUES (1, 'taken')")
    before = await connection_id(single)
    with pytest.raises(DuplicateKey) as error:
        async with single.transaction("insert_twice") as transaction:
            await transaction.execute("INSERT INTO scratch (id, name) VALUES (2, 'fresh')")
            await transaction.execute("INSERT INTO scratch (id, name) VALUES (3, 'taken')")
    assert error.value.key == "scratch_name"
    assert await connection_id(single) == before
    rows = await single.fetch_all("rows", "SELECT id FROM scratch ORDER BY id")
    assert rows == [{"id": 1}]  # the transaction's first insert was rolled back


async def test_a_refused_statement_keeps_the_connection(single: Database) -> None:
    before = await connection_id(single)
    with pytest.raises(StatementRejected, match="bad_sql was refused"):
        await single.fetch_one("bad_sql", "SELECT no_such_column FROM scratch")
    assert await connection_id(single) == before


async def test_a_transaction_commits_and_tells_when(single: Database) -> None:
    before = await single.server_time()
    async with single.transaction("insert") as transaction:
        assert await transaction.execute("INSERT INTO scratch (id, name) VALUES (7, 'seven')") == 1
    assert transaction.committed_at >= before
    assert await single.fetch_all("rows", "SELECT id, name FROM scratch") == [
        {"id": 7, "name": "seven"}
    ]


async def test_an_error_inside_a_transaction_rolls_it_back(single: Database) -> None:
    with pytest.raises(RuntimeError, match="changed my mind"):
        async with single.transaction("insert") as transaction:
            await transaction.execute("INSERT INTO scratch (id, name) VALUES (8, 'eight')")
            raise RuntimeError("changed my mind")
    assert await single.fetch_all("rows", "SELECT id FROM scratch") == []


async def test_a_write_whose_deadline_passed_while_it_waited_for_a_connection_never_starts(
    primary_dsn: str, scratch_table: None
) -> None:
    """The caller gave up (and told its client the write failed) while the write queued for
    the pool: it must not land later, after a write that client made next."""
    database = await Database.open(primary_dsn, role="primary", pool_size=1, timeout=5.0)
    loop = asyncio.get_running_loop()
    try:
        await database.execute("clear_scratch", "DELETE FROM scratch")
        holder_id = await connection_id(database)
        release, held = asyncio.Event(), asyncio.Event()

        async def hold_the_only_connection() -> None:
            async with database.statements("holder"):
                held.set()
                await release.wait()

        holder = asyncio.create_task(hold_the_only_connection())
        await asyncio.wait_for(held.wait(), 5.0)
        not_after = loop.time() + 0.2

        async def late_write() -> None:
            async with database.transaction("late_write", not_after=not_after) as transaction:
                await transaction.execute("INSERT INTO scratch (id, name) VALUES (9, 'late')")

        writer = asyncio.create_task(late_write())
        await wait_until_async(lambda: loop.time() > not_after, 5.0, "the write's deadline")
        release.set()
        await holder
        with pytest.raises(DeadlinePassed, match="late_write not started"):
            await writer
        assert await database.fetch_all("rows", "SELECT id FROM scratch") == []
        assert await connection_id(database) == holder_id  # rolled back, kept in the pool
        async with database.transaction("in_time", not_after=loop.time() + 5.0) as transaction:
            await transaction.execute("INSERT INTO scratch (id, name) VALUES (10, 'in time')")
        assert await database.fetch_all("rows", "SELECT id FROM scratch") == [{"id": 10}]
    finally:
        await database.close()


async def test_autocommitted_statements_past_their_deadline_write_nothing(
    single: Database,
) -> None:
    """A write made by one autocommitted statement (a login's session) keeps the deadline a
    transaction has: refused before its first statement, its connection kept."""
    database = single
    loop = asyncio.get_running_loop()
    held_id = await connection_id(database)
    with pytest.raises(DeadlinePassed, match="late_insert not started"):
        async with database.statements("late_insert", not_after=loop.time()) as statements:
            await statements.execute("INSERT INTO scratch (id, name) VALUES (11, 'late')")
    async with database.statements("in_time", not_after=loop.time() + 5.0) as statements:
        await statements.execute("INSERT INTO scratch (id, name) VALUES (12, 'in time')")
    assert await database.fetch_all("rows", "SELECT id FROM scratch") == [{"id": 12}]
    assert await connection_id(database) == held_id


async def test_a_dsn_asking_for_tls_refuses_a_server_that_does_not_offer_it(
    primary_dsn: str,
) -> None:
    # The session's MariaDB has no certificate: aiomysql alone would carry on in plaintext.
    database = await Database.open(
        f"{primary_dsn}?ssl-mode=required", role="primary", pool_size=1, timeout=5.0
    )
    try:
        with pytest.raises(DatabaseError, match="does not offer TLS, which ssl-mode=required"):
            await database.fetch_one("probe", "SELECT 1")
        with pytest.raises(DatabaseError, match="does not offer TLS"):
            async with database.held_connection("held probe"):
                pass
    finally:
        await database.close()


async def test_a_probe_whose_connection_broke_does_not_need_a_new_one_at_max_connections(
    primary_dsn: str, data_stores: DataStores
) -> None:
    """The heartbeat probes on a connection of its own, closed when a probe fails or overruns.
    With the primary at max_connections (another client took every free slot), it could not
    open another: every heartbeat failed and every write was refused as PrimaryDown, while the
    callers' pool held idle connections that answered."""
    health = PrimaryHealth()
    database = await Database.open(
        primary_dsn, role="primary", pool_size=2, timeout=5.0, health=health
    )
    heartbeat = HeartbeatWriter(database, 3600.0, probe_timeout=2.0)
    address = parse_dsn(primary_dsn)
    fillers: list[pymysql.connections.Connection] = []
    # Opened before the limit drops: the session's other clients (a running stack's pools) may
    # hold more than the limit, and a connection opened after it could not set it back.
    admin = data_stores.primary.connect()
    old_max = _admin_value(admin, "SELECT @@max_connections")
    try:
        slow = "SELECT SLEEP(0.1) AS warm"
        await asyncio.gather(*(database.fetch_one("warm", slow) for _ in range(2)))
        await heartbeat.beat()
        probe_id = await probe_connection_id(database)
        _admin_value(admin, "SET GLOBAL max_connections = 10")  # MariaDB's least
        _admin_value(admin, f"KILL CONNECTION {probe_id}")  # as a probe's overrun does
        while len(fillers) < 100:  # another client takes every free slot
            try:
                fillers.append(
                    data_stores.primary.connect(address.user, address.password, tcp=True)
                )
            except pymysql.err.OperationalError:
                break
        await heartbeat.beat()  # on the broken connection: fails, and closes it
        await heartbeat.beat()
        assert health.available
        assert await database.fetch_one("after", "SELECT 1 AS one") == {"one": 1}
    finally:
        for filler in fillers:
            filler.close()
        with admin:
            _admin_value(admin, f"SET GLOBAL max_connections = {old_max}")
        await database.close()


def _admin_value(admin: pymysql.connections.Connection, sql: str) -> object:
    """Run `sql` on `admin`; the first column of its first row, if any."""
    with admin.cursor() as cursor:
        cursor.execute(sql)
        row = cursor.fetchone()
    return None if row is None else row[0]


async def probe_connection_id(database: Database) -> int:
    """The id of the probes' own connection (open: a probe ran)."""
    connection = await database._probe_pool.acquire()
    try:
        async with connection.cursor() as cursor:
            await cursor.execute("SELECT CONNECTION_ID()")
            (found,) = await cursor.fetchone()
    finally:
        database._probe_pool.release(connection)
    return int(found)


async def test_a_probe_after_a_failover_borrows_no_more_than_one_dead_connection(
    primary_dsn: str, data_stores: DataStores
) -> None:
    """A host that vanished (a failover that moved the primary's address) leaves every open
    connection silent, the probe's and the callers' idle ones alike. A probe that borrowed one
    of those after its own failed must not borrow the next: each took a whole probe deadline,
    the primary counted as down meanwhile (every write refused), one deadline per idle
    connection, although a new connection reached the primary at once."""
    address = parse_dsn(primary_dsn)
    proxy = await TcpProxy.start(HOST, data_stores.primary.port)
    dsn = primary_dsn.replace(f"@{address.host}:{address.port}/", f"@{HOST}:{proxy.port}/", 1)
    assert dsn != primary_dsn
    health = PrimaryHealth()
    database = await Database.open(dsn, role="primary", pool_size=4, timeout=5.0, health=health)
    heartbeat = HeartbeatWriter(database, 3600.0, probe_timeout=2.0)
    try:
        await heartbeat.beat()  # opens the probe's own connection
        slow = "SELECT SLEEP(0.1) AS warm"
        await asyncio.gather(*(database.fetch_one("warm", slow) for _ in range(4)))
        proxy.freeze()  # the probe's and the 4 idle callers' connections go silent
        await heartbeat.beat()  # its own connection: overruns, and is closed
        assert not health.available
        await heartbeat.beat()  # an idle callers' connection, as silent: overruns
        await heartbeat.beat()  # a connection of its own, new: the primary answers
        assert health.available
    finally:
        await database.close()
        await proxy.close()


@pytest.fixture
async def failed_over(
    primary_dsn: str, data_stores: DataStores
) -> AsyncIterator[tuple[str, Callable[[], None]]]:
    """A failover that moves the primary's address (DNS, a Service) to the promoted server can
    leave the old primary up and read-only, the connections open to it answering: a DSN whose
    address leads to a read-only server (the test replica), and what moves it to the primary."""
    address = parse_dsn(primary_dsn)
    proxy = await TcpProxy.start(HOST, data_stores.replica.port)
    dsn = primary_dsn.replace(f"@{address.host}:{address.port}/", f"@{HOST}:{proxy.port}/", 1)
    assert dsn != primary_dsn
    yield dsn, lambda: proxy.retarget(HOST, data_stores.primary.port)
    await proxy.close()


async def test_a_probe_refused_by_a_read_only_server_connects_again(
    failed_over: tuple[str, Callable[[], None]],
) -> None:
    """A heartbeat the old primary refused kept its connection, so every later one went to the
    same read-only server, and every write was refused as PrimaryDown for as long as the
    replica ran."""
    dsn, fail_over = failed_over
    health = PrimaryHealth()
    database = await Database.open(dsn, role="primary", pool_size=2, timeout=5.0, health=health)
    heartbeat = HeartbeatWriter(database, 3600.0, probe_timeout=2.0)
    try:
        await heartbeat.beat()  # refused: --read-only
        assert not health.available
        fail_over()
        await heartbeat.beat()
        assert health.available
    finally:
        await database.close()


async def test_a_write_refused_by_a_read_only_server_does_not_keep_its_connection(
    failed_over: tuple[str, Callable[[], None]],
) -> None:
    """The callers' side: a write refused for --read-only kept its connection to the old
    primary, and the writes sent on it later were refused too, however long the promoted server
    had been taking them."""
    dsn, fail_over = failed_over
    database = await Database.open(dsn, role="primary", pool_size=1, timeout=5.0)
    write = "DELETE FROM sessions WHERE id = 'no-such-session'"
    try:
        with pytest.raises(StatementRejected):
            await database.execute("write", write)
        fail_over()
        await database.execute("write", write)
    finally:
        await database.close()
