"""Replica choice, ejection, retries and deadlines of AuthClient, against real RPC servers."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from devstack.ports import free_port, wait_until_async
from services.contract import auth_methods as methods
from services.contract import auth_pb2 as pb
from services.foundation.discovery import ServiceRecord
from services.foundation.rpc.client import CallFailed
from services.foundation.rpc.protocol import NOT_READY_REASON, PROTOCOL_MAX, RpcError
from services.http import unlisted_replicas
from services.http.auth_client import AuthClient
from services.http.call_budget import begin_request, call_budget_var, end_request
from services.http.errors import api_error_from_rpc
from services.http.replicas import INTERNAL_ERRORS_TO_EJECT, Replica
from services.http.settings import HttpSettings
from tests.http.gateway import TEST_CSRF_SECRET
from tests.http.stub_auth_server import Answer, Handler, StubAuthServer, answer_ok
from tests.metric_samples import sample

BASE = HttpSettings(
    pool_min_connections=1,
    pool_max_connections=2,
    connect_timeout=1.0,
    call_timeout=5.0,
    eject_seconds=30.0,
    csrf_secret=TEST_CSRF_SECRET,
)
PROFILE = pb.GetProfileRequest(session=pb.SessionRef(user_id=7, session_id="s"))
REGISTER = pb.RegisterRequest(username="ann", password="correct horse")
AUTHENTICATE = pb.AuthenticateRequest(username="ann", password="correct horse")


class Servers:
    """Stub servers and an AuthClient that knows them all."""

    def __init__(self, client: AuthClient) -> None:
        self.client = client
        self.servers: list[StubAuthServer] = []
        self.cleanups: list[asyncio.Server] = []  # other listeners, closed at the end

    async def add(
        self,
        handler: Handler | None = None,
        *,
        delay: float = 0.0,
        advertised_max: int = PROTOCOL_MAX,
        spoken_max: int = PROTOCOL_MAX,
    ) -> StubAuthServer:
        name = f"replica-{len(self.servers)}"
        server = StubAuthServer(
            handler or answer_ok,
            delay=delay,
            name=name,
            advertised_max=advertised_max,
            spoken_max=spoken_max,
        )
        self.servers.append(await server.start())
        self.publish()
        return server

    def publish(self) -> None:
        self.client.update_replicas({server.name: server.record() for server in self.servers})

    async def stop(self) -> None:
        await self.client.close()
        for server in self.servers:
            await server.stop()
        for listener in self.cleanups:
            listener.close()
            await listener.wait_closed()


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    created = Servers(AuthClient(BASE))
    yield created
    await created.stop()


def answers(*scripted: Answer) -> Handler:
    """A handler shared by several servers: the n-th call overall gets the n-th answer (then OK)."""
    remaining = list(scripted)

    async def handler(envelope: pb.Envelope) -> Answer:
        return remaining.pop(0) if remaining else Answer()

    return handler


def calls_per_server(servers: Servers) -> list[int]:
    return [len(server.calls) for server in servers.servers]


async def test_a_replica_ten_times_slower_gets_under_a_quarter_of_the_calls() -> None:
    # No hedges: this measures the balancer alone.
    servers = Servers(AuthClient(dataclasses.replace(BASE, hedge_ratio=0.0)))
    try:
        fast = await servers.add(delay=0.004)
        slow = await servers.add(delay=0.04)
        total = 600

        async def worker(count: int) -> None:
            for _ in range(count):
                await servers.client.call(methods.PING, pb.PingRequest())

        await asyncio.gather(*(worker(total // 20) for _ in range(20)))
        assert len(fast.calls) + len(slow.calls) == total
        assert len(slow.calls) / total < 0.25, calls_per_server(servers)
        assert len(slow.calls) > 0  # it was not ignored altogether
    finally:
        await servers.stop()


async def test_ties_are_broken_at_random(servers: Servers) -> None:
    for _ in range(3):
        await servers.add()
    for _ in range(300):  # one at a time: every replica has 0 outstanding, always a tie
        await servers.client.call(methods.PING, pb.PingRequest())
    assert all(50 < count < 150 for count in calls_per_server(servers)), calls_per_server(servers)


async def test_an_ejected_replica_gets_no_calls_while_others_can_take_them(
    servers: Servers,
) -> None:
    hold = asyncio.Event()

    async def held(envelope: pb.Envelope) -> Answer:
        await hold.wait()
        return Answer()

    broken = await servers.add(held)
    healthy = await servers.add(held)
    in_flight = [
        asyncio.create_task(servers.client.call(methods.PING, pb.PingRequest())) for _ in range(4)
    ]
    await wait_until_async(lambda: len(broken.calls) > 0, 5.0, "a call to reach the first replica")
    broken.break_connections()
    hold.set()
    await asyncio.gather(*in_flight)  # PING is idempotent: the lost ones were retried on `healthy`
    before = len(broken.calls)
    for _ in range(30):
        await servers.client.call(methods.PING, pb.PingRequest())
    assert len(broken.calls) == before
    assert servers.client.replicas["replica-0"].ejected_until > 0
    assert len(healthy.calls) >= 30


async def accept_and_say_nothing(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """A SIGSTOPped replica: its kernel accepts connects, nobody answers them."""
    await reader.read()
    writer.close()


async def with_a_frozen_replica(servers: Servers, *listed: StubAuthServer) -> Replica:
    """`listed` and a frozen replica in discovery, its connect begun and hanging (for the
    client's connect timeout); that replica."""
    frozen = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
    servers.cleanups.append(frozen)
    port = frozen.sockets[0].getsockname()[1]
    records = {server.name: server.record() for server in listed}
    records["frozen"] = dataclasses.replace(listed[0].record(), instance_id="frozen", port=port)
    servers.client.update_replicas(records)
    return servers.client.replicas["frozen"]


async def test_a_replica_whose_connect_hangs_gets_no_call_while_another_is_connected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A replica whose kernel accepts and whose process never answers (SIGSTOPped), with no
    connection, had the least load: calls chose it and waited out the connect timeout, again
    after every ejection, for as long as it stayed listed."""
    servers = Servers(AuthClient(dataclasses.replace(BASE, connect_timeout=2.0)))
    try:
        healthy = await servers.add()
        await wait_until_async(
            lambda: servers.client.replicas[healthy.name].connected, 5.0, "a connection"
        )
        hanging = await with_a_frozen_replica(servers, healthy)
        chosen: list[int] = []
        call = hanging.call

        async def counted(*args: Any, **kwargs: Any) -> pb.Envelope:
            chosen.append(1)
            return await call(*args, **kwargs)

        monkeypatch.setattr(hanging, "call", counted)
        for _ in range(20):
            await servers.client.call(methods.PING, pb.PingRequest())
        assert hanging.ejected_until == 0.0, "the connect ended before the calls did"
        assert chosen == [] and len(healthy.calls) >= 20
    finally:
        await servers.stop()


async def test_when_none_is_healthy_the_least_busy_is_chosen_pooled_or_not() -> None:
    """Among the unhealthy, the ones still pooled are the sick ones (a frozen replica's
    stalled connection stays pooled until it is closed): load alone tells them apart."""
    servers = Servers(AuthClient(dataclasses.replace(BASE, connect_timeout=5.0)))
    try:
        sick = await servers.add()
        await wait_until_async(lambda: servers.client.replicas[sick.name].connected, 5.0, "pooled")
        unpooled = await with_a_frozen_replica(servers, sick)
        busy = servers.client.replicas[sick.name]
        busy._take_out_of_rotation()
        busy.outstanding = 7
        unpooled.eject("connection_lost", "the test's")
        chosen = {servers.client._choose_for_attempt(set(), False, 1) for _ in range(20)}
        busy.outstanding = 0
        assert chosen == {unpooled}
    finally:
        await servers.stop()


async def test_the_only_pooled_replica_is_not_ejected_for_internal_errors(servers: Servers) -> None:
    """Ejected, it would send the calls to a replica still connecting, to wait for it."""
    failing = await servers.add(internal_error)
    await wait_until_async(
        lambda: servers.client.replicas[failing.name].connected, 5.0, "a connection"
    )
    await with_a_frozen_replica(servers, failing)
    await signups(servers, 2 * INTERNAL_ERRORS_TO_EJECT)
    assert servers.client.replicas[failing.name].ejected_until == 0.0


async def internal_error(envelope: pb.Envelope) -> Answer:
    return Answer(pb.STATUS_INTERNAL, message="its database pool is gone")


async def signups(servers: Servers, count: int) -> int:
    """Sign-ups made one after another (writes: an INTERNAL answer is not retried); how many
    failed."""
    failed = 0
    for _ in range(count):
        try:
            await servers.client.call(methods.REGISTER, REGISTER)
        except RpcError:
            failed += 1
    return failed


async def test_a_replica_answering_internal_errors_in_a_row_is_ejected(servers: Servers) -> None:
    failing = await servers.add(internal_error)
    healthy = await servers.add()
    failed = await signups(servers, 40)
    assert failed == len(failing.calls) == INTERNAL_ERRORS_TO_EJECT
    assert len(healthy.calls) == 40 - INTERNAL_ERRORS_TO_EJECT
    assert servers.client.replicas[failing.name].ejected_until > 0


async def test_a_replica_failing_one_method_is_ejected_though_it_answers_others(
    servers: Servers,
) -> None:
    """A broken hasher fails sign-ups at once while reads succeed: the reads' answers must not
    reset the count, or the replica that fails fastest draws the sign-ups for ever."""

    async def signups_fail(envelope: pb.Envelope) -> Answer:
        if envelope.method == pb.METHOD_REGISTER:
            return await internal_error(envelope)
        return Answer()

    failing = await servers.add(signups_fail)
    await servers.add()
    failed = 0
    for _ in range(40):
        failed += await signups(servers, 1)
        await servers.client.call(methods.PING, pb.PingRequest())
    assert failed == failing.calls_of(pb.METHOD_REGISTER) == INTERNAL_ERRORS_TO_EJECT
    assert servers.client.replicas[failing.name].ejected_until > 0


async def test_a_replica_ejected_for_one_method_answers_again_only_when_that_method_does(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Its pings still succeed: logging those as "answers again" would hide that sign-ups
    still fail, and the next ejections would be held back as a flap."""
    signups_work = False
    refused = False  # a sign-up refused before its hash: says nothing of the hasher

    async def signups_fail(envelope: pb.Envelope) -> Answer:
        if envelope.method == pb.METHOD_REGISTER and refused:
            return Answer(pb.STATUS_INVALID, message="invalid_password")
        if envelope.method == pb.METHOD_REGISTER and not signups_work:
            return await internal_error(envelope)
        return Answer()

    servers = Servers(AuthClient(dataclasses.replace(BASE, eject_seconds=0.01)))
    try:
        failing = await servers.add(signups_fail)
        caplog.set_level(logging.INFO, logger="services.http.replicas")
        replica = servers.client.replicas[failing.name]
        replica.may_be_ejected = lambda replica: True  # as if another replica took calls
        await signups(servers, INTERNAL_ERRORS_TO_EJECT)
        for _ in range(3):
            await servers.client.call(methods.PING, pb.PingRequest())
        refused = True
        assert await signups(servers, 1) == 1
        refused = False
        lines = [r.getMessage() for r in caplog.records if r.name == "services.http.replicas"]
        assert [line for line in lines if "ejected" in line], lines
        assert not [line for line in lines if "answers again" in line], lines
        signups_work = True
        assert await signups(servers, 1) == 0
        lines = [r.getMessage() for r in caplog.records if r.name == "services.http.replicas"]
        assert len([line for line in lines if "answers again" in line]) == 1, lines
    finally:
        await servers.stop()


async def test_the_last_replica_in_rotation_is_not_ejected_for_internal_errors(
    servers: Servers,
) -> None:
    only = await servers.add(internal_error)
    assert await signups(servers, 2 * INTERNAL_ERRORS_TO_EJECT) == len(only.calls)
    assert servers.client.replicas[only.name].ejected_until == 0.0


async def test_replicas_all_answering_internal_errors_are_not_all_ejected(
    servers: Servers,
) -> None:
    await servers.add(internal_error)
    await servers.add(internal_error)
    await signups(servers, 4 * INTERNAL_ERRORS_TO_EJECT)
    now = asyncio.get_running_loop().time()
    ejected = [r for r in servers.client.replicas.values() if r.ejected_until > now]
    assert len(ejected) <= 1


async def test_a_failing_replica_is_not_ejected_while_the_healthy_one_is(
    servers: Servers,
) -> None:
    failing = await servers.add(internal_error)
    healthy = await servers.add()
    servers.client.replicas[healthy.name].eject("connection_lost", "its connection broke")
    await signups(servers, 2 * INTERNAL_ERRORS_TO_EJECT)
    assert servers.client.replicas[failing.name].ejected_until == 0.0


async def test_when_every_replica_is_ejected_they_are_still_tried(servers: Servers) -> None:
    only = await servers.add()
    await servers.client.call(methods.PING, pb.PingRequest())
    servers.client.replicas[only.name].eject("connection_lost", "test")
    reply = await servers.client.call(methods.PING, pb.PingRequest())
    assert reply == pb.PingReply()
    assert len(only.calls) == 2


async def test_no_replica_is_unavailable(servers: Servers) -> None:
    with pytest.raises(RpcError) as failure:
        await servers.client.call(methods.PING, pb.PingRequest())
    assert failure.value.status == pb.STATUS_UNAVAILABLE
    assert failure.value.reason == "no_replica"
    assert servers.client.readiness() is not None


async def test_get_profile_is_retried_once_on_another_replica_after_an_internal_error(
    servers: Servers,
) -> None:
    handler = answers(Answer(pb.STATUS_INTERNAL, message="boom"))
    await servers.add(handler)
    await servers.add(handler)
    reply = await servers.client.call(methods.GET_PROFILE, PROFILE)
    assert reply == pb.ProfileReply()
    assert sorted(calls_per_server(servers)) == [1, 1]  # the retry went to the other replica


async def test_get_profile_is_retried_only_once(servers: Servers) -> None:
    failing = answers(*[Answer(pb.STATUS_UNAVAILABLE, message="no redis")] * 5)
    await servers.add(failing)
    await servers.add(failing)
    await servers.add(failing)
    with pytest.raises(RpcError) as failure:
        await servers.client.call(methods.GET_PROFILE, PROFILE)
    assert failure.value.status == pb.STATUS_UNAVAILABLE
    assert sum(calls_per_server(servers)) == 2


async def test_a_definite_answer_is_not_retried(servers: Servers) -> None:
    handler = answers(Answer(pb.STATUS_UNAUTHENTICATED, reason="session_revoked"))
    await servers.add(handler)
    await servers.add(handler)
    with pytest.raises(RpcError) as failure:
        await servers.client.call(methods.GET_PROFILE, PROFILE)
    assert failure.value.status == pb.STATUS_UNAUTHENTICATED
    assert failure.value.reason == "session_revoked"
    assert sum(calls_per_server(servers)) == 1


async def test_get_profile_is_retried_after_its_connection_broke(servers: Servers) -> None:
    crashed = False

    async def crash_first_time(envelope: pb.Envelope) -> Answer:
        nonlocal crashed
        if not crashed:
            crashed = True
            for server in servers.servers:
                server.break_connections()
            await asyncio.Event().wait()  # never answers
        return Answer()

    await servers.add(crash_first_time)
    await servers.add(crash_first_time)
    reply = await servers.client.call(methods.GET_PROFILE, PROFILE)
    assert reply == pb.ProfileReply()
    assert sorted(calls_per_server(servers)) == [1, 1]


async def test_a_write_whose_request_was_sent_is_not_retried(servers: Servers) -> None:
    async def crash(envelope: pb.Envelope) -> Answer:
        for server in servers.servers:
            server.break_connections()
        await asyncio.Event().wait()
        return Answer()

    await servers.add(crash)
    await servers.add(crash)
    with pytest.raises(CallFailed) as failure:
        await servers.client.call(methods.REGISTER, REGISTER)
    assert failure.value.sent is True
    assert sum(calls_per_server(servers)) == 1


async def test_a_write_is_retried_elsewhere_after_draining(servers: Servers) -> None:
    handler = answers(Answer(pb.STATUS_DRAINING, message="shutting down"))
    await servers.add(handler)
    await servers.add(handler)
    reply = await servers.client.call(methods.REGISTER, REGISTER)
    assert reply == pb.RegisterReply()
    assert sorted(calls_per_server(servers)) == [1, 1]
    draining = [replica for replica in servers.client.replicas.values() if replica.draining]
    assert len(draining) == 1
    assert servers.client.readiness() is None  # the other one still serves


async def test_a_login_a_replica_is_not_ready_for_is_retried_and_the_replica_kept(
    servers: Servers,
) -> None:
    """A replica started while etcd was away serves reads but holds no signing key: it answers
    a login DRAINING with reason not_ready. The login goes to another replica, and the first
    is not taken for a draining one: it keeps taking this worker's other calls."""
    not_ready = Answer(pb.STATUS_DRAINING, reason=NOT_READY_REASON, message="no signing key")
    handler = answers(not_ready)
    await servers.add(handler)
    await servers.add(handler)
    assert await servers.client.call(methods.AUTHENTICATE, AUTHENTICATE) == pb.AuthenticateReply()
    assert sorted(calls_per_server(servers)) == [1, 1]
    assert not any(replica.draining for replica in servers.client.replicas.values())
    for _ in range(20):
        await servers.client.call(methods.GET_PROFILE, PROFILE)
    assert min(calls_per_server(servers)) > 1  # both still take reads


async def test_a_write_is_not_retried_after_overloaded(servers: Servers) -> None:
    handler = answers(Answer(pb.STATUS_OVERLOADED, message="hash queue full"))
    await servers.add(handler)
    await servers.add(handler)
    with pytest.raises(RpcError) as failure:
        await servers.client.call(methods.REGISTER, REGISTER)
    assert failure.value.status == pb.STATUS_OVERLOADED
    assert sum(calls_per_server(servers)) == 1


async def test_a_write_that_never_left_is_retried_on_another_replica(servers: Servers) -> None:
    hold = asyncio.Event()

    async def first_call_waits(envelope: pb.Envelope) -> Answer:
        if envelope.method == pb.METHOD_PING:
            await hold.wait()
        return Answer()

    healthy = await servers.add(first_call_waits)
    # A call in flight on `healthy` makes the unreachable replica the least busy one.
    busy = asyncio.create_task(servers.client.call(methods.PING, pb.PingRequest()))
    await wait_until_async(lambda: len(healthy.calls) == 1, 5.0, "the holding call to arrive")
    unreachable = ServiceRecord(
        "unreachable", "127.0.0.1", free_port(), 1, 1, "test", "2026-11-23T00:00:00Z"
    )
    servers.client.update_replicas(
        {healthy.name: healthy.record(), unreachable.instance_id: unreachable}
    )
    reply = await servers.client.call(methods.REGISTER, REGISTER)
    assert reply == pb.RegisterReply()
    assert healthy.calls_of(pb.METHOD_REGISTER) == 1
    assert servers.client.replicas["unreachable"].ejected_until > 0
    hold.set()
    await busy


async def test_a_call_past_the_requests_deadline_is_not_sent_and_is_counted() -> None:
    servers = Servers(AuthClient(dataclasses.replace(BASE, call_timeout=0.3)))
    token = begin_request()
    try:
        await servers.add()
        budget = call_budget_var.get()
        assert budget is not None
        budget.spend(0.3)  # the request's earlier calls took the whole deadline
        before = sample("gatehouse_http_rpc_request_deadline_spent_total", method="get_profile")
        with pytest.raises(CallFailed) as failure:
            await servers.client.call(methods.GET_PROFILE, PROFILE)
        assert failure.value.reason == "deadline_exceeded" and not failure.value.sent
        assert sum(calls_per_server(servers)) == 0
        after = sample("gatehouse_http_rpc_request_deadline_spent_total", method="get_profile")
        assert after == before + 1
    finally:
        end_request(token)
        await servers.stop()


async def test_retries_stay_within_the_call_deadline() -> None:
    servers = Servers(AuthClient(dataclasses.replace(BASE, call_timeout=0.3)))
    try:
        await servers.add(delay=2.0)
        await servers.add(delay=2.0)
        started = time.monotonic()
        with pytest.raises(CallFailed) as failure:
            await servers.client.call(methods.GET_PROFILE, PROFILE)
        assert failure.value.reason == "deadline_exceeded"
        assert time.monotonic() - started < 0.6
        assert sum(calls_per_server(servers)) == 1
    finally:
        await servers.stop()


async def test_a_removed_replica_is_drained_and_a_new_one_used(servers: Servers) -> None:
    hold = asyncio.Event()

    async def held(envelope: pb.Envelope) -> Answer:
        await hold.wait()
        return Answer()

    old = await servers.add(held)
    in_flight = asyncio.create_task(servers.client.call(methods.PING, pb.PingRequest()))
    await wait_until_async(lambda: len(old.calls) == 1, 5.0, "the call to reach the old replica")
    new = StubAuthServer(name="replica-new")
    await new.start()
    try:
        servers.client.update_replicas({new.name: new.record()})
        assert old.name not in servers.client.replicas
        assert await servers.client.call(methods.PING, pb.PingRequest()) == pb.PingReply()
        assert len(new.calls) == 1
        assert old.open_connections == 1  # the old call is still being served
        hold.set()
        assert await in_flight == pb.PingReply()
        await wait_until_async(
            lambda: old.open_connections == 0, 5.0, "the drained replica's connections to close"
        )
    finally:
        await new.stop()


async def test_a_replica_speaking_another_protocol_is_ignored(servers: Servers) -> None:
    server = await servers.add()
    future = dataclasses.replace(
        server.record(), protocol_min=PROTOCOL_MAX + 1, protocol_max=PROTOCOL_MAX + 2
    )
    servers.client.update_replicas({server.name: future})
    assert servers.client.replicas == {}


async def test_incompatible_records_rewritten_again_and_again_are_not_all_remembered(
    servers: Servers, caplog: pytest.LogCaptureFixture
) -> None:
    """Each is warned about once while listed; one rewritten with a new start time at will
    grew the set of those warned about, in every HTTP worker, without end."""
    server = await servers.add()
    for started in range(50):
        future = dataclasses.replace(
            server.record(),
            protocol_min=PROTOCOL_MAX + 1,
            protocol_max=PROTOCOL_MAX + 2,
            started_at=str(started),
        )
        servers.client.update_replicas({server.name: future})
    assert len(servers.client._incompatible) == 1


LIST_SESSIONS = pb.ListSessionsRequest(session=pb.SessionRef(user_id=7, session_id="s"))
END_SESSION = pb.EndSessionRequest(session=pb.SessionRef(user_id=7, session_id="s"), id="t")


async def test_a_protocol_3_call_goes_only_to_replicas_that_advertise_it(
    servers: Servers,
) -> None:
    # Its Hello would allow 3: the discovery record alone keeps the new calls away.
    older = await servers.add(advertised_max=2)
    newer = await servers.add()
    for _ in range(40):
        await servers.client.call(methods.LIST_SESSIONS, LIST_SESSIONS)
        await servers.client.call(methods.END_SESSION, END_SESSION)
        await servers.client.call(methods.PING, pb.PingRequest())
    assert older.calls_of(pb.METHOD_LIST_SESSIONS) == older.calls_of(pb.METHOD_END_SESSION) == 0
    assert newer.calls_of(pb.METHOD_LIST_SESSIONS) == newer.calls_of(pb.METHOD_END_SESSION) == 40
    assert older.calls_of(pb.METHOD_PING) > 0, "the older replica still takes the calls it knows"


@pytest.mark.parametrize("method", [methods.LIST_SESSIONS, methods.END_SESSION])
async def test_a_protocol_3_call_fails_at_once_when_no_replica_speaks_it(
    servers: Servers, method: methods.Method[Any, Any]
) -> None:
    first = await servers.add(advertised_max=2, spoken_max=2)
    second = await servers.add(advertised_max=2, spoken_max=2)
    await servers.client.call(methods.PING, pb.PingRequest())  # both connected and serving
    request = LIST_SESSIONS if method is methods.LIST_SESSIONS else END_SESSION
    started = time.monotonic()
    with pytest.raises(RpcError) as refused:
        await servers.client.call(method, request)
    assert time.monotonic() - started < 0.5  # not the 5 s call deadline
    assert refused.value.status == pb.STATUS_UNAVAILABLE
    assert first.calls_of(method.number) == second.calls_of(method.number) == 0
    answer = api_error_from_rpc(refused.value)
    assert (answer.status_code, answer.code) == (503, "unavailable")
    assert int((answer.headers or {})["Retry-After"]) >= 1


async def test_a_replica_that_advertises_3_but_negotiated_2_gets_no_protocol_3_call(
    servers: Servers,
) -> None:
    misreported = await servers.add(advertised_max=3, spoken_max=2)
    await servers.client.call(methods.PING, pb.PingRequest())
    started = time.monotonic()
    for method, request in (
        (methods.END_SESSION, END_SESSION),
        (methods.LIST_SESSIONS, LIST_SESSIONS),
    ):
        with pytest.raises(RpcError) as refused:
            await servers.client.call(method, request)
        assert refused.value.status == pb.STATUS_UNAVAILABLE
    assert time.monotonic() - started < 1.0
    assert misreported.calls_of(pb.METHOD_END_SESSION) == 0
    assert misreported.calls_of(pb.METHOD_LIST_SESSIONS) == 0
    newer = await servers.add()
    await servers.client.call(methods.END_SESSION, END_SESSION)
    assert newer.calls_of(pb.METHOD_END_SESSION) == 1


async def test_replies_up_to_the_frame_limit_set_for_the_auth_service_are_read() -> None:
    """An operator who raises GATEHOUSE_MAX_FRAME_BYTES for bigger pictures sets it for both
    tiers: a reply past the old 1 MiB must not break the connection every call shares."""
    picture = b"p" * (3 * 1024 * 1024 // 2)

    async def a_big_blob(envelope: pb.Envelope) -> Answer:
        return Answer(payload=pb.GetBlobReply(data=picture).SerializeToString())

    servers = Servers(AuthClient(dataclasses.replace(BASE, max_frame_bytes=4 * 1024 * 1024)))
    try:
        await servers.add(a_big_blob)
        reply = await servers.client.call(methods.GET_BLOB, pb.GetBlobRequest(key="k"))
        assert reply.data == picture
    finally:
        await servers.stop()


def ejections(reason: str) -> float:
    return sample("gatehouse_http_replica_ejections_total", reason=reason)


async def test_an_unreachable_replica_is_one_warning_per_outage_and_a_count_per_ejection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An operator reads one line when a replica goes away and one when it answers again,
    however often the reconnects fail in between; the counter has every ejection."""
    server = StubAuthServer(answer_ok, name="replica-gone")
    await server.start()
    port = server.port
    await server.stop()  # nothing listens on its port now
    client = AuthClient(dataclasses.replace(BASE, eject_seconds=0.01))
    before = ejections("connect_failed")
    caplog.set_level(logging.INFO, logger="services.http.replicas")
    try:
        client.update_replicas({server.name: server.record()})  # connects at once, and fails
        replica = client.replicas[server.name]
        loop = asyncio.get_running_loop()
        for attempt in range(1, 6):
            failed_connects = before + attempt
            await wait_until_async(
                lambda: ejections("connect_failed") >= failed_connects,  # noqa: B023  # awaited here
                5.0,
                "a failed connect",
            )
            await wait_until_async(lambda: replica.ejected_until <= loop.time(), 5.0, "the end")
            replica.maintain()  # what the upkeep does every second: connect again
        await wait_until_async(lambda: ejections("connect_failed") - before >= 6, 5.0, "more")
        await server.start(port)
        await wait_until_async(lambda: replica.ejected_until <= loop.time(), 5.0, "its end")
        await client.call(methods.PING, pb.PingRequest())
        lines = [r.getMessage() for r in caplog.records if r.name == "services.http.replicas"]
        went = [line for line in lines if "ejected" in line]
        back = [line for line in lines if "answers again" in line]
        assert len(went) == 1, lines
        assert len(back) == 1, lines
    finally:
        await client.close()
        await server.stop()


async def test_replicas_still_connected_are_called_while_discovery_lists_none(
    servers: Servers, caplog: pytest.LogCaptureFixture
) -> None:
    """After a long etcd outage every lease has lapsed: until the replicas register again,
    those still connected answer, rather than every call failing no_replica."""
    first = await servers.add()
    second = await servers.add()
    await servers.client.call(methods.PING, pb.PingRequest())
    replicas = dict(servers.client.replicas)
    await wait_until_async(
        lambda: all(replica.connected for replica in replicas.values()), 5.0, "both connected"
    )
    caplog.set_level(logging.INFO, logger="services.http.unlisted_replicas")
    servers.client.update_replicas({})
    servers.client.update_replicas({})  # every change of the empty prefix: one line in all
    for _ in range(20):
        await servers.client.call(methods.PING, pb.PingRequest())
    assert servers.client.readiness() is None
    assert len(first.calls) + len(second.calls) == 21
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "discovery lists no auth replica" in warnings[0].getMessage()

    servers.publish()  # they registered again, with the same records
    assert servers.client.replicas == replicas  # the same pools, not new connections
    assert "no unlisted auth replica is called any more" in caplog.records[-1].getMessage()


async def test_a_replica_kept_without_a_record_is_dropped_once_its_connections_close(
    servers: Servers,
) -> None:
    gone = await servers.add()
    await servers.add()
    await servers.client.start()  # the upkeep drops it
    await wait_until_async(
        lambda: all(replica.connected for replica in servers.client.replicas.values()),
        5.0,
        "both connected",
    )
    servers.client.update_replicas({})
    await gone.stop()
    await wait_until_async(
        lambda: gone.name not in servers.client.replicas, 5.0, "the stopped one dropped"
    )
    assert len(servers.client.replicas) == 1
    for _ in range(10):
        await servers.client.call(methods.PING, pb.PingRequest())


async def test_the_upkeep_goes_on_after_a_step_that_failed(
    servers: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upkeep was its own loop: one exception out of a replica's maintenance (a bug) ended
    it, and from then on no replica without a record was ever dropped, no idle connection
    pinged and the pool gauges froze, for the life of the worker."""
    maintain = Replica.maintain
    failed = asyncio.Event()

    def fails_once(replica: Replica) -> None:
        if not failed.is_set():
            failed.set()
            raise RuntimeError("a bug in one replica's maintenance")
        maintain(replica)

    gone = await servers.add()
    await servers.add()
    monkeypatch.setattr(Replica, "maintain", fails_once)
    await servers.client.start()
    await asyncio.wait_for(failed.wait(), 5.0)
    servers.client.update_replicas({})
    await gone.stop()
    await wait_until_async(
        lambda: gone.name not in servers.client.replicas, 5.0, "the stopped one dropped"
    )


async def test_with_no_replica_connected_an_empty_discovery_retires_them_all(
    servers: Servers,
) -> None:
    server = StubAuthServer(answer_ok, name="never-connected")
    await server.start()
    record = server.record()
    await server.stop()
    servers.client.update_replicas({server.name: record})  # its connect fails
    await wait_until_async(
        lambda: servers.client.replicas[server.name].ejected_until > 0, 5.0, "a failed connect"
    )
    servers.client.update_replicas({})
    assert servers.client.replicas == {}
    with pytest.raises(RpcError) as failure:
        await servers.client.call(methods.PING, pb.PingRequest())
    assert failure.value.status == pb.STATUS_UNAVAILABLE


async def test_a_frozen_replica_kept_without_a_record_is_dropped() -> None:
    """SIGSTOP keeps a replica's connections open, and the last replica never leaves
    rotation: kept for ever, every call would wait its whole deadline."""
    servers = Servers(AuthClient(dataclasses.replace(BASE, call_timeout=2.0)))
    try:
        frozen = await servers.add()
        await servers.client.start()
        await servers.client.call(methods.PING, pb.PingRequest())
        servers.client.update_replicas({})
        assert frozen.name in servers.client.replicas
        frozen.pause()
        stuck: list[asyncio.Task[pb.PingReply]] = []

        def called_and_dropped() -> bool:
            # Traffic goes on meanwhile: a call every poll, each stuck on the frozen replica.
            stuck.append(asyncio.create_task(servers.client.call(methods.PING, pb.PingRequest())))
            return frozen.name not in servers.client.replicas

        await wait_until_async(called_and_dropped, 5.0, "the frozen one dropped", interval=0.05)
        with pytest.raises(RpcError) as failure:
            await servers.client.call(methods.PING, pb.PingRequest())
        assert failure.value.reason == "no_replica"
        assert servers.client.readiness() is not None
        frozen.resume()
        await asyncio.gather(*stuck, return_exceptions=True)
    finally:
        await servers.stop()


async def test_the_first_replica_to_register_again_does_not_take_every_call(
    servers: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After an etcd outage the replicas register again one by one: the others stay called,
    unlisted, for a grace, and are dropped if their records do not come back within it."""
    first = await servers.add()
    second = await servers.add()
    await servers.client.call(methods.PING, pb.PingRequest())
    replicas = servers.client.replicas
    await wait_until_async(
        lambda: all(replica.connected for replica in replicas.values()), 5.0, "both connected"
    )
    servers.client.update_replicas({})
    monkeypatch.setattr(unlisted_replicas, "GRACE_SECONDS", 0.5)
    servers.client.update_replicas({first.name: first.record()})  # the first one is back
    assert set(servers.client.replicas) == {first.name, second.name}
    for _ in range(200):
        await servers.client.call(methods.PING, pb.PingRequest())
    assert len(second.calls) > 50, calls_per_server(servers)
    await servers.client.start()  # the upkeep ends the grace
    await wait_until_async(
        lambda: second.name not in servers.client.replicas, 5.0, "the unlisted one dropped"
    )
    assert set(servers.client.replicas) == {first.name}


async def test_a_connection_outage_during_an_open_method_outage_has_its_own_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A method's outage can stay open long (no call of it comes): a later lost connection
    must still be logged, and its end must not be taken for the method's."""
    servers = Servers(AuthClient(dataclasses.replace(BASE, eject_seconds=0.01)))
    try:
        server = await servers.add(answers())
        caplog.set_level(logging.INFO, logger="services.http.replicas")
        replica = servers.client.replicas[server.name]
        register = methods.REGISTER.number
        replica.eject("internal_errors", "sign-ups fail", failing_method=register)
        loop = asyncio.get_running_loop()
        await wait_until_async(lambda: replica.ejected_until <= loop.time(), 5.0, "its end")
        replica.eject("connection_lost", "the connection broke")
        await wait_until_async(lambda: replica.ejected_until <= loop.time(), 5.0, "its end")
        await servers.client.call(methods.PING, pb.PingRequest())  # not a sign-up
        lines = [r.getMessage() for r in caplog.records if r.name == "services.http.replicas"]
        assert len([line for line in lines if "ejected" in line]) == 2, lines
        back = [line for line in lines if "answers again" in line]
        assert len(back) == 1 and "register" not in back[0], lines
    finally:
        await servers.stop()


async def test_an_unlisted_replica_is_not_dropped_for_an_ejection(servers: Servers) -> None:
    """An ejection (one failed connect while the pool grows, five INTERNAL answers to one
    method) moves calls off a replica for GATEHOUSE_EJECT_SECONDS: for an unlisted one it must
    not mean removal until its record comes back."""
    server = await servers.add()
    await servers.client.call(methods.PING, pb.PingRequest())
    replica = servers.client.replicas[server.name]
    await wait_until_async(lambda: replica.connected, 5.0, "connected")
    replica.eject("connect_failed", "one connect of a growing pool failed")
    rule = unlisted_replicas.UnlistedReplicas(BASE)
    assert rule.why_dropped(replica, asyncio.get_running_loop().time()) is None
    server.break_connections()
    await wait_until_async(lambda: not replica.connected, 5.0, "its connection lost")
    assert rule.why_dropped(replica, asyncio.get_running_loop().time()) is not None
