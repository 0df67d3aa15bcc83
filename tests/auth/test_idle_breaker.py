"""A replica that gets no calls after a Redis outage still finds Redis back: its breakers (and
gatehouse_auth_redis_breaker_open, which GatehouseRedisBreakerOpen alerts on, "one probe a
second fails") close within a few cool-downs, not at the next caller whenever that comes."""

from __future__ import annotations

import secrets
from collections.abc import Callable

from prometheus_client import REGISTRY

from devstack import DataStores
from devstack.ports import wait_until_async
from services.auth.store.cache import BREAK_SECONDS, WINDOW, RedisCache

# Redis answers within a cool-down; the idle probe is due one cool-down after the probe a caller
# would have sent, and a loaded 2-core machine gets some slack.
CLOSED_WITHIN = 6 * BREAK_SECONDS + 4.0


def breaker_open(breaker: str) -> float | None:
    return REGISTRY.get_sample_value("gatehouse_auth_redis_breaker_open", {"breaker": breaker})


async def test_breakers_close_once_redis_is_back_with_no_call_to_probe_it(
    cache: RedisCache,
    data_stores: DataStores,
    pause_redis: Callable[[], None],
) -> None:
    pause_redis()
    try:
        # A login's throttle script meets the frozen Redis: both breakers open.
        answer = await cache.run_script(
            "throttle_signup",
            WINDOW,
            [f"gh:t:s:idle-{secrets.token_hex(4)}"],
            (10, 60_000, "check"),
        )
        assert answer is None
        assert cache.breaker_open
        assert breaker_open("cache") == 1 and breaker_open("scripts") == 1
    finally:
        data_stores.redis.process.resume()

    # No call from here on. Before: both stayed open (measured on a devstack: still 1 and 1
    # thirty seconds after Redis answered PING again, until the next login).
    def closed() -> bool:
        return breaker_open("cache") == 0 and breaker_open("scripts") == 0

    await wait_until_async(closed, CLOSED_WITHIN, "both breakers to close with nobody calling")
    assert not cache.breaker_open
