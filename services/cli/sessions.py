"""`gatehouse sessions ...`: not built yet."""

from __future__ import annotations

import argparse
from typing import Any

from services.cli.errors import CommandFailed


def register(groups: Any) -> None:
    parser: argparse.ArgumentParser = groups.add_parser("sessions", help="sessions (not built yet)")
    parser.set_defaults(run=_not_built)


async def _not_built(args: argparse.Namespace) -> int:
    raise CommandFailed("`gatehouse sessions` is not built yet")
