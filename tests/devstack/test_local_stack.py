"""The stack `make run` runs, supervised: a process killed comes back as it was, the rest keep
running, and the stack keeps answering."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devstack.local import LocalStack
from devstack.ports import wait_until, wait_until_async
from tests.conftest import TEST_SETTINGS
from tests.devstack.read_load import Reads, session_token, steady_reads
from tests.system.support import sample_sum, scrape

pytestmark = pytest.mark.slow


class Lines(list[str]):
    def __call__(self, line: str) -> None:
        self.append(line)


@pytest.fixture(scope="module")
def report() -> Lines:
    return Lines()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, report: Lines) -> Iterator[LocalStack]:
    with LocalStack.start(
        tmp_path_factory.mktemp("local-stack"), settings=dict(TEST_SETTINGS), report=report
    ) as started:
        yield started


def environment(pid: int) -> list[str]:
    return sorted(Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0"))


def command_line(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def pids(stack: LocalStack) -> dict[str, int]:
    return {unit.name: unit.pid for unit in stack.supervisor.units}


def profile_reads_served(ops_port: int) -> float:
    samples = scrape(f"http://127.0.0.1:{ops_port}/metrics")
    return sample_sum(
        samples, "gatehouse_auth_rpc_handler_seconds_count", method="get_profile", status="OK"
    )


async def wait_reads_succeed(stack: LocalStack, timeout: float) -> None:
    async with httpx.AsyncClient(base_url=stack.url(), trust_env=False, timeout=5) as client:

        async def a_user_reads() -> bool:
            token = await session_token(client)
            me = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
            return me.status_code == 200

        await wait_until_async(a_user_reads, timeout, "a new user signs up, logs in and reads")


async def test_a_killed_auth_replica_comes_back_as_it_was_and_serves(
    stack: LocalStack, report: Lines
) -> None:
    victim = stack.process("auth-1")
    ops_port = stack.gatehouse.auth[0].ports["ops"]
    before = pids(stack)
    old_pid = victim.pid
    old_environment, old_command = environment(old_pid), command_line(old_pid)
    stop = asyncio.Event()
    reads = Reads()
    async with httpx.AsyncClient(base_url=stack.url(), trust_env=False) as client:
        token = await session_token(client)
        load = asyncio.create_task(
            steady_reads(client, token, 50, stop, max_reads=3000, reads=reads)
        )
        try:
            await wait_until_async(lambda: reads.sent >= 50, 10, "a second of reads")
            expected = victim.kill(signal.SIGKILL)
            restart = await asyncio.to_thread(victim.wait_restarted, expected, 60)
            await wait_until_async(
                lambda: asyncio.to_thread(profile_reads_served, ops_port),
                20,
                "the restarted auth-1 serves profile reads on its old ops port",
            )
            after = reads.sent + 50
            await wait_until_async(lambda: reads.sent >= after, 10, "a second more of reads")
        finally:
            stop.set()
            await load

    assert restart.pid == old_pid and restart.how == "was killed by SIGKILL"
    assert victim.pid != old_pid
    assert environment(victim.pid) == old_environment  # same settings and ports
    assert command_line(victim.pid) == old_command
    assert {**before, "auth-1": victim.pid} == pids(stack), "nothing else was restarted"
    assert [line for line in report if "restarting" in line] == [
        f"auth-1 (pid {old_pid}) was killed by SIGKILL; restarting it "
        f"(restart 1, log {victim.log_path})"
    ]
    # The HTTP tier retries a read that was in flight on the killed replica on the other one.
    assert reads.failed <= 2, reads.summary()


@pytest.mark.parametrize("name", ["redis", "etcd", "mariadb primary", "mariadb replica"])
async def test_a_killed_data_store_comes_back_on_its_port_and_data(
    stack: LocalStack, name: str
) -> None:
    store = {
        "redis": stack.stores.redis,
        "etcd": stack.stores.etcd,
        "mariadb primary": stack.stores.primary,
        "mariadb replica": stack.stores.replica,
    }[name]
    unit = stack.process(name)
    others = {other: pid for other, pid in pids(stack).items() if other != name}
    old_command = command_line(unit.pid)

    await asyncio.to_thread(unit.wait_restarted, unit.kill(signal.SIGKILL), 60)

    assert command_line(unit.pid) == old_command  # same port, same data directory
    assert {other: pid for other, pid in pids(stack).items() if other != name} == others
    if name == "redis":
        assert stack.stores.redis.ping()
    elif name == "etcd":
        assert stack.stores.etcd.healthy()
    else:
        # Still one replicated pair: a row written on the primary reaches the replica.
        primary, replica = stack.stores.primary, stack.stores.replica
        primary.execute(
            "CREATE TABLE IF NOT EXISTS gatehouse.supervised (note VARCHAR(64) PRIMARY KEY)"
        )
        note = uuid.uuid4().hex
        primary.execute("INSERT INTO gatehouse.supervised VALUES (%s)", (note,))
        wait_until(
            lambda: replica.execute("SELECT 1 FROM gatehouse.supervised WHERE note = %s", (note,)),
            20,
            f"the row written on the primary reaches the replica after {name} was restarted",
            where=replica.log_path,
        )
    await wait_reads_succeed(stack, 30)
    assert store.process.alive
