"""`gatehouse config check [--tier auth|http]`: validate the environment exactly as the
service does at start (the one loader, services/foundation/config.py, with the tier's settings
class): exit 0 when it would start, else exit 2 with one line per problem on stderr. Secret
values are never shown."""

from __future__ import annotations

import argparse
from typing import Any

from services.auth.settings import AuthSettings
from services.cli.errors import EXIT_OK, BadConfiguration
from services.cli.options import common_options
from services.cli.output import show
from services.foundation.config import ConfigError, describe, load_settings
from services.http.settings import HttpSettings

TIERS: dict[str, type[Any]] = {"auth": AuthSettings, "http": HttpSettings}
_TIER_NAMES = {"auth": "the auth service", "http": "the HTTP tier"}


def register(groups: Any) -> None:
    parser: argparse.ArgumentParser = groups.add_parser(
        "config", help="check the configuration in the environment"
    )
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    commands.required = True
    check = commands.add_parser(
        "check",
        help="validate the environment as the service does at start; exit 2 listing each problem",
        parents=[common_options()],
    )
    check.add_argument(
        "--tier",
        choices=tuple(TIERS),
        default="auth",
        help="whose settings to check (default: auth, the service this command runs beside)",
    )
    check.set_defaults(run=_check)


async def _check(args: argparse.Namespace) -> int:
    settings_class = TIERS[args.tier]
    try:
        load_settings(settings_class)
    except ConfigError as exc:
        if args.json:
            show(args, [], {"tier": args.tier, "valid": False, "problems": list(exc.problems)})
        raise BadConfiguration(exc.problems) from None
    count = len(describe(settings_class))
    show(
        args,
        [f"the configuration of {_TIER_NAMES[args.tier]} is valid ({count} settings checked)"],
        {"tier": args.tier, "valid": True, "problems": []},
    )
    return EXIT_OK
