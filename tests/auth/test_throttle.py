"""The login throttle's rules, on its Redis counters (real Redis, Lua scripts) and on the
in-memory counters a replica falls back to: both must say the same."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from devstack.ports import wait_until_async
from services.auth.passwords import Overloaded
from services.auth.store.cache import RedisCache
from services.auth.throttle import (
    AdmittedCheck,
    LoginThrottle,
    Subject,
    TooManyAttempts,
    client_ip_key,
)
from services.auth.throttle_rules import ThrottleLimits
from services.foundation.client_address import client_address
from services.foundation.rpc.calls import CallScope, current_call

LIMITS = ThrottleLimits(failures=5, ip_failures=12, signup_conflicts=3)
# Delays short enough to be waited out in a test: 25 ms, 50 ms, 100 ms, ...
QUICK_LIMITS = ThrottleLimits(failures=2, first_delay_seconds=0.025, max_delay_seconds=10.0)


# Long enough for a loaded machine: these tests are about the rules, and a Redis call that
# timed out would move the rest of a test's counting to memory (tested in tests/system).
REDIS_TIMEOUT = 10.0


@pytest.fixture(params=["redis", "memory"])
async def throttle(
    request: pytest.FixtureRequest, cache: RedisCache
) -> AsyncIterator[LoginThrottle]:
    redis = cache if request.param == "redis" else None
    yield LoginThrottle(redis, LIMITS, redis_timeout=REDIS_TIMEOUT)


@pytest.fixture(params=["redis", "memory"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["redis", "memory"])
async def quick_throttle(
    request: pytest.FixtureRequest, cache: RedisCache
) -> AsyncIterator[LoginThrottle]:
    redis = cache if request.param == "redis" else None
    yield LoginThrottle(redis, QUICK_LIMITS, redis_timeout=REDIS_TIMEOUT)


def fresh_ip() -> str:
    return f"2001:db8:{uuid.uuid4().int % 65536:x}:{uuid.uuid4().int % 65536:x}::1"


def fresh_name() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


async def fail(throttle: LoginThrottle, username: str, ip: str, device: str | None = None) -> None:
    check = await throttle.admit(throttle.subject(username, ip, device))
    await throttle.settle(check, success=False)


async def refusal(
    throttle: LoginThrottle, username: str, ip: str, device: str | None = None
) -> TooManyAttempts:
    with pytest.raises(TooManyAttempts) as refused:
        await throttle.admit(throttle.subject(username, ip, device))
    return refused.value


async def test_after_the_limit_each_refusal_doubles_the_delay(throttle: LoginThrottle) -> None:
    name, ip = fresh_name(), fresh_ip()
    for _ in range(LIMITS.failures):
        await fail(throttle, name, ip)  # the last one starts a 1 s block
    # Each refusal counts, doubles the block and reports the block it has just set.
    delays = [(await refusal(throttle, name, ip)).retry_after_seconds for _ in range(4)]
    assert delays == [2, 4, 8, 16]
    assert (await refusal(throttle, name, ip)).limit == "account_ip"


async def next_refusal(throttle: LoginThrottle, username: str, ip: str) -> TooManyAttempts:
    """The refusal of the next attempt of a key past its limit. The first block lasts only
    QUICK_LIMITS' 25 ms, which a loaded machine can spend between two calls (up to 259 ms measured
    beside a busy loop): an attempt after the block ended is admitted, fails, and sets a block
    twice as long, so a few attempts at most."""
    for _ in range(8):  # the 8th block lasts 6.4 s
        try:
            await fail(throttle, username, ip)
        except TooManyAttempts as refused:
            return refused
    raise AssertionError(f"8 attempts past the limit of {username} from {ip} were all admitted")


async def test_a_client_that_waits_the_retry_after_it_was_told_is_admitted(
    quick_throttle: LoginThrottle,
) -> None:
    throttle, name, ip = quick_throttle, fresh_name(), fresh_ip()
    for _ in range(QUICK_LIMITS.failures):
        await fail(throttle, name, ip)
    for _ in range(2):
        refused = await next_refusal(throttle, name, ip)
        # Sleeping is the behaviour under test: waiting exactly what the refusal said (the
        # margin covers the event loop waking up to a clock tick early).
        await asyncio.sleep(refused.retry_after_ms / 1000 + 0.002)
        await fail(throttle, name, ip)  # admitted: one attempt, which fails again


async def test_the_name_is_case_folded_and_other_ips_are_not_affected(
    throttle: LoginThrottle,
) -> None:
    name, ip = fresh_name(), fresh_ip()
    for _ in range(LIMITS.failures):
        await fail(throttle, name.upper(), ip)
    await refusal(throttle, name.lower(), ip)
    await fail(throttle, name, fresh_ip())  # admitted: another IP


async def test_a_success_clears_the_key_and_a_void_attempt_does_not_count(
    throttle: LoginThrottle,
) -> None:
    name, ip = fresh_name(), fresh_ip()
    for _ in range(LIMITS.failures - 1):
        await fail(throttle, name, ip)
    success = await throttle.admit(throttle.subject(name, ip, None))
    await throttle.settle(success, success=True)
    for _ in range(LIMITS.failures - 1):
        await fail(throttle, name, ip)
    for _ in range(3):
        await throttle.void(await throttle.admit(throttle.subject(name, ip, None)))
    await fail(throttle, name, ip)  # the 5th failure since the success: still admitted
    await refusal(throttle, name, ip)


async def test_concurrent_attempts_cannot_pass_the_limit_together(throttle: LoginThrottle) -> None:
    name, ip = fresh_name(), fresh_ip()
    results = await asyncio.gather(
        *(throttle.admit(throttle.subject(name, ip, None)) for _ in range(20)),
        return_exceptions=True,
    )
    admitted = [r for r in results if not isinstance(r, BaseException)]
    assert len(admitted) == LIMITS.failures
    assert all(isinstance(r, TooManyAttempts) for r in results if r not in admitted)


def waits_counted(kind: str) -> float:
    return REGISTRY.get_sample_value("gatehouse_auth_throttle_waits_total", {"kind": kind}) or 0.0


async def checks_at_the_limit(throttle: LoginThrottle, subject: Subject) -> list[AdmittedCheck]:
    """As many checks of `subject` admitted, and running, as the limit allows."""
    return [await throttle.admit(subject) for _ in range(LIMITS.failures)]


async def until_waiting(kind: str, waiting: int, since: float) -> None:
    """Until `waiting` attempts have started to wait for the checks running."""
    await wait_until_async(
        lambda: waits_counted(kind) - since >= waiting, 10.0, f"{waiting} attempts waiting"
    )


async def test_right_passwords_beyond_the_limit_wait_for_the_checks_running_and_go_ahead(
    throttle: LoginThrottle,
) -> None:
    """The checks running count as failures against the limit, so concurrent guesses cannot
    pass it together; but a success clears the key, so attempts beyond them are not refused
    (nor counted) while they run: they go ahead as the successes clear the key."""
    subject = throttle.subject(fresh_name(), fresh_ip(), None)
    running = await checks_at_the_limit(throttle, subject)
    deadline = asyncio.get_running_loop().time() + 30
    later = [asyncio.create_task(throttle.admit(subject, wait_until=deadline)) for _ in range(12)]
    for check in running:
        await throttle.settle(check, success=True)
    for next_admitted in asyncio.as_completed(later):
        await throttle.settle(await next_admitted, success=True)
    assert all(task.result().subject == subject for task in later)


async def test_attempts_waiting_on_failed_checks_are_refused_and_counted(
    throttle: LoginThrottle,
) -> None:
    subject = throttle.subject(fresh_name(), fresh_ip(), None)
    running = await checks_at_the_limit(throttle, subject)
    waits_before = waits_counted("account_ip")
    deadline = asyncio.get_running_loop().time() + 30
    later = [asyncio.create_task(throttle.admit(subject, wait_until=deadline)) for _ in range(3)]
    await until_waiting("account_ip", 3, waits_before)
    assert not any(task.done() for task in later)
    for check in running:
        await throttle.settle(check, success=False)
    refusals = await asyncio.gather(*later, return_exceptions=True)
    assert all(isinstance(refused, TooManyAttempts) for refused in refusals), refusals
    # Each refusal counted once it was judged: the block doubled with each.
    assert sorted(r.retry_after_seconds for r in refusals if isinstance(r, TooManyAttempts)) == [
        2,
        4,
        8,
    ]


async def test_a_wait_past_its_deadline_is_refused_for_a_second_and_counts_nothing(
    throttle: LoginThrottle,
) -> None:
    name, ip = fresh_name(), fresh_ip()
    subject = throttle.subject(name, ip, None)
    running = await checks_at_the_limit(throttle, subject)
    with pytest.raises(TooManyAttempts) as refused:
        await throttle.admit(subject, wait_until=asyncio.get_running_loop().time())
    assert (refused.value.retry_after_seconds, refused.value.limit) == (1, "account_ip")
    for check in running[1:]:
        await throttle.settle(check, success=False)
    await throttle.settle(running[0], success=True)  # clears the key: nothing else counted
    for _ in range(LIMITS.failures):
        await fail(throttle, name, ip)
    await refusal(throttle, name, ip)


async def test_a_wait_ends_when_its_call_is_abandoned(throttle: LoginThrottle) -> None:
    """Its caller hung up (METHOD_CANCEL, or the connection closed): it stops asking Redis."""
    subject = throttle.subject(fresh_name(), fresh_ip(), None)
    await checks_at_the_limit(throttle, subject)
    scope = CallScope()
    waits_before = waits_counted("account_ip")

    async def in_the_call() -> AdmittedCheck:
        current_call.set(scope)
        return await throttle.admit(subject, wait_until=asyncio.get_running_loop().time() + 30)

    waiting = asyncio.create_task(in_the_call())
    await until_waiting("account_ip", 1, waits_before)
    scope.abandoned = True
    with pytest.raises(Overloaded):  # as a hash queued for an abandoned call: not a throttling
        await asyncio.wait_for(waiting, 5.0)


async def test_logins_beyond_the_ip_limit_wait_for_its_checks_running(
    throttle: LoginThrottle,
) -> None:
    ip = fresh_ip()
    running = [
        await throttle.admit(throttle.subject(fresh_name(), ip, None))
        for _ in range(LIMITS.ip_failures)
    ]
    deadline = asyncio.get_running_loop().time() + 30
    later = asyncio.create_task(
        throttle.admit(throttle.subject(fresh_name(), ip, None), wait_until=deadline)
    )
    await throttle.settle(running[0], success=True)
    await throttle.settle(await later, success=True)
    for check in running[1:]:
        await throttle.settle(check, success=False)
    await fail(throttle, fresh_name(), ip)  # the limit's last failure: the successes left it
    assert (await refusal(throttle, fresh_name(), ip)).limit == "client_ip"


async def test_a_check_never_settled_stops_holding_others_back_after_its_mark_expires(
    cache: RedisCache, backend: str
) -> None:
    """Its replica died mid-check: the attempt stays a failure, and after
    running_mark_seconds the attempts it held back are judged (refused, counted)."""
    limits = ThrottleLimits(failures=2, running_mark_seconds=0.2)
    throttle = LoginThrottle(
        cache if backend == "redis" else None, limits, redis_timeout=REDIS_TIMEOUT
    )
    subject = throttle.subject(fresh_name(), fresh_ip(), None)
    for _ in range(limits.failures):
        await throttle.admit(subject)  # never settled
    deadline = asyncio.get_running_loop().time() + 30
    with pytest.raises(TooManyAttempts) as refused:
        await throttle.admit(subject, wait_until=deadline)
    assert refused.value.retry_after_seconds >= 2  # judged: the block doubled


async def test_one_ip_spraying_names_is_refused_past_its_limit(throttle: LoginThrottle) -> None:
    ip = fresh_ip()
    for _ in range(LIMITS.ip_failures):
        await fail(throttle, fresh_name(), ip)
    refused = await refusal(throttle, fresh_name(), ip)
    assert refused.limit == "client_ip"
    assert LIMITS.window_seconds - 5 <= refused.retry_after_seconds <= LIMITS.window_seconds


async def test_names_sprayed_past_the_ip_limit_leave_no_keys(
    throttle: LoginThrottle, redis: Redis
) -> None:
    ip, tried = fresh_ip(), fresh_name()
    for _ in range(LIMITS.ip_failures - 1):
        await fail(throttle, fresh_name(), ip)
    await fail(throttle, tried, ip)  # the IP's last admitted failure
    sprayed = [fresh_name() for _ in range(50)]
    for name in sprayed:
        assert (await refusal(throttle, name, ip)).limit == "client_ip"
    assert [name for name in sprayed if await holds_key(throttle, redis, name, ip)] == []
    # A name tried before still counts its refusals: its key is there.
    await refusal(throttle, tried, ip)
    assert await holds_key(throttle, redis, tried, ip)


async def holds_key(throttle: LoginThrottle, redis: Redis, name: str, ip: str) -> bool:
    """Whether the throttle stored a key for (name, ip), in Redis or in its memory."""
    key = throttle.subject(name, ip, None).attempt_key
    return key in throttle._memory or bool(await redis.exists(key))


async def test_callers_without_a_valid_client_ip_share_one_ip_key_with_its_limit(
    throttle: LoginThrottle, redis: Redis
) -> None:
    await redis.delete("gh:t:i:unknown")  # left by other tests of this Redis
    for attempt in range(LIMITS.ip_failures):
        await fail(throttle, fresh_name(), ("", "not an address")[attempt % 2])
    assert (await refusal(throttle, fresh_name(), "")).limit == "client_ip"
    assert (await refusal(throttle, fresh_name(), "300.1.2.3")).limit == "client_ip"
    await redis.delete("gh:t:i:unknown")


async def test_a_device_is_judged_by_its_own_counter_only(throttle: LoginThrottle) -> None:
    name, ip = fresh_name(), fresh_ip()
    for _ in range(LIMITS.ip_failures):
        await fail(throttle, fresh_name(), ip)
    await refusal(throttle, name, ip)
    device = uuid.uuid4().hex
    for _ in range(LIMITS.failures):
        await fail(throttle, name, ip, device)  # admitted although the IP is refused
    refused = await refusal(throttle, name, ip, device)
    assert refused.limit == "device"


async def test_successes_never_fill_the_ip_key(throttle: LoginThrottle) -> None:
    ip = fresh_ip()
    for _ in range(3 * LIMITS.ip_failures):
        check = await throttle.admit(throttle.subject(fresh_name(), ip, None))
        await throttle.settle(check, success=True)
    await fail(throttle, fresh_name(), ip)


async def test_signup_conflicts_are_limited_per_ip(throttle: LoginThrottle) -> None:
    client = client_address(fresh_ip())
    for _ in range(LIMITS.signup_conflicts):
        await throttle.check_signup(client)
        await throttle.count_taken_name(client)
    with pytest.raises(TooManyAttempts) as refused:
        await throttle.check_signup(client)
    assert refused.value.limit == "signup_ip"
    assert refused.value.retry_after_seconds > LIMITS.signup_window_seconds - 5
    with pytest.raises(TooManyAttempts):
        await throttle.count_taken_name(client)
    await throttle.check_signup(client_address(fresh_ip()))


async def test_concurrent_signup_conflicts_cannot_pass_the_limit_together(
    throttle: LoginThrottle,
) -> None:
    client = client_address(fresh_ip())
    results = await asyncio.gather(
        *(throttle.count_taken_name(client) for _ in range(50)), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, TooManyAttempts)]
    assert len(results) - len(refused) == LIMITS.signup_conflicts
    assert len(refused) == 50 - LIMITS.signup_conflicts


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("198.51.100.7", "198.51.100.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("::ffff:198.51.100.7", "198.51.100.7"),
        # IPv6 forms that carry an IPv4 address are keyed by it, not by a shared /64.
        ("64:ff9b::c000:201", "192.0.2.1"),
        ("64:ff9b::198.51.100.8", "198.51.100.8"),
        ("::ffff:0:1.2.3.4", "1.2.3.4"),
        ("::1.2.3.4", "1.2.3.4"),
        ("2002:c000:201::1", "192.0.2.1"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "192.0.2.45"),
        ("::1", "::/64"),
        ("", None),
        ("not an address", None),
        ("1" * 100, None),
    ],
)
def test_client_ip_keys(raw: str, key: str | None) -> None:
    assert client_ip_key(raw) == key


def test_a_logged_client_shows_its_address_and_its_key() -> None:
    shown = client_address("2001:db8:1:2:3:4:5:6").for_log
    assert shown == "2001:db8:1:2:3:4:5:6 (IP key 2001:db8:1:2::/64)"
    assert client_address("198.51.100.7").for_log == "198.51.100.7"
    assert client_address("").for_log == "unknown"
    assert client_address("bogus\nline").for_log == "invalid (IP key unknown)"
