"""`python -m bench.purge`: the expires_at index migration and the session purge on 1,000,000 rows.

On its own MariaDB primary and replica (devstack's `DataStores`, in a temporary directory), it
fills `sessions` with `--rows` expired rows (MariaDB's Sequence engine: this script only) plus
live ones, while a separate process reads live sessions by primary key on the primary at a
fixed rate (the auth service's session-profile query). It measures:

1. migration 0006 on the filled table: its duration, the time until the replica has applied it,
   and the read latency before vs during;
2. the service's purge (`SessionPurge`) at the default rate for `--default-seconds`, then at the
   highest rate the settings allow for `--max-seconds`: rows/s, and the read latency during each;
3. then, on the rows left, for `--compare-seconds` each: the service's purge unpaced, and the two
   other ways of purging, DELETE ... ORDER BY expires_at LIMIT and primary-key ranges.

Every phase is bounded in time (`--phase-limit` for the fill, migration and waits); each
figure is printed when measured, and the report at the end, also to
bench/results/purge-<timestamp>.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import multiprocessing
import random
import shutil
import tempfile
import time
from array import array
from collections.abc import Awaitable, Callable
from datetime import timedelta
from multiprocessing.synchronize import Event as EventType
from pathlib import Path

import pymysql

from bench.systems import REPO_ROOT
from devstack.ports import wait_until
from devstack.stack import DataStores
from services.auth.settings import AuthSettings
from services.auth.store.database import Database
from services.auth.store.migrate import MIGRATIONS_DIR, apply_migrations
from services.auth.store.session_purge import PurgeLimits, SessionPurge

RESULTS = REPO_ROOT / "bench" / "results"
INDEX_VERSION = "0006"
FILL_CHUNK = 20_000  # rows per INSERT: each must finish within devstack's 30 s read timeout
USERS = 1000
LIVE_SESSIONS = 20_000
READ_RATE = 200.0  # session reads per second, open loop
# Seconds of the read load that are not measured once it is ready (its first queries).
READ_WARMUP = 1.0
# Expired well past any purge margin: the purge takes them all.
EXPIRED_DAYS_AGO = 40
PURGE_AFTER = timedelta(days=30)

_SESSION_READ = """
SELECT u.id, u.username, u.nickname, u.avatar_key, s.expires_at, s.revoked_at
FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id = %s AND s.user_id = %s
"""


_STARTED = time.monotonic()


def say(line: str) -> None:
    elapsed = int(time.monotonic() - _STARTED)
    print(f"bench.purge [{elapsed // 60:02d}:{elapsed % 60:02d}] {line}", flush=True)


def _setting_default(name: str) -> int:
    (field,) = [field for field in dataclasses.fields(AuthSettings) if field.name == name]
    if not isinstance(field.default, int):
        raise TypeError(f"AuthSettings.{name} defaults to {field.default!r}, not a number")
    return field.default


def _setting_bound(name: str) -> int:
    (field,) = [field for field in dataclasses.fields(AuthSettings) if field.name == name]
    at_most = field.metadata["bounds"].at_most
    if at_most is None:
        raise TypeError(f"AuthSettings.{name} has no upper bound")
    return int(at_most)


DEFAULT_BATCH = _setting_default("session_purge_batch_size")
DEFAULT_RATE = _setting_default("session_purge_rows_per_second")
MAX_RATE = _setting_bound("session_purge_rows_per_second")


@dataclasses.dataclass(frozen=True)
class Window:
    label: str
    start: float  # time.monotonic(), the same clock in the reader process on Linux
    end: float


@dataclasses.dataclass(frozen=True)
class PurgeFigures:
    label: str
    rows: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else math.nan


def read_sessions(
    address: tuple[str, int, str, str, str],
    ready: EventType,
    stop: EventType,
    until: float,
    out: str,
) -> None:
    """The reader process: live sessions by primary key at READ_RATE, from setting `ready` until
    `stop` is set or `until`; writes (start, seconds) pairs to `out`. A failed read counts as
    taking until its failure."""
    host, port, user, password, database = address
    connection = pymysql.connect(
        host=host, port=port, user=user, password=password, database=database, autocommit=True,
        read_timeout=30, write_timeout=30,
    )  # fmt: skip
    with connection, connection.cursor() as cursor:
        cursor.execute("SELECT id, user_id FROM sessions WHERE expires_at > NOW(6)")
        live = list(cursor.fetchall())
        ready.set()
        samples = array("d")
        interval = 1.0 / READ_RATE
        next_at = time.monotonic()
        while next_at < until and not stop.is_set():
            now = time.monotonic()
            if now < next_at:
                time.sleep(next_at - now)
            started = time.monotonic()
            try:
                cursor.execute(_SESSION_READ, random.choice(live))
                cursor.fetchall()
            except pymysql.MySQLError:
                pass
            samples.extend((started, time.monotonic() - started))
            next_at += interval
    with open(out, "wb") as file:
        samples.tofile(file)


def latency_in(samples: array[float], window: Window) -> tuple[int, float, float, float]:
    """(count, p50, p99, max) in ms of the reads started within `window`."""
    latencies = sorted(
        samples[i + 1] for i in range(0, len(samples), 2) if window.start <= samples[i] < window.end
    )
    if not latencies:
        return 0, math.nan, math.nan, math.nan

    def at(percent: float) -> float:
        return latencies[min(len(latencies) - 1, math.ceil(percent / 100 * len(latencies)) - 1)]

    return len(latencies), at(50) * 1000, at(99) * 1000, latencies[-1] * 1000


def add_users(stores: DataStores, database: str) -> None:
    """USERS users, ids 1 to USERS, for the sessions `fill` adds."""
    stores.primary.execute(
        f"INSERT INTO `{database}`.users (id, username, nickname, password_hash, pepper_version,"
        " version, created_at, updated_at) SELECT seq, CONCAT('u', seq), 'n', 'h', 1, 1, NOW(6),"
        f" NOW(6) FROM `{database}`.seq_1_to_{USERS}"
    )


def fill(stores: DataStores, database: str, expired: int, *, live: int = 0) -> None:
    """`expired` rows expired EXPIRED_DAYS_AGO (a second apart, random ids), `live` live ones."""
    for first in range(0, expired, FILL_CHUNK):
        count = min(FILL_CHUNK, expired - first)
        stores.primary.execute(
            f"INSERT INTO `{database}`.sessions (id, user_id, created_at, expires_at)"
            f" SELECT LEFT(MD5(CONCAT('e', {first} + seq, RAND())), 22), 1 + seq % {USERS},"
            f" NOW(6) - INTERVAL {EXPIRED_DAYS_AGO + 1} DAY,"
            f" NOW(6) - INTERVAL {EXPIRED_DAYS_AGO} DAY + INTERVAL ({first} + seq) SECOND"
            f" FROM `{database}`.seq_1_to_{count}"
        )
    if live:
        stores.primary.execute(
            f"INSERT INTO `{database}`.sessions (id, user_id, created_at, expires_at)"
            f" SELECT LEFT(MD5(CONCAT('l', seq, RAND())), 22), 1 + seq % {USERS}, NOW(6),"
            f" NOW(6) + INTERVAL 1 DAY FROM `{database}`.seq_1_to_{live}"
        )


def expired_rows(stores: DataStores, database: str) -> int:
    rows = stores.primary.execute(
        f"SELECT COUNT(*) AS n FROM `{database}`.sessions WHERE expires_at < NOW(6)"
    )
    return int(rows[0]["n"])


async def timed(what: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    started = time.monotonic()
    await what()
    return started, time.monotonic()


def deletes_running(stores: DataStores, database: str) -> int:
    """Statements deleting from `database` that the server is still executing."""
    rows = stores.primary.execute(
        "SELECT COUNT(*) AS n FROM information_schema.PROCESSLIST"
        " WHERE DB = %s AND COMMAND = 'Query' AND INFO LIKE 'DELETE%%'",
        (database,),
    )
    return int(rows[0]["n"])


class ExpiredRows:
    """Rows deleted between two calls of `deleted_since_last`, from counts of the expired rows
    (on the expires_at index). One count ends a phase and starts the next. A time bound cuts a
    batch off on the client only: the server goes on with its DELETE, which would then run beside
    the next phase's (and deadlock with it), so a count first waits, up to `limit` seconds, until
    no DELETE on the database is running; the cut-off batch counts in its own phase."""

    def __init__(self, stores: DataStores, database: str, limit: float) -> None:
        self._stores = stores
        self._database = database
        self._limit = limit
        self._last: int | None = None

    async def deleted_since_last(self) -> int:
        await asyncio.to_thread(self._wait_for_deletes_to_end)
        now = await asyncio.to_thread(expired_rows, self._stores, self._database)
        deleted = 0 if self._last is None else self._last - now
        self._last = now
        return deleted

    def _wait_for_deletes_to_end(self) -> None:
        wait_until(
            lambda: deletes_running(self._stores, self._database) == 0,
            self._limit,
            f"no DELETE on {self._database} still runs after its phase (SHOW PROCESSLIST on the"
            " primary)",
        )


async def purge_for(
    primary: Database, limits: PurgeLimits, seconds: float, expired: ExpiredRows
) -> tuple[PurgeFigures, Window]:
    """Run the service's purge for at most `seconds`; the rows it deleted meanwhile."""
    purge = SessionPurge(primary, limits)
    started = time.monotonic()
    try:
        async with asyncio.timeout(seconds):
            await purge.run()
    except TimeoutError:
        pass
    ended = time.monotonic()
    label = f"batch {limits.batch_size}, {limits.rows_per_second:g} rows/s"
    figures = PurgeFigures(label, await expired.deleted_since_last(), ended - started)
    return figures, Window(f"purge at {label}", started, ended)


