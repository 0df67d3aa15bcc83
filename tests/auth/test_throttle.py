"""The login throttle's rules, on its Redis counters (real Redis, Lua scripts) and on the
in-memory counters a replica falls back to: both must say the same."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from services.auth.cache import RedisCache
from services.auth.throttle import LoginThrottle, TooManyAttempts, client_ip_key
from services.auth.throttle_rules import ThrottleLimits

LIMITS = ThrottleLimits(failures=5, ip_failures=12, signup_conflicts=3)


@pytest.fixture(params=["redis", "memory"])
async def throttle(request: pytest.FixtureRequest, cache: RedisCache) -> AsyncIterator[LoginThrottle]:
    yield LoginThrottle(cache if request.param == "redis" else None, LIMITS)


def fresh_ip() -> str:
    return f"2001:db8:{uuid.uuid4().int % 65536:x}:{uuid.uuid4().int % 65536:x}::1"


def fresh_name() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


async def fail(throttle: LoginThrottle, username: str, ip: str, device: str | None = None) -> None:
    check = await throttle.admit(throttle.subject(username, ip, device))
    await throttle.settle(check, success=False)


async def refusal(throttle: LoginThrottle, username: str, ip: str, device: str | None = None) -> TooManyAttempts:
    with pytest.raises(TooManyAttempts) as refused:
        await throttle.admit(throttle.subject(username, ip, device))
    return refused.value


async def test_after_the_limit_each_refusal_doubles_the_delay(throttle: LoginThrottle) -> None:
    name, ip = fresh_name(), fresh_ip()
    for _ in range(LIMITS.failures):
        await fail(throttle, name, ip)
    delays = [(await refusal(throttle, name, ip)).retry_after_seconds for _ in range(4)]
    assert delays == [1, 2, 4, 8]
    assert (await refusal(throttle, name, ip)).limit == "account_ip"


async def test_the_name_is_case_folded_and_other_ips_are_not_affected(throttle: LoginThrottle) -> None:
    name, ip = fresh_name(), fresh_ip()
    for _ in range(LIMITS.failures):
        await fail(throttle, name.upper(), ip)
    await refusal(throttle, name.lower(), ip)
    await fail(throttle, name, fresh_ip())  # admitted: another IP


async def test_a_success_clears_the_key_and_a_void_attempt_does_not_count(throttle: LoginThrottle) -> None:
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


async def test_one_ip_spraying_names_is_refused_past_its_limit(throttle: LoginThrottle) -> None:
    ip = fresh_ip()
    for _ in range(LIMITS.ip_failures):
        await fail(throttle, fresh_name(), ip)
    refused = await refusal(throttle, fresh_name(), ip)
    assert refused.limit == "client_ip"
    assert LIMITS.window_seconds - 5 <= refused.retry_after_seconds <= LIMITS.window_seconds


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
    ip = fresh_ip()
    for _ in range(LIMITS.signup_conflicts):
        await throttle.check_signup(ip)
        await throttle.count_taken_name(ip)
    with pytest.raises(TooManyAttempts) as refused:
        await throttle.check_signup(ip)
    assert refused.value.limit == "signup_ip"
    assert refused.value.retry_after_seconds > LIMITS.signup_window_seconds - 5
    await throttle.check_signup(fresh_ip())


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("198.51.100.7", "198.51.100.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("::ffff:198.51.100.7", "198.51.100.7"),
        ("", None),
        ("not an address", None),
        ("1" * 100, None),
    ],
)
def test_client_ip_keys(raw: str, key: str | None) -> None:
    assert client_ip_key(raw) == key
