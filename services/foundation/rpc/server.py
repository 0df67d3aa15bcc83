"""The auth service's TCP server: handshake, framed calls, deadlines, limits and draining.

Each connection is an asyncio.Protocol. After the Hello exchange every frame is an Envelope;
each call runs as its own task through the route of its method (services.foundation.rpc.routes,
which decodes the request and encodes the reply), and the answers produced during one
event-loop turn leave in a single write (one per high-water mark's worth). A METHOD_CANCEL
marks its call abandoned (see services.foundation.rpc.calls); one abandoned before it started
is not run, and an abandoned call gets no answer but, from protocol 5, UNAVAILABLE "cancelled"
once the server is done with it, so its client knows the slot it held is free. A call whose
caller has given up by the time its frame is read (services.foundation.rpc.deadlines) is
answered UNAVAILABLE, reason `deadline_exceeded`, and never run. A connection that sends bytes
that are not frames gets an error Envelope with call_id 0 and is closed; the other connections
are unaffected.

Limits (README "Security"): connections at most in total and per peer address (more are refused
with an error Hello, or with TLS closed before their handshake: with TLS the server accepts
connections itself and counts each one in before its handshake, so connects that never start one
hold no more sockets than the limits allow, and those of one address still in their handshake,
not yet authenticated, have a smaller cap of their own); calls in flight per connection,
advertised in the Hello, and per peer address over all its connections: at either cap the
server holds one call's frame unstarted and reads on for cancels (of that call too); at the next
call's frame it stops reading that connection (its frames wait unparsed) until a call of that
connection, or for the address's cap one of the address, ends. Replies respect the transport's
backpressure: once a connection's unsent replies pass the high-water mark, the server stops
reading it, so no new call starts for a peer that does not read its answers; one that stays
above the mark for the stall timeout, or whose unsent replies pass the hard ceiling, is dropped
and its buffer freed, as is the one holding the most when those of every connection above its
mark together pass the replica's ceiling. Warnings a hostile peer can cause per connection or per call are rate-limited
(log_throttle).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
import typing
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from services.contract import auth_pb2 as pb
from services.contract.method import Method
from services.foundation.log_throttle import RepeatedWarnings
from services.foundation.logs import trace_id_var
from services.foundation.metrics import LabelledChildren
from services.foundation.rpc import server_metrics as metrics
from services.foundation.rpc.calls import CallScope, current_call
from services.foundation.rpc.deadlines import call_budget
from services.foundation.rpc.framing import (
    MAX_HELLO_FRAME_BYTES,
    FrameDecoder,
    FramingError,
    encode_frame,
)
from services.foundation.rpc.peers import PeerCounts
from services.foundation.rpc.protocol import (
    CANCELLED_ANSWER_SINCE,
    CANCELLED_REASON,
    PROTOCOL_MAX,
    PROTOCOL_MIN,
    STATUS_NAMES,
    ProtocolMismatch,
    RpcError,
    decode_hello,
    hello,
    negotiate,
)
from services.foundation.rpc.routes import Route, by_number
from services.foundation.rpc.tls import peer_identity
from services.foundation.rpc.unix_socket import SocketFile, listen_privately
from services.foundation.tasks import every, stop_task

log = logging.getLogger(__name__)
# A frozen replica finds every call it had queued expired at once: one line per 10 s.
_expired_warnings = RepeatedWarnings(log, 10.0)
# Refused and dropped connections, and failing calls: a flood of them logs one line per kind
# and 10 s, counting those held back; the metrics count every one.
_connection_warnings = RepeatedWarnings(log, 10.0)

# Whether the caller of identity (a client certificate's URI SAN; a Unix socket listener's, see
# start_unix; None over TCP without TLS) may call a method. A call it may not make is answered
# PERMISSION_DENIED and never run.
Authorization = Callable[[str | None, Method[Any, Any]], bool]

SWEEP_INTERVAL = 0.5
# After a failed accept (out of file descriptors, most often), as asyncio's own servers wait.
ACCEPT_RETRY_SECONDS = 1.0
# What close() waits for the calls it cancels (a handler ends at its next await).
CLOSE_CALLS_TIMEOUT = 5.0
_HANDLER_SECONDS = LabelledChildren(metrics.RPC_HANDLER_SECONDS)
# The clock calls' sent times are compared with; a module attribute so tests can skew it.
wall_clock = time.time


@dataclass(frozen=True)
class ServerLimits:
    max_connections: int
    max_frame_bytes: int
    handshake_timeout: float  # also: time allowed to finish a frame once started
    idle_timeout: float
    max_connections_per_peer: int
    max_calls_per_connection: int
    write_high_water_bytes: int  # unsent replies past which the connection is not read
    write_stall_timeout: float  # seconds above the high-water mark before it is dropped
    max_write_buffer_bytes: int  # unsent replies past which it is dropped at once
    # Unsent replies of all the connections above their high-water mark together, past which
    # the one holding the most is dropped; 0: no such bound.
    max_write_buffer_total_bytes: int = 0
    # Calls count as expired this much before their caller's deadline (deadlines.py).
    clock_skew_allowance: float = 0.0
    # With TLS: connections of one address still in their TLS handshake (not yet
    # authenticated) at once; 0: only max_connections_per_peer bounds them.
    max_tls_handshakes_per_peer: int = 0
    # Calls in flight of one address over all its connections; 0: only the per-connection cap.
    # Without it one peer could run its connection share times the per-connection cap at once.
    max_calls_per_peer: int = 0
    # With TLS, at the connection cap: how long a connection must have been in its handshake
    # before a connect of a lighter address may close it (_handshake_to_evict_for). A caller's
    # handshake takes milliseconds; a connect that never starts one grows old.
    handshake_evictable_after: float = 1.0
    # Frames over LARGE_FRAME_BYTES (pictures) still arriving, or held unstarted at a call cap,
    # by their announced size: of one address, and of the replica. A connection whose large
    # frames would pass either is closed; small frames never count, so a flood of large ones
    # costs only uploads.
    max_large_frame_bytes_per_peer: int = 8 * 1024 * 1024
    max_large_frame_bytes_total: int = 64 * 1024 * 1024


# Larger frames count against the limits on large frames under way (ServerLimits).
LARGE_FRAME_BYTES = 64 * 1024


def _large(frame_bytes: int) -> int:
    """What a frame of `frame_bytes` counts against the limits on large frames."""
    return frame_bytes if frame_bytes > LARGE_FRAME_BYTES else 0


class RpcServer:
    def __init__(
        self,
        routes: Iterable[Route[Any, Any]],
        limits: ServerLimits,
        agent: str,
        *,
        tls: ssl.SSLContext | None = None,
        authorization: Authorization | None = None,
    ) -> None:
        self._routes = by_number(routes)
        self.limits = limits
        self.agent = agent
        self._tls = tls
        self.authorization = authorization
        self._connections: set[_Connection] = set()
        self._peers = PeerCounts(limits.max_connections_per_peer)
        self._handshaking = PeerCounts(limits.max_tls_handshakes_per_peer or 2**31)
        self._peer_calls = PeerCounts(limits.max_calls_per_peer or 2**31)
        # Connections holding a call (or not read) because their address is at its call cap, in
        # the order they began to wait (a dict as an ordered set): the first is offered room first.
        self._waiting_for_room: dict[str, dict[_Connection, None]] = {}
        self._calls_peak = 0
        # Announced bytes of the large frames under way, by address and in all.
        self._large_frames_by_peer: dict[str, int] = {}
        self._large_frames_total = 0
        self._server: asyncio.Server | None = None  # plaintext
        self._unix_server: asyncio.Server | None = None  # start_unix
        self._unix_file: SocketFile | None = None
        self._listeners: list[socket.socket] = []  # TLS: accepted by _accept_tls
        self._acceptors: list[asyncio.Task[None]] = []
        # TLS: connections still in their handshake, oldest first (_TlsHandshake).
        self._tls_handshakes: dict[_Connection, _TlsHandshake] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        # Connections whose unsent replies are above the high-water mark (not read meanwhile).
        self._write_blocked: set[_Connection] = set()
        self.draining = False

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def uses_tls(self) -> bool:
        return self._tls is not None

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port; returns the bound port (useful with port 0)."""
        loop = asyncio.get_running_loop()
        if self._tls is None:
            self._server = await loop.create_server(
                lambda: _Connection(self), host, port, backlog=1024
            )
            bound: int = self._server.sockets[0].getsockname()[1]
        else:
            # asyncio's TLS server would tell a protocol of its connection only after the
            # handshake, too late to count it against the limits. Bound as asyncio binds: every
            # address `host` names ("": all interfaces).
            addresses = await loop.getaddrinfo(
                host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
            try:
                for family, *_, address in dict.fromkeys(addresses):
                    listener = socket.create_server(address, family=family, backlog=1024)
                    listener.setblocking(False)
                    self._listeners.append(listener)
                    self._acceptors.append(
                        asyncio.create_task(
                            self._accept_tls(listener, self._tls), name="rpc accept"
                        )
                    )
            except OSError:
                await self.close()  # the addresses bound before the one that failed
                raise
            bound = self._listeners[0].getsockname()[1]
        self._sweeper = asyncio.create_task(
            every(SWEEP_INTERVAL, self._sweep, "the RPC connection sweep"),
            name="rpc connection sweeper",
        )
        return bound

    async def start_unix(self, path: str, identity: str) -> None:
        """Also listen on a Unix socket at `path`, readable and writable by this process's user
        only, whose callers hold `identity` (authorized as a client certificate's would be).
        For a server without TLS: who can open the file is who may call as `identity`. Raises
        UnixSocketError when that cannot be made safely (unix_socket.py)."""
        if self._tls is not None:
            raise ValueError("a Unix socket listener is for a server without TLS")
        listener, self._unix_file = listen_privately(path)
        try:
            self._unix_server = await asyncio.get_running_loop().create_unix_server(
                lambda: _Connection(self, identity=identity), sock=listener
            )
        except BaseException:
            listener.close()
            self._unix_file.remove()
            raise

    async def _accept_tls(self, listener: socket.socket, tls: ssl.SSLContext) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, address = await loop.sock_accept(listener)
            except OSError as exc:
                _connection_warnings.warn(
                    "accept_failed",
                    "cannot accept RPC connections (%s); retrying in %g s",
                    exc,
                    ACCEPT_RETRY_SECONDS,
                )
                await asyncio.sleep(ACCEPT_RETRY_SECONDS)
                continue
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as asyncio's servers
            except OSError:  # reset already
                sock.close()
                continue
            connection = _Connection(self)
            if not connection.admitted_before_tls(address):
                sock.close()
                continue
            task = loop.create_task(
                self._handshake_tls(connection, sock, tls), name="rpc TLS handshake"
            )
            self._tls_handshakes[connection] = _TlsHandshake(task, sock, loop.time())

    async def _handshake_tls(
        self,
        connection: _Connection,
        sock: socket.socket,
        tls: ssl.SSLContext,
    ) -> None:
        """Serve `connection` once its TLS handshake completes (connection_made); uncount it if
        the handshake fails, times out or the server closes first."""
        handshake = self._tls_handshakes.get(connection)
        if handshake is not None:
            handshake.began = True
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: connection,
                sock,
                ssl=tls,
                ssl_handshake_timeout=self.limits.handshake_timeout,
            )
        except OSError as exc:  # TLS errors, a reset, the handshake timeout
            connection.tls_failed(exc)
        except asyncio.CancelledError:
            connection.tls_failed(None)
            raise
        finally:
            self._end_handshake(connection)

    def _end_handshake(self, connection: _Connection) -> None:
        if self._tls_handshakes.pop(connection, None) is not None:
            self._handshaking.remove(connection.peer_address)

    def begin_drain(self) -> None:
        """From now on, new calls are answered DRAINING (not executed) so clients retry elsewhere."""
        self.draining = True
        metrics.DRAINING.set(1)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no call is in flight; False if `timeout` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def close(self) -> None:
        await stop_task(self._sweeper)
        for server in (self._server, self._unix_server):
            if server is not None:
                server.close()
        if self._unix_file is not None:
            self._unix_file.remove()
            self._unix_file = None
        for acceptor in self._acceptors:
            await stop_task(acceptor)
        for listener in self._listeners:
            listener.close()
        for handshake in list(self._tls_handshakes.values()):
            await stop_task(handshake.task)
        for connection in list(self._connections):
            connection.close("server shutting down")
        # Calls still at work (past the drain's grace) end here, not abandoned to the garbage
        # collector once the loop is gone: a coroutine it closes runs its cleanup wherever the
        # collection interrupted, and a metric's lock taken then would never be released.
        calls = [task for connection in self._connections for task in connection.calls_at_work]
        for task in calls:
            task.cancel()
        if calls:
            await asyncio.wait(calls, timeout=CLOSE_CALLS_TIMEOUT)
        for server in (self._server, self._unix_server):
            if server is not None:
                await server.wait_closed()

    # bookkeeping used by connections

    def _admit(
        self, connection: _Connection, peer_address: str, *, before_tls: bool = False
    ) -> str | None:
        """Count a new connection in (`before_tls`: also as one in its TLS handshake); else why
        it is refused."""
        full = len(self._connections) >= self.limits.max_connections
        if full and not before_tls:
            return "too_many_connections"
        if self._peers.at_limit(peer_address):
            return "too_many_from_peer"
        if before_tls and self._handshaking.at_limit(peer_address):
            return "too_many_handshakes_from_peer"
        if full:
            evicted = self._handshake_to_evict_for(peer_address)
            if evicted is None:
                return "too_many_connections"
            self._evict_in_handshake(evicted)
        self._peers.add(peer_address)
        if before_tls:
            self._handshaking.add(peer_address)
        self._connections.add(connection)
        metrics.RPC_CONNECTIONS.inc()
        return None

    def _handshake_to_evict_for(self, peer_address: str) -> _Connection | None:
        """At the connection cap, the connection to close for a TLS connect from
        `peer_address`: the oldest still in its handshake, begun at least
        `handshake_evictable_after` ago, of an address holding more handshakes than
        `peer_address` does. So silent connects from many addresses, each under its own cap,
        cannot keep out a caller that is not hammering the port, and a caller's handshake in
        progress is not cut short."""
        holds = self._handshaking.holds(peer_address)
        evictable_since = asyncio.get_running_loop().time() - self.limits.handshake_evictable_after
        for connection, handshake in self._tls_handshakes.items():
            if handshake.accepted_at > evictable_since:
                return None  # this one and every later one are too young
            if self._handshaking.holds(connection.peer_address) > holds:
                return connection
        return None

    def _evict_in_handshake(self, connection: _Connection) -> None:
        handshake = self._tls_handshakes[connection]
        self._end_handshake(connection)
        connection.tls_evicted()
        handshake.task.cancel()
        if not handshake.began:
            # Cancelled before its first step, the task never runs: nothing else closes it.
            handshake.sock.close()

    def _forget(self, connection: _Connection, peer_address: str) -> None:
        if connection in self._connections:
            self._connections.discard(connection)
            self._peers.remove(peer_address)
            metrics.RPC_CONNECTIONS.dec()

    def hold_large_frame(self, peer_address: str, held: int, wanted: int) -> tuple[str, int] | None:
        """A connection of `peer_address` that held `held` bytes of a large frame under way now
        needs `wanted` (0: none). None when counted so; else the reason and the limit it would
        pass (and what it held is given back)."""
        by_peer = self._large_frames_by_peer.get(peer_address, 0) - held
        total = self._large_frames_total - held
        refusal = None
        if wanted and by_peer + wanted > self.limits.max_large_frame_bytes_per_peer:
            refusal = ("large_frames_from_peer", self.limits.max_large_frame_bytes_per_peer)
        elif wanted and total + wanted > self.limits.max_large_frame_bytes_total:
            refusal = ("large_frames", self.limits.max_large_frame_bytes_total)
        else:
            by_peer += wanted
            total += wanted
        if by_peer:
            self._large_frames_by_peer[peer_address] = by_peer
        else:
            self._large_frames_by_peer.pop(peer_address, None)
        self._large_frames_total = total
        return refusal

    def _note_calls_on_connection(self, count: int) -> None:
        if count > self._calls_peak:
            self._calls_peak = count
            metrics.RPC_CONNECTION_CALLS_PEAK.set(count)

    def peer_at_call_cap(self, peer_address: str) -> bool:
        return self._peer_calls.at_limit(peer_address)

    def wait_for_peer_room(self, connection: _Connection, peer_address: str) -> None:
        """`connection` holds a call back because `peer_address` is at its cap: offer it the
        room the address's next ending call leaves."""
        waiting = self._waiting_for_room.setdefault(peer_address, {})
        if connection not in waiting:
            waiting[connection] = None
            _connection_warnings.warn(
                "calls_per_peer",
                "%s has %d calls in flight over its connections (GATEHOUSE_MAX_CALLS_PER_PEER);"
                " its further calls wait unread",
                peer_address,
                self._peer_calls.limit,
            )

    def stop_waiting(self, connection: _Connection, peer_address: str) -> None:
        waiting = self._waiting_for_room.get(peer_address)
        if waiting is not None:
            waiting.pop(connection, None)
            if not waiting:
                del self._waiting_for_room[peer_address]

    def _peer_call_started(self, peer_address: str) -> None:
        self._peer_calls.add(peer_address)

    def _peer_call_ended(self, peer_address: str) -> None:
        self._peer_calls.remove(peer_address)
        waiting = self._waiting_for_room.get(peer_address)
        while waiting and not self._peer_calls.at_limit(peer_address):
            connection = next(iter(waiting))
            del waiting[connection]
            connection.take_frames_again()
        if (
            waiting is not None
            and not waiting
            and self._waiting_for_room.get(peer_address) is waiting
        ):
            del self._waiting_for_room[peer_address]

    def _call_started(self) -> None:
        self._in_flight += 1
        self._idle.clear()
        metrics.RPC_IN_FLIGHT.inc()

    def _call_finished(self) -> None:
        self._in_flight -= 1
        metrics.RPC_IN_FLIGHT.dec()
        if self._in_flight == 0:
            self._idle.set()

    def write_blocked(self, connection: _Connection, blocked: bool) -> None:
        """`connection`'s unsent replies passed its high-water mark (or fell below it again)."""
        if blocked:
            self._write_blocked.add(connection)
        else:
            self._write_blocked.discard(connection)

    def bound_unsent_replies(self) -> None:
        """While the unsent replies of the blocked connections together pass the replica's
        ceiling, drop the one holding the most: each connection's own ceiling alone would let
        many peers that read nothing hold that ceiling each."""
        ceiling = self.limits.max_write_buffer_total_bytes
        if not ceiling or not self._write_blocked:
            return
        held = {connection: connection.unsent_bytes() for connection in self._write_blocked}
        total = sum(held.values())
        while total > ceiling and held:
            largest = max(held, key=held.__getitem__)
            total -= held.pop(largest)
            largest.drop_for_the_replica(ceiling)

    async def _sweep(self) -> None:
        """Close connections that stalled in the handshake, mid-frame, or went idle."""
        now = asyncio.get_running_loop().time()
        for connection in list(self._connections):
            connection.check_timeouts(now)


