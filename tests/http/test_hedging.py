"""Hedges, attempt timeouts and health pings of AuthClient, against real RPC servers on loopback."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from devstack.ports import wait_until_async
from services.contract import auth_methods as methods
from services.contract import auth_pb2 as pb
from services.foundation.rpc.protocol import RpcError
from services.http.auth_client import AuthClient
from services.http.hedging import EXTRA_ATTEMPT_BURST, ExtraAttemptBudget, LatencyWindow
from services.http.settings import HttpSettings
from tests.http.stub_auth_server import Answer
from tests.http.test_auth_client import BASE, PROFILE, REGISTER, Servers
from tests.metric_samples import sample


def settings(**overrides: Any) -> HttpSettings:
    return dataclasses.replace(BASE, **overrides)


@pytest.fixture
async def fast_pings() -> AsyncIterator[Servers]:
    """Two stub replicas behind a client whose health pings run every 20 ms, 100 ms timeout;
    no hedge nor attempt timeout before 2 s, so only the pings move calls sooner."""
    created = Servers(
        AuthClient(settings(ping_interval=0.02, ping_timeout=0.1, attempt_timeout=2.0))
    )
    await created.client.start()
    await created.add()
    await created.add()
    yield created
    await created.stop()


def calls_of(servers: Servers, method: int) -> int:
    return sum(server.calls_of(method) for server in servers.servers)


async def test_a_replica_removed_while_its_health_ping_is_out_is_not_left_out_of_rotation(
    fast_pings: Servers,
) -> None:
    frozen, healthy = fast_pings.servers
    replica = fast_pings.client.replicas[frozen.name]
    frozen.pause()
    try:
        read = asyncio.create_task(
            replica.call(methods.GET_PROFILE.number, b"", timeout=2.0, trace_id="t")
        )
        await wait_until_async(lambda: replica._probe is not None, 2.0, "a health ping to be out")
        fast_pings.client.update_replicas({healthy.name: healthy.record()})  # it leaves discovery
        # Before the fix the ping ran on, timed out and marked the departed replica out of
        # rotation after retire() had cleared its gauge: the alert then fired for good.
        await wait_until_async(lambda: replica._probe is None, 2.0, "the health ping to end")
        assert sample("gatehouse_http_replicas_out_of_rotation", replica=frozen.name) == 0.0
        read.cancel()
    finally:
        frozen.resume()


async def test_a_read_on_a_frozen_replica_moves_to_the_other_once_it_misses_a_ping(
    fast_pings: Servers,
) -> None:
    frozen, healthy = fast_pings.servers
    frozen.pause()
    frozen_replica = fast_pings.client.replicas[frozen.name]
    moved_before = sample(
        "gatehouse_http_rpc_retries_total", method="get_profile", reason="unresponsive"
    )
    try:
        started = time.monotonic()
        reads = [
            asyncio.create_task(fast_pings.client.call(methods.GET_PROFILE, PROFILE))
            for _ in range(6)  # least outstanding: half of them start on the frozen one
        ]
        assert all(reply == pb.ProfileReply() for reply in await asyncio.gather(*reads))
        took = time.monotonic() - started
        # Health pings, not the 2 s attempt timeout nor the 5 s deadline, moved them.
        assert took < 1.5, took
        assert frozen.calls_of(pb.METHOD_GET_PROFILE) >= 1
        assert healthy.calls_of(pb.METHOD_GET_PROFILE) == 6
        assert not frozen_replica.in_rotation
        assert sample(
            "gatehouse_http_replicas_out_of_rotation", replica=frozen.name
        ) == pytest.approx(1.0)
        assert sample(
            "gatehouse_http_rpc_retries_total", method="get_profile", reason="unresponsive"
        ) - moved_before == frozen.calls_of(pb.METHOD_GET_PROFILE)
        for _ in range(10):  # out of rotation: new calls go to the healthy one only
            await fast_pings.client.call(methods.GET_PROFILE, PROFILE)
        assert healthy.calls_of(pb.METHOD_GET_PROFILE) == 16
    finally:
        frozen.resume()
    await wait_until_async(lambda: frozen_replica.in_rotation, 2.0, "the replica back in rotation")
    assert sample("gatehouse_http_replicas_out_of_rotation", replica=frozen.name) == 0.0
    # The abandoned attempts were cancelled on the frozen replica.
    await wait_until_async(
        lambda: len(frozen.cancels) == frozen.calls_of(pb.METHOD_GET_PROFILE),
        2.0,
        "a METHOD_CANCEL for each abandoned attempt",
    )


async def test_a_frozen_replica_leaves_rotation_while_the_other_is_ejected(
    fast_pings: Servers,
) -> None:
    frozen, healthy = fast_pings.servers
    fast_pings.client.replicas[healthy.name].eject(
        "connection_lost", "its connection broke a moment ago"
    )
    frozen_replica = fast_pings.client.replicas[frozen.name]
    frozen.pause()
    try:
        read = asyncio.create_task(fast_pings.client.call(methods.GET_PROFILE, PROFILE))
        # An ejected replica is not a slow one: the frozen one goes, and its read moves.
        await wait_until_async(
            lambda: not frozen_replica.in_rotation, 2.0, "the frozen replica out of rotation"
        )
        assert await read == pb.ProfileReply()
    finally:
        frozen.resume()


async def test_a_write_on_a_frozen_replica_is_never_sent_again(fast_pings: Servers) -> None:
    frozen, healthy = fast_pings.servers
    frozen.pause()
    frozen_replica = fast_pings.client.replicas[frozen.name]
    try:
        # Two at once: least outstanding sends one to each replica.
        writes = [
            asyncio.create_task(fast_pings.client.call(methods.REGISTER, REGISTER))
            for _ in range(2)
        ]
        await wait_until_async(
            lambda: not frozen_replica.in_rotation, 2.0, "the frozen replica out of rotation"
        )
        await wait_until_async(lambda: writes[0].done() or writes[1].done(), 2.0, "one write")
        assert frozen.calls_of(pb.METHOD_REGISTER) == 1
        assert healthy.calls_of(pb.METHOD_REGISTER) == 1
        assert sum(task.done() for task in writes) == 1  # the other still waits on the frozen one
    finally:
        frozen.resume()
    assert [await task for task in writes] == [pb.RegisterReply()] * 2
    assert calls_of(fast_pings, pb.METHOD_REGISTER) == 2
    assert frozen.cancels == []


async def test_a_replica_that_answers_calls_but_pings_late_stays_in_rotation() -> None:
    servers = Servers(AuthClient(settings(ping_interval=0.02, ping_timeout=0.2)))
    await servers.client.start()
    try:
        busy = await servers.add(delay=0.04)  # silent 40 ms at a time: long enough to be pinged
        other = await servers.add()
        busy.health_ping_delay = 1.0  # its pings are answered far past the ping timeout
        busy_replica = servers.client.replicas[busy.name]

        async def reader() -> None:
            for _ in range(15):
                await servers.client.call(methods.GET_PROFILE, PROFILE)

        await asyncio.gather(*(reader() for _ in range(4)))
        assert busy.health_pings >= 1  # it was pinged, and missed it
        assert busy_replica.in_rotation
        assert busy.calls_of(pb.METHOD_GET_PROFILE) > 0
        assert other.calls_of(pb.METHOD_GET_PROFILE) > 0
    finally:
        await servers.stop()


async def test_the_last_replica_in_rotation_is_never_taken_out(fast_pings: Servers) -> None:
    for server in fast_pings.servers:
        server.pause()
    replicas = list(fast_pings.client.replicas.values())
    reads = [
        asyncio.create_task(fast_pings.client.call(methods.GET_PROFILE, PROFILE))
        for _ in range(4)  # two on each
    ]
    try:
        await wait_until_async(
            lambda: any(not replica.in_rotation for replica in replicas), 2.0, "one taken out"
        )
        remaining = next(replica for replica in replicas if replica.in_rotation)
        server = next(s for s in fast_pings.servers if s.name == remaining.name)
        pings_then = server.health_pings
        await wait_until_async(
            lambda: server.health_pings >= pings_then + 3, 2.0, "three more missed pings"
        )
        assert remaining.in_rotation
    finally:
        for server in fast_pings.servers:
            server.resume()
    assert all(reply == pb.ProfileReply() for reply in await asyncio.gather(*reads))


async def test_a_flapping_replica_logs_one_exit_and_one_return_not_one_per_flap(
    fast_pings: Servers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.http.replicas")
    flapping = fast_pings.servers[0]
    replica = fast_pings.client.replicas[flapping.name]
    flaps = 5
    for _ in range(flaps):
        flapping.pause()
        # Two reads at once: one starts on each replica, so the frozen one has a call to ping for.
        reads = [
            asyncio.create_task(fast_pings.client.call(methods.GET_PROFILE, PROFILE))
            for _ in range(2)
        ]
        try:
            await wait_until_async(lambda: not replica.in_rotation, 2.0, "the replica out")
        finally:
            flapping.resume()
        await wait_until_async(lambda: replica.in_rotation, 2.0, "the replica back")
        assert all(reply == pb.ProfileReply() for reply in await asyncio.gather(*reads))
    messages = [record.getMessage() for record in caplog.records]
    assert sum("out of rotation" in message for message in messages) == 1, messages
    assert sum("back in rotation" in message for message in messages) == 1, messages


async def test_a_slow_read_is_hedged_on_another_replica_after_the_methods_p99() -> None:
    # A budget of one extra attempt per call: this test is about when hedges go, not how many.
    servers = Servers(
        AuthClient(settings(hedge_min_delay=0.02, attempt_timeout=2.0, hedge_ratio=1.0))
    )
    try:
        slow = await servers.add()
        fast = await servers.add()
        for _ in range(64):  # the p99 of get_profile: a few milliseconds
            await servers.client.call(methods.GET_PROFILE, PROFILE)

        def hedges(winner: str) -> float:
            return sample("gatehouse_http_rpc_hedges_total", method="get_profile", winner=winner)

        hedges_before = {winner: hedges(winner) for winner in ("hedge", "first", "none")}
        slow.delay = 1.0  # slow, but it answers its health pings: it stays in rotation
        fast_before = fast.calls_of(pb.METHOD_GET_PROFILE)
        slow_before = slow.calls_of(pb.METHOD_GET_PROFILE)
        calls = 16  # ties are broken at random: about half start on the slow one
        for _ in range(calls):
            started = time.monotonic()
            await servers.client.call(methods.GET_PROFILE, PROFILE)
            assert time.monotonic() - started < 0.5
        won = {winner: hedges(winner) - before for winner, before in hedges_before.items()}
        assert fast.calls_of(pb.METHOD_GET_PROFILE) - fast_before == calls
        # Every call that started on the slow replica was hedged on the fast one and won
        # there; a call that started on the fast one may have been hedged too (under load).
        assert sum(won.values()) == slow.calls_of(pb.METHOD_GET_PROFILE) - slow_before
        assert won["hedge"] >= 1 and won["none"] == 0
        assert servers.client.replicas[slow.name].in_rotation
        await wait_until_async(
            lambda: len(slow.cancels) == sum(won.values()), 2.0, "the losing attempts cancelled"
        )
    finally:
        await servers.stop()


async def test_hedges_and_attempt_timeout_retries_stay_within_the_budget() -> None:
    ratio = 0.05
    servers = Servers(
        AuthClient(settings(hedge_ratio=ratio, attempt_timeout=0.01, hedge_min_delay=0.01))
    )
    try:
        await servers.add(delay=0.04)
        await servers.add(delay=0.04)
        total = 160
        for _ in range(total):
            await servers.client.call(methods.GET_PROFILE, PROFILE)
        extra = calls_of(servers, pb.METHOD_GET_PROFILE) - total
        assert extra <= total * ratio + EXTRA_ATTEMPT_BURST, extra
        assert extra >= EXTRA_ATTEMPT_BURST  # the budget was used, then ran out
    finally:
        await servers.stop()


async def test_a_read_answered_overloaded_gets_one_retry_and_no_hedge() -> None:
    overload_next = slow = False

    async def overloaded_once_then_slow(envelope: pb.Envelope) -> Answer:
        nonlocal overload_next
        if overload_next:  # at once
            overload_next = False
            return Answer(pb.STATUS_OVERLOADED, message="busy", retry_after_seconds=1)
        if slow:
            await asyncio.sleep(0.2)
        return Answer()

    servers = Servers(AuthClient(settings(attempt_timeout=1.0, hedge_min_delay=0.01)))
    try:
        for _ in range(3):
            await servers.add(overloaded_once_then_slow)
        for _ in range(64):  # the p99 of get_profile: a few milliseconds, so hedges come early
            await servers.client.call(methods.GET_PROFILE, PROFILE)
        before = calls_of(servers, pb.METHOD_GET_PROFILE)
        overload_next = slow = True
        assert await servers.client.call(methods.GET_PROFILE, PROFILE) == pb.ProfileReply()
        # The retry on a second replica is slow, but no hedge goes to the third.
        assert calls_of(servers, pb.METHOD_GET_PROFILE) - before == 2
    finally:
        await servers.stop()


async def test_without_budget_a_read_answered_overloaded_is_not_retried() -> None:
    async def overloaded(envelope: pb.Envelope) -> Answer:
        return Answer(pb.STATUS_OVERLOADED, message="busy", retry_after_seconds=1)

    servers = Servers(AuthClient(settings(hedge_ratio=0.0)))
    try:
        await servers.add(overloaded)
        await servers.add(overloaded)
        with pytest.raises(RpcError) as failure:
            await servers.client.call(methods.GET_PROFILE, PROFILE)
        assert failure.value.status == pb.STATUS_OVERLOADED
        assert calls_of(servers, pb.METHOD_GET_PROFILE) == 1
    finally:
        await servers.stop()


def test_the_budget_allows_ratio_of_calls_plus_the_burst() -> None:
    budget = ExtraAttemptBudget(0.05)
    taken = 0
    for _ in range(1000):
        budget.on_call()
        taken += budget.take()
    assert taken == pytest.approx(1000 * 0.05 + EXTRA_ATTEMPT_BURST, abs=1)
    assert not ExtraAttemptBudget(0.0).take()


def test_the_latency_window_reports_its_p99_once_it_has_enough_samples() -> None:
    window = LatencyWindow()
    assert window.p99 is None
    for index in range(256):
        window.observe(1.0 if index % 100 == 99 else 0.001)
    assert window.p99 is not None and window.p99 <= 1.0
    for _ in range(256):
        window.observe(0.002)
    assert window.p99 == pytest.approx(0.002)


async def test_a_burst_of_reads_is_spread_evenly_and_leaves_no_reservation() -> None:
    servers = Servers(AuthClient(settings(hedge_ratio=0.0)))
    try:
        await servers.add()
        await servers.add()
        # All 20 choose their replica in the same loop turn, before any attempt has started:
        # each must see the attempts chosen before it.
        burst = [
            asyncio.create_task(servers.client.call(methods.GET_PROFILE, PROFILE))
            for _ in range(20)
        ]
        cancelled = [
            asyncio.create_task(servers.client.call(methods.GET_PROFILE, PROFILE)) for _ in range(4)
        ]
        await asyncio.sleep(0)  # one loop turn: every call has chosen, no attempt has started
        for task in cancelled:
            task.cancel()
        await asyncio.gather(*burst)
        await asyncio.gather(*cancelled, return_exceptions=True)
        counts = sorted(server.calls_of(pb.METHOD_GET_PROFILE) for server in servers.servers)
        assert counts == [10, 10], counts
        for replica in servers.client.replicas.values():
            assert (replica.reserved, replica.outstanding) == (0, 0)
    finally:
        await servers.stop()


async def test_calls_cancelled_while_they_wait_leave_nothing_on_their_replicas() -> None:
    """A call waits on its attempts and on its replicas' shared `stalled` futures: cancelled
    mid-wait (its client went away), it must take its callbacks off them, or every cancelled
    read would stay referenced by a replica that is never taken out of rotation."""
    servers = Servers(AuthClient(settings(attempt_timeout=2.0)))
    try:
        for _ in range(2):
            (await servers.add()).pause()  # no answer: every call stays waiting
        calls = [
            asyncio.create_task(servers.client.call(methods.GET_PROFILE, PROFILE)) for _ in range(6)
        ]
        await wait_until_async(
            lambda: sum(server.calls_of(pb.METHOD_GET_PROFILE) for server in servers.servers) == 6,
            timeout=5.0,
            what="the six calls sent",
        )
        replicas = list(servers.client.replicas.values())
        assert all(not replica.stalled.done() for replica in replicas)
        assert all(replica.stalled._callbacks for replica in replicas)  # the calls wait on them
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        assert all(call.cancelled() for call in calls)
        assert [replica.stalled._callbacks or [] for replica in replicas] == [[], []]
    finally:
        await servers.stop()
