"""Schema migrations: the SQL files in `migrations/`, applied in order, each exactly once.

A migration is a file `NNNN_name.sql` (NNNN: its version, four digits). Statements end with
';' at the end of a line; lines starting with '--' are comments. MySQL commits every DDL
statement on its own, so a migration that fails halfway stays half applied: write statements
that can run again (CREATE TABLE IF NOT EXISTS, ...), fix the file and rerun.

Nor is a migration's record atomic with its DDL: a run killed, or timed out, after a statement
committed (a client-side timeout does not stop the server's ALTER, which finishes once the
metadata lock it waits for is free) leaves the change made and the version unrecorded. The
next run meets the statement again; a statement the server refuses only because what it
creates already exists, or what it drops is already gone (MySQL has no ADD COLUMN IF NOT
EXISTS), counts as applied, with a warning: each such statement is one atomic DDL statement.

`apply_migrations` runs at every auth replica's start and from `python -m services.auth
migrate`. Replicas starting together serialize on the MySQL lock 'gatehouse_migrations' and
re-read the applied versions once they hold it, so each migration runs once. Applied versions
are recorded in `schema_migrations`, which this module creates itself.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from services.auth.store.database import Database, DatabaseTimeout, StatementRejected, Statements
from services.auth.store.ddl_effects import effect_in_place

if TYPE_CHECKING:
    from services.auth.settings import DatabaseSettings

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
LOCK_NAME = "gatehouse_migrations"
# Database access denied, table access denied: a user without the migration privileges.
_ACCESS_DENIED = frozenset({1044, 1142})
# Table exists, duplicate column, duplicate key name, can't drop (column or key not there),
# duplicate foreign key name: the statement's effect is already in place.
_ALREADY_APPLIED = frozenset({1050, 1060, 1061, 1091, 1826})
_NO_SUCH_TABLE = 1146
_FILE_NAME = re.compile(r"(\d{4})_([a-z0-9_]{1,100})\.sql")

_CREATE_SCHEMA_MIGRATIONS = """
CREATE TABLE schema_migrations (
    version CHAR(4) CHARACTER SET ascii NOT NULL,
    name VARCHAR(100) CHARACTER SET ascii NOT NULL,
    applied_at DATETIME(6) NOT NULL,
    PRIMARY KEY (version)
) ENGINE=InnoDB
"""


class MigrationError(Exception):
    """The migrations could not be applied; the message says what to fix."""


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    statements: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.version}_{self.name}"


def load_migrations(folder: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Every migration in `folder`, oldest first."""
    migrations: list[Migration] = []
    for path in sorted(folder.glob("*.sql")):
        match = _FILE_NAME.fullmatch(path.name)
        if match is None:
            raise MigrationError(
                f"{path}: a migration file is named NNNN_name.sql (lowercase, digits, '_'); "
                "rename it"
            )
        statements = _split_statements(path.read_text(encoding="utf-8"), path)
        migrations.append(
            Migration(version=match.group(1), name=match.group(2), statements=statements)
        )
    versions = [migration.version for migration in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(
            f"{folder}: two migration files share a version; give each its own number"
        )
    return migrations


def _split_statements(sql: str, path: Path) -> tuple[str, ...]:
    statements: list[str] = []
    current: list[str] = []
    for line in sql.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("--"):
            continue
        current.append(line)
        if stripped.endswith(";"):
            statements.append("\n".join(current).strip().removesuffix(";"))
            current = []
    if current:
        raise MigrationError(
            f"{path}: the last statement does not end with ';' at the end of a line; add it"
        )
    if not statements:
        raise MigrationError(f"{path}: no SQL statements; delete the file or add statements")
    return tuple(statements)


# The least time a migration run gets, whatever GATEHOUSE_MYSQL_TIMEOUT (one query) says.
MIN_RUN_SECONDS = 30.0


async def migrate_database(settings: DatabaseSettings) -> list[str]:
    """The run of `python -m services.auth migrate` and `gatehouse migrate`: the versions
    applied, oldest first."""
    return await apply_migrations(
        settings.migration_dsn, timeout=max(MIN_RUN_SECONDS, settings.mysql_timeout)
    )


async def apply_migrations(
    primary_dsn: str, *, timeout: float, folder: Path = MIGRATIONS_DIR
) -> list[str]:
    """Apply the migrations the primary lacks; the versions applied, oldest first.

    `timeout` bounds the whole run, waiting for another replica's run included.
    """
    migrations = load_migrations(folder)
    database = await Database.open(primary_dsn, role="primary", pool_size=1, timeout=timeout)
    try:
        async with database.statements("migrate") as statements:
            return await _apply_under_lock(statements, migrations, timeout)
    except DatabaseTimeout as exc:
        raise MigrationError(
            f"{exc}; another replica may hold the lock '{LOCK_NAME}' for a long migration: "
            "run `python -m services.auth migrate` alone, or allow more time"
        ) from exc
    finally:
        await database.close()


async def _apply_under_lock(
    statements: Statements, migrations: list[Migration], timeout: float
) -> list[str]:
    started = time.monotonic()
    # Whole seconds: MySQL may not take fractions (MariaDB does).
    wait = math.ceil(timeout)
    row = await statements.fetch_one("SELECT GET_LOCK(%s, %s) AS locked", (LOCK_NAME, wait))
    if row is None or row["locked"] != 1:
        raise MigrationError(
            f"could not take the MySQL lock '{LOCK_NAME}' within {wait} s: another replica is "
            "migrating; retry when it is done"
        )
    # Released explicitly on success; on failure closing the connection releases it.
    # (IF NOT EXISTS would do, but its note turns into a Python warning at every start.)
    if not await statements.fetch_one(
        "SELECT 1 FROM information_schema.TABLES"
        " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'schema_migrations'"
    ):
        try:
            await statements.execute(_CREATE_SCHEMA_MIGRATIONS)
        except StatementRejected as exc:
            raise MigrationError(f"cannot create schema_migrations: {exc}{_hint(exc)}") from exc
    rows = await statements.fetch_all("SELECT version FROM schema_migrations")
    applied = {row["version"] for row in rows}
    pending = [migration for migration in migrations if migration.version not in applied]
    unknown = applied - {migration.version for migration in migrations}
    warn_of_unknown(sorted(unknown))
    for migration in pending:
        await _apply_one(statements, migration)
    await statements.execute("DO RELEASE_LOCK(%s)", (LOCK_NAME,))
    if pending:
        log.info("applied %d migration(s) in %.2f s", len(pending), time.monotonic() - started)
    else:
        log.info("schema up to date at version %s", max(applied, default="(none)"))
    return [migration.version for migration in pending]


async def schema_lag(database: Database, folder: Path = MIGRATIONS_DIR) -> SchemaLag:
    """How the database's schema stands against this release's migrations: read-only, as the
    application user may (a replica that does not migrate on start checks it)."""
    known = [migration.version for migration in load_migrations(folder)]
    async with database.statements("schema check") as statements:
        try:
            rows = await statements.fetch_all("SELECT version FROM schema_migrations")
        except StatementRejected as exc:
            if exc.code != _NO_SUCH_TABLE:
                raise
            rows = []
    applied = {row["version"] for row in rows}
    return SchemaLag(
        pending=[version for version in known if version not in applied],
        unknown=sorted(applied - set(known)),
    )


def warn_of_unknown(versions: list[str]) -> None:
    """A release older than the schema (a rollback): say so, once per check."""
    if versions:
        log.warning(
            "the database has migrations this release does not know (a newer release ran): %s;"
            " what they added may be left out of what this release writes",
            ", ".join(versions),
        )


@dataclass(frozen=True)
class SchemaLag:
    pending: list[str]  # this release's migrations the database lacks
    unknown: list[str]  # the database's migrations this release does not know (a newer ran)


def _hint(exc: StatementRejected) -> str:
    """What to do when the statement was refused for want of a privilege."""
    if exc.code not in _ACCESS_DENIED:
        return ""
    return (
        "; this user may not change the schema: run `python -m services.auth migrate` with"
        " GATEHOUSE_MYSQL_MIGRATION_DSN set to the migration user's DSN (README, Deploying)"
    )


async def _apply_one(statements: Statements, migration: Migration) -> None:
    log.info("applying migration %s (%d statements)", migration.label, len(migration.statements))
    started = time.monotonic()
    for number, statement in enumerate(migration.statements, start=1):
        try:
            await statements.execute(statement)
        except StatementRejected as exc:
            if exc.code in _ALREADY_APPLIED and await effect_in_place(statements, statement):
                log.warning(
                    "migration %s, statement %d of %d: already in place (%s); an earlier run "
                    "stopped after it without recording the migration: counted as applied",
                    migration.label,
                    number,
                    len(migration.statements),
                    exc,
                )
                continue
            raise MigrationError(
                f"migration {migration.label} failed at statement {number} of "
                f"{len(migration.statements)}: {exc}{_hint(exc)}; statements before it stay"
                " applied: fix the file and run the migrations again"
            ) from exc
    await statements.execute(
        "INSERT INTO schema_migrations (version, name, applied_at) VALUES (%s, %s, NOW(6))",
        (migration.version, migration.name),
    )
    log.info("applied migration %s in %.2f s", migration.label, time.monotonic() - started)
