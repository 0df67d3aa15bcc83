"""`python -m services.auth migrate` and configuration errors, as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pymysql
import pytest

from devstack.ports import free_port
from devstack.stack import DataStores
from services.auth.store.migrate import load_migrations
from services.auth.tokens import generate_private_key_pem
from tests.auth.conftest import migration_dsn
from tests.gatehouse_cli import environment_without_settings, run_gatehouse

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_auth(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {key: value for key, value in os.environ.items() if not key.startswith("GATEHOUSE_")}
    return subprocess.run(
        [sys.executable, "-m", "services.auth", *args],
        cwd=REPO_ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def migrate_env(dsn: str, migration_dsn: str) -> dict[str, str]:
    """The settings `python -m services.auth migrate` runs with here."""
    return {
        "GATEHOUSE_MYSQL_PRIMARY_DSN": dsn,
        "GATEHOUSE_MYSQL_MIGRATION_DSN": migration_dsn,
        "GATEHOUSE_PEPPERS": "1:x",
        "GATEHOUSE_JWT_PRIVATE_KEY": "unused",
    }


def test_migrate_command_applies_the_schema_once(
    data_stores: DataStores, new_database: Callable[[], str]
) -> None:
    dsn = new_database()
    database = dsn.rsplit("/", 1)[1]
    env = migrate_env(dsn, migration_dsn(data_stores, dsn))
    first = run_auth("migrate", env=env)
    assert first.returncode == 0, first.stderr
    assert "0001" in first.stderr
    second = run_auth("migrate", env=env)
    assert second.returncode == 0 and "already up to date" in second.stderr
    connection = pymysql.connect(
        host="127.0.0.1",
        port=int(dsn.rsplit(":", 1)[1].split("/")[0]),
        user=data_stores.app_user,
        password=data_stores.app_password,
        database=database,
    )
    with connection, connection.cursor() as cursor:
        cursor.execute("SHOW TABLES")
        tables = {row[0] for row in cursor.fetchall()}
    assert {"users", "sessions", "schema_migrations"} <= tables


def test_migrate_command_that_fails_says_why_in_one_line(
    data_stores: DataStores, new_database: Callable[[], str]
) -> None:
    """The chart's migrate Job: a refused migration is one line and exit 1, not a traceback."""
    dsn = new_database()
    # As the application user, which may not change the schema.
    result = run_auth("migrate", env=migrate_env(dsn, migration_dsn=dsn))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if "migrations failed" in line]
    assert "migration user" in line


def test_bad_configuration_exits_2_naming_the_variable() -> None:
    result = run_auth(env={"GATEHOUSE_AUTH_PORT": "seventy", "GATEHOUSE_PEPPERS": "1:x"})
    assert result.returncode == 2
    assert "GATEHOUSE_AUTH_PORT='seventy'" in result.stderr
    assert "GATEHOUSE_MYSQL_PRIMARY_DSN is required" in result.stderr


def tables_of(data_stores: DataStores, dsn: str) -> set[str]:
    connection = pymysql.connect(
        host="127.0.0.1",
        port=int(dsn.rsplit(":", 1)[1].split("/")[0]),
        user=data_stores.app_user,
        password=data_stores.app_password,
        database=dsn.rsplit("/", 1)[1],
    )
    with connection, connection.cursor() as cursor:
        cursor.execute("SHOW TABLES")
        return {row[0] for row in cursor.fetchall()}


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("GATEHOUSE_PEPPERS", "hunter2"),  # pepper map
        (
            "GATEHOUSE_JWT_PRIVATE_KEY",
            "-----BEGIN PRIVATE KEY-----\nhunter2\n-----END PRIVATE KEY-----",
        ),
        ("GATEHOUSE_MYSQL_REPLICA_DSNS", "mysql://app:hunter2@replica"),  # DSN
        ("GATEHOUSE_ETCD_ENDPOINTS", "etcd"),  # tuple
        ("GATEHOUSE_TOKEN_TTL", "0"),  # a check the token issuer made after the migrations
        ("GATEHOUSE_HASH_THREADS", "-1"),  # one the password hasher made after them
        ("GATEHOUSE_LEASE_TTL", "1"),
        ("GATEHOUSE_DEVICE_COOKIE_SECRET", "too-short"),  # secret min length
    ],
)
def test_a_bad_setting_stops_the_replica_before_the_database_is_touched(
    data_stores: DataStores, new_database: Callable[[], str], variable: str, value: str
) -> None:
    dsn = new_database()
    env = {
        "GATEHOUSE_MYSQL_PRIMARY_DSN": dsn,
        "GATEHOUSE_PEPPERS": "1:x",
        "GATEHOUSE_JWT_PRIVATE_KEY": generate_private_key_pem(),
        "GATEHOUSE_DEVICE_COOKIE_SECRET": "d" * 32,
        "GATEHOUSE_AUTH_PORT": str(free_port()),
        "GATEHOUSE_OPS_PORT": str(free_port()),
        variable: value,
    }
    result = run_auth(env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and variable in lines[0] and "invalid configuration" in lines[0], lines
    assert "hunter2" not in result.stderr
    assert tables_of(data_stores, dsn) == set()  # no migration ran


def test_a_bad_primary_dsn_stops_the_replica_at_once() -> None:
    closed_port = free_port()
    result = run_auth(
        env={
            "GATEHOUSE_MYSQL_PRIMARY_DSN": f"mysql://app:hunter2@127.0.0.1:{closed_port}",
            "GATEHOUSE_PEPPERS": "1:x",
            "GATEHOUSE_JWT_PRIVATE_KEY": generate_private_key_pem(),
            "GATEHOUSE_DEVICE_COOKIE_SECRET": "d" * 32,
        }
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "GATEHOUSE_MYSQL_PRIMARY_DSN is not valid" in lines[0], lines
    assert "hunter2" not in result.stderr


def test_gatehouse_migrate_applies_the_schema_as_the_service_command_does(
    data_stores: DataStores, new_database: Callable[[], str]
) -> None:
    dsn = new_database()
    env = {
        **environment_without_settings(),
        "GATEHOUSE_MYSQL_PRIMARY_DSN": dsn,
        "GATEHOUSE_MYSQL_MIGRATION_DSN": migration_dsn(data_stores, dsn),
    }

    first = run_gatehouse("migrate", "--json", env=env)
    second = run_gatehouse("migrate", env=env)

    assert first.exit_code == 0, first.stderr
    assert first.json()["applied"] == [migration.version for migration in load_migrations()]
    assert second.exit_code == 0, second.stderr
    assert second.stdout.strip() == "migrations: none to apply, the schema is up to date"
    assert {"users", "sessions", "schema_migrations"} <= tables_of(data_stores, dsn)


def test_gatehouse_migrate_needs_only_a_valid_primary_dsn() -> None:
    missing = run_gatehouse("migrate", env=environment_without_settings())
    unreachable = run_gatehouse(
        "migrate",
        env={
            **environment_without_settings(),
            "GATEHOUSE_MYSQL_PRIMARY_DSN": f"mysql://app:hunter2@127.0.0.1:{free_port()}/x",
            "GATEHOUSE_MYSQL_TIMEOUT": "1",
        },
    )

    assert missing.exit_code == 2
    assert missing.stderr_lines[0].startswith("gatehouse: GATEHOUSE_MYSQL_PRIMARY_DSN is required")
    assert unreachable.exit_code == 1 and len(unreachable.stderr_lines) == 1
    assert unreachable.stderr.startswith("gatehouse: migrations not applied: ")
    assert "hunter2" not in unreachable.stderr
