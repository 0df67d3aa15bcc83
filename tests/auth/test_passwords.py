"""Peppered bcrypt hashing, pepper rotation, admission control and CPU sizing."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
from prometheus_client import REGISTRY

from devstack.ports import wait_until_async
from services.auth.passwords import (
    HASHING_THREAD_NICENESS,
    Overloaded,
    PasswordHasher,
    UnknownPepperVersion,
    parse_peppers,
    usable_cpus,
)
from services.foundation.config import InvalidSecret
from services.foundation.rpc.calls import CallScope, current_call
from tests.first_step import raises_on_first_step

TEST_COST = 4
# A verify against a hash of this cost takes about 0.5 s here (cost 10 takes 62 ms): long enough
# to keep a hashing thread busy while a test looks at the queue.
SLOW_COST = 13
PEPPERS = {1: b"pepper-one"}


def hashes(outcome: str) -> float:
    """gatehouse_auth_password_hashes_total{outcome} in this process."""
    value = REGISTRY.get_sample_value("gatehouse_auth_password_hashes_total", {"outcome": outcome})
    return value or 0.0


def far_deadline() -> float:
    return asyncio.get_running_loop().time() + 60.0


@pytest.fixture
def hasher() -> Iterator[PasswordHasher]:
    hasher = PasswordHasher(PEPPERS, cost=TEST_COST, threads=2)
    yield hasher
    hasher.close()


@pytest.fixture(scope="module")
def slow_hash() -> bytes:
    """A stored hash whose verify keeps a thread busy (the hasher's own cost stays 4)."""
    return bcrypt.hashpw(b"irrelevant", bcrypt.gensalt(rounds=SLOW_COST))


@pytest.fixture(scope="module")
def medium_hash() -> bytes:
    """A stored hash at the default cost: each verify keeps a thread busy for tens of ms."""
    return bcrypt.hashpw(b"irrelevant", bcrypt.gensalt(rounds=10))


# Hashing and verifying


async def test_hash_then_verify(hasher: PasswordHasher) -> None:
    password_hash, version = await hasher.hash_password("correct horse", far_deadline())
    assert version == 1
    assert password_hash.startswith(b"$2b$04$")
    assert await hasher.verify_password("correct horse", password_hash, version, far_deadline())
    assert not await hasher.verify_password("correct hors", password_hash, version, far_deadline())


async def test_passwords_differing_only_after_byte_72_verify_differently(
    hasher: PasswordHasher,
) -> None:
    common = "x" * 72
    password_hash, version = await hasher.hash_password(common + "first", far_deadline())
    assert await hasher.verify_password(common + "first", password_hash, version, far_deadline())
    assert not await hasher.verify_password(
        common + "second", password_hash, version, far_deadline()
    )
    assert not await hasher.verify_password(common, password_hash, version, far_deadline())


async def test_longest_multibyte_password_is_accepted(hasher: PasswordHasher) -> None:
    password = "€" * 256  # 768 bytes: bcrypt alone would refuse it
    password_hash, version = await hasher.hash_password(password, far_deadline())
    assert await hasher.verify_password(password, password_hash, version, far_deadline())


async def test_a_password_typed_composed_or_decomposed_is_the_same_password(
    hasher: PasswordHasher,
) -> None:
    """macOS and some keyboards send "é" as e + U+0301, others as U+00E9; compatibility forms
    (a full-width digit, a ligature) are the same password too (NIST SP 800-63B, NFKC)."""
    composed = "p\u00e4ssw\u00f6rd-\u00e91"
    decomposed = "pa\u0308sswo\u0308rd-e\u03011"
    assert composed != decomposed
    password_hash, version = await hasher.hash_password(composed, far_deadline())
    assert await hasher.verify_password(decomposed, password_hash, version, far_deadline())
    ligature, version = await hasher.hash_password("\ufb01ne\uff11", far_deadline())
    assert await hasher.verify_password("fine1", ligature, version, far_deadline())
    assert not await hasher.verify_password("fine2", ligature, version, far_deadline())


async def test_lone_surrogate_does_not_crash_a_verify(hasher: PasswordHasher) -> None:
    password_hash, version = await hasher.hash_password("a valid one", far_deadline())
    assert not await hasher.verify_password(
        "a valid one\ud800", password_hash, version, far_deadline()
    )


async def test_pepper_rotation_keeps_old_hashes_valid_and_asks_for_rehash() -> None:
    before = PasswordHasher({1: b"pepper-one"}, cost=TEST_COST, threads=1)
    after = PasswordHasher({1: b"pepper-one", 2: b"pepper-two"}, cost=TEST_COST, threads=1)
    try:
        old_hash, old_version = await before.hash_password("rotate me", far_deadline())
        assert old_version == 1
        assert await after.verify_password("rotate me", old_hash, old_version, far_deadline())
        assert after.needs_rehash(old_version, old_hash)

        new_hash, new_version = await after.hash_password("rotate me", far_deadline())
        assert new_version == 2
        assert not after.needs_rehash(new_version, new_hash)
        assert await after.verify_password("rotate me", new_hash, new_version, far_deadline())
    finally:
        before.close()
        after.close()


async def test_a_pepper_rolled_out_before_it_is_current_rehashes_nothing() -> None:
    """Phase one of a rollout: every replica gets the new pepper while the old one stays current
    (GATEHOUSE_PEPPER_CURRENT). A replica that already used the new one would move hashes to a
    version the replicas not yet restarted cannot check: their owners' logins fail there."""
    not_yet_restarted = PasswordHasher({1: b"pepper-one"}, cost=TEST_COST, threads=1)
    rolling = PasswordHasher(
        {1: b"pepper-one", 2: b"pepper-two"}, current_version=1, cost=TEST_COST, threads=1
    )
    try:
        old_hash, old_version = await not_yet_restarted.hash_password("roll me", far_deadline())
        assert not rolling.needs_rehash(old_version, old_hash)
        new_hash, new_version = await rolling.hash_password("roll me", far_deadline())
        assert new_version == 1
        assert await not_yet_restarted.verify_password(
            "roll me", new_hash, new_version, far_deadline()
        )
    finally:
        not_yet_restarted.close()
        rolling.close()


async def test_a_different_pepper_fails_verification(hasher: PasswordHasher) -> None:
    password_hash, version = await hasher.hash_password("peppered", far_deadline())
    other = PasswordHasher({1: b"some-other-pepper"}, cost=TEST_COST, threads=1)
    try:
        assert not await other.verify_password("peppered", password_hash, version, far_deadline())
    finally:
        other.close()


async def test_unknown_pepper_version_is_reported(hasher: PasswordHasher) -> None:
    password_hash, _ = await hasher.hash_password("peppered", far_deadline())
    with pytest.raises(UnknownPepperVersion, match="pepper version 7"):
        await hasher.verify_password("peppered", password_hash, 7, far_deadline())
    assert hasher.queue_depth == 0


async def test_a_hash_under_a_missing_pepper_costs_a_verify(hasher: PasswordHasher) -> None:
    # An unknown name spends a dummy verify so that timing does not tell which names exist; an
    # account whose pepper was dropped must not answer at once (2 ms against 70 ms at cost 10).
    password_hash, _ = await hasher.hash_password("peppered", far_deadline())
    computed = hashes("computed")
    with pytest.raises(UnknownPepperVersion):
        await hasher.verify_password("peppered", password_hash, 7, far_deadline())
    assert hashes("computed") == computed + 1


async def test_a_malformed_stored_hash_is_reported(hasher: PasswordHasher) -> None:
    with pytest.raises(ValueError, match="not a bcrypt hash"):
        await hasher.verify_password("whatever1", b"not-a-hash", 1, far_deadline())


def test_needs_rehash_when_the_cost_differs(hasher: PasswordHasher) -> None:
    assert hasher.needs_rehash(1, bcrypt.hashpw(b"x", bcrypt.gensalt(rounds=5)))
    assert not hasher.needs_rehash(1, bcrypt.hashpw(b"x", bcrypt.gensalt(rounds=TEST_COST)))
    assert hasher.needs_rehash(1, b"garbage")


async def test_verify_dummy_spends_one_verify(hasher: PasswordHasher) -> None:
    await hasher.verify_dummy("any password", far_deadline())
    assert hasher.queue_depth == 0


async def test_default_cost_10() -> None:
    hasher = PasswordHasher(PEPPERS, cost=10, threads=1)
    try:
        password_hash, version = await hasher.hash_password("production cost", far_deadline())
        assert password_hash.startswith(b"$2b$10$")
        assert await hasher.verify_password(
            "production cost", password_hash, version, far_deadline()
        )
        assert not hasher.needs_rehash(version, password_hash)
    finally:
        hasher.close()


async def test_hashing_threads_run_at_lower_priority() -> None:
    before = _threads_with_niceness(HASHING_THREAD_NICENESS)
    hasher = PasswordHasher(PEPPERS, cost=TEST_COST, threads=1)
    try:
        await hasher.hash_password("nice", far_deadline())
        assert len(_threads_with_niceness(HASHING_THREAD_NICENESS) - before) == 1
        assert os.getpriority(os.PRIO_PROCESS, 0) == 0  # the event loop's thread is untouched
    finally:
        hasher.close()


# Admission


async def test_call_beyond_the_queue_limit_is_refused_at_once(slow_hash: bytes) -> None:
    hasher = PasswordHasher(PEPPERS, cost=TEST_COST, threads=1, queue_limit=2)
    try:
        running = [  # of two clients: one may hold at most half of the queue
            asyncio.ensure_future(
                hasher.verify_password("slow", slow_hash, 1, far_deadline(), f"198.51.100.{n}")
            )
            for n in range(2)
        ]
        await wait_until_async(lambda: hasher.queue_depth == 2, 5.0, "both calls to be queued")
        # A malformed hash would raise ValueError if it were ever verified: Overloaded proves
        # that the call did no work, and raising on its first step that it waited for nothing.
        third = hasher.verify_password("third", b"never-verified", 1, far_deadline())
        raises_on_first_step(third, Overloaded, match="limit 2")
        assert not any(call.done() for call in running)
        assert hasher.queue_depth == 2
        assert await asyncio.gather(*running) == [False, False]
        assert hasher.queue_depth == 0
    finally:
        hasher.close()


async def test_one_client_may_fill_at_most_half_the_queue(slow_hash: bytes) -> None:
    """Turns keep one client's hashes from delaying another's, not from filling the queue,
    past which every client's are refused."""
    hasher = PasswordHasher(PEPPERS, cost=TEST_COST, threads=1, queue_limit=4)
    try:
        flood = [
            asyncio.ensure_future(
                hasher.verify_password("slow", slow_hash, 1, far_deadline(), "198.51.100.1")
            )
            for _ in range(3)  # one running, two queued: half the queue
        ]
        await wait_until_async(lambda: hasher.queue_depth == 3, 5.0, "the flood to be queued")
        with pytest.raises(Overloaded, match="half of the queue"):
            hasher.check_admission(far_deadline(), "198.51.100.1")
        hasher.check_admission(far_deadline(), "198.51.100.2")  # another client: room
        assert await asyncio.gather(*flood) == [False] * 3
    finally:
        hasher.close()


async def test_a_hash_whose_turn_cannot_be_scheduled_leaves_nothing_queued() -> None:
    """The hashing threads gone (as at the interpreter's exit) before the hasher is closed: the
    call is refused, and no job is left queued that no thread would ever take."""
    hasher = PasswordHasher(PEPPERS, cost=TEST_COST, threads=1)
    try:
        hasher._executor.shutdown(wait=True)
        with pytest.raises(Overloaded, match="shutting down"):
            await hasher.hash_password("pw12345678", far_deadline(), "198.51.100.1")
        assert hasher.queue_depth == 0 and not hasher._queues
    finally:
        hasher.close()


async def test_check_admission_refuses_before_any_other_work(slow_hash: bytes) -> None:
    hasher = PasswordHasher(PEPPERS, cost=TEST_COST, threads=1, queue_limit=1)
    try:
        hasher.check_admission(far_deadline())  # room: no error
        running = asyncio.ensure_future(
            hasher.verify_password("slow", slow_hash, 1, far_deadline())
        )
        await wait_until_async(lambda: hasher.queue_depth == 1, 5.0, "the call to be queued")
        with pytest.raises(Overloaded, match="limit 1"):
            hasher.check_admission(far_deadline())
        assert await running is False
        hasher.check_admission(far_deadline())
        with pytest.raises(Overloaded, match="ms left"):
            hasher.check_admission(asyncio.get_running_loop().time() - 1)
    finally:
        hasher.close()


async def test_past_deadline_is_refused_without_hashing(hasher: PasswordHasher) -> None:
    past = asyncio.get_running_loop().time() - 0.001
    with pytest.raises(Overloaded, match="0 ms left"):
        await hasher.verify_password("late", b"never-verified", 1, past)
    assert hasher.queue_depth == 0


async def test_deadline_before_the_turn_is_refused_at_once() -> None:
    hasher = PasswordHasher(PEPPERS, cost=12, threads=1)
    try:
        loop = asyncio.get_running_loop()
        first = asyncio.ensure_future(hasher.hash_password("first", far_deadline()))
        await wait_until_async(lambda: hasher.queue_depth == 1, 5.0, "the first hash to be queued")
        # Time for this call's own hash, but not for the one queued ahead of it as well. The
        # hasher's own estimate is CPU time, which a loaded machine does not stretch as it
        # stretches the wall clock.
        deadline = loop.time() + 1.5 * hasher.expected_hash_seconds
        with pytest.raises(Overloaded, match="would take about"):
            await hasher.hash_password("second", deadline)
        assert not first.done()
        await first
        # With nothing queued, the same time left is enough.
        await hasher.hash_password("third", loop.time() + 1.5 * hasher.expected_hash_seconds)
    finally:
        hasher.close()


async def test_work_whose_deadline_passed_in_the_queue_is_skipped(slow_hash: bytes) -> None:
    # The hasher's own cost is 4, so it expects hashes of a millisecond and admits the second
    # call; the slow stored hash makes that call wait about 0.5 s for its turn.
    hasher = PasswordHasher(PEPPERS, cost=TEST_COST, threads=1)
    try:
        loop = asyncio.get_running_loop()
        first = asyncio.ensure_future(hasher.verify_password("slow", slow_hash, 1, far_deadline()))
        await wait_until_async(lambda: hasher.queue_depth == 1, 5.0, "the slow verify to be queued")
        soon = loop.time() + 0.1
        # A malformed hash would raise ValueError if it were ever verified.
        with pytest.raises(Overloaded, match="deadline passed while"):
            await hasher.verify_password("queued", b"never-verified", 1, soon)
        assert loop.time() >= soon  # admitted, then refused when its turn came
        assert await first is False
        assert hasher.queue_depth == 0
    finally:
        hasher.close()


async def test_cancelled_caller_frees_its_slot_when_the_work_ends(slow_hash: bytes) -> None:
    hasher = PasswordHasher(PEPPERS, cost=TEST_COST, threads=1)
    computed_before, skipped_before = hashes("computed"), hashes("skipped_cancelled")
    try:
        first = asyncio.ensure_future(hasher.verify_password("slow", slow_hash, 1, far_deadline()))
        second = asyncio.ensure_future(hasher.verify_password("slow", slow_hash, 1, far_deadline()))
        await wait_until_async(lambda: hasher.queue_depth == 2, 5.0, "both verifies to be queued")
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
        assert hasher.queue_depth == 2  # the queued job still holds its slot until skipped
        await first
        await wait_until_async(lambda: hasher.queue_depth == 0, 5.0, "the abandoned job to end")
        # The abandoned verify was skipped, not run.
        assert hashes("computed") == computed_before + 1
        assert hashes("skipped_cancelled") == skipped_before + 1
    finally:
        hasher.close()


async def test_a_queued_hash_of_a_cancelled_call_is_skipped(slow_hash: bytes) -> None:
    hasher = PasswordHasher(PEPPERS, cost=TEST_COST, threads=1)
    try:
        first = asyncio.ensure_future(hasher.verify_password("slow", slow_hash, 1, far_deadline()))
        scope = CallScope()

        async def queued_call() -> bool:
            current_call.set(scope)  # as the RPC server does for each call
            # A malformed hash would raise ValueError if it were ever verified.
            return await hasher.verify_password("queued", b"never-verified", 1, far_deadline())

        second = asyncio.ensure_future(queued_call())
        await wait_until_async(lambda: hasher.queue_depth == 2, 5.0, "both hashes to be queued")
        scope.abandoned = True  # what METHOD_CANCEL does
        with pytest.raises(Overloaded, match="cancelled while its password hash was queued"):
            await second
        assert await first is False
        assert hasher.queue_depth == 0
    finally:
        hasher.close()


async def test_one_clients_queue_does_not_hold_up_another_clients_hash(
    medium_hash: bytes,
) -> None:
    """Turns go round-robin by client: a client with a dozen hashes queued (the right password
    in a loop, which the throttle never refuses) delays another client's login by about one hash,
    not by its whole queue (before: the other login came last, after all twelve)."""
    hasher = PasswordHasher(PEPPERS, cost=TEST_COST, threads=1)
    finished: list[str] = []

    async def verify(client: str) -> None:
        await hasher.verify_password("wrong", medium_hash, 1, far_deadline(), client)
        finished.append(client)

    try:
        flood = [asyncio.ensure_future(verify("127.0.0.2")) for _ in range(12)]
        await wait_until_async(lambda: hasher.queue_depth == 12, 5.0, "the flood to be queued")
        other = asyncio.ensure_future(verify("127.0.0.3"))
        await asyncio.gather(other, *flood)
        # At most the hash running when it came and the one whose turn was next.
        assert finished.index("127.0.0.3") <= 2, finished
        assert hasher.queue_depth == 0
    finally:
        hasher.close()


async def test_the_next_turn_goes_to_the_queued_client_with_the_fewest_turns_lately(
    slow_hash: bytes,
) -> None:
    """Round-robin alone put a client new to the queue behind one hash of every client queued:
    an attacker spread over 144 addresses, one login queued each, kept bystander logins
    waiting about 6 s. Clients that have had turns lately now come after one that has not."""
    hasher = PasswordHasher(PEPPERS, cost=TEST_COST, threads=1)
    cheap = bcrypt.hashpw(b"irrelevant", bcrypt.gensalt(rounds=TEST_COST))
    busy = [f"127.0.1.{number}" for number in range(1, 7)]
    finished: list[str] = []

    async def verify(client: str, stored: bytes) -> None:
        await hasher.verify_password("wrong", stored, 1, far_deadline(), client)
        finished.append(client)

    try:
        for client in busy * 2:  # each busy address has just had two logins checked
            await verify(client, cheap)
        finished.clear()
        holding = asyncio.ensure_future(verify("127.0.0.9", slow_hash))  # keeps the thread
        await wait_until_async(lambda: hasher.queue_depth == 1, 5.0, "the slow hash to start")
        queued = [asyncio.ensure_future(verify(client, cheap)) for client in busy]
        newcomer = asyncio.ensure_future(verify("127.0.0.3", cheap))  # queued last
        await wait_until_async(lambda: hasher.queue_depth == 8, 5.0, "all to be queued")
        # Admitted by the same order: time for four hashes is time enough for another newcomer.
        deadline = asyncio.get_running_loop().time() + 4 * hasher.expected_hash_seconds
        hasher.check_admission(deadline, "127.0.0.4")
        with pytest.raises(Overloaded, match="would take about"):
            hasher.check_admission(deadline, busy[0])
        await asyncio.gather(holding, newcomer, *queued)
        assert finished[:2] == ["127.0.0.9", "127.0.0.3"], finished
    finally:
        hasher.close()


async def test_a_hash_is_admitted_by_its_own_turn_not_by_the_whole_queue(
    medium_hash: bytes,
) -> None:
    """A deadline that another client's long queue would miss still admits a client that has
    nothing queued: its turn comes after one hash per client ahead of it."""
    hasher = PasswordHasher(PEPPERS, cost=TEST_COST, threads=1)
    try:
        loop = asyncio.get_running_loop()
        flood = [
            asyncio.ensure_future(
                hasher.verify_password("wrong", medium_hash, 1, far_deadline(), "127.0.0.2")
            )
            for _ in range(12)
        ]
        await wait_until_async(lambda: hasher.queue_depth == 12, 5.0, "the flood to be queued")
        # Time for 4 hashes (CPU time, which a loaded machine does not stretch): the flood's
        # own next one would wait for 12, so it is refused, the other client's is not.
        deadline = loop.time() + 4 * hasher.expected_hash_seconds
        hasher.check_admission(deadline, "127.0.0.3")
        with pytest.raises(Overloaded, match="would take about"):
            hasher.check_admission(deadline, "127.0.0.2")
        assert await asyncio.gather(*flood) == [False] * 12
    finally:
        hasher.close()


async def test_closed_hasher_refuses_work(hasher: PasswordHasher) -> None:
    hasher.close()
    with pytest.raises(Overloaded, match="shutting down"):
        await hasher.hash_password("too late", far_deadline())


# Configuration


def test_parse_peppers() -> None:
    assert parse_peppers("1:secret,2:other") == {1: b"secret", 2: b"other"}
    assert parse_peppers(" 3:with:colons , 10:x ") == {3: b"with:colons", 10: b"x"}
    assert parse_peppers("65535:top") == {65535: b"top"}


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("", "entry 1"),
        ("hunter2", "entry 1"),
        ("1:hunter2,hunter3", "entry 2"),
        ("one:hunter2", "entry 1"),
        ("-1:hunter2", "entry 1"),
        ("1:", "empty secret"),
        ("1:hunter2,1:hunter3", "appears twice"),
        # users.pepper_version is SMALLINT UNSIGNED: a current version above it made every
        # signup, password change and rehash fail as "database unavailable".
        ("1:hunter2,70000:hunter3", "entry 2: pepper version 70000 is above 65535"),
    ],
)
def test_bad_peppers_are_refused_without_echoing_secrets(raw: str, problem: str) -> None:
    with pytest.raises(InvalidSecret, match=problem) as refused:
        parse_peppers(raw)
    assert "hunter" not in str(refused.value)


