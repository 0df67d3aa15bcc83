"""`python -m services.auth migrate` and configuration errors, as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pymysql

from devstack.stack import DataStores

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


def test_migrate_command_applies_the_schema_once(
    data_stores: DataStores, new_database: Callable[[], str]
) -> None:
    dsn = new_database()
    database = dsn.rsplit("/", 1)[1]
    env = {
        "GATEHOUSE_MYSQL_PRIMARY_DSN": dsn,
        "GATEHOUSE_PEPPERS": "1:x",
        "GATEHOUSE_JWT_PRIVATE_KEY": "unused",
    }
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


def test_bad_configuration_exits_2_naming_the_variable() -> None:
    result = run_auth(env={"GATEHOUSE_AUTH_PORT": "seventy", "GATEHOUSE_PEPPERS": "1:x"})
    assert result.returncode == 2
    assert "GATEHOUSE_AUTH_PORT='seventy'" in result.stderr
    assert "GATEHOUSE_MYSQL_PRIMARY_DSN is required" in result.stderr
