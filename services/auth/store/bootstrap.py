"""The database and the two MySQL accounts Gatehouse uses, created with the master user.

- The application user (GATEHOUSE_MYSQL_PRIMARY_DSN's) reads and writes rows: SELECT, INSERT,
  UPDATE, DELETE on the database, nothing else. Everything the auth service runs needs no more:
  row statements (SELECT ... FOR UPDATE included), GET_LOCK/RELEASE_LOCK, session variables and
  information_schema rows of its own tables need no privilege of their own.
- The migration user (GATEHOUSE_MYSQL_MIGRATION_DSN's) also changes the schema: what
  `python -m services.auth migrate` runs.

Every statement can run again: the step runs at every install and upgrade. It also brings
accounts made by older releases to these privileges (extra ones are revoked) and passwords to
those of the DSNs (a rotated Secret takes effect at the next run).
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass

import aiomysql
import pymysql

from services.auth.store.dsn import MySQLAddress

log = logging.getLogger(__name__)

APP_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")
MIGRATION_PRIVILEGES = (*APP_PRIVILEGES, "CREATE", "ALTER", "DROP", "INDEX", "REFERENCES")
_IDENTIFIER = re.compile(r"[A-Za-z0-9_$-]{1,64}")

Statement = tuple[str, tuple[str, ...]]


def grant_pattern(database: str) -> str:
    """The database as a GRANT names it: '_' is a wildcard there (`gatehouse_prod`.* also
    grants on `gatehouseXprod`), so it is escaped."""
    return database.replace("_", "\\_")


def granted_queries(database: str) -> list[Statement]:
    """What every account holds on the database now, as the server names it (MariaDB has
    privileges MySQL lacks, such as DELETE HISTORY), read before granting so that only what is
    in excess is revoked (revoking everything and granting again would leave running replicas
    without privileges for a moment): on the database (under its escaped name, and under the
    plain one older releases granted on, a wildcard), on its tables, on their columns. The
    rows, in this order, make a `Granted`."""
    return [
        (
            "SELECT TABLE_SCHEMA AS pattern, GRANTEE AS grantee, PRIVILEGE_TYPE AS privilege,"
            " IS_GRANTABLE AS grantable FROM information_schema.SCHEMA_PRIVILEGES"
            " WHERE TABLE_SCHEMA IN (%s, %s)",
            (grant_pattern(database), database),
        ),
        (
            "SELECT GRANTEE AS grantee, TABLE_NAME AS table_name, PRIVILEGE_TYPE AS privilege,"
            " IS_GRANTABLE AS grantable"
            " FROM information_schema.TABLE_PRIVILEGES WHERE TABLE_SCHEMA = %s",
            (database,),
        ),
        (
            "SELECT GRANTEE AS grantee, TABLE_NAME AS table_name, COLUMN_NAME AS column_name,"
            " PRIVILEGE_TYPE AS privilege, IS_GRANTABLE AS grantable"
            " FROM information_schema.COLUMN_PRIVILEGES"
            " WHERE TABLE_SCHEMA = %s",
            (database,),
        ),
    ]


Rows = list[dict[str, str]]


@dataclass(frozen=True)
class Granted:
    """The rows of `granted_queries`."""

    on_database: Rows
    on_tables: Rows
    on_columns: Rows


@dataclass(frozen=True)
class Account:
    user: str
    password: str
    privileges: tuple[str, ...]


def accounts(database: str, app: MySQLAddress, migration: MySQLAddress) -> tuple[Account, Account]:
    """The two accounts of the DSNs; ValueError if they name another database than
    `database` or the same user (the point is two users with different privileges)."""
    check_database(database)
    if {app.database, migration.database} != {database}:
        raise ValueError(
            f"the master, application and migration DSNs name different databases ({database},"
            f" {app.database}, {migration.database}); name the same one in all three"
        )
    if app.user == migration.user:
        raise ValueError(
            f"the application and migration DSNs both use the user {app.user!r}; the migration"
            " user must be another one (it may change the schema, the application user not)"
        )
    return (
        Account(app.user, app.password, APP_PRIVILEGES),
        Account(migration.user, migration.password, MIGRATION_PRIVILEGES),
    )


def check_database(database: str) -> None:
    """ValueError unless `database` can be written between backquotes as it is."""
    if not _IDENTIFIER.fullmatch(database):
        raise ValueError(f"database name {database!r}: use 1-64 letters, digits, '_', '$' or '-'")


def bootstrap_statements(
    database: str,
    account_host: str,
    created: tuple[Account, ...],
    granted: Granted,
) -> list[Statement]:
    """The statements, with their arguments (pymysql's %s), that create `database` and the
    `created` accounts at `account_host` ('%': any host) with their privileges and no others.
    `granted`: what the accounts hold now (`granted_queries`)."""
    check_database(database)
    pattern = grant_pattern(database)
    on = f"`{pattern}`.*"
    statements: list[Statement] = [
        # IF NOT EXISTS on a rerun leaves a note, which client libraries turn into warnings.
        ("SET SESSION sql_notes = 0", ()),
        (
            f"CREATE DATABASE IF NOT EXISTS `{database}` "
            "CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci",
            (),
        ),
    ]
    for account in created:
        who = (account.user, account_host)
        statements += [
            ("CREATE USER IF NOT EXISTS %s@%s IDENTIFIED BY %s", (*who, account.password)),
            ("ALTER USER %s@%s IDENTIFIED BY %s", (*who, account.password)),
            (f"GRANT {', '.join(account.privileges)} ON {on} TO %s@%s", who),
        ]
        grantee = f"'{account.user}'@'{account_host}'"
        own = [row for row in granted.on_database if row["grantee"] == grantee]
        excess = _excess([row for row in own if row["pattern"] == pattern], account.privileges)
        if excess:
            statements.append((f"REVOKE {', '.join(excess)} ON {on} FROM %s@%s", who))
        if pattern != database:  # an older release's grant on the wildcard name: all of it
            wildcard = _excess([row for row in own if row["pattern"] == database], ())
            if wildcard:
                statements.append(
                    (f"REVOKE {', '.join(wildcard)} ON `{database}`.* FROM %s@%s", who)
                )
        statements += _finer_grants_revoked(database, grantee, granted, who)
    return statements


def _excess(held: Rows, wanted: tuple[str, ...]) -> list[str]:
    excess = sorted({row["privilege"] for row in held} - set(wanted))
    if any(row["grantable"] == "YES" for row in held):
        excess.append("GRANT OPTION")
    return excess


def _finer_grants_revoked(
    database: str, grantee: str, granted: Granted, who: tuple[str, str]
) -> list[Statement]:
    """Every privilege `grantee` holds on a table or a column of the database, and the GRANT
    OPTION of those tables (IS_GRANTABLE, never a row of its own): the accounts hold theirs on
    the database alone. Columns first: revoking a privilege on a table also takes it from the
    table's columns, and the column's REVOKE would then find no grant (1147)."""
    statements: list[Statement] = []
    grantable: list[str] = []
    for row in granted.on_columns:
        if row["grantee"] == grantee:
            table = f"`{database}`.{_quoted(row['table_name'])}"
            column = _quoted(row["column_name"])
            statements.append((f"REVOKE {row['privilege']} ({column}) ON {table} FROM %s@%s", who))
            if row.get("grantable") == "YES" and table not in grantable:
                grantable.append(table)
    for row in granted.on_tables:
        if row["grantee"] == grantee:
            table = f"`{database}`.{_quoted(row['table_name'])}"
            statements.append((f"REVOKE {row['privilege']} ON {table} FROM %s@%s", who))
            if row.get("grantable") == "YES" and table not in grantable:
                grantable.append(table)
    for table in grantable:
        statements.append((f"REVOKE GRANT OPTION ON {table} FROM %s@%s", who))
    return statements


def _quoted(identifier: str) -> str:
    return "`" + identifier.replace("`", "``") + "`"


async def run_bootstrap(
    admin: MySQLAddress,
    account_host: str,
    created: tuple[Account, ...],
    *,
    timeout: float,
    wait: float,
) -> None:
    """Create `admin`'s database and the `created` accounts, as its master user. A server not
    reachable yet (a database starting along with the release) is retried for `wait` seconds;
    `timeout` bounds each try and each statement."""
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + wait
    while True:
        try:
            connection = await asyncio.wait_for(_connect(admin, timeout), timeout)
            break
        except (OSError, TimeoutError, pymysql.OperationalError) as exc:
            if loop.time() >= give_up_at or _refused_login(exc):
                raise BootstrapError(
                    f"cannot connect to MySQL {admin.label} as {admin.user}: {exc}"
                ) from None
            log.info("MySQL %s not reachable yet (%s); retrying", admin.label, exc)
            await asyncio.sleep(min(_RETRY_SECONDS, max(0.0, give_up_at - loop.time())))
    try:
        async with connection.cursor(aiomysql.DictCursor) as cursor:

            async def run(sql: str, args: tuple[str, ...]) -> list[dict[str, str]]:
                try:
                    await asyncio.wait_for(cursor.execute(sql, args or None), timeout)
                    return list(await cursor.fetchall())
                except (pymysql.MySQLError, TimeoutError) as exc:
                    raise BootstrapError(
                        f"MySQL {admin.label} refused {sql.split(' %s')[0]!r}: {exc}"
                    ) from None

            granted = Granted(
                *[await run(sql, args) for sql, args in granted_queries(admin.database)]
            )
            for sql, args in bootstrap_statements(admin.database, account_host, created, granted):
                await run(sql, args)
    finally:
        connection.close()
    log.info("database %s and its accounts are set up on %s", admin.database, admin.label)


class BootstrapError(Exception):
    """The bootstrap could not finish; the message says what failed (never a password)."""


_RETRY_SECONDS = 2.0
_ACCESS_DENIED = 1045


def _refused_login(exc: BaseException) -> bool:
    return isinstance(exc, pymysql.OperationalError) and exc.args[:1] == (_ACCESS_DENIED,)


async def _connect(admin: MySQLAddress, timeout: float) -> aiomysql.Connection:
    return await aiomysql.connect(
        host=admin.host,
        port=admin.port,
        user=admin.user,
        password=admin.password,
        charset="utf8mb4",
        autocommit=True,
        connect_timeout=timeout,
        ssl=admin.ssl_context(),
    )
