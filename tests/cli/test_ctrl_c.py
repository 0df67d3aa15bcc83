"""Ctrl-C in the `gatehouse` command (services.cli.main): asyncio.run's rules, whichever
thread the kernel hands the signal to, and nothing of them left behind in the process."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from google.protobuf.message import Message

from services.contract import auth_methods as methods
from services.contract import auth_pb2 as pb
from services.contract.method import Method
from services.foundation.rpc.routes import Route
from services.foundation.rpc.server import RpcServer, ServerLimits
from tests.gatehouse_cli import GATEHOUSE, RUN_TIMEOUT, environment_without_settings

REPLICA_LIMITS = ServerLimits(
    max_connections=8,
    max_frame_bytes=64 * 1024,
    handshake_timeout=RUN_TIMEOUT,
    idle_timeout=RUN_TIMEOUT,
    max_connections_per_peer=8,
    max_calls_per_connection=8,
    write_high_water_bytes=64 * 1024,
    write_stall_timeout=5.0,
    max_write_buffer_bytes=1024 * 1024,
)

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


class HeldCall:
    """A replica's handler that holds the call until the test ends: the command waits for
    its answer as it would for a busy replica's."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self._never = asyncio.Event()

    async def __call__(self, request: Message, deadline: float) -> Message:
        self.entered.set()
        await self._never.wait()
        raise AssertionError("a held call is never answered")


async def shown_account(request: pb.AdminUserRequest, deadline: float) -> pb.AdminAccountReply:
    user = pb.User(id=42, username=request.username)
    return pb.AdminAccountReply(account=pb.AdminAccount(user=user))


async def _until_held_or_ended(
    holder: HeldCall, output: asyncio.Future[tuple[bytes, bytes]]
) -> None:
    """Until the held call has reached the replica; a command that ends before it (a call it
    gave up on) fails the test at once, with what the command said."""
    entered = asyncio.ensure_future(holder.entered.wait())
    try:
        either: set[asyncio.Future[Any]] = {entered, output}
        await asyncio.wait(either, timeout=RUN_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
    finally:
        entered.cancel()
    if output.done():
        stdout, stderr = output.result()
        raise AssertionError(f"the command ended before its call was held: {stdout!r} {stderr!r}")
    assert holder.entered.is_set(), f"the held call did not arrive within {RUN_TIMEOUT} s"


@pytest.mark.usefixtures("children_take_ctrl_c")
@pytest.mark.parametrize(
    ("command", "held"),
    [
        (["users", "lock", "alice"], methods.ADMIN_LOCK_USER),
        (["users", "delete", "alice"], methods.ADMIN_DELETE_USER),
        (["sessions", "revoke", "alice", "--all"], methods.ADMIN_END_SESSIONS),
        (["users", "show", "alice"], methods.ADMIN_SHOW_USER),
    ],
    ids=["users lock", "users delete", "sessions revoke --all", "users show"],
)
async def test_ctrl_c_while_a_change_waits_for_its_answer_says_it_may_be_applied(
    command: list[str], held: Method[Any, Any]
) -> None:
    """The replica may have run the call already (a lock interrupted so holds): `interrupted`
    alone would tell the operator nothing happened. A read interrupted changed nothing."""
    holder = HeldCall()
    routes: list[Route[Any, Any]] = [Route(held, holder)]
    if held is not methods.ADMIN_SHOW_USER:
        routes.append(Route(methods.ADMIN_SHOW_USER, shown_account))
    replica = RpcServer(routes, REPLICA_LIMITS, agent="held-replica")
    port = await replica.start("127.0.0.1", 0)
    try:
        process = await asyncio.create_subprocess_exec(
            str(GATEHOUSE),
            *command,
            "--auth-address",
            f"127.0.0.1:{port}",
            env=environment_without_settings(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        output = asyncio.ensure_future(process.communicate())
        try:
            await _until_held_or_ended(holder, output)
            process.send_signal(signal.SIGINT)
            # Shielded: a command that outlives its Ctrl-C fails the test by this timeout.
            stdout, stderr = await asyncio.wait_for(asyncio.shield(output), RUN_TIMEOUT)
        finally:
            if process.returncode is None:
                process.kill()
            await asyncio.wait_for(output, RUN_TIMEOUT)
    finally:
        await replica.close()

    lines = stderr.decode().splitlines()
    assert process.returncode == 1 and stdout == b"" and len(lines) == 1, lines
    if held is methods.ADMIN_SHOW_USER:
        assert lines == ["gatehouse: interrupted"]
    else:
        assert f"interrupted while waiting for the answer to {held.name}" in lines[0], lines
        assert "it may have been applied" in lines[0], lines


# `python -m services.cli`, as the image's `gatehouse` runs it, with Ctrl-C arriving while the
# commands' modules are imported (as an import of them would take it).
_DURING_IMPORTS = textwrap.dedent(
    """
    import runpy, sys

    class CtrlCWhileImporting:
        def find_spec(self, name, path=None, target=None):
            if name == "services.cli.keys":
                raise KeyboardInterrupt
            return None

    sys.meta_path.insert(0, CtrlCWhileImporting())
    runpy.run_module("services.cli", run_name="__main__", alter_sys=True)
    """
)


def test_ctrl_c_while_the_commands_are_imported_ends_with_one_line() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _DURING_IMPORTS, "users", "--help"],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert (done.returncode, done.stderr) == (1, "gatehouse: interrupted\n")
