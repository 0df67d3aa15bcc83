"""Migrations on fresh databases of the real MariaDB: order, idempotence, concurrency, errors."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from devstack import DataStores
from devstack.ports import wait_until_async
from services.auth import schema_check
from services.auth.replica import Readiness
from services.auth.schema_check import recheck_schema, wait_for_schema
from services.auth.store.database import Database, DatabaseError, parse_dsn
from services.auth.store.migrate import (
    MIGRATIONS_DIR,
    MigrationError,
    SchemaLag,
    apply_migrations,
    load_migrations,
    schema_lag,
)
from tests.auth.conftest import migration_dsn
from tests.auth.tcp_proxy import TcpProxy

# Fails if run twice: proves that a migration ran exactly once.
NOT_REPEATABLE = """
CREATE TABLE run_once (id INT NOT NULL PRIMARY KEY);
INSERT INTO run_once (id) VALUES (1);
"""


@pytest.fixture
def migrations_with_extra(tmp_path: Path) -> Callable[[str], Path]:
    """A copy of the real migrations plus `0900_extra.sql` with the given SQL."""

    def make(sql: str) -> Path:
        folder = tmp_path / "migrations"
        shutil.copytree(MIGRATIONS_DIR, folder, dirs_exist_ok=True)
        (folder / "0900_extra.sql").write_text(sql)
        return folder

    return make


def migrations_before(version: str, tmp_path: Path) -> Path:
    """A folder holding the real migrations older than `version`: a database of an older
    release."""
    folder = tmp_path / f"before-{version}"
    folder.mkdir()
    for path in MIGRATIONS_DIR.glob("*.sql"):
        if path.name < version:
            shutil.copy(path, folder)
    return folder


def recorded_versions(data_stores: DataStores, dsn: str) -> list[str]:
    database = parse_dsn(dsn).database
    rows = data_stores.primary.execute(
        f"SELECT version FROM `{database}`.schema_migrations ORDER BY version"
    )
    return [row["version"] for row in rows]


def column(data_stores: DataStores, dsn: str, table: str, name: str) -> dict[str, object]:
    rows = data_stores.primary.execute(
        "SELECT COLUMN_TYPE, COLLATION_NAME, IS_NULLABLE FROM information_schema.COLUMNS"
        " WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s AND COLUMN_NAME = %s",
        (parse_dsn(dsn).database, table, name),
    )
    assert rows, f"{table}.{name} does not exist"
    return rows[0]


def test_the_migrations_folder_is_well_formed() -> None:
    migrations = load_migrations()
    versions = [migration.version for migration in migrations]
    assert versions == sorted(versions)
    assert versions[0] == "0001"
    assert all(migration.statements for migration in migrations)


async def test_a_fresh_database_gets_every_migration_and_a_second_run_none(
    data_stores: DataStores, new_database: Callable[[], str]
) -> None:
    dsn = migration_dsn(data_stores, new_database())
    everything = [migration.version for migration in load_migrations()]
    assert await apply_migrations(dsn, timeout=30.0) == everything
    assert await apply_migrations(dsn, timeout=30.0) == []
    assert recorded_versions(data_stores, dsn) == everything


async def test_the_schema_is_as_designed(
    data_stores: DataStores, new_database: Callable[[], str]
) -> None:
    dsn = migration_dsn(data_stores, new_database())
    await apply_migrations(dsn, timeout=30.0)
    assert column(data_stores, dsn, "users", "id")["COLUMN_TYPE"] == "bigint(20) unsigned"
    assert column(data_stores, dsn, "users", "username")["COLLATION_NAME"] == "ascii_general_ci"
    assert column(data_stores, dsn, "users", "nickname")["COLLATION_NAME"] == "utf8mb4_unicode_ci"
    assert column(data_stores, dsn, "users", "avatar_key")["IS_NULLABLE"] == "YES"
    assert column(data_stores, dsn, "sessions", "id")["COLLATION_NAME"] == "ascii_bin"
    assert column(data_stores, dsn, "sessions", "revoked_at")["COLUMN_TYPE"] == "datetime(6)"
    assert column(data_stores, dsn, "replication_heartbeat", "beat")["COLUMN_TYPE"] == "datetime(6)"
    indexes = data_stores.primary.execute(
        "SELECT INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS"
        " WHERE TABLE_SCHEMA = %s AND TABLE_NAME = 'sessions'",
        (parse_dsn(dsn).database,),
    )
    assert {"INDEX_NAME": "sessions_user_id", "COLUMN_NAME": "user_id"} in indexes


async def test_concurrent_runs_apply_each_migration_exactly_once(
    data_stores: DataStores,
    new_database: Callable[[], str],
    migrations_with_extra: Callable[[str], Path],
) -> None:
    dsn = migration_dsn(data_stores, new_database())
    folder = migrations_with_extra(NOT_REPEATABLE)
    results = await asyncio.gather(
        *(apply_migrations(dsn, timeout=30.0, folder=folder) for _ in range(4))
    )
    everything = [migration.version for migration in load_migrations(folder)]
    assert sorted(version for applied in results for version in applied) == everything
    assert sum(1 for applied in results if applied) == 1  # one run did all the work, in order
    assert recorded_versions(data_stores, dsn) == everything


@pytest.mark.filterwarnings("ignore:Table 'run_once' already exists")  # the rerun, as intended
async def test_a_failing_migration_names_its_file_and_is_not_recorded(
    data_stores: DataStores,
    new_database: Callable[[], str],
    migrations_with_extra: Callable[[str], Path],
) -> None:
    dsn = migration_dsn(data_stores, new_database())
    folder = migrations_with_extra(
        "CREATE TABLE run_once (id INT NOT NULL PRIMARY KEY);\nSELEKT 1;\n"
    )
    with pytest.raises(
        MigrationError, match=r"migration 0900_extra failed at statement 2 of 2: .*fix the file"
    ):
        await apply_migrations(dsn, timeout=30.0, folder=folder)
    assert "0900" not in recorded_versions(data_stores, dsn)

    (folder / "0900_extra.sql").write_text(
        "CREATE TABLE IF NOT EXISTS run_once (id INT NOT NULL PRIMARY KEY);\n"
    )
    assert await apply_migrations(dsn, timeout=30.0, folder=folder) == ["0900"]


async def test_refused_credentials_are_a_clear_error_without_the_password(
    new_database: Callable[[], str],
) -> None:
    address = parse_dsn(new_database())
    dsn = f"mysql://{address.user}:wrong-password@{address.host}:{address.port}/{address.database}"
    with pytest.raises(
        DatabaseError, match=r"MySQL primary .*: migrate failed: .*Access denied"
    ) as error:
        await apply_migrations(dsn, timeout=5.0)
    assert "wrong-password" not in str(error.value)


@pytest.mark.parametrize(
    ("file_name", "sql", "problem"),
    [
        ("1_initial.sql", "SELECT 1;\n", "named NNNN_name.sql"),
        ("0001_initial.sql", "SELECT 1\n", "does not end with ';'"),
        ("0001_initial.sql", "-- nothing here\n", "no SQL statements"),
    ],
)
def test_malformed_migration_files_are_refused(
    tmp_path: Path, file_name: str, sql: str, problem: str
) -> None:
    (tmp_path / file_name).write_text(sql)
    with pytest.raises(MigrationError, match=problem):
        load_migrations(tmp_path)


async def test_the_expires_at_index_is_built_on_a_filled_table_and_recorded(
    data_stores: DataStores, new_database: Callable[[], str], tmp_path: Path
) -> None:
    dsn = migration_dsn(data_stores, new_database())
    database = parse_dsn(dsn).database
    await apply_migrations(dsn, timeout=30.0, folder=migrations_before("0006", tmp_path))
    data_stores.primary.execute(
        f"INSERT INTO `{database}`.users (id, username, nickname, password_hash, pepper_version,"
        " version, created_at, updated_at) VALUES (1, 'filled', 'n', 'h', 1, 1, NOW(6), NOW(6))"
    )
    data_stores.primary.execute(
        f"INSERT INTO `{database}`.sessions (id, user_id, created_at, expires_at)"
        " SELECT CONCAT('s', seq), 1, NOW(6), NOW(6) - INTERVAL seq MINUTE"
        f" FROM `{database}`.seq_1_to_2000"  # MariaDB's Sequence engine
    )
    assert "0006" in await apply_migrations(dsn, timeout=30.0)
    assert "0006" in recorded_versions(data_stores, dsn)
    indexes = data_stores.primary.execute(
        "SELECT INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS"
        " WHERE TABLE_SCHEMA = %s AND TABLE_NAME = 'sessions'",
        (database,),
    )
    assert {"INDEX_NAME": "sessions_expires_at", "COLUMN_NAME": "expires_at"} in indexes
    counted = data_stores.primary.execute(f"SELECT COUNT(*) AS n FROM `{database}`.sessions")
    assert counted[0]["n"] == 2000


async def test_a_migration_whose_ddl_committed_but_was_not_recorded_is_applied_by_the_next_run(
    data_stores: DataStores, new_database: Callable[[], str], tmp_path: Path
) -> None:
    """The ALTER waits for a metadata lock behind a long transaction; the run times out and
    closes its connection, and the server finishes the ALTER once the transaction ends: the
    column is there, 0010 is not recorded. The next run (a replica's start, the migrate Job)
    must not fail on "Duplicate column name" forever."""
    dsn = migration_dsn(data_stores, new_database())
    database = parse_dsn(dsn).database
    await apply_migrations(dsn, timeout=30.0, folder=migrations_before("0010", tmp_path))

    blocker = data_stores.primary.connect()
    try:
        blocker.autocommit(False)
        with blocker.cursor() as cursor:
            cursor.execute(f"SELECT COUNT(*) FROM `{database}`.users")  # a shared metadata lock
        with pytest.raises(MigrationError, match="did not finish within 2 s"):
            await apply_migrations(dsn, timeout=2.0)
        blocker.commit()
    finally:
        blocker.close()

    def column_added() -> bool:
        return bool(
            data_stores.primary.execute(
                "SELECT 1 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s"
                " AND TABLE_NAME = 'users' AND COLUMN_NAME = 'password_changes'",
                (database,),
            )
        )

    await wait_until_async(
        column_added, 5.0, "the server to finish the ALTER its client gave up on"
    )
    assert "0010" not in recorded_versions(data_stores, dsn)

    assert (await apply_migrations(dsn, timeout=30.0))[0] == "0010"  # and any newer
    assert "0010" in recorded_versions(data_stores, dsn)


class LastMigrationMissing:
    """A migrated database of its own whose last migration is not recorded, as a database the
    migrate Job has not brought to this release yet; `record()` applies it."""

    def __init__(self, data_stores: DataStores, app_dsn: str) -> None:
        self._data_stores = data_stores
        self.app_dsn = app_dsn
        self.address = parse_dsn(app_dsn)
        self.last = load_migrations()[-1]

    @classmethod
    async def make(cls, data_stores: DataStores, app_dsn: str) -> LastMigrationMissing:
        await apply_migrations(migration_dsn(data_stores, app_dsn), timeout=30.0)
        missing = cls(data_stores, app_dsn)
        missing._data_stores.primary.execute(
            f"DELETE FROM `{missing.address.database}`.schema_migrations WHERE version = %s",
            (missing.last.version,),
        )
        return missing

    def record(self) -> None:
        self._data_stores.primary.execute(
            f"INSERT INTO `{self.address.database}`.schema_migrations (version, name, applied_at)"
            " VALUES (%s, %s, NOW(6))",
            (self.last.version, self.last.name),
        )

    async def primary_through(self, proxy: TcpProxy) -> Database:
        dsn = self.app_dsn.replace(f":{self.address.port}/", f":{proxy.port}/", 1)
        return await Database.open(dsn, role="primary", pool_size=1, timeout=1.0)


async def test_a_replica_is_not_ready_while_the_database_lacks_a_migration(
    data_stores: DataStores, new_database: Callable[[], str]
) -> None:
    """With the migrations not run at start (the chart's default), a replica on an older schema
    (the migrate Job not run, or still running at an install) would register and fail every
    call that touches what the missing migration adds. It waits, not ready, saying what to run."""
    missing = await LastMigrationMissing.make(data_stores, new_database())
    last = missing.last
    readiness = Readiness()
    primary = await Database.open(missing.app_dsn, role="primary", pool_size=1, timeout=5.0)
    waiting = asyncio.create_task(wait_for_schema(readiness, primary, poll_seconds=0.02))
    try:
        await wait_until_async(
            lambda: last.version in (readiness.not_ready_because or ""),
            10.0,
            "the replica to say which migration the database lacks",
        )
        assert "python -m services.auth migrate" in (readiness.not_ready_because or "")
        assert not waiting.done()
        missing.record()
        await asyncio.wait_for(waiting, 10.0)
    finally:
        waiting.cancel()
        await primary.close()


class Announcement:
    """Stands for the replica's discovery record (a LeasedKey): held or not."""

    def __init__(self) -> None:
        self.held = True

    async def start(self) -> None:
        self.held = True

    async def stop(self) -> None:
        self.held = False


async def test_a_replica_that_could_not_check_its_schema_leaves_discovery_once_it_sees_a_gap(
    data_stores: DataStores, new_database: Callable[[], str]
) -> None:
    """The primary out of reach at start: the replica registers (reads go on without the
    primary), asks again, and on finding a migration missing leaves discovery until it is
    applied. Before, the one failed check was the end of it: it served on the old schema."""
    missing = await LastMigrationMissing.make(data_stores, new_database())
    last = missing.last
    proxy = await TcpProxy.start(missing.address.host, missing.address.port)
    proxy.cut()
    primary = await missing.primary_through(proxy)
    readiness = Readiness()
    readiness.not_ready_because = None
    announcement = Announcement()
    rechecking: asyncio.Task[None] | None = None
    try:
        assert not await wait_for_schema(readiness, primary, poll_seconds=0.02)
        rechecking = asyncio.create_task(
            recheck_schema(readiness, primary, announcement, poll_seconds=0.02)  # type: ignore[arg-type]
        )
        proxy.restore()
        await wait_until_async(
            lambda: not announcement.held and last.version in (readiness.not_ready_because or ""),
            20.0,
            "the replica to leave discovery, naming the missing migration",
        )
        missing.record()
        await asyncio.wait_for(rechecking, 10.0)
        assert announcement.held and readiness.not_ready_because is None
    finally:
        if rechecking is not None:
            rechecking.cancel()
        await primary.close()
        await proxy.close()


@pytest.mark.parametrize(
    "sql",
    [
        # Its second column another migration added: 1060, and the first is never added.
        (
            "ALTER TABLE users ADD COLUMN nickname2 VARCHAR(20) NULL,"
            " ADD COLUMN password_changes INT NULL;"
        ),
        # A bug of the file (a column named twice): 1060, and the table is never created.
        "CREATE TABLE extra (a INT, a INT);",
        # A misspelt index dropped: 1091, and the index added beside it never is.
        ("ALTER TABLE users DROP INDEX no_such_index, ADD INDEX users_extra (created_at);"),
    ],
    ids=["alter-two-columns", "create-duplicate-column", "drop-typo-add-index"],
)
async def test_a_statement_refused_as_already_in_place_whose_effect_is_not_fails(
    data_stores: DataStores,
    new_database: Callable[[], str],
    migrations_with_extra: Callable[[str], Path],
    sql: str,
) -> None:
    """'Duplicate column' names one object, not the statement's whole effect: counted as
    applied, the migration was recorded without what it adds, for good."""
    dsn = migration_dsn(data_stores, new_database())
    with pytest.raises(MigrationError, match="0900"):
        await apply_migrations(dsn, timeout=30.0, folder=migrations_with_extra(sql))
    assert "0900" not in recorded_versions(data_stores, dsn)


async def test_a_replica_that_found_a_migration_missing_keeps_waiting_through_a_failed_check(
    data_stores: DataStores, new_database: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One failed check (a timeout, the primary's breaker open) once a gap was seen must not
    let a replica register on a schema it knows is old."""
    missing = await LastMigrationMissing.make(data_stores, new_database())
    last = missing.last
    failed_checks: list[BaseException] = []

    async def counted(primary: Database) -> SchemaLag:
        try:
            return await schema_lag(primary)
        except DatabaseError as exc:
            failed_checks.append(exc)
            raise

    monkeypatch.setattr(schema_check, "schema_lag", counted)
    proxy = await TcpProxy.start(missing.address.host, missing.address.port)
    primary = await missing.primary_through(proxy)
    readiness = Readiness()
    waiting = asyncio.create_task(wait_for_schema(readiness, primary, poll_seconds=0.02))
    try:
        await wait_until_async(
            lambda: last.version in (readiness.not_ready_because or ""), 10.0, "a gap seen"
        )
        proxy.cut()
        await wait_until_async(lambda: failed_checks, 20.0, "a check to fail")
        proxy.restore()
        missing.record()
        assert await asyncio.wait_for(waiting, 20.0) is True
    finally:
        waiting.cancel()
        await primary.close()
        await proxy.close()