def delete_expired(stores: DataStores, database: str) -> None:
    """Every expired row, in statements short enough for devstack's 30 s read timeout."""
    while stores.primary.execute(
        f"SELECT 1 AS found FROM `{database}`.sessions WHERE expires_at < NOW(6) LIMIT 1"
    ):
        stores.primary.execute(
            f"DELETE FROM `{database}`.sessions WHERE expires_at < NOW(6) LIMIT {FILL_CHUNK}"
        )


def delete_ordered_by_expiry(
    connection: pymysql.connections.Connection, batch: int, deadline: float
) -> int:
    deleted = 0
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            changed = cursor.execute(
                "DELETE FROM sessions WHERE expires_at < NOW(6) - INTERVAL 30 DAY"
                " ORDER BY expires_at LIMIT %s",
                (batch,),
            )
            deleted += changed
            if changed < batch:
                break
    return deleted


def delete_by_key_ranges(
    connection: pymysql.connections.Connection, batch: int, deadline: float
) -> int:
    """Walk the primary key in ranges of `batch` rows, deleting the expired ones of each."""
    deleted = 0
    low = ""
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute(
                "SELECT id FROM sessions WHERE id > %s ORDER BY id LIMIT 1 OFFSET %s",
                (low, batch - 1),
            )
            row = cursor.fetchone()
            if row is None:
                deleted += cursor.execute(
                    "DELETE FROM sessions WHERE id > %s AND expires_at < NOW(6) - INTERVAL 30 DAY",
                    (low,),
                )
                break
            deleted += cursor.execute(
                "DELETE FROM sessions WHERE id > %s AND id <= %s"
                " AND expires_at < NOW(6) - INTERVAL 30 DAY",
                (low, row[0]),
            )
            low = row[0]
    return deleted


