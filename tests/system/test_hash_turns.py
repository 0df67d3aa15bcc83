"""One client's logins cannot hold up everyone else's: against a real auth replica (bcrypt at
its default cost, one hashing thread), an address keeping dozens of right-password logins queued
(which the login throttle never refuses: a success clears the key) delays another address's
login by a hash or two, not by its whole queue.

Before, the hash queue was first in first out: one account logging in 100 at a time from one
address kept 50 hashes queued on each replica of the devstack, and other people's logins took
5 s or were refused with 503. What is checked is the order of completion, not a latency, so a
loaded machine does not change the outcome.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.gatehouse import Gatehouse, Service
from devstack.ports import wait_until_async
from devstack.stack import DataStores
from services.contract import auth_pb2 as pb
from tests.system.conftest import TEST_SETTINGS
from tests.system.support import new_username, sample_sum, scrape
from tests.system.throttle_support import ReplicaCaller

PASSWORD = "correct horse battery"
FLOOD_ADDRESS = "198.51.100.21"
OTHER_ADDRESS = "198.51.100.22"
# Logins one (username, address) key admits at once before its first delay.
PER_ACCOUNT = 4
# 80 logins: about 5 s of hashing on the one thread, longer than /metrics keeps a rendering (1 s).
FLOOD_ACCOUNTS = 20
# Each login's deadline, which the replica is told. Hashing threads run at nice 10: beside
# busy nice-0 processes (the other test worker's, say) a hash takes many times its 60 ms, and
# a deadline the queue outlasts gets the flood's last logins refused (Overloaded) or failed at
# the caller, whatever their turns. The turns are what is checked; pytest's timeout is 300 s.
LOGIN_DEADLINE = 180.0


@pytest.fixture(scope="module")
def one_thread_replica(
    data_stores: DataStores, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gatehouse, Service]]:
    run = uuid.uuid4().hex[:8]
    settings = {
        **TEST_SETTINGS,
        "GATEHOUSE_BCRYPT_COST": "10",
        "GATEHOUSE_HASH_THREADS": "1",
        "GATEHOUSE_DISCOVERY_PREFIX": f"/gatehouse-hash-turns-{run}/auth/",
        "GATEHOUSE_JWT_KEYS_PREFIX": f"/gatehouse-hash-turns-{run}/jwt-keys/",
    }
    stack = Gatehouse(data_stores, Path(tmp_path_factory.mktemp("hash-turns")), settings=settings)
    try:
        yield stack, stack.start_auth()
    finally:
        stack.stop()


def queued_hashes(replica: Service) -> float:
    samples = scrape(f"http://127.0.0.1:{replica.ports['ops']}/metrics")
    return sample_sum(samples, "gatehouse_auth_hash_queue_depth")


async def test_a_login_waits_for_its_turn_not_for_another_clients_queue(
    one_thread_replica: tuple[Gatehouse, Service],
) -> None:
    stack, replica = one_thread_replica
    async with ReplicaCaller.to(stack, replica) as caller:
        flooders = [new_username("flood") for _ in range(FLOOD_ACCOUNTS)]
        other = new_username("other")
        for name in [*flooders, other]:
            registered = await caller.register(name, PASSWORD, FLOOD_ADDRESS)
            assert registered.status == pb.STATUS_OK, registered
        finished: list[str] = []

        async def log_in(name: str, address: str) -> pb.Envelope:
            answer = await caller.authenticate(name, PASSWORD, address, timeout=LOGIN_DEADLINE)
            finished.append(address)
            return answer

        flood = [
            asyncio.ensure_future(log_in(name, FLOOD_ADDRESS))
            for name in flooders
            for _ in range(PER_ACCOUNT)
        ]
        queued = FLOOD_ACCOUNTS * PER_ACCOUNT
        await wait_until_async(
            lambda: queued_hashes(replica) >= queued // 2, 10.0, "the flood's hashes to be queued"
        )
        sent_after = len(finished)
        mine = await log_in(other, OTHER_ADDRESS)
        answers = await asyncio.gather(*flood)

    assert mine.status == pb.STATUS_OK, mine
    # The hash running when it came, the one whose turn was next, and one finishing meanwhile.
    ahead = finished.index(OTHER_ADDRESS) - sent_after
    assert ahead <= 3, f"{ahead} of the flood's {queued - sent_after} queued logins finished first"
    assert all(answer.status == pb.STATUS_OK for answer in answers), answers
