"""One client connection to an auth replica: many calls in flight, matched by call_id.

Requests made during one event-loop turn go out in a single write. A call whose deadline
passes fails with reason `deadline_exceeded`; its late answer, if any, is dropped quietly.
Each request carries this process's wall clock at sending (`sent_at_unix_ms`), so a server
that reads it only after the deadline (it was frozen meanwhile) refuses it unrun.
A call whose caller is cancelled after its request left tells the server with METHOD_CANCEL
(protocol 2), so work the server has not started for it is skipped; from protocol 5 the call
stays counted in `in_flight` (against the server's cap) until the server answers that it is
done with it, or its deadline passes.
When the connection breaks, every call in flight fails at once with `sent` telling whether
its request had reached the socket, so the caller knows what is safe to retry.
The server's Hello may cap the calls in flight on the connection (`max_calls_in_flight`); the
connection does not enforce it (a server at its cap merely stops reading): the pool that
chooses connections (services.http.replicas) keeps calls beyond it waiting on its side, and
sends none to a connection whose server reads or answers nothing (`stalled_since`); closing
such a connection discards its unsent requests.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from services.contract import auth_pb2 as pb
from services.foundation.rpc.framing import (
    DEFAULT_MAX_FRAME_BYTES,
    MAX_HELLO_FRAME_BYTES,
    FrameDecoder,
    FramingError,
    encode_frame,
)
from services.foundation.rpc.protocol import (
    CANCEL_SINCE,
    CANCELLED_ANSWER_SINCE,
    PROTOCOL_MAX,
    PROTOCOL_MIN,
    ProtocolMismatch,
    RpcError,
    decode_hello,
    hello,
    negotiate,
)

# Requests written but not yet taken by the kernel past which a plaintext connection reports
# itself stalled (with TLS this buffer is the TLS layer's, which passes everything on at once:
# there a call that expires unanswered while nothing at all came back says it).
WRITE_HIGH_WATER_BYTES = 1024 * 1024


class CallFailed(RpcError):
    """The call got no answer. `sent`: its request may have reached the server."""

    def __init__(self, reason: str, message: str, *, sent: bool) -> None:
        super().__init__(pb.STATUS_UNAVAILABLE, message, reason)
        self.sent = sent


@dataclass(frozen=True)
class ClientTls:
    """How a client speaks mutual TLS: its context (services.foundation.rpc.tls) and the name
    every server's certificate must carry, whatever address the client dials."""

    context: ssl.SSLContext
    server_name: str


class _PendingCall:
    __slots__ = ("future", "sent", "sent_at", "timer")

    def __init__(self, future: asyncio.Future[pb.Envelope], timer: asyncio.TimerHandle) -> None:
        self.future = future
        self.timer = timer
        self.sent = False
        self.sent_at = 0.0  # loop time