async def compare_strategies(
    stores: DataStores, primary: Database, database: str, seconds: float, expired: ExpiredRows
) -> tuple[list[PurgeFigures], list[Window]]:
    """Each way of purging alone and unpaced for `seconds`, one after the other, on the rows
    the table still has."""
    unpaced = PurgeLimits(PURGE_AFTER, DEFAULT_BATCH, rows_per_second=1e9)
    service, window = await purge_for(primary, unpaced, seconds, expired)
    figures = [dataclasses.replace(service, label="the service's: keyset batches by key")]
    windows = [dataclasses.replace(window, label="purge unpaced: keyset batches by key")]
    say(f"{figures[-1].label}: {service.rows:,} rows, {service.rate:,.0f} rows/s")
    strategies: list[tuple[str, Callable[[pymysql.connections.Connection, int, float], int]]] = [
        ("DELETE ... ORDER BY expires_at LIMIT", delete_ordered_by_expiry),
        ("primary-key ranges, expired rows deleted", delete_by_key_ranges),
    ]
    for label, strategy in strategies:
        with stores.primary.connect(database=database) as connection:
            started = time.monotonic()
            await asyncio.to_thread(strategy, connection, DEFAULT_BATCH, started + seconds)
            ended = time.monotonic()
        deleted = await expired.deleted_since_last()
        figures.append(PurgeFigures(label, deleted, ended - started))
        windows.append(Window(f"purge unpaced: {label}", started, ended))
        say(f"{label}: {deleted:,} rows, {figures[-1].rate:,.0f} rows/s")
    return figures, windows


