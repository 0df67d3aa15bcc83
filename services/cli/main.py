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
import signal
import sys
import threading
from collections.abc import Sequence

from services.cli import config_commands, keys, migrate, sessions, users
from services.cli.errors import EXIT_FAILURE, EXIT_USAGE, CommandFailed
from services.cli.options import add_common_options
from services.cli.output import terminal_safe

GROUPS = (users, sessions, keys, migrate, config_commands)
_UNRECOGNIZED = "unrecognized arguments:"


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors as one line on stderr and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]  # argparse's is NoReturn
        dashed = (
            message.startswith(_UNRECOGNIZED) and " -" in f" {message.removeprefix(_UNRECOGNIZED)}"
        )
        if dashed or message.endswith("required: kid"):  # a kid taken for an option: missing
            # Session ids and kids are base64url: about one in 64 starts with '-', which
            # argparse takes for an option. Say how to pass one rather than leave it a guess.
            message += (
                "; an ID or kid that starts with '-' goes after '--' (sessions revoke NAME --"
                " ID..., keys withdraw -- KID)"
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


async def _interruptible(args: argparse.Namespace) -> int:
    """The command, with the loop's wakeup fd set while it runs, so that asyncio.run's Ctrl-C
    (the first cancels the command, a second raises KeyboardInterrupt) works whichever thread
    the kernel hands SIGINT to.

    asyncio.run's handler is a Python-level one, run only once the main thread wakes; etcd's
    gRPC threads may take the signal while the main thread sleeps in a long wait (`keys
    rotate` sleeps 30 s between progress lines), and without a wakeup fd nothing wakes it. The
    loop sets one for the handlers it is given: it is given one that does nothing, and
    asyncio.run's handler is put back to decide what Ctrl-C does.
    """
    ctrl_c = signal.getsignal(signal.SIGINT)
    if not callable(ctrl_c) or threading.current_thread() is not threading.main_thread():
        return int(await args.run(args))  # SIGINT ignored (a script's background job)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, _nothing)
    signal.signal(signal.SIGINT, ctrl_c)
    try:
        return int(await args.run(args))
    finally:
        # asyncio.run's, or Python's default when a second Ctrl-C ended asyncio.run, which put
        # it back before cancelling this command.
        current = signal.getsignal(signal.SIGINT)
        loop.remove_signal_handler(signal.SIGINT)
        signal.signal(signal.SIGINT, current)


def _nothing() -> None:
    pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    arguments = sys.argv[1:] if argv is None else list(argv)
    for argument in arguments:
        try:
            argument.encode("utf-8")
        except UnicodeEncodeError:  # bytes the locale could not decode (os.fsdecode's escapes)
            raw = argument.encode("utf-8", "surrogateescape")
            parser.error(f"an argument is not UTF-8 text: {raw!r}")
    args = parser.parse_args(arguments)
    try:
        return asyncio.run(_interruptible(args))
    except CommandFailed as exc:
        for line in exc.lines:
            print(f"gatehouse: {terminal_safe(line)}", file=sys.stderr)  # may quote a value
        return exc.exit_code
    except KeyboardInterrupt:
        print("gatehouse: interrupted", file=sys.stderr)
        return EXIT_FAILURE