def test_usable_cpus_honours_a_cgroup_v2_quota(tmp_path: Path) -> None:
    own = _own_cgroups(tmp_path, "0::/\n")
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert usable_cpus(tmp_path, own) == 1


def test_usable_cpus_reads_the_processes_own_cgroup_and_its_ancestors(tmp_path: Path) -> None:
    own = _own_cgroups(tmp_path, "0::/kubepods/pod1/container\n")
    (tmp_path / "cpu.max").write_text("max 100000\n")
    (tmp_path / "kubepods" / "pod1" / "container").mkdir(parents=True)
    (tmp_path / "kubepods" / "pod1" / "container" / "cpu.max").write_text("max 100000\n")
    (tmp_path / "kubepods" / "pod1" / "cpu.max").write_text("25000 100000\n")
    assert usable_cpus(tmp_path, own) == 1


def test_usable_cpus_honours_a_cgroup_v1_quota(tmp_path: Path) -> None:
    own = _own_cgroups(tmp_path, "4:memory:/x\n3:cpu,cpuacct:/\n")
    (tmp_path / "cpu,cpuacct").mkdir()
    (tmp_path / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("30000\n")
    (tmp_path / "cpu,cpuacct" / "cpu.cfs_period_us").write_text("100000\n")
    assert usable_cpus(tmp_path, own) == 1


def test_usable_cpus_without_a_quota_is_the_affinity(tmp_path: Path) -> None:
    own = _own_cgroups(tmp_path, "3:cpu:/\n0::/\n")
    (tmp_path / "cpu.max").write_text("max 100000\n")
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert usable_cpus(tmp_path, own) == len(os.sched_getaffinity(0))


def test_a_large_quota_does_not_raise_the_affinity(tmp_path: Path) -> None:
    own = _own_cgroups(tmp_path, "0::/\n")
    (tmp_path / "cpu.max").write_text("6400000 100000\n")
    assert usable_cpus(tmp_path, own) == len(os.sched_getaffinity(0))


def test_a_malformed_quota_is_ignored(tmp_path: Path) -> None:
    own = _own_cgroups(tmp_path, "0::/\n")
    (tmp_path / "cpu.max").write_text("garbage\n")
    assert usable_cpus(tmp_path, own) == len(os.sched_getaffinity(0))


def test_usable_cpus_without_cgroup_files(tmp_path: Path) -> None:
    assert usable_cpus(tmp_path / "missing", tmp_path / "missing-too") == len(
        os.sched_getaffinity(0)
    )


def _own_cgroups(tmp_path: Path, content: str) -> Path:
    path = tmp_path / "self-cgroup"
    path.write_text(content)
    return path


def _threads_with_niceness(niceness: int) -> set[int]:
    threads = set()
    for task in Path("/proc/self/task").iterdir():
        try:
            if os.getpriority(os.PRIO_PROCESS, int(task.name)) == niceness:
                threads.add(int(task.name))
        except ProcessLookupError:
            continue  # the thread ended while we looked
    return threads
