"""`gatehouse keys rotate` interrupted (Ctrl-C) while it waits the propagation delay: exit 1,
one line that says where the rotation stands and how to finish it, and the state unchanged
beyond step 1."""

from __future__ import annotations

import asyncio
import ctypes
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from devstack import DataStores
from devstack.etcd_auth import DEFAULT_PREFIXES
from services.auth.signing.etcd_records import read_state
from services.auth.signing.ring import SigningKeyRing
from services.auth.signing.sources import KeyFolder
from services.auth.store.migrate import apply_migrations
from services.auth.tokens import TokenIssuer, generate_private_key_pem, load_private_key
from tests.cli.test_commands_offline import auth_environment
from tests.gatehouse_cli import GATEHOUSE, RUN_TIMEOUT

TOKEN_TTL = 600
# The command prints its progress (and so wakes) every 30 s with these settings: Ctrl-C must end
# it well before that, not when the wait next wakes.
INTERRUPTED_EXIT_WITHIN = 10.0


@pytest.fixture
async def namespace(data_stores: DataStores) -> AsyncIterator[str]:
    namespace = f"/test-rotate-interrupted-{uuid.uuid4().hex}/"
    yield namespace
    client = data_stores.etcd_client()
    try:
        await client.delete_prefix(namespace.encode())
    finally:
        await client.close()


def wait_for_line(process: subprocess.Popen[str], wanted: str, timeout: float) -> list[str]:
    """stderr's lines up to the first holding `wanted` (bounded by `timeout`)."""
    assert process.stderr is not None
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        lines.append(line)
        if wanted in line:
            return lines
    raise AssertionError(f"no line with {wanted!r} in time: {lines}")


def signal_the_process(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGINT)


def signal_another_thread(process: subprocess.Popen[str]) -> None:
    """SIGINT to one of the command's threads other than the main one (etcd's gRPC runs some),
    as the kernel may deliver a signal sent to the process: Python runs its handler in the main
    thread, which must be woken for it."""
    tasks = Path(f"/proc/{process.pid}/task")
    others = [
        int(task.name)
        for task in tasks.iterdir()
        if int(task.name) != process.pid and not _blocks_sigint(task / "status")
    ]
    assert others, f"the command runs no other thread that takes SIGINT: {sorted(tasks.iterdir())}"
    libc = ctypes.CDLL(None, use_errno=True)
    # A thread may end between the listing and the signal: then the next one.
    assert any(libc.tgkill(process.pid, tid, signal.SIGINT) == 0 for tid in others)


def _blocks_sigint(status: Path) -> bool:
    blocked = next(line for line in status.read_text().splitlines() if line.startswith("SigBlk:"))
    return bool(int(blocked.split()[1], 16) >> (signal.SIGINT - 1) & 1)


def rotate_interrupted_in_its_wait(
    env: dict[str, str], interrupt: Callable[[subprocess.Popen[str]], None]
) -> tuple[int, str, str]:
    """`gatehouse keys rotate`, sent SIGINT once it says it waits: its exit code, stdout, and
    the stderr that followed the step 2 line."""
    with subprocess.Popen(
        [str(GATEHOUSE), "keys", "rotate"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            wait_for_line(process, "step 2/3", RUN_TIMEOUT)
            interrupt(process)
            stdout, stderr = process.communicate(timeout=INTERRUPTED_EXIT_WITHIN)
        finally:
            if process.poll() is None:
                process.kill()
    return process.returncode, stdout, stderr


@pytest.mark.usefixtures("children_take_ctrl_c")
@pytest.mark.parametrize("interrupt", [signal_the_process, signal_another_thread])
async def test_ctrl_c_in_the_wait_says_how_to_finish_and_changes_nothing_more(
    data_stores: DataStores,
    namespace: str,
    tmp_path: Path,
    interrupt: Callable[[subprocess.Popen[str]], None],
) -> None:
    old_pem, new_pem = generate_private_key_pem(), generate_private_key_pem()
    folder = tmp_path / "keys"
    folder.mkdir()
    (folder / "old.pem").write_text(old_pem)
    keys_prefix, rotation_prefix = f"{namespace}jwt-keys/", f"{namespace}rotation/"
    # The auth replicas' etcd user of these prefixes, for the replica and the command alike.
    prefixes = (*DEFAULT_PREFIXES[:2], keys_prefix, rotation_prefix)
    replica = SigningKeyRing(  # an auth replica starts the state: the old key signs
        KeyFolder(folder),
        endpoints=data_stores.tier_access("auth", prefixes),
        keys_prefix=keys_prefix,
        rotation_prefix=rotation_prefix,
        token_ttl=TOKEN_TTL,
        poll_interval=10.0,
        issuer="gatehouse",
        audience="gatehouse",
    )
    try:
        await replica.sync()
    finally:
        await replica.close()
    (folder / "new.pem").write_text(new_pem)
    old_kid = TokenIssuer(load_private_key(old_pem), 1).kid
    new_kid = TokenIssuer(load_private_key(new_pem), 1).kid
    # As in an auth pod, the command reaches the primary and writes the state's copy there.
    await apply_migrations(data_stores.migration_dsn, timeout=30.0)
    env = auth_environment(
        GATEHOUSE_MYSQL_PRIMARY_DSN=data_stores.primary_dsn,
        GATEHOUSE_JWT_PRIVATE_KEY=None,
        GATEHOUSE_JWT_KEYS_DIR=str(folder),
        **{
            "GATEHOUSE_ETCD_ENDPOINTS": data_stores.etcd_endpoint,
            **data_stores.tier_env("auth", prefixes),
        },
        GATEHOUSE_JWT_KEYS_PREFIX=keys_prefix,
        GATEHOUSE_JWT_ROTATION_PREFIX=rotation_prefix,
        GATEHOUSE_TOKEN_TTL=str(TOKEN_TTL),
        GATEHOUSE_JWT_PROPAGATION_DELAY="600",
    )
    exit_code, stdout, stderr = await asyncio.to_thread(
        rotate_interrupted_in_its_wait, env, interrupt
    )

    assert exit_code == 1, stderr
    assert "Traceback" not in stderr and stdout == ""
    last = stderr.splitlines()
    assert len(last) == 1, stderr
    assert "interrupted in step 2/3" in last[0] and "run `gatehouse keys rotate` again" in last[0]
    assert new_kid in last[0] and old_kid in last[0]
    client = data_stores.etcd_client()
    try:
        state = (await read_state(client, rotation_prefix)).state
    finally:
        await client.close()
    assert state.signing_kid == old_kid and state.state_of(new_kid) == "verify-only"
