"""`python -m services.auth [serve|migrate|bootstrap|etcd-bootstrap]`: run an auth replica,
apply migrations and exit, create the database and its MySQL accounts with the master user and
exit, or turn on etcd auth with a role and user per tier and exit."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from services.auth.settings import (
    AuthSettings,
    BootstrapSettings,
    DatabaseSettings,
    EtcdBootstrapSettings,
)
from services.foundation.allocator import return_large_buffers
from services.foundation.config import ConfigError, load_settings
from services.foundation.file_limits import SPARE_FILE_DESCRIPTORS, allow_file_descriptors
from services.foundation.logs import configure_logging

log = logging.getLogger("services.auth")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.auth", description=__doc__)
    parser.add_argument(
        "command",
        nargs="?",
        default="serve",
        choices=("serve", "migrate", "bootstrap", "etcd-bootstrap"),
    )
    command = parser.parse_args(argv).command
    configure_logging("auth")
    settings_class = _SETTINGS[command]
    try:
        settings = load_settings(settings_class)
    except ConfigError as exc:
        log.error("invalid configuration: %s", exc)
        return 2
    configure_logging("auth", settings.log_level)
    if isinstance(settings, BootstrapSettings):
        return _bootstrap(settings)
    if isinstance(settings, EtcdBootstrapSettings):
        return _etcd_bootstrap(settings)
    if command == "migrate":
        return _migrate(settings)
    assert isinstance(settings, AuthSettings)
    allow_file_descriptors(
        settings.max_connections + SPARE_FILE_DESCRIPTORS, "GATEHOUSE_MAX_CONNECTIONS"
    )
    return_large_buffers()  # replies of a megabyte must not hold memory once sent

    from services.auth.replica import run

    try:
        import uvloop
    except ImportError:  # uvloop is optional: plain asyncio works, a bit slower
        return asyncio.run(run(settings))
    return uvloop.run(run(settings))


def _migrate(settings: DatabaseSettings) -> int:
    """The chart's migrate Job: one line on failure, as `gatehouse migrate` prints."""
    from services.auth.store.database import DatabaseError
    from services.auth.store.migrate import MigrationError, migrate_database

    try:
        applied = asyncio.run(migrate_database(settings))
    except (MigrationError, DatabaseError) as exc:
        log.error("migrations failed: %s", exc)
        return 1
    log.info("migrations applied: %s", ", ".join(applied) or "none (already up to date)")
    return 0


def _etcd_bootstrap(settings: EtcdBootstrapSettings) -> int:
    from services.auth.etcd_bootstrap import EtcdBootstrapError, run_etcd_bootstrap

    try:
        asyncio.run(run_etcd_bootstrap(settings))
    except (EtcdBootstrapError, OSError, TimeoutError) as exc:
        log.error("etcd bootstrap failed: %s", exc)
        return 1
    return 0


def _bootstrap(settings: BootstrapSettings) -> int:
    from services.auth.store.bootstrap import BootstrapError, accounts, run_bootstrap
    from services.auth.store.dsn import parse_dsn

    admin = parse_dsn(settings.mysql_admin_dsn)
    try:
        created = accounts(
            admin.database,
            parse_dsn(settings.mysql_primary_dsn),
            parse_dsn(settings.mysql_migration_dsn),
        )
    except ValueError as exc:
        log.error("invalid configuration: %s", exc)
        return 2
    try:
        asyncio.run(
            run_bootstrap(
                admin,
                settings.mysql_account_host,
                created,
                timeout=settings.mysql_timeout,
                wait=settings.bootstrap_wait,
            )
        )
    except BootstrapError as exc:
        log.error("bootstrap failed: %s", exc)
        return 1
    return 0


_SETTINGS: dict[str, type[DatabaseSettings] | type[EtcdBootstrapSettings]] = {
    "serve": AuthSettings,
    "migrate": DatabaseSettings,
    "bootstrap": BootstrapSettings,
    "etcd-bootstrap": EtcdBootstrapSettings,
}


if __name__ == "__main__":
    sys.exit(main())
