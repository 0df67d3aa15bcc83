"""A call that fails leaves nothing that only the garbage collector can free.

The HTTP workers run the collector rarely (services.foundation.heap): what reference counting
does not free stays until the next collection of its generation. A successful read leaves
nothing; these check the failures that come in numbers (wrong passwords, replicas answering
OVERLOADED or DRAINING, connections breaking, replicas refusing connections), whose errors'
tracebacks used to hold the frames that held them.

Each scenario runs on uvloop, as the workers do (the asyncio loop leaves closed socket
transports in cycles of its own), in a loop of its own, and counts what a collection finds
with gc.DEBUG_SAVEALL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest
import uvloop
from google.protobuf.message import Message

from devstack.ports import wait_until_async
from services.contract import auth_methods as methods
from services.contract import auth_pb2 as pb
from services.contract.method import Method
from services.foundation.rpc.protocol import RpcError
from services.http.account_calls import AccountCalls
from services.http.api import wrong_credentials
from services.http.auth_client import AuthClient
from services.http.callers import Caller
from services.http.errors import ApiError
from tests.collector import collections_paused
from tests.http.stub_auth_server import Answer, Handler, StubAuthServer
from tests.http.test_auth_client import BASE, PROFILE, REGISTER, Servers

ResultT = TypeVar("ResultT")
CALLS = 8
CONNECT_TIMEOUT = 10.0


def on_uvloop(scenario: Callable[[], Coroutine[Any, Any, ResultT]]) -> ResultT:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(scenario())


async def failures_and_garbage(
    call: Callable[[], Awaitable[object]], failure: type[Exception]
) -> tuple[int, Counter[str]]:
    """How many of CALLS calls raised `failure`, and what only a collection freed after them."""
    debug = gc.get_debug()
    gc.collect()
    gc.garbage.clear()
    failures = 0
    with collections_paused():
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for _ in range(CALLS):
                try:
                    await call()
                except failure:
                    failures += 1
            gc.collect()
            garbage = Counter(type(thing).__name__ for thing in gc.garbage)
        finally:
            gc.set_debug(debug)
            gc.garbage.clear()
    return failures, garbage


async def with_replicas(
    handler: Handler,
    measured: Callable[[Servers], Awaitable[tuple[int, Counter[str]]]],
) -> tuple[int, Counter[str]]:
    # Connections are opened and past their handshake before the calls measured: a handshake
    # that a loaded machine delays past the connect timeout would eject a replica and measure
    # that failure instead (a rare one, not one that comes in numbers).
    servers = Servers(AuthClient(dataclasses.replace(BASE, connect_timeout=CONNECT_TIMEOUT)))
    try:
        await servers.add(handler)
        await servers.add(handler)
        await servers.client.call(methods.PING, pb.PingRequest())
        await wait_until_async(
            lambda: all(replica.connected for replica in servers.client.replicas.values()),
            CONNECT_TIMEOUT,
            "both replicas connected",
        )
        return await measured(servers)
    finally:
        await servers.stop()


async def read_then_write(servers: Servers) -> None:
    try:
        await servers.client.call(methods.GET_PROFILE, PROFILE)
    finally:
        await servers.client.call(methods.REGISTER, REGISTER)


def answering(status: pb.Status) -> Handler:
    async def handler(envelope: pb.Envelope) -> Answer:
        if envelope.method == pb.METHOD_PING:
            return Answer()
        return Answer(status, message="refused", retry_after_seconds=1)

    return handler


@pytest.mark.parametrize(
    ("status", "method", "request_message"),
    [
        (pb.STATUS_OVERLOADED, methods.GET_PROFILE, PROFILE),  # a read: hedged, retried once
        (pb.STATUS_DRAINING, methods.REGISTER, REGISTER),  # a write: sent again once
    ],
)
def test_calls_answered_with_a_refusal_leave_no_garbage(
    status: pb.Status, method: Method[Any, Any], request_message: Message
) -> None:
    async def measured(servers: Servers) -> tuple[int, Counter[str]]:
        return await failures_and_garbage(
            lambda: servers.client.call(method, request_message), RpcError
        )

    failures, garbage = on_uvloop(lambda: with_replicas(answering(status), measured))
    assert failures == CALLS
    assert garbage == Counter()


def test_wrong_passwords_leave_no_garbage() -> None:
    async def measured(servers: Servers) -> tuple[int, Counter[str]]:
        accounts = AccountCalls(servers.client)
        return await failures_and_garbage(
            lambda: accounts.log_in("ann", "wrong", wrong_credentials, Caller()), ApiError
        )

    failures, garbage = on_uvloop(
        lambda: with_replicas(answering(pb.STATUS_UNAUTHENTICATED), measured)
    )
    assert failures == CALLS
    assert garbage == Counter()


def test_calls_whose_connections_break_leave_no_garbage() -> None:
    breaking: list[StubAuthServer] = []  # the replicas, once their connections are to break

    async def break_connections(envelope: pb.Envelope) -> Answer:
        if envelope.method != pb.METHOD_PING:
            for server in breaking:
                server.break_connections()  # the answer below has nowhere to go
        return Answer()

    async def measured(servers: Servers) -> tuple[int, Counter[str]]:
        await servers.client.call(methods.GET_PROFILE, PROFILE)  # connections open
        breaking.extend(servers.servers)
        return await failures_and_garbage(lambda: read_then_write(servers), RpcError)

    failures, garbage = on_uvloop(lambda: with_replicas(break_connections, measured))
    assert failures == CALLS
    assert garbage == Counter()


def test_calls_to_replicas_that_refuse_connections_leave_no_garbage() -> None:
    async def measured(servers: Servers) -> tuple[int, Counter[str]]:
        await servers.client.call(methods.GET_PROFILE, PROFILE)  # known and connected
        for server in servers.servers:
            await server.stop()  # the port closed: every new connection is refused

        return await failures_and_garbage(lambda: read_then_write(servers), RpcError)

    async def ok(envelope: pb.Envelope) -> Answer:
        return Answer()

    failures, garbage = on_uvloop(lambda: with_replicas(ok, measured))
    assert failures == CALLS
    assert garbage == Counter()
