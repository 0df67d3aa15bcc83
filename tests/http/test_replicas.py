"""The per-replica connection pool, against real RPC servers on loopback."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest

from devstack.ports import free_port, wait_until_async
from devstack.rpc_tls import RpcCertificates
from services.contract import auth_pb2 as pb
from services.foundation.discovery import ServiceRecord
from services.foundation.rpc.client import CallFailed
from services.foundation.rpc.framing import FrameDecoder, encode_frame
from services.foundation.rpc.protocol import PROTOCOL_MAX, hello
from services.foundation.rpc.tls import TlsFiles, server_context
from services.http.replicas import GROW_AT_IN_FLIGHT, PING_SLOTS, Replica
from services.http.settings import HttpSettings
from tests.http.gateway import TEST_CSRF_SECRET
from tests.http.stub_auth_server import Answer, StubAuthServer

BASE = HttpSettings(
    pool_min_connections=1,
    pool_max_connections=3,
    connect_timeout=1.0,
    call_timeout=5.0,
    pool_idle_timeout=60.0,
    eject_seconds=30.0,
    csrf_secret=TEST_CSRF_SECRET,
)


def settings(**overrides: Any) -> HttpSettings:
    return dataclasses.replace(BASE, **overrides)


async def ping(replica: Replica, timeout: float = 5.0) -> pb.Envelope:
    return await replica.call(pb.METHOD_PING, b"", timeout=timeout, trace_id="test")


class Gate:
    """A handler that holds every call until released."""

    def __init__(self) -> None:
        self.open = asyncio.Event()

    async def __call__(self, envelope: pb.Envelope) -> Answer:
        await self.open.wait()
        return Answer()


async def test_a_burst_on_a_fresh_replica_opens_one_connection() -> None:
    server = await StubAuthServer().start()
    replica = Replica(server.record(), settings())
    try:
        replies = await asyncio.gather(*(ping(replica) for _ in range(50)))
        assert all(reply.status == pb.STATUS_OK for reply in replies)
        assert server.connections_accepted == 1
        assert replica.outstanding == 0
    finally:
        replica.close()
        await server.stop()


async def test_the_pool_grows_one_connect_at_a_time_up_to_the_maximum() -> None:
    server = await StubAuthServer(delay=0.05).start()
    replica = Replica(server.record(), settings(pool_max_connections=3))
    calls: set[asyncio.Task[pb.Envelope]] = set()

    async def keep_busy() -> bool:
        # Enough concurrent calls that every connection passes the growth threshold.
        while len(calls) < GROW_AT_IN_FLIGHT * 4:
            task = asyncio.create_task(ping(replica))
            calls.add(task)
            task.add_done_callback(calls.discard)
        assert replica.connection_count <= 3
        return replica.connection_count == 3

    try:
        await wait_until_async(keep_busy, 10.0, "the pool to grow to 3 connections")
        await asyncio.gather(*calls)
        assert server.connections_accepted == 3
    finally:
        replica.close()
        await server.stop()


async def test_idle_extra_connections_close_down_to_the_minimum() -> None:
    server = await StubAuthServer(delay=0.02).start()
    replica = Replica(server.record(), settings(pool_max_connections=2, pool_idle_timeout=0.2))
    try:
        while replica.connection_count < 2:
            await asyncio.gather(*(ping(replica) for _ in range(GROW_AT_IN_FLIGHT * 2)))

        def trimmed() -> bool:
            replica.maintain()
            return replica.connection_count == 1

        await wait_until_async(trimmed, 5.0, "the idle extra connection to close")
        await wait_until_async(
            lambda: server.open_connections == 1, 5.0, "the server to see it close"
        )
        assert (await ping(replica)).status == pb.STATUS_OK
    finally:
        replica.close()
        await server.stop()


async def test_a_kept_connection_idle_for_the_pool_idle_timeout_is_pinged() -> None:
    server = await StubAuthServer().start()
    replica = Replica(server.record(), settings(pool_idle_timeout=0.05))
    try:
        assert (await ping(replica)).status == pb.STATUS_OK
        calls_before = server.calls_of(pb.METHOD_PING)

        def pinged_three_times() -> bool:
            replica.maintain()
            return server.calls_of(pb.METHOD_PING) >= calls_before + 3

        await wait_until_async(pinged_three_times, 5.0, "three keepalive pings")
        # The same connection, kept and pinged: never closed and reopened.
        assert server.connections_accepted == 1
        assert replica.connection_count == 1
    finally:
        replica.close()
        await server.stop()


async def test_a_connection_used_within_the_pool_idle_timeout_is_not_pinged() -> None:
    server = await StubAuthServer().start()
    replica = Replica(server.record(), settings(pool_idle_timeout=60.0))
    try:
        assert (await ping(replica)).status == pb.STATUS_OK
        for _ in range(20):
            replica.maintain()
        assert (await ping(replica)).status == pb.STATUS_OK
        assert server.calls_of(pb.METHOD_PING) == 2  # the test's own two
    finally:
        replica.close()
        await server.stop()


async def test_maintain_opens_the_minimum_connections() -> None:
    server = await StubAuthServer().start()
    replica = Replica(server.record(), settings(pool_min_connections=2, pool_max_connections=2))
    try:

        def filled() -> bool:
            replica.maintain()
            return replica.connection_count == 2

        await wait_until_async(filled, 5.0, "two connections to be opened")
        assert server.connections_accepted == 2
    finally:
        replica.close()
        await server.stop()


async def test_a_broken_connection_fails_its_calls_fast_and_ejects_the_replica() -> None:
    gate = Gate()
    server = await StubAuthServer(gate).start()
    replica = Replica(server.record(), settings(call_timeout=10.0))
    try:
        calls = [asyncio.create_task(ping(replica, timeout=10.0)) for _ in range(5)]
        await wait_until_async(lambda: len(server.calls) == 5, 5.0, "the server to receive 5 calls")
        started = time.monotonic()
        server.break_connections()
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert time.monotonic() - started < 1.0
        for result in results:
            assert isinstance(result, CallFailed)
            assert result.reason == "connection_lost"
            assert result.sent is True
        assert replica.ejected_until > asyncio.get_running_loop().time() + 25
        assert replica.connection_count == 0
    finally:
        gate.open.set()
        replica.close()
        await server.stop()


async def test_a_connection_the_server_closes_while_idle_does_not_eject() -> None:
    server = await StubAuthServer().start()
    replica = Replica(server.record(), settings())
    try:
        await ping(replica)
        server.break_connections()
        await wait_until_async(
            lambda: replica.connection_count == 0, 5.0, "the pool to drop the connection"
        )
        assert replica.ejected_until == 0.0
        assert (await ping(replica)).status == pb.STATUS_OK
    finally:
        replica.close()
        await server.stop()


@pytest.mark.parametrize("host", ["127.0.0.1", ".", "x\x00y"])  # the last two: no resolver's
async def test_a_failed_connect_fails_the_call_unsent_and_ejects(host: str) -> None:
    nothing_listens = ServiceRecord("gone", host, free_port(), 1, 1, "test", "2026-11-23T00:00:00Z")
    replica = Replica(nothing_listens, settings())
    with pytest.raises(CallFailed) as failure:
        await ping(replica)
    assert failure.value.sent is False
    assert failure.value.reason == "connect_failed"
    assert replica.ejected_until > asyncio.get_running_loop().time()
    replica.close()


async def failed_ping_reason(replica: Replica) -> str:
    try:
        await ping(replica)
    except CallFailed as failure:
        return failure.reason
    return "answered"


async def test_a_connect_to_a_frozen_replica_times_out_without_a_stray_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hung_up = asyncio.Event()

    async def accept_and_say_nothing(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.read()  # a SIGSTOPped process: the kernel accepts, nobody answers
        writer.close()
        hung_up.set()

    frozen = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
    port = frozen.sockets[0].getsockname()[1]
    record = ServiceRecord("frozen", "127.0.0.1", port, 1, 1, "test", "2026-11-23T00:00:00Z")
    replica = Replica(record, settings(connect_timeout=0.1))
    try:
        # No reference to the failure may outlive it (its traceback holds the connection).
        assert await failed_ping_reason(replica) == "connect_timeout"
        await asyncio.wait_for(hung_up.wait(), 5.0)  # the client closed its side
        await wait_until_async(lambda: replica.connection_count == 0, 5.0, "no connection")
        gc.collect()  # an unretrieved exception is logged when its future is collected
        assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
    finally:
        replica.close()
        frozen.close()
        await frozen.wait_closed()


async def test_a_retired_replica_finishes_its_calls_then_closes() -> None:
    gate = Gate()
    server = await StubAuthServer(gate).start()
    replica = Replica(server.record(), settings())
    try:
        calls = [asyncio.create_task(ping(replica)) for _ in range(3)]
        await wait_until_async(lambda: len(server.calls) == 3, 5.0, "the server to receive 3 calls")
        replica.retire()
        assert replica.draining
        assert server.open_connections == 1  # still serving the calls in flight
        gate.open.set()
        replies = await asyncio.gather(*calls)
        assert all(reply.status == pb.STATUS_OK for reply in replies)
        assert replica.closed
        await wait_until_async(
            lambda: server.open_connections == 0, 5.0, "the server to see the close"
        )
    finally:
        replica.close()
        await server.stop()


async def test_calls_beyond_the_advertised_cap_wait_in_the_pool() -> None:
    gate = Gate()
    server = await StubAuthServer(gate, max_calls_in_flight=4).start()
    replica = Replica(server.record(), settings(pool_max_connections=2))
    per_connection = 4 - PING_SLOTS
    try:
        calls = [asyncio.ensure_future(ping(replica, timeout=10.0)) for _ in range(10)]
        await wait_until_async(
            lambda: len(server.calls) == 2 * per_connection, 5.0, "both connections to fill"
        )
        assert replica.connection_count == 2
        assert server.most_calls_on_one_connection == per_connection
        assert replica.outstanding == 10  # the other four wait here, not on the server
        gate.open.set()
        assert all(reply.status == pb.STATUS_OK for reply in await asyncio.gather(*calls))
        assert len(server.calls) == 10
        assert server.most_calls_on_one_connection == per_connection
    finally:
        gate.open.set()
        replica.close()
        await server.stop()


async def test_a_call_waiting_for_a_slot_fails_unsent_at_its_deadline() -> None:
    gate = Gate()
    server = await StubAuthServer(gate, max_calls_in_flight=2).start()
    replica = Replica(server.record(), settings(pool_max_connections=1))
    try:
        held = asyncio.ensure_future(ping(replica, timeout=10.0))
        await wait_until_async(lambda: len(server.calls) == 1, 5.0, "the first call to arrive")
        started = time.monotonic()
        with pytest.raises(CallFailed) as waited:
            await ping(replica, timeout=0.3)
        assert waited.value.reason == "deadline_exceeded" and not waited.value.sent
        assert 0.25 < time.monotonic() - started < 2.0
        assert len(server.calls) == 1
        gate.open.set()
        assert (await held).status == pb.STATUS_OK
        assert (await ping(replica)).status == pb.STATUS_OK  # the slot is free again
    finally:
        gate.open.set()
        replica.close()
        await server.stop()


class ReadsNothing(asyncio.Protocol):
    """A replica that completes the handshake and then reads nothing (frozen, or at its cap)."""

    accepted: ClassVar[list[asyncio.Transport]] = []

    def __init__(self) -> None:
        self.decoder = FrameDecoder()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.accepted.append(self.transport)

    def data_received(self, data: bytes) -> None:
        if self.decoder.feed(data) and self.transport is not None:  # the client's Hello
            self.transport.write(encode_frame(hello("frozen", 1, PROTOCOL_MAX)))
            self.transport.pause_reading()


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "mtls"])
async def test_a_connection_whose_replica_reads_nothing_takes_no_new_call_and_is_closed(
    tls: bool, tmp_path: Path
) -> None:
    """Over TLS the transport's buffer is the TLS layer's, which hands everything on at once:
    there a call that expired unanswered while nothing came back marks the connection."""
    certificates = RpcCertificates.issue(tmp_path) if tls else None
    server_tls = None
    if certificates is not None:
        issued = certificates.server
        server_tls = server_context(TlsFiles(issued.ca_path, issued.cert_path, issued.key_path))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(ReadsNothing, "127.0.0.1", 0, ssl=server_tls)
    port = server.sockets[0].getsockname()[1]
    replica = Replica(
        ServiceRecord("frozen", "127.0.0.1", port, 1, PROTOCOL_MAX, "t", "x"),
        settings(call_timeout=0.5),
        certificates.client_tls() if certificates is not None else None,
    )
    picture = pb.PutBlobRequest(key="1/a.webp", data=b"\0" * (512 * 1024)).SerializeToString()
    try:
        # 20 MiB of requests: more than the loopback socket buffers take.
        failed = await asyncio.gather(
            *(
                replica.call(pb.METHOD_PUT_BLOB, picture, timeout=0.3, trace_id="t")
                for _ in range(40)
            ),
            return_exceptions=True,
        )
        assert all(isinstance(failure, CallFailed) for failure in failed)
        (stalled,) = [c for c in replica._connections if c.stalled_since is not None]
        late = asyncio.create_task(
            replica.call(pb.METHOD_PUT_BLOB, picture, timeout=0.3, trace_id="t")
        )
        await wait_until_async(
            lambda: any(c.in_flight for c in replica._connections), 5.0, "the call to be sent"
        )
        assert stalled.in_flight == 0  # it went over another connection
        with pytest.raises(CallFailed):
            await late

        def maintained_away() -> bool:
            replica.maintain()
            return stalled not in replica._connections

        # Once every call written to it is past its deadline (call_timeout), it is closed,
        # aborted: a graceful close would keep its unsent requests for a peer that reads nothing.
        await wait_until_async(maintained_away, 5.0, "the stalled connection to be closed")
        assert stalled._transport.is_closing()
        assert stalled._transport.get_write_buffer_size() == 0
    finally:
        replica.close()
        server.close()
        for transport in ReadsNothing.accepted:
            transport.abort()
        await server.wait_closed()


async def test_a_stalled_connection_does_not_hide_one_with_room() -> None:
    gate = Gate()
    server = await StubAuthServer(gate, max_calls_in_flight=16).start()
    replica = Replica(server.record(), settings(pool_max_connections=2))
    held: list[asyncio.Task[Any]] = []
    try:
        held.append(asyncio.create_task(ping(replica)))
        await wait_until_async(lambda: replica.connection_count == 1, 5.0, "a first connection")
        stalled = replica._connections[0]
        replica._start_connecting()
        await wait_until_async(lambda: replica.connection_count == 2, 5.0, "a second connection")
        roomy = replica._connections[1]
        held += [asyncio.create_task(roomy.call(pb.METHOD_PING, b"", timeout=5.0)) for _ in "ab"]
        await wait_until_async(lambda: roomy.in_flight == 2, 5.0, "two calls on the second")
        stalled.pause_writing()  # its unsent requests passed the high-water mark
        held.append(asyncio.create_task(ping(replica)))
        # The fewest calls in flight are on the stalled one: the call must go to the other.
        await wait_until_async(lambda: roomy.in_flight == 3, 5.0, "the call on the second")
        assert stalled.in_flight == 1
    finally:
        gate.open.set()
        await asyncio.gather(*held, return_exceptions=True)
        replica.close()
        await server.stop()


async def test_a_call_that_expires_unanswered_does_not_give_up_a_connection_still_answering() -> (
    None
):
    """The stall counts from when the silence was noticed, not from the expired call's send:
    the pool's grace (GATEHOUSE_CALL_TIMEOUT) is left for the answers still due on it."""
    answer_due = asyncio.Event()
    never = asyncio.Event()

    async def slow_then_due(envelope: pb.Envelope) -> Answer:
        await (never if envelope.trace_id == "slow" else answer_due).wait()
        return Answer()

    server = await StubAuthServer(slow_then_due).start()
    # The slow call's timeout passes the pool's grace: stamped at its send, the stall would
    # already be older than the grace when the call expires.
    replica = Replica(
        server.record(), settings(call_timeout=0.2, ping_timeout=0.1, pool_max_connections=1)
    )
    try:
        answer_due.set()
        await ping(replica)  # connected; the answer is in before the calls below go out
        answer_due.clear()
        slow = asyncio.create_task(replica.call(pb.METHOD_PING, b"", timeout=0.3, trace_id="slow"))
        due = asyncio.create_task(replica.call(pb.METHOD_PING, b"", timeout=5.0, trace_id="t"))
        with pytest.raises(CallFailed):
            await slow  # expires with nothing received on the connection since it was sent
        replica.maintain()
        answer_due.set()
        assert (await due).status == pb.STATUS_OK
        assert replica.connection_count == 1
    finally:
        never.set()
        replica.close()
        await server.stop()


async def test_a_full_pool_of_stalled_connections_waits_instead_of_growing() -> None:
    server = await StubAuthServer().start()
    replica = Replica(server.record(), settings(pool_max_connections=1))
    try:
        await ping(replica)
        (stalled,) = replica._connections
        stalled.pause_writing()
        waiting = asyncio.create_task(ping(replica))
        await wait_until_async(lambda: len(replica._room_waiters) == 1, 5.0, "the call to wait")
        assert replica.connection_count == 1 and replica._connecting is None
        stalled.resume_writing()  # it drained: the waiting call goes out on it
        assert (await waiting).status == pb.STATUS_OK
        assert replica.connection_count == 1
    finally:
        replica.close()
        await server.stop()
