"""Ctrl-C in the `gatehouse` command (services.cli.main): asyncio.run's rules, whichever
thread the kernel hands the signal to, and nothing of them left behind in the process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.gatehouse_cli import RUN_TIMEOUT

# A command that ignores the first cancel, ended by a second Ctrl-C; then what SIGINT does.
_TWICE = textwrap.dedent(
    """
    import argparse, asyncio, os, signal
    from services.cli.main import _interruptible

    def ctrl_c_while_waiting():
        # Sent from a loop callback: taken while the command waits, not while it runs.
        asyncio.get_running_loop().call_soon(os.kill, os.getpid(), signal.SIGINT)

    async def stubborn(args):
        never = asyncio.Event()  # only Ctrl-C ends the waits (the test's timeout bounds them)
        ctrl_c_while_waiting()
        try:
            await never.wait()
        except asyncio.CancelledError:
            ctrl_c_while_waiting()
            await never.wait()
        return 0

    try:
        asyncio.run(_interruptible(argparse.Namespace(run=stubborn)))
    except KeyboardInterrupt:
        print("interrupted")
    print("default" if signal.getsignal(signal.SIGINT) is signal.default_int_handler else
          f"left behind: {signal.getsignal(signal.SIGINT)!r}")
    """
)


@pytest.mark.usefixtures("children_take_ctrl_c")
def test_a_second_ctrl_c_ends_the_command_and_leaves_pythons_default_handler() -> None:
    finished = subprocess.run(
        [sys.executable, "-c", _TWICE],
        check=True,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert finished.stdout.split("\n")[:2] == ["interrupted", "default"], finished