async def measure(
    args: argparse.Namespace, stores: DataStores, out_dir: Path, database: str = "bench_purge"
) -> Figures:
    """Every phase on a new `database` of `stores`; `out_dir` holds the scratch files."""
    stores.create_database(database)
    dsn = stores.migration_dsn_of(database)
    before_index = out_dir / "migrations-before-index"
    before_index.mkdir()
    for path in MIGRATIONS_DIR.glob("*.sql"):
        if path.name < INDEX_VERSION:
            shutil.copy(path, before_index)
    await apply_migrations(dsn, timeout=60.0, folder=before_index)
    add_users(stores, database)
    say(f"filling {args.rows:,} expired and {LIVE_SESSIONS:,} live sessions")
    fill_started = time.monotonic()
    fill(stores, database, args.rows, live=LIVE_SESSIONS)
    fill_seconds = time.monotonic() - fill_started
    stores.replication.wait_caught_up(timeout=args.phase_limit)

    samples_path = out_dir / "reads.bin"
    context = multiprocessing.get_context("spawn")
    ready, stop = context.Event(), context.Event()
    address = (
        stores.primary.host, stores.primary.port, stores.app_user, stores.app_password, database
    )  # fmt: skip
    reader_ends = time.monotonic() + 10 * args.phase_limit  # the reader's own bound
    reader = context.Process(
        target=read_sessions, args=(address, ready, stop, reader_ends, str(samples_path))
    )
    reader.start()
    windows: list[Window] = []
    try:
        if not await asyncio.to_thread(ready.wait, args.phase_limit):
            raise RuntimeError(f"the reader process was not ready within {args.phase_limit:g} s")
        say("reads without DDL or purge")
        await asyncio.sleep(READ_WARMUP)
        baseline_start = time.monotonic()
        await asyncio.sleep(args.baseline_seconds)
        windows.append(Window("before: no DDL, no purge", baseline_start, time.monotonic()))
        say("migration 0006 under reads")
        migration_start, migration_end = await timed(
            lambda: apply_migrations(dsn, timeout=args.phase_limit)
        )
        windows.append(Window("during migration 0006", migration_start, migration_end))
        replica_lag = (
            await asyncio.to_thread(
                replica_has_index, stores, database, migration_end + args.phase_limit
            )
            - migration_end
        )
        say(
            f"migration: {migration_end - migration_start:.1f} s; the replica had the index"
            f" {replica_lag:.1f} s later"
        )
        primary = await Database.open(dsn, role="primary", pool_size=2, timeout=30.0)
        expired = ExpiredRows(stores, database, args.phase_limit)
        await expired.deleted_since_last()  # the count the first phase starts from
        try:
            say(f"purging at the default rate for {args.default_seconds:g} s")
            default = PurgeLimits(PURGE_AFTER, DEFAULT_BATCH, DEFAULT_RATE)
            at_default, window = await purge_for(primary, default, args.default_seconds, expired)
            windows.append(window)
            say(f"{at_default.label}: {at_default.rows:,} rows, {at_default.rate:,.0f} rows/s")
            say(f"purging at the highest rate for {args.max_seconds:g} s")
            fastest = PurgeLimits(PURGE_AFTER, DEFAULT_BATCH, MAX_RATE)
            at_max, window = await purge_for(primary, fastest, args.max_seconds, expired)
            windows.append(window)
            say(f"{at_max.label}: {at_max.rows:,} rows, {at_max.rate:,.0f} rows/s")
            say(f"comparing ways of purging for {args.compare_seconds:g} s each")
            compared, compare_windows = await compare_strategies(
                stores, primary, database, args.compare_seconds, expired
            )
            windows += compare_windows
        finally:
            await primary.close()
        quiet_start = time.monotonic()
        await asyncio.sleep(args.baseline_seconds)
        windows.append(Window("after: no DDL, no purge", quiet_start, time.monotonic()))
    finally:
        stop.set()
        await asyncio.to_thread(reader.join, args.phase_limit)
        if reader.is_alive():
            reader.kill()
    samples = array("d")
    samples.frombytes(await asyncio.to_thread(samples_path.read_bytes))
    left = expired_rows(stores, database)
    return Figures(
        rows=args.rows,
        fill_seconds=fill_seconds,
        migration_seconds=migration_end - migration_start,
        replica_lag_seconds=replica_lag,
        purges=[at_default, at_max],
        expired_left=left,
        compared=compared,
        reads=[(window.label, *latency_in(samples, window)) for window in windows],
    )


