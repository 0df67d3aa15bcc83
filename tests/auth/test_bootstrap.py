"""The bootstrap (services/auth/store/bootstrap.py) against the real MariaDB: idempotent, the
application user can change rows but not the schema, older accounts are brought down to their
privileges, and `python -m services.auth bootstrap` does it all from the master user's DSN."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pymysql
import pytest

from devstack import DataStores
from devstack.ports import HOST
from services.auth.store.bootstrap import grant_pattern
from services.auth.store.database import Database, StatementRejected, parse_dsn
from services.auth.store.migrate import MigrationError, apply_migrations
from tests.auth.conftest import migration_dsn

REPO_ROOT = Path(__file__).resolve().parents[2]
DENIED = 1142  # ER_TABLEACCESS_DENIED_ERROR


def privileges_on(
    data_stores: DataStores, user: str, database: str, *, as_written: bool = False
) -> set[str]:
    """`user`'s privileges on `database`, granted under its escaped name (the bootstrap's) or,
    `as_written`, under the name as written (a wildcard pattern)."""
    rows = data_stores.primary.execute(
        "SELECT PRIVILEGE_TYPE FROM information_schema.SCHEMA_PRIVILEGES"
        " WHERE GRANTEE = %s AND TABLE_SCHEMA = %s",
        (f"'{user}'@'{HOST}'", database if as_written else grant_pattern(database)),
    )
    return {row["PRIVILEGE_TYPE"] for row in rows}


def global_privileges(data_stores: DataStores, user: str) -> set[str]:
    rows = data_stores.primary.execute(
        "SELECT PRIVILEGE_TYPE FROM information_schema.USER_PRIVILEGES WHERE GRANTEE = %s",
        (f"'{user}'@'{HOST}'",),
    )
    return {row["PRIVILEGE_TYPE"] for row in rows}


def bootstrap_command(settings: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python -m services.auth bootstrap` with `settings` as its only GATEHOUSE_* variables."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("GATEHOUSE_")}
    return subprocess.run(
        [sys.executable, "-m", "services.auth", "bootstrap"],
        env={**env, **settings},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def fresh_database(data_stores: DataStores) -> Iterator[str]:
    name = f"gh_boot_{secrets.token_hex(4)}"
    yield name
    data_stores.primary.execute(f"DROP DATABASE IF EXISTS `{name}`")


def test_bootstrap_runs_twice_and_grants_each_user_its_privileges_only(
    data_stores: DataStores, fresh_database: str
) -> None:
    data_stores.create_database(fresh_database)
    data_stores.create_database(fresh_database)  # the chart's hook runs at every upgrade
    assert privileges_on(data_stores, data_stores.app_user, fresh_database) == {
        "SELECT",
        "INSERT",
        "UPDATE",
        "DELETE",
    }
    assert privileges_on(data_stores, data_stores.migration_user, fresh_database) == {
        "SELECT",
        "INSERT",
        "UPDATE",
        "DELETE",
        "CREATE",
        "ALTER",
        "DROP",
        "INDEX",
        "REFERENCES",
    }
    for user in (data_stores.app_user, data_stores.migration_user):
        assert global_privileges(data_stores, user) == {"USAGE"}  # nothing beyond the database


def test_bootstrap_takes_away_what_an_older_release_granted(
    data_stores: DataStores, fresh_database: str
) -> None:
    # What the chart's MYSQL_USER made before: every privilege on the database.
    data_stores.primary.execute(f"CREATE DATABASE `{fresh_database}`")
    data_stores.primary.execute(
        f"GRANT ALL PRIVILEGES ON `{fresh_database}`.* TO %s@%s",
        (data_stores.app_user, HOST),
    )
    app_user = data_stores.app_user
    assert "CREATE" in privileges_on(data_stores, app_user, fresh_database, as_written=True)
    data_stores.create_database(fresh_database)
    assert privileges_on(data_stores, app_user, fresh_database, as_written=True) == set()
    assert privileges_on(data_stores, data_stores.app_user, fresh_database) == {
        "SELECT",
        "INSERT",
        "UPDATE",
        "DELETE",
    }


def test_the_grants_hold_on_the_database_alone_not_on_names_its_underscores_match(
    data_stores: DataStores, fresh_database: str
) -> None:
    """In a GRANT's database name '_' matches any character: granted as written, the
    application user could read and delete the rows of `ghXboot...` beside `gh_boot...`."""
    neighbour = fresh_database.replace("_", "X")
    data_stores.primary.execute(f"CREATE DATABASE `{neighbour}`")
    try:
        data_stores.primary.execute(f"CREATE TABLE `{neighbour}`.secrets (v VARCHAR(20))")
        data_stores.create_database(fresh_database)
        with (
            data_stores.primary.connect(
                data_stores.app_user, data_stores.app_password, fresh_database, tcp=True
            ) as connection,
            connection.cursor() as cursor,
        ):
            with pytest.raises(pymysql.MySQLError) as refused:
                cursor.execute(f"SELECT v FROM `{neighbour}`.secrets")
            assert refused.value.args[0] == DENIED
    finally:
        data_stores.primary.execute(f"DROP DATABASE IF EXISTS `{neighbour}`")


def test_a_rerun_takes_away_privileges_on_tables_and_columns(
    data_stores: DataStores, fresh_database: str
) -> None:
    """The accounts hold their privileges on the database alone: one granted on a table (ALTER
    on users) would let the application user change the schema."""
    data_stores.create_database(fresh_database)
    data_stores.primary.execute(f"CREATE TABLE `{fresh_database}`.users (id INT PRIMARY KEY)")
    who = (data_stores.app_user, HOST)
    data_stores.primary.execute(f"GRANT ALTER, DROP ON `{fresh_database}`.users TO %s@%s", who)
    data_stores.primary.execute(f"GRANT REFERENCES (id) ON `{fresh_database}`.users TO %s@%s", who)
    data_stores.create_database(fresh_database)
    for table in ("TABLE_PRIVILEGES", "COLUMN_PRIVILEGES"):
        rows = data_stores.primary.execute(
            f"SELECT PRIVILEGE_TYPE FROM information_schema.{table}"
            " WHERE GRANTEE = %s AND TABLE_SCHEMA = %s",
            (f"'{data_stores.app_user}'@'{HOST}'", fresh_database),
        )
        assert rows == [], table


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE TABLE intruder (id INT PRIMARY KEY)",
        "ALTER TABLE users ADD COLUMN intruder INT NULL",
        "DROP TABLE sessions",
        "CREATE INDEX intruder ON users (nickname)",
    ],
)
async def test_the_application_user_cannot_change_the_schema(
    primary: Database, statement: str
) -> None:
    with pytest.raises(StatementRejected) as refused:
        await primary.execute("schema change", statement)
    assert refused.value.code == DENIED


async def test_migrations_as_the_application_user_say_to_use_the_migration_user(
    new_database: Callable[[], str],
) -> None:
    with pytest.raises(MigrationError, match="GATEHOUSE_MYSQL_MIGRATION_DSN"):
        await apply_migrations(new_database(), timeout=30.0)


def test_the_bootstrap_command_sets_up_database_and_users_from_the_master_dsn(
    data_stores: DataStores, fresh_database: str
) -> None:
    admin, admin_password = f"admin_{secrets.token_hex(3)}", secrets.token_urlsafe(12)
    data_stores.primary.execute("CREATE USER %s@%s IDENTIFIED BY %s", (admin, HOST, admin_password))
    data_stores.primary.execute(
        "GRANT ALL PRIVILEGES ON *.* TO %s@%s WITH GRANT OPTION", (admin, HOST)
    )
    app_dsn = data_stores.app_dsn(fresh_database)
    try:
        env = {
            "GATEHOUSE_MYSQL_ADMIN_DSN": data_stores.primary.dsn(
                admin, admin_password, fresh_database
            ),
            "GATEHOUSE_MYSQL_PRIMARY_DSN": app_dsn,
            "GATEHOUSE_MYSQL_MIGRATION_DSN": migration_dsn(data_stores, app_dsn),
            "GATEHOUSE_MYSQL_ACCOUNT_HOST": HOST,
            "GATEHOUSE_BOOTSTRAP_WAIT": "5",
        }
        for _ in range(2):
            result = bootstrap_command(env)
            assert result.returncode == 0, result.stderr
            assert admin_password not in result.stderr
    finally:
        data_stores.primary.execute("DROP USER IF EXISTS %s@%s", (admin, HOST))
    assert privileges_on(data_stores, data_stores.app_user, fresh_database) == {
        "SELECT",
        "INSERT",
        "UPDATE",
        "DELETE",
    }
    address = parse_dsn(app_dsn)
    with (
        pymysql.connect(
            host=address.host,
            port=address.port,
            user=address.user,
            password=address.password,
            database=address.database,
        ) as connection,
        connection.cursor() as cursor,
    ):
        cursor.execute("SELECT DATABASE()")
        assert cursor.fetchone() == (fresh_database,)


def test_the_bootstrap_command_refuses_one_user_for_both_roles(data_stores: DataStores) -> None:
    app_dsn = data_stores.app_dsn("gatehouse_same")
    env = {
        "GATEHOUSE_MYSQL_ADMIN_DSN": data_stores.primary.dsn("root", "hunter2", "gatehouse_same"),
        "GATEHOUSE_MYSQL_PRIMARY_DSN": app_dsn,
        "GATEHOUSE_MYSQL_MIGRATION_DSN": app_dsn,
    }
    result = bootstrap_command(env)
    assert result.returncode == 2
    assert "the migration user must be another one" in result.stderr
    assert "hunter2" not in result.stderr


@pytest.mark.parametrize(
    "grants",
    [
        # GRANT OPTION is IS_GRANTABLE, never a row: revoking each privilege left it.
        ["GRANT SELECT ON {db}.users TO %s@%s WITH GRANT OPTION"],
        ["GRANT SELECT (id) ON {db}.users TO %s@%s WITH GRANT OPTION"],
        # The table's REVOKE also took the column's: its own REVOKE failed (1147), every rerun.
        ["GRANT UPDATE ON {db}.users TO %s@%s", "GRANT UPDATE (id) ON {db}.users TO %s@%s"],
    ],
    ids=["table-grant-option", "column-grant-option", "same-on-table-and-column"],
)
def test_a_rerun_leaves_no_table_grant_whatever_its_shape(
    data_stores: DataStores, fresh_database: str, grants: list[str]
) -> None:
    data_stores.create_database(fresh_database)
    data_stores.primary.execute(f"CREATE TABLE `{fresh_database}`.users (id INT PRIMARY KEY)")
    for grant in grants:
        data_stores.primary.execute(
            grant.format(db=f"`{fresh_database}`"), (data_stores.app_user, HOST)
        )
    data_stores.create_database(fresh_database)
    rows = data_stores.primary.execute(f"SHOW GRANTS FOR '{data_stores.app_user}'@'{HOST}'")
    on_table = [g for row in rows for g in row.values() if "`users`" in g]
    assert on_table == []