_REFUSALS = {
    "too_many_connections": "too many connections (limit {limit}); try another replica",
    "too_many_from_peer": "too many connections from {peer} (limit {limit} per address)",
    "too_many_handshakes_from_peer": (
        "too many TLS handshakes at once from {peer} (limit {limit} per address)"
    ),
}


@dataclass
class _TlsHandshake:
    """A TLS connection accepted and counted in, its handshake not yet complete."""

    task: asyncio.Task[None]
    sock: socket.socket
    accepted_at: float  # the loop's clock
    began: bool = False  # the task has taken the socket (else a cancel leaves it to close)


class _Connection(asyncio.Protocol):
    def __init__(self, server: RpcServer, *, identity: str | None = None) -> None:
        self._server = server
        self._limits = server.limits
        self._loop = asyncio.get_running_loop()
        # Until the Hello is in, frames of a Hello's size only; then the limit of calls.
        self._decoder = FrameDecoder(min(MAX_HELLO_FRAME_BYTES, server.limits.max_frame_bytes))
        self._large_frame_bytes = 0  # counted in the server's limits on large frames
        self._transport: asyncio.Transport | None = None
        self._handshaken = False
        self._protocol_version = 0  # negotiated in the handshake
        self._closing = False
        # Replies not yet handed to the transport, and their bytes: it gets at most about its
        # high-water mark at a time, so what a peer that reads nothing holds is counted here
        # (over TLS, what the TLS layer has passed on to the socket's transport is not).
        self._outbox: deque[bytes] = deque()
        self._outbox_bytes = 0
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._calls: dict[int, CallScope] = {}
        now = self._loop.time()
        self._opened_at = now
        self._last_activity = now
        self._partial_since: float | None = None
        self._reading_paused = False
        # A call's frame read at the cap, while reading on for cancels: run once a call ends.
        self._held_call: pb.Envelope | None = None
        self._write_blocked_since: float | None = None  # unsent replies above the high-water mark
        self._closed_at: float | None = None  # by close(): its last replies may still be unsent
        self._lost = False  # connection_lost has run
        self._peer = "?"
        self._peer_address = "?"
        # The client certificate's, with TLS; the listener's, on a Unix socket (start_unix).
        self._identity = identity
        self._admitted = False

    # with TLS, before the handshake (RpcServer._accept_tls)

    def admitted_before_tls(self, address: tuple[Any, ...]) -> bool:
        """Count this TLS connection in as accepted, before its handshake; False (logged and
        counted) if the limits refuse it: closed at once, as its peer could not read a Hello."""
        self._set_peer(address)
        refused = self._server._admit(self, self._peer_address, before_tls=True)
        if refused is not None:
            self._closing = True
            self._warn_refused(refused)
            return False
        self._admitted = True
        return True

    def tls_failed(self, exc: OSError | None) -> None:
        """The TLS handshake failed (`exc`) or the server closed first (None): uncount it."""
        if exc is not None:
            metrics.RPC_REJECTED_CONNECTIONS.labels("tls_handshake_failed").inc()
            log.debug("TLS handshake with %s failed: %s", self._peer, exc)
        self._closing = True
        self._server._forget(self, self._peer_address)

    def tls_evicted(self) -> None:
        """Closed in its TLS handshake to make room for another address's connect."""
        metrics.RPC_REJECTED_CONNECTIONS.labels("evicted_in_tls_handshake").inc()
        _connection_warnings.warn(
            "evicted_in_tls_handshake",
            "closing connection from %s in its TLS handshake: the server is at its %d"
            " connections, and its address holds more handshakes than a new connect's",
            self._peer,
            self._limits.max_connections,
        )
        self.tls_failed(None)

    @property
    def peer_address(self) -> str:
        return self._peer_address

    def _set_peer(self, address: tuple[Any, ...] | None) -> None:
        if address:
            self._peer_address = str(address[0])
            self._peer = f"{address[0]}:{address[1]}"

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = typing.cast(asyncio.Transport, transport)
        self._transport = transport
        # With TLS this comes once the handshake verified the client's certificate.
        if self._server.uses_tls:
            self._server._end_handshake(self)  # at once: an authenticated one is never evicted
            if self._closing:  # evicted while its last handshake bytes were on their way
                transport.abort()
                return
            metrics.RPC_TLS_HANDSHAKES.inc()
            self._identity = peer_identity(transport.get_extra_info("peercert"))
        if not self._admitted:
            self._set_peer(transport.get_extra_info("peername"))
            refused = self._server._admit(self, self._peer_address)
            if refused is not None:
                self._refuse_connection(transport, refused)
                return
            self._admitted = True
        transport.set_write_buffer_limits(high=self._limits.write_high_water_bytes)

    def _warn_refused(self, reason: str) -> str:
        """Count and log a refusal by the connection limits; the message for the peer."""
        metrics.RPC_REJECTED_CONNECTIONS.labels(reason).inc()
        limit = {
            "too_many_connections": self._limits.max_connections,
            "too_many_from_peer": self._limits.max_connections_per_peer,
            "too_many_handshakes_from_peer": self._limits.max_tls_handshakes_per_peer,
        }[reason]
        message = _REFUSALS[reason].format(limit=limit, peer=self._peer_address)
        _connection_warnings.warn(reason, "refusing connection from %s: %s", self._peer, message)
        return message

    def _refuse_connection(self, transport: asyncio.Transport, reason: str) -> None:
        message = self._warn_refused(reason)
        refusal = pb.Hello(
            protocol_min=PROTOCOL_MIN,
            protocol_max=PROTOCOL_MAX,
            agent=self._server.agent,
            error=message,
        )
        transport.write(encode_frame(refusal.SerializeToString()))
        self._closing = True
        transport.close()

    def _closing_now(self) -> bool:
        return self._closing

    def connection_lost(self, exc: Exception | None) -> None:
        if self._large_frame_bytes:
            self._server.hold_large_frame(self._peer_address, self._large_frame_bytes, 0)
            self._large_frame_bytes = 0
        self._closing = True
        self._closed_at = None
        self._lost = True
        self._server.write_blocked(self, False)
        self._server.stop_waiting(self, self._peer_address)
        # Nobody can read their answers any more: as after METHOD_CANCEL, a call that has not
        # reached its work yet (a login queued for a hash) skips it. Without this a caller
        # that hangs up and reconnects could keep any number of hashes queued.
        for scope in self._calls.values():
            scope.abandoned = True
        # Calls already at their work run on: the connection keeps its place under the limits
        # until the last ends, so hanging up and reconnecting cannot start more at once than
        # the limits allow a peer.
        if not self._tasks:
            self._server._forget(self, self._peer_address)

    def pause_writing(self) -> None:
        """The transport's unsent bytes passed the high-water mark: read nothing more."""
        self._write_blocked_since = self._loop.time()
        self._server.write_blocked(self, True)
        metrics.RPC_READING_PAUSED.labels("write_buffer").inc()
        self._pause_reading()

    def resume_writing(self) -> None:
        blocked_since = self._write_blocked_since
        self._write_blocked_since = None
        self._server.write_blocked(self, False)
        if self._outbox:
            self._flush()
            if blocked_since is not None and self._write_blocked():
                # Above the mark again with what waited: the stall goes on from when it began,
                # or a peer reading a little now and then would never reach the stall timeout.
                self._write_blocked_since = blocked_since
        self._take_frames()

    def _write_blocked(self) -> bool:
        return self._write_blocked_since is not None

    def unsent_bytes(self) -> int:
        """Replies waiting in the outbox and in the transport."""
        transport = self._transport
        held = transport.get_write_buffer_size() if transport is not None else 0
        return self._outbox_bytes + held

    def drop_for_the_replica(self, ceiling: int) -> None:
        self._drop(
            "write_buffers_full",
            f"the unsent replies of the connections not reading theirs passed {ceiling} bytes "
            "together, and this one held the most",
        )

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._last_activity = self._loop.time()
        self._decoder.append(data)
        self._take_frames()

    # flow control

    def _take_frames(self) -> None:
        """Handle the buffered frames while the connection may start calls. At the cap, one
        call's frame is held unstarted and reading goes on for cancels (they start nothing,
        and spare the work of a call still queued, such as a login waiting for a hash, or of
        the held call itself); the next call's frame is left unparsed and the socket is not
        read again until a call ends. While the peer reads no answers, read nothing."""
        took_a_frame = False
        while not self._closing_now():
            if self._handshaken and self._write_blocked_since is not None:
                self._pause_reading()
                return
            at_cap = self._handshaken and (
                len(self._tasks) >= self._limits.max_calls_per_connection
                or self._server.peer_at_call_cap(self._peer_address)
            )
            if self._held_call is not None and not at_cap:
                held, self._held_call = self._held_call, None
                self._dispatch(held)
                continue
            try:
                body = self._decoder.next_frame()
            except FramingError as exc:
                self._refuse("frame_too_large", str(exc))
                return
            if body is None:
                break
            took_a_frame = True
            if not self._handshaken:
                self._handshake(body)
                continue
            request = self._parse(body)
            if request is None:
                return
            if not at_cap:
                self._dispatch(request)
            elif request.method == pb.METHOD_CANCEL:
                self._cancel_at_cap(request)
            elif self._held_call is None:
                if request.call_id in self._calls:  # as _dispatch refuses it, before a cancel
                    self._refuse_duplicate(request.call_id)
                    return
                self._held_call = request
            else:
                self._decoder.put_back()
                cap = self._wait_for_room_of_the_peer()
                if not self._reading_paused:
                    metrics.RPC_READING_PAUSED.labels(cap).inc()
                self._pause_reading()
                self._hold_large_frames()
                return
        if self._closing_now():
            return
        if self._held_call is not None:
            self._wait_for_room_of_the_peer()
        self._resume_reading()
        self._decoder.compact()
        if not self._hold_large_frames():
            return
        # No complete frame is left (the loop took them all): what is buffered is one begun.
        if self._decoder.buffered_bytes:
            # A frame begun in the read that finished the one before counts from that read.
            if self._partial_since is None or took_a_frame:
                self._partial_since = self._last_activity
        else:
            self._partial_since = None

    def _hold_large_frames(self) -> bool:
        """Count the large frames this connection holds against their limits, by their
        announced sizes: the first one buffered (arriving, or read and put back at a cap) and
        the call held unstarted at a cap. False (and the connection closed) when they pass one."""
        wanted = _large(self._decoder.next_frame_bytes)
        if self._held_call is not None:
            wanted += _large(self._held_call.ByteSize())
        if wanted == self._large_frame_bytes:
            return True
        refusal = self._server.hold_large_frame(self._peer_address, self._large_frame_bytes, wanted)
        if refusal is None:
            self._large_frame_bytes = wanted
            return True
        self._large_frame_bytes = 0
        reason, limit = refusal
        whose = "this address's" if reason == "large_frames_from_peer" else "all connections'"
        self._refuse(
            reason,
            f"{wanted} bytes of frames over {LARGE_FRAME_BYTES} bytes, arriving or held, would "
            f"bring {whose} past {limit} bytes",
        )
        return False

    def _wait_for_room_of_the_peer(self) -> str:
        """At a cap: when it is the address's, wait for a call of the address to end. Which cap
        holds the connection back, as RPC_READING_PAUSED names it."""
        if len(self._tasks) >= self._limits.max_calls_per_connection:
            return "calls_in_flight"
        self._server.wait_for_peer_room(self, self._peer_address)
        return "calls_per_peer"

    def take_frames_again(self) -> None:
        """Room for a call of this connection's address: start its held call, read on."""
        if not self._closing:
            self._take_frames()

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self._transport is not None:
            self._reading_paused = False
            # The time the server did not read is not the peer's delay: a frame it stopped
            # reading halfway, or silence, counts from now.
            self._last_activity = self._loop.time()
            self._partial_since = None
            self._transport.resume_reading()

    def _call_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._server._peer_call_ended(self._peer_address)
        if self._lost:
            if not self._tasks:
                self._server._forget(self, self._peer_address)
            return
        if (self._reading_paused or self._held_call is not None) and not self._closing:
            self._take_frames()

    # the protocol

    def _handshake(self, body: bytes) -> None:
        try:
            client_hello = decode_hello(body)
            self._protocol_version = negotiate(
                PROTOCOL_MIN, PROTOCOL_MAX, client_hello.protocol_min, client_hello.protocol_max
            )
        except ProtocolMismatch as exc:
            metrics.RPC_REJECTED_CONNECTIONS.labels("protocol_mismatch").inc()
            _connection_warnings.warn(
                "protocol_mismatch", "refusing connection from %s: %s", self._peer, exc
            )
            refusal = pb.Hello(
                protocol_min=PROTOCOL_MIN,
                protocol_max=PROTOCOL_MAX,
                agent=self._server.agent,
                error=str(exc),
            )
            self._send(encode_frame(refusal.SerializeToString()))
            self.close(str(exc))
            return
        self._handshaken = True
        self._decoder.max_frame_bytes = self._limits.max_frame_bytes
        self._send(
            encode_frame(
                hello(
                    self._server.agent,
                    PROTOCOL_MIN,
                    PROTOCOL_MAX,
                    max_calls_in_flight=self._limits.max_calls_per_connection,
                )
            )
        )

    def _cancel_at_cap(self, cancel: pb.Envelope) -> None:
        held = self._held_call
        if held is None or held.call_id != cancel.call_id:
            self._dispatch(cancel)
            return
        # The held call never started: it is over, and said so as any abandoned call is.
        self._held_call = None
        metrics.RPC_CANCELLED.inc()
        if self._protocol_version >= CANCELLED_ANSWER_SINCE:
            self._answer(
                held,
                pb.STATUS_UNAVAILABLE,
                message="cancelled by its caller",
                reason=CANCELLED_REASON,
            )

    def _parse(self, body: bytes) -> pb.Envelope | None:
        """The frame's Envelope; None once the connection is refused for it."""
        try:
            request = pb.Envelope.FromString(body)
        except DecodeError as exc:
            self._refuse("undecodable_frame", f"frame is not an Envelope: {exc}")
            return None
        if request.call_id == 0:
            self._refuse("invalid_call_id", "call_id 0 is reserved for connection errors")
            return None
        return request

    def _dispatch(self, request: pb.Envelope) -> None:
        if request.method == pb.METHOD_CANCEL:
            scope = self._calls.get(request.call_id)
            if scope is not None:  # else it has finished already: nothing to skip
                scope.abandoned = True
                metrics.RPC_CANCELLED.inc()
            return
        if request.call_id in self._calls:  # before any answer: it would go to the other call
            self._refuse_duplicate(request.call_id)
            return
        if self._server.draining:
            self._answer(
                request, pb.STATUS_DRAINING, message="replica is shutting down; retry on another"
            )
            return
        route = self._server._routes.get(request.method)
        if route is None:
            self._answer(
                request, pb.STATUS_UNIMPLEMENTED, message=f"unknown method {request.method}"
            )
            return
        authorization = self._server.authorization
        if authorization is not None and not authorization(self._identity, route.method):
            self._refuse_unauthorized(request, route.method.name)
            return
        if route.method.since_protocol > self._protocol_version:
            self._answer(
                request,
                pb.STATUS_UNIMPLEMENTED,
                message=f"{route.method.name} needs protocol {route.method.since_protocol}; "
                f"this connection negotiated {self._protocol_version}",
                reason="protocol_too_old",
            )
            return
        budget = call_budget(
            request,
            wall_now=wall_clock(),
            skew_allowance=self._server.limits.clock_skew_allowance,
        )
        if budget <= 0:
            self._refuse_expired(request, route.method.name, budget)
            return
        deadline = self._loop.time() + budget
        self._server._call_started()
        scope = CallScope(self._identity)
        self._calls[request.call_id] = scope
        task = self._loop.create_task(self._run(route, request, deadline, scope))
        self._tasks.add(task)
        self._server._peer_call_started(self._peer_address)
        task.add_done_callback(self._call_done)
        self._server._note_calls_on_connection(len(self._tasks))

    def _refuse_duplicate(self, call_id: int) -> None:
        # A cancel, and the hang-up, would reach only one of the two calls.
        self._refuse("duplicate_call_id", f"call_id {call_id} is already in flight")

    def _refuse_unauthorized(self, request: pb.Envelope, method: str) -> None:
        metrics.RPC_PERMISSION_DENIED.labels(method).inc()
        _connection_warnings.warn(
            ("permission_denied", method),
            "refused %s from %s unrun: identity %s may not call it",
            method,
            self._peer,
            self._identity or "(none)",
        )
        self._answer(
            request,
            pb.STATUS_PERMISSION_DENIED,
            message=f"{method} is not allowed for the caller's certificate identity; not executed",
            reason="permission_denied",
        )

    def _refuse_expired(self, request: pb.Envelope, method: str, budget: float) -> None:
        metrics.RPC_EXPIRED.labels(method, "arrival").inc()
        _expired_warnings.warn(
            "expired_on_arrival",
            "refused %s from %s unrun: its caller's deadline (less the clock skew allowance) "
            "had passed %.3f s before it was read; this replica was stalled, or its clock is "
            "ahead",
            method,
            self._peer,
            -budget,
        )
        self._answer(
            request,
            pb.STATUS_UNAVAILABLE,
            message="the call's deadline had passed when the auth replica read it; not executed",
            reason="deadline_exceeded",
        )

    async def _run(
        self, route: Route[Any, Any], request: pb.Envelope, deadline: float, scope: CallScope
    ) -> None:
        started = time.perf_counter()
        method = route.method.name
        trace_id_var.set(request.trace_id)
        current_call.set(scope)
        status: pb.Status = pb.STATUS_OK
        collected = False
        try:
            if scope.abandoned or self._loop.time() >= deadline:
                # The caller has given up: skip the work. A call and its cancel can arrive in
                # one read (a replica thawing after a freeze); running it would apply a write
                # its caller has already retried or hedged elsewhere, long after the fact.
                if scope.abandoned:
                    self._answer(request, pb.STATUS_UNAVAILABLE, reason=CANCELLED_REASON)
                return
            try:
                payload = await route.serve(request.payload, deadline)
                self._answer(request, pb.STATUS_OK, payload=payload)
            except RpcError as exc:
                status = exc.status
                self._answer(
                    request,
                    exc.status,
                    message=exc.message,
                    reason=exc.reason,
                    retry_after_seconds=exc.retry_after_seconds,
                )
            except Exception:  # noqa: BLE001 - logged, with its traceback, rate-limited
                status = pb.STATUS_INTERNAL
                _connection_warnings.warn(("internal", method), "%s failed", method, exc_info=True)
                self._answer(
                    request, pb.STATUS_INTERNAL, message="internal error; see the auth service log"
                )
        except asyncio.CancelledError:  # cut by close(), past the drain's grace
            status = pb.STATUS_DRAINING
            raise
        except GeneratorExit:
            # Closed unfinished by the garbage collector, its loop gone: this runs wherever
            # the collection interrupted the thread, maybe inside a metric's lock, which is not
            # reentrant (prometheus/client_python#1076). Count nothing.
            collected = True
            raise
        finally:
            if not collected:
                if self._calls.get(request.call_id) is scope:
                    del self._calls[request.call_id]
                self._server._call_finished()
                _HANDLER_SECONDS(method, STATUS_NAMES.get(status, "?")).observe(
                    time.perf_counter() - started
                )

    def _answer(
        self,
        request: pb.Envelope,
        status: pb.Status,
        *,
        payload: bytes = b"",
        message: str = "",
        reason: str = "",
        retry_after_seconds: int = 0,
    ) -> None:
        scope = self._calls.get(request.call_id)
        if scope is not None and scope.abandoned:
            # The caller has stopped listening for this answer, but counts the call against
            # the connection's cap until it hears that the call is over.
            if self._protocol_version < CANCELLED_ANSWER_SINCE:
                return
            status, payload, message, reason = (
                pb.STATUS_UNAVAILABLE,
                b"",
                "cancelled by its caller",
                CANCELLED_REASON,
            )
        response = pb.Envelope(
            call_id=request.call_id,
            method=request.method,
            status=status,
            payload=payload,
            message=message,
            reason=reason,
            retry_after_seconds=retry_after_seconds,
        )
        body = response.SerializeToString()
        if len(body) > self._limits.max_frame_bytes:
            # The caller's decoder would take it for a broken stream and drop the connection,
            # failing every other call on it: this call alone fails instead.
            _connection_warnings.warn(
                ("reply_too_large", request.method),
                "a reply of %d bytes to method %d passes GATEHOUSE_MAX_FRAME_BYTES (%d); not sent",
                len(body),
                request.method,
                self._limits.max_frame_bytes,
            )
            body = pb.Envelope(
                call_id=request.call_id,
                method=request.method,
                status=pb.STATUS_INTERNAL,
                message=f"the reply of {len(body)} bytes passes the frame limit;"
                " see the auth service log",
                reason="frame_too_large",
            ).SerializeToString()
        self._send(encode_frame(body))

    def _refuse(self, reason: str, message: str) -> None:
        """A connection-level protocol error: tell the peer (call_id 0) and close."""
        metrics.RPC_REJECTED_CONNECTIONS.labels(reason).inc()
        _connection_warnings.warn(reason, "closing connection from %s: %s", self._peer, message)
        error = pb.Envelope(call_id=0, status=pb.STATUS_INVALID, message=message, reason=reason)
        self._send(encode_frame(error.SerializeToString()))
        self.close(message)

    def _send(self, frame: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        self._outbox.append(frame)
        self._outbox_bytes += len(frame)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self, *, everything: bool = False) -> None:
        """Hand the transport the replies waiting, about a high-water mark at a time, until it
        is above its mark (`everything`: all of them, as the connection closes); drop the
        connection if what it holds passes a ceiling."""
        self._flush_scheduled = False
        transport = self._transport
        if transport is None or transport.is_closing():
            self._discard_outbox()
            return
        while self._outbox and (everything or self._write_blocked_since is None):
            transport.write(self._next_chunk())
            if transport.is_closing():  # the write failed: the rest can never go
                self._discard_outbox()
                return
        if self.unsent_bytes() > self._limits.max_write_buffer_bytes:
            self._drop("write_buffer_full", "its unsent replies passed the ceiling")
        elif self._write_blocked_since is not None:
            self._server.bound_unsent_replies()

    def _next_chunk(self) -> bytes:
        """The replies at the head of the outbox, joined: at least one, at most about the
        high-water mark."""
        limit = self._limits.write_high_water_bytes
        frames = [self._outbox.popleft()]
        size = len(frames[0])
        while self._outbox and size + len(self._outbox[0]) <= limit:
            frame = self._outbox.popleft()
            frames.append(frame)
            size += len(frame)
        self._outbox_bytes -= size
        return frames[0] if len(frames) == 1 else b"".join(frames)

    def _discard_outbox(self) -> None:
        self._outbox.clear()
        self._outbox_bytes = 0

    def _drop(self, reason: str, why: str) -> None:
        """Close at once, discarding unsent replies: its peer is not reading them."""
        self._server.write_blocked(self, False)
        metrics.RPC_REJECTED_CONNECTIONS.labels(reason).inc()
        _connection_warnings.warn(
            reason, "dropping connection from %s: %s (replies are not being read)", self._peer, why
        )
        self._closing = True
        self._discard_outbox()
        if self._transport is not None:
            self._transport.abort()

    @property
    def calls_at_work(self) -> tuple[asyncio.Task[None], ...]:
        return tuple(self._tasks)

    def close(self, reason: str) -> None:
        if self._transport is None or self._closing:
            return
        self._closing = True
        self._closed_at = self._loop.time()
        self._flush(everything=True)
        log.debug("closing connection from %s: %s", self._peer, reason)
        self._transport.close()

    def check_timeouts(self, now: float) -> None:
        limits = self._limits
        if self._closing:
            # A closed transport keeps the connection (and its place under the limits) until
            # the peer has read what is left to send: a peer that never reads would keep it.
            if (
                self._closed_at is not None
                and now - self._closed_at > limits.write_stall_timeout
                and self._transport is not None
            ):
                self._closed_at = None
                self._drop("close_stalled", "its last replies were not read after the close")
            return
        if self._transport is None:
            return  # in its TLS handshake, which has the same timeout of its own
        if not self._handshaken and now - self._opened_at > limits.handshake_timeout:
            metrics.RPC_REJECTED_CONNECTIONS.labels("handshake_timeout").inc()
            self.close("no handshake in time")
        elif (
            self._write_blocked_since is not None
            and now - self._write_blocked_since > limits.write_stall_timeout
        ):
            self._drop(
                "write_stalled",
                f"its unsent replies stayed above {limits.write_high_water_bytes} bytes for "
                f"{limits.write_stall_timeout:g} s",
            )
        elif (
            self._partial_since is not None
            and not self._reading_paused
            and now - self._partial_since > limits.handshake_timeout
        ):
            self._refuse("frame_timeout", "a frame was started but not finished in time")
        elif (
            not self._tasks
            and self._held_call is None  # one held at its address's cap is not idleness
            and now - self._last_activity > limits.idle_timeout
        ):
            metrics.RPC_REJECTED_CONNECTIONS.labels("idle_timeout").inc()
            self.close("idle")
