"""The options every command takes, before or after its name: `--json`, `--auth-address`."""

from __future__ import annotations

import argparse

_JSON_HELP = "print results as JSON, for scripts"
_ADDRESS_HELP = (
    "the auth replica to call (default: GATEHOUSE_CLI_AUTH_ADDRESS, else this pod's replica, "
    "127.0.0.1 and GATEHOUSE_AUTH_PORT)"
)


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """On the top-level parser, with their defaults."""
    parser.add_argument("--json", action="store_true", default=False, help=_JSON_HELP)
    parser.add_argument("--auth-address", metavar="HOST:PORT", default=None, help=_ADDRESS_HELP)


def common_options() -> argparse.ArgumentParser:
    """A parent for each subcommand, so the options are accepted after its name too; without
    defaults, so an option given before the name is not reset."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=_JSON_HELP)
    parser.add_argument(
        "--auth-address", metavar="HOST:PORT", default=argparse.SUPPRESS, help=_ADDRESS_HELP
    )
    return parser