class RpcConnection(asyncio.Protocol):
    def __init__(self, *, agent: str, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self._loop = asyncio.get_running_loop()
        self._agent = agent
        self._max_frame_bytes = max_frame_bytes
        # A server's Hello is a few dozen bytes: a larger first frame is refused before it is
        # read into memory (the server holds its clients to the same, server.py).
        self._decoder = FrameDecoder(min(MAX_HELLO_FRAME_BYTES, max_frame_bytes))
        self._transport: asyncio.Transport | None = None
        self._handshake: asyncio.Future[int] = self._loop.create_future()
        self._calls: dict[int, _PendingCall] = {}
        self._unsent: list[tuple[int, bytes]] = []
        self._flush_scheduled = False
        self._call_ids = itertools.count(1)
        self._closed_reason: str | None = None
        self.protocol_version = 0
        self.max_calls_in_flight = 0  # the server's cap from its Hello; 0: none said
        self.last_used = self._loop.time()
        self.on_closed: Callable[[RpcConnection, str], None] | None = None
        # Since when the unsent requests are above WRITE_HIGH_WATER_BYTES.
        self._write_blocked_since: float | None = None
        # Since when the server has sent nothing, when a call written since then expired.
        self._silent_since: float | None = None
        self._last_received_at = self._loop.time()
        # Called when a call may fit again: the connection is no longer stalled, or a cancelled
        # call's slot is free.
        self.on_room: Callable[[], None] | None = None

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        connect_timeout: float,
        agent: str,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        tls: ClientTls | None = None,
        unix_path: str | None = None,
    ) -> RpcConnection:
        """Connect (over mutual TLS with `tls`; to the Unix socket at `unix_path` instead of
        host:port when given) and complete the handshake, or raise CallFailed(sent=False)."""
        loop = asyncio.get_running_loop()

        def protocol() -> RpcConnection:
            return cls(agent=agent, max_frame_bytes=max_frame_bytes)

        where = unix_path if unix_path is not None else f"{host}:{port}"

        try:
            async with asyncio.timeout(connect_timeout):
                if unix_path is not None:
                    _, connection = await loop.create_unix_connection(protocol, unix_path)
                else:
                    _, connection = await loop.create_connection(
                        protocol,
                        host,
                        port,
                        ssl=tls.context if tls else None,
                        server_hostname=tls.server_name if tls else None,
                    )
                try:
                    await asyncio.shield(connection._handshake)
                except BaseException:
                    connection.close()
                    raise
        except TimeoutError:
            raise CallFailed(
                "connect_timeout",
                f"no handshake with {where} within {connect_timeout}s",
                sent=False,
            ) from None
        except ssl.SSLError as exc:
            raise CallFailed("tls_failed", f"TLS with {where} failed: {exc}", sent=False) from exc
        except OSError as exc:
            raise CallFailed(
                "connect_failed", f"cannot connect to {where}: {exc}", sent=False
            ) from exc
        except ProtocolMismatch as exc:
            raise CallFailed("protocol_mismatch", f"{where}: {exc}", sent=False) from exc
        except ValueError as exc:  # a host name no resolver takes (UnicodeError: a bad label)
            raise CallFailed(
                "connect_failed", f"cannot connect to {where!r}: {exc}", sent=False
            ) from exc
        return connection

    @property
    def transport(self) -> asyncio.Transport | None:
        return self._transport

    @property
    def in_flight(self) -> int:
        return len(self._calls)

    @property
    def stalled_since(self) -> float | None:
        """Since when its server has read or answered nothing of what it was sent (frozen, or
        at its cap of calls in flight); None while it does."""
        blocked, silent = self._write_blocked_since, self._silent_since
        if blocked is None or silent is None:
            return silent if blocked is None else blocked  # every call asks: no list for it
        return min(blocked, silent)

    @property
    def is_open(self) -> bool:
        return (
            self._closed_reason is None
            and self._handshake.done()
            and not self._handshake.exception()
        )

    async def call(
        self, method: int, payload: bytes, *, timeout: float, trace_id: str = ""
    ) -> pb.Envelope:
        """Send one request and wait for its answer (of any status)."""
        if self._closed_reason is not None:
            raise CallFailed("connection_closed", self._closed_reason, sent=False)
        call_id = next(self._call_ids)
        envelope = pb.Envelope(
            call_id=call_id,
            # The method table's numbers are plain ints; the stub types the field by its enum.
            method=typing.cast("pb.Method", method),
            deadline_ms=max(1, int(timeout * 1000)),
            sent_at_unix_ms=int(time.time() * 1000),
            trace_id=trace_id,
            payload=payload,
        )
        body = envelope.SerializeToString()
        if len(body) > self._max_frame_bytes:
            # The server would close the connection, failing every other call on it.
            raise CallFailed(
                "frame_too_large",
                f"a request of {len(body)} bytes exceeds the frame limit of "
                f"{self._max_frame_bytes} bytes",
                sent=False,
            )
        future: asyncio.Future[pb.Envelope] = self._loop.create_future()
        timer = self._loop.call_later(timeout, self._expire, call_id)
        self._calls[call_id] = _PendingCall(future, timer)
        self._unsent.append((call_id, encode_frame(body)))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        self.last_used = self._loop.time()
        held_by_server = False
        try:
            return await future
        except asyncio.CancelledError:
            pending = self._calls.get(call_id)
            if pending is not None and pending.sent:
                held_by_server = self._send_cancel(call_id)
            raise
        finally:
            # A cancelled call the server may still run keeps its slot: its answer or its
            # deadline (_deliver, _expire) frees it.
            pending = None if held_by_server else self._calls.pop(call_id, None)
            if pending is not None:
                pending.timer.cancel()
            # A failure's traceback holds this frame, and the future holds the failure: a cycle
            # only the garbage collector frees, which the HTTP workers run rarely.
            del future, pending

    def close(self, reason: str = "closed by client") -> None:
        if self._transport is not None:
            if self.stalled_since is not None:
                self._transport.abort()  # a peer that reads nothing would hold them for ever
            else:
                self._transport.close()
        self._fail_all(reason)

    # asyncio.Protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = typing.cast(asyncio.Transport, transport)
        self._transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER_BYTES)
        transport.write(encode_frame(hello(self._agent)))

    def pause_writing(self) -> None:
        self._write_blocked_since = self._loop.time()

    def resume_writing(self) -> None:
        self._write_blocked_since = None
        self._room_freed()

    def _room_freed(self) -> None:
        if self.on_room is not None:
            self.on_room()

    def data_received(self, data: bytes) -> None:
        self._last_received_at = self._loop.time()
        if self._silent_since is not None:
            self._silent_since = None
            self._room_freed()
        decoder = self._decoder
        try:
            decoder.append(data)
            while (body := decoder.next_frame()) is not None:
                if not self._handshake.done():
                    self._complete_handshake(body)
                    decoder.max_frame_bytes = self._max_frame_bytes
                else:
                    self._deliver(pb.Envelope.FromString(body))
            # Else the last reply's bytes stay held until the server sends more: a picture's
            # MiB, for as long as a pooled connection idles.
            decoder.compact()
        except (FramingError, DecodeError, ProtocolMismatch) as exc:
            self._abort(f"bad data from server: {exc}", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail_all(f"connection lost: {exc}" if exc else "connection closed by server")

    # internals

    def _complete_handshake(self, body: bytes) -> None:
        server_hello = decode_hello(body)
        if server_hello.error:
            raise ProtocolMismatch(f"server refused the connection: {server_hello.error}")
        self.protocol_version = negotiate(
            PROTOCOL_MIN, PROTOCOL_MAX, server_hello.protocol_min, server_hello.protocol_max
        )
        self.max_calls_in_flight = server_hello.max_calls_in_flight
        self._handshake.set_result(self.protocol_version)

    def _deliver(self, envelope: pb.Envelope) -> None:
        if envelope.call_id == 0:
            raise ProtocolMismatch(f"server reported a connection error: {envelope.message}")
        pending = self._calls.pop(envelope.call_id, None)
        if pending is None:
            return  # answer to a call that already gave up
        pending.timer.cancel()
        if not pending.future.done():
            pending.future.set_result(envelope)
        elif pending.future.cancelled():
            self._room_freed()  # a cancelled call the server is done with

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._transport is None or self._closed_reason is not None:
            return
        frames: list[bytes] = []
        for call_id, frame in self._unsent:
            pending = self._calls.get(call_id)
            if pending is None:
                continue  # expired before it was written
            pending.sent = True
            pending.sent_at = self._loop.time()
            frames.append(frame)
        self._unsent.clear()
        if frames:
            self._transport.write(b"".join(frames))

    def _send_cancel(self, call_id: int) -> bool:
        """Tell the server; True when it will answer once it is done with the call."""
        if self.protocol_version < CANCEL_SINCE or self._closed_reason is not None:
            return False
        if self._transport is None or self._transport.is_closing():
            return False
        cancel = pb.Envelope(call_id=call_id, method=pb.METHOD_CANCEL)
        # Straight to the socket: the request it cancels has already been written.
        self._transport.write(encode_frame(cancel.SerializeToString()))
        return self.protocol_version >= CANCELLED_ANSWER_SINCE

    def _expire(self, call_id: int) -> None:
        pending = self._calls.pop(call_id, None)
        if pending is None:
            return
        if pending.sent and self._last_received_at < pending.sent_at:
            # Stamped now, not at the send: a slow answer still due on it gets the pool's
            # whole grace (GATEHOUSE_CALL_TIMEOUT) before the connection is given up.
            self._silent_since = self._silent_since or self._loop.time()
        if not pending.future.done():
            pending.future.set_exception(
                CallFailed("deadline_exceeded", "no answer before the deadline", sent=pending.sent)
            )
        elif pending.future.cancelled():
            self._room_freed()  # a cancelled call whose end the server never told

    def _abort(self, reason: str, exc: Exception) -> None:
        if not self._handshake.done():
            self._handshake.set_exception(
                exc if isinstance(exc, ProtocolMismatch) else ProtocolMismatch(reason)
            )
        self.close(reason)

    def _fail_all(self, reason: str) -> None:
        if self._closed_reason is not None:
            return
        self._closed_reason = reason
        if not self._handshake.done():
            self._handshake.set_exception(ConnectionResetError(reason))
            # Nobody waits for it when the connect already timed out (a frozen server): mark
            # the failure seen, or asyncio logs "Future exception was never retrieved".
            self._handshake.exception()
        calls, self._calls = self._calls, {}
        self._unsent.clear()
        for pending in calls.values():
            pending.timer.cancel()
            if not pending.future.done():
                pending.future.set_exception(
                    CallFailed("connection_lost", reason, sent=pending.sent)
                )
        if self.on_closed is not None:
            self.on_closed(self, reason)