def replica_has_index(stores: DataStores, database: str, deadline: float) -> float:
    """When the replica's schema first shows the index (polled every 0.1 s until `deadline`)."""
    while time.monotonic() < deadline:
        rows = stores.replica.execute(
            "SELECT 1 FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = %s"
            " AND TABLE_NAME = 'sessions' AND INDEX_NAME = 'sessions_expires_at'",
            (database,),
        )
        if rows:
            return time.monotonic()
        time.sleep(0.1)
    return math.nan


@dataclasses.dataclass(frozen=True)
class Figures:
    rows: int
    fill_seconds: float
    migration_seconds: float
    replica_lag_seconds: float
    purges: list[PurgeFigures]
    expired_left: int
    compared: list[PurgeFigures]
    reads: list[tuple[str, int, float, float, float]]  # (while, count, p50, p99, max in ms)


def report(figures: Figures) -> str:
    lines = [
        f"# Session purge on {figures.rows:,} expired sessions",
        "",
        f"MariaDB primary and replica of devstack; {LIVE_SESSIONS:,} live sessions besides;"
        f" filled in {figures.fill_seconds:.0f} s. Reads: {READ_RATE:g}/s of live sessions by"
        " primary key on the primary (the session-profile query), one connection, open loop.",
        "",
        f"- migration 0006 (`ADD KEY sessions_expires_at`, INPLACE, LOCK=NONE):"
        f" {figures.migration_seconds:.1f} s on the primary; the replica had it"
        f" {figures.replica_lag_seconds:.1f} s later",
        "",
        "| purge (the service's SessionPurge) | rows | seconds | rows/s |",
        "|---|---|---|---|",
        *(
            f"| {purge.label} | {purge.rows:,} | {purge.seconds:.1f} | {purge.rate:,.0f} |"
            for purge in figures.purges
        ),
        "",
        f"Expired rows left afterwards: {figures.expired_left:,}.",
        "",
        "| reads while | reads | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|",
    ]
    for label, count, p50, p99, worst in figures.reads:
        lines.append(f"| {label} | {count:,} | {p50:.2f} | {p99:.2f} | {worst:.1f} |")
    lines += [
        "",
        f"Ways of purging, each alone, unpaced, in batches of {DEFAULT_BATCH}, one after the"
        " other on the rows left:",
        "",
        "| way | rows | seconds | rows/s |",
        "|---|---|---|---|",
        *(
            f"| {way.label} | {way.rows:,} | {way.seconds:.1f} | {way.rate:,.0f} |"
            for way in figures.compared
        ),
        "",
    ]
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.purge", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="expired sessions to purge")
    parser.add_argument(
        "--max-seconds", type=float, default=180.0, help="seconds purged at the highest rate"
    )
    parser.add_argument(
        "--compare-seconds", type=float, default=60.0, help="seconds of each way compared"
    )
    parser.add_argument(
        "--default-seconds", type=float, default=60.0, help="seconds purged at the default rate"
    )
    parser.add_argument(
        "--baseline-seconds", type=float, default=15.0, help="seconds of reads before and after"
    )
    parser.add_argument(
        "--phase-limit", type=float, default=900.0, help="seconds any one phase may take"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.rows <= 10_000_000:
        parser.error("--rows must be between 1 and 10,000,000")
    seconds = (args.default_seconds, args.max_seconds, args.compare_seconds, args.baseline_seconds)
    if not all(0 < value <= args.phase_limit for value in seconds):
        parser.error("every phase's seconds must be above 0 and at most --phase-limit")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    with tempfile.TemporaryDirectory(prefix="bench-purge-") as scratch:
        stores = DataStores.start(Path(scratch) / "stores")
        try:
            text = report(asyncio.run(measure(args, stores, Path(scratch))))
        finally:
            stores.stop()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"purge-{stamp}.md"
    path.write_text(text)
    print(text)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
