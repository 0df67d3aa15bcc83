"""The `gatehouse` command: parses the command line and runs one command.

Every command group is a module of this package with `register(groups)`, adding its
subcommands to the `groups` subparsers; each subcommand sets `run` (a coroutine function taking
the parsed arguments and returning the exit code). Neither `--help` nor a usage error reads a
setting or needs a running stack: settings are loaded inside `run`.

Exit codes: 0 success, 1 failure, 2 usage or configuration errors, always with one line on
stderr (services.cli.errors).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from services.cli import config_commands, keys, migrate, sessions, users
from services.cli.errors import EXIT_FAILURE, EXIT_USAGE, CommandFailed
from services.cli.options import add_common_options

GROUPS = (users, sessions, keys, migrate, config_commands)
_UNRECOGNIZED = "unrecognized arguments:"


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors as one line on stderr and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]  # argparse's is NoReturn
        if message.startswith(_UNRECOGNIZED) and " -" in f" {message.removeprefix(_UNRECOGNIZED)}":
            # Session ids are base64url: about one in 64 starts with '-', which argparse takes
            # for an option. Say how to pass one rather than leave the operator guessing.
            message += (
                "; an ID that starts with '-' goes after '--' (sessions revoke NAME -- ID...)"
            )
        print(f"gatehouse: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gatehouse",
        description="Operate a Gatehouse deployment: accounts, sessions, signing keys, "
        "migrations and configuration. Run it where an auth replica runs "
        "(kubectl exec deploy/<release>-auth -- gatehouse ...): it calls that replica.",
        epilog="Exit codes: 0 done, 1 failed, 2 usage or configuration error.",
    )
    add_common_options(parser)
    groups = parser.add_subparsers(
        title="command groups", dest="group", metavar="{users,sessions,keys,migrate,config}"
    )
    groups.required = True
    for group in GROUPS:
        group.register(groups)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(asyncio.run(args.run(args)))
    except CommandFailed as exc:
        for line in exc.lines:
            print(f"gatehouse: {line}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("gatehouse: interrupted", file=sys.stderr)
        return EXIT_FAILURE
