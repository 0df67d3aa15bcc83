"""`gatehouse migrate`: apply the schema migrations the MySQL primary lacks, with the code of
`python -m services.auth migrate` (services/auth/store/migrate.py). Needs the database
settings only (GATEHOUSE_MYSQL_PRIMARY_DSN)."""

from __future__ import annotations

import argparse
from typing import Any

from services.auth.settings import DatabaseSettings
from services.auth.store.database import DatabaseError
from services.auth.store.migrate import MigrationError, migrate_database
from services.cli.errors import EXIT_OK, CommandFailed
from services.cli.options import common_options
from services.cli.output import show
from services.cli.settings import load_cli_settings


def register(groups: Any) -> None:
    parser: argparse.ArgumentParser = groups.add_parser(
        "migrate",
        help="apply the schema migrations the MySQL primary lacks",
        parents=[common_options()],
    )
    parser.set_defaults(run=_migrate)


async def _migrate(args: argparse.Namespace) -> int:
    settings = load_cli_settings(DatabaseSettings)
    try:
        applied = await migrate_database(settings)
    except (MigrationError, DatabaseError) as exc:
        raise CommandFailed(f"migrations not applied: {exc}") from None
    human = (
        f"migrations applied: {', '.join(applied)}"
        if applied
        else "migrations: none to apply, the schema is up to date"
    )
    show(args, [human], {"applied": applied})
    return EXIT_OK
