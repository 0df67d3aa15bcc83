"""A frozen Redis (SIGSTOP) under a bounded read and write load: reads pay milliseconds, not
seconds, only one probe at a time tries Redis, and the cache is used again once Redis answers.

The targets (issue 13: read p99 <= 50 ms after the first second, max <= 1 s) are measured by the
drill on a quiet machine. The latency bounds here leave room for a loaded 2-core CI machine (all
reads go to the primary meanwhile) and still fail with a lock convoy, where reads wait on each
other's Redis attempts for seconds; the count of Redis calls while open catches every caller
trying Redis again, which costs each of them a timeout but hides in a noisy p99.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import bcrypt
import pytest
from prometheus_client import REGISTRY

from devstack import DataStores
from services.auth.accounts import AccountStore, UserRecord
from services.auth.store.cache import BREAK_SECONDS, WINDOW

Eventually = Callable[[Callable[[], Awaitable[bool]], str], Awaitable[None]]

READS_PER_SECOND = 100
WRITES_PER_SECOND = 10  # nickname changes: each one Redis misses leaves gh:since to be raised
FREEZE_SECONDS = 4.0
SETTLING_SECONDS = 1.0  # reads sent in the first second of the freeze may meet its timeouts
P99_BOUND = 0.5
MAX_BOUND = 1.0
PASSWORD_HASH = bcrypt.hashpw(b"correct horse", bcrypt.gensalt(4))


@dataclass
class Timings:
    """Seconds each call took, by when it was sent (seconds since the load began)."""

    sent_and_took: list[tuple[float, float]] = field(default_factory=list)
    failures: list[BaseException] = field(default_factory=list)

    def after(self, start: float) -> list[float]:
        return sorted(took for sent, took in self.sent_and_took if sent >= start)


def percentile(sorted_values: list[float], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, math.ceil(fraction * len(sorted_values)) - 1)]


def redis_commands_finished() -> float:
    """Redis round trips tried so far (each one ended: answered, failed or timed out)."""
    return sum(
        sample.value
        for metric in REGISTRY.collect()
        if metric.name == "gatehouse_auth_redis_command_seconds"
        for sample in metric.samples
        if sample.name.endswith("_count")
    )


def breaker_open(breaker: str) -> float:
    value = REGISTRY.get_sample_value("gatehouse_auth_redis_breaker_open", {"breaker": breaker})
    assert value is not None, f"no breaker gauge for {breaker}"
    return value


async def paced(
    rate: float, duration: float, call: Callable[[int], Awaitable[object]], timings: Timings
) -> None:
    """Sends `call` `rate` times a second for `duration` seconds without waiting for answers
    (open loop, as clients do), then waits for the last answer."""
    began = time.monotonic()
    tasks: list[asyncio.Task[None]] = []

    async def timed(number: int, sent: float) -> None:
        try:
            await call(number)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            timings.failures.append(exc)
        timings.sent_and_took.append((sent - began, time.monotonic() - sent))

    for number in range(int(rate * duration)):
        due = began + number / rate
        await asyncio.sleep(max(0.0, due - time.monotonic()))  # pacing, not synchronisation
        tasks.append(asyncio.create_task(timed(number, time.monotonic())))
    await asyncio.gather(*tasks)


async def new_user_with_session(store: AccountStore) -> tuple[UserRecord, str]:
    user = await store.create_user(
        secrets.randbits(62), f"user_{secrets.token_hex(5)}", "Nick", PASSWORD_HASH, 1
    )
    session_id = secrets.token_urlsafe(16)
    await store.create_session(
        user.id, session_id, datetime.now(UTC) + timedelta(hours=1), password_changes=0
    )
    return user, session_id


def session_hits() -> float:
    labels = {"cache": "session", "result": "hit"}
    return REGISTRY.get_sample_value("gatehouse_auth_cache_lookups_total", labels) or 0.0


# With writes, Redis misses them and gh:since must be raised (single-flight) before the cache is
# used again; without, the probes are the reads' own MGETs.
@pytest.mark.parametrize("writes_per_second", [WRITES_PER_SECOND, 0], ids=["writes", "reads_only"])
async def test_a_frozen_redis_costs_reads_milliseconds_and_one_probe_at_a_time(
    writes_per_second: int,
    store: AccountStore,
    data_stores: DataStores,
    pause_redis: Callable[[], None],
    eventually: Eventually,
) -> None:
    reader, session_id = await new_user_with_session(store)
    writer, writer_session = await new_user_with_session(store)
    assert await store.session_profile(reader.id, session_id) is not None  # cached now

    first_settled_read = int(READS_PER_SECOND * SETTLING_SECONDS)
    tried_by_then = 0.0

    async def read(number: int) -> None:
        nonlocal tried_by_then
        if number == first_settled_read:  # the window the bounds apply to begins
            tried_by_then = redis_commands_finished()
        user = await store.session_profile(reader.id, session_id)
        assert user is not None and user.id == reader.id

    async def write(number: int) -> None:
        assert await store.update_profile(writer.id, writer_session, nickname=f"n{number}")

    reads, writes = Timings(), Timings()
    try:
        pause_redis()
        await asyncio.gather(
            paced(READS_PER_SECOND, FREEZE_SECONDS, read, reads),
            paced(writes_per_second, FREEZE_SECONDS, write, writes),
        )
        tried_while_frozen = redis_commands_finished() - tried_by_then
    finally:
        data_stores.redis.process.resume()

    assert reads.failures == [] and writes.failures == []
    settled = reads.after(SETTLING_SECONDS)
    assert len(settled) >= READS_PER_SECOND * (FREEZE_SECONDS - SETTLING_SECONDS) - 1
    p99, longest = percentile(settled, 0.99), settled[-1]
    p50 = percentile(settled, 0.5)
    assert p99 <= P99_BOUND, f"read p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms after 1 s"
    assert longest <= MAX_BOUND, f"slowest read {longest * 1000:.0f} ms after the first second"
    # Open, only a probe goes to Redis, one per cool-down; a convoy sends every caller.
    probes_at_most = (FREEZE_SECONDS - SETTLING_SECONDS) / BREAK_SECONDS + 3
    assert tried_while_frozen <= probes_at_most, f"{tried_while_frozen} Redis calls while open"
    assert breaker_open("cache") == 1

    async def cache_used_again() -> bool:
        return await store.cache.session_view(reader.id, session_id) is not None

    await eventually(cache_used_again, "the breaker closes and the cache answers again")
    assert breaker_open("cache") == 0
    assert not store.cache.breaker_open

    # The first read refills what the freeze made stale. A read skips Redis whenever the
    # revocation poll has not succeeded within its lease (0.15 s here), which a loaded machine
    # can delay: so a read is tried until one is answered from the cache.
    # (`eventually` takes an exception in the condition for "not yet": the answers are checked
    # after it.)
    answers: list[UserRecord | None] = []

    async def read_from_cache() -> bool:
        hits = session_hits()
        answers.append(await store.session_profile(reader.id, session_id))
        return session_hits() == hits + 1

    await eventually(read_from_cache, "a read is answered from the cache again")
    assert all(user is not None and user.id == reader.id for user in answers), answers


STARVED_SECONDS = 4.0
BLOCK_SECONDS = 0.3  # longer than the cache's Redis timeout (0.2 s): commands in flight time out
BLOCK_EVERY = 0.45
STARVED_READS_PER_SECOND = 100
THROTTLE_CALLS_PER_SECOND = 20
THROTTLE_REDIS_TIMEOUT = 1.0  # the fixture's cache allows run_script this long, as in production


async def starve_the_event_loop(seconds: float) -> None:
    """This process without CPU, as on an overloaded node: the event loop is blocked for
    BLOCK_SECONDS out of every BLOCK_EVERY (the blocking sleep is the fault, not a wait)."""
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        await asyncio.sleep(BLOCK_EVERY - BLOCK_SECONDS)
        time.sleep(BLOCK_SECONDS)  # noqa: ASYNC251 - blocking the loop on purpose


async def test_a_starved_cpu_with_a_healthy_redis_keeps_the_login_throttle_on_redis(
    store: AccountStore, eventually: Eventually
) -> None:
    """Starved, cache commands in flight across a block time out and the cache's breaker opens,
    though Redis is fine. That must not send the login throttle to its weaker per-replica
    counters (its own timeout is longer), and once the CPU is back the cache is used again.
    (test_cache.py pins the same rule down without timing: a paused Redis.)"""
    reader, session_id = await new_user_with_session(store)
    writer, writer_session = await new_user_with_session(store)
    throttle_key = f"gh:t:s:starved-{secrets.token_hex(4)}"

    async def read(_: int) -> None:
        await store.session_profile(reader.id, session_id)

    async def write(number: int) -> None:
        await store.update_profile(writer.id, writer_session, nickname=f"n{number}")

    async def throttle_check(_: int) -> None:
        answer = await store.cache.run_script(
            "throttle_signup",
            WINDOW,
            [throttle_key],
            (1000, 60_000, "check"),
            timeout=THROTTLE_REDIS_TIMEOUT,
        )
        assert answer == 0, "the throttle fell back to memory with Redis healthy"

    load, checks = Timings(), Timings()
    await asyncio.gather(
        starve_the_event_loop(STARVED_SECONDS),
        paced(STARVED_READS_PER_SECOND, STARVED_SECONDS, read, load),
        paced(WRITES_PER_SECOND, STARVED_SECONDS, write, load),
        paced(THROTTLE_CALLS_PER_SECOND, STARVED_SECONDS, throttle_check, checks),
    )

    assert len(checks.sent_and_took) == THROTTLE_CALLS_PER_SECOND * STARVED_SECONDS
    assert checks.failures == []

    async def cache_used_again() -> bool:
        return await store.cache.session_view(reader.id, session_id) is not None

    await eventually(cache_used_again, "the cache answers again once the CPU is back")
