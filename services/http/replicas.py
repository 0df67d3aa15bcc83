"""One auth replica as the HTTP tier sees it: a small pool of multiplexed RPC connections.

Calls go on the least busy open connection. A new connection is opened when there is none,
or in the background when every connection carries GROW_AT_IN_FLIGHT calls, and only one
connect runs at a time per replica, so a burst of requests cannot stampede a replica with
connects. Connections beyond the minimum close after being idle for the pool idle timeout.

A replica may cap the calls in flight per connection (its Hello's `max_calls_in_flight`; at the
cap it stops reading the connection). The pool keeps calls beyond it on this side: a call finds
a connection below the cap, or opens another (up to the pool's maximum) and waits, first come
first served, until a connection has room or its deadline passes (then it fails unsent, so
safe to retry). PING_SLOTS of each connection's cap are left to the health and keep-alive
pings, so a connection full of slow calls can still prove its replica alive.

A connection that breaks under calls ejects the replica for GATEHOUSE_EJECT_SECONDS (the
balancer then prefers the others); so does a failed connect, and INTERNAL_ERRORS_TO_EJECT
answers to one method in a row that are INTERNAL errors (a replica failing at once, its calls
never outstanding for long, would otherwise draw most of them) unless no other replica takes
calls (in rotation, not draining, not ejected, pooled). Every ejection is counted
(`gatehouse_http_replica_ejections`); the log has one warning when an outage begins and one
line when it ends, at most one such pair per LOG_INTERVAL, however often the reconnects fail
in between. Each cause is an outage of its own: the connection (ended by any answer or
connect), or one method answering INTERNAL (ended by a success of that method). A replica
removed from discovery is retired: it takes no new calls and closes its connections once the
calls it has in flight are done.

The connections kept as the minimum are pinged whenever they have been idle for the pool idle
timeout. Otherwise the auth service would close them after its own idle timeout
(GATEHOUSE_IDLE_TIMEOUT), and a call sent just as it closes one would fail. If that call is
not idempotent, it cannot be retried.

Health pings: a replica with calls outstanding that has answered nothing for
GATEHOUSE_PING_INTERVAL is pinged (under steady traffic its answers prove it alive and no ping is
sent). One that answers neither the ping nor anything else within GATEHOUSE_PING_TIMEOUT is
frozen, not merely slow: it is out of rotation. The balancer skips it, `stalled` fires so the
idempotent calls waiting on it go elsewhere, and it is pinged every interval until it answers
one. The last replica in rotation is never taken out (`may_leave_rotation`): when every replica
is that slow, the machine is starved, and moving calls around would only add load. A write in
flight on a frozen replica keeps waiting for its answer: sending it again could apply it twice.
An exit and a return are logged at most once per LOG_INTERVAL per replica and worker (a starved
replica may flap several times a second); the metric shows every one.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

from services.contract import auth_methods as methods
from services.contract import auth_pb2 as pb
from services.foundation.discovery import ServiceRecord
from services.foundation.outage_log import OutageLog
from services.foundation.rpc.client import CallFailed, ClientTls, RpcConnection
from services.http import metrics
from services.http.settings import HttpSettings

log = logging.getLogger(__name__)

# Calls on the least busy connection before another connection is opened beside it: a few
# calls per connection let writes be coalesced, too many queue behind one socket.
GROW_AT_IN_FLIGHT = 8
AGENT = "gatehouse-http"
# Slots of each connection's advertised cap that calls leave free for the pings.
PING_SLOTS = 1
# A replica that keeps freezing and thawing (a starved host), or failing and answering again,
# logs at most one exit from rotation and its return, and one outage and its end, per this many
# seconds; the next line logged counts those held back.
LOG_INTERVAL = 10.0
# Calls in a row a replica answers with INTERNAL (its own failure) before it is ejected.
INTERNAL_ERRORS_TO_EJECT = 5


class Replica:
    def __init__(
        self, record: ServiceRecord, settings: HttpSettings, tls: ClientTls | None = None
    ) -> None:
        self.record = record
        self._settings = settings
        self._tls = tls
        self._loop = asyncio.get_running_loop()
        self._connections: list[RpcConnection] = []
        self._connecting: asyncio.Task[RpcConnection] | None = None
        self.outstanding = 0  # calls in progress, including those waiting for a connection
        self.reserved = 0  # attempts chosen for this replica whose task has not started yet
        self.ejected_until = 0.0  # loop time
        # Per method: a replica whose hasher broke fails sign-ups while its reads succeed.
        self._internal_errors_in_a_row: dict[int, int] = {}
        self.draining = False  # takes no new calls: it answered DRAINING or was retired
        self.retired = False  # removed from discovery
        self._keepalives: set[asyncio.Task[None]] = set()
        # Calls waiting for a connection below its cap, oldest first.
        self._room_waiters: deque[asyncio.Future[None]] = deque()
        self.last_answer_at = self._loop.time()  # of any call or ping on any connection
        self._busy_since = self._loop.time()  # when the calls outstanding went from 0 to 1
        self.out_of_rotation_since: float | None = None  # loop time it missed a ping
        # Resolved when the replica is taken out of rotation; a fresh one when it is back.
        self.stalled: asyncio.Future[None] = self._loop.create_future()
        self._probe: asyncio.Task[None] | None = None
        # Set by the AuthClient: False when this replica is the last one in rotation.
        self.may_leave_rotation: Callable[[Replica], bool] = lambda replica: True
        # Set by the AuthClient: False when no other replica is in rotation, not draining, not
        # ejected and pooled (ejecting this one would leave the balancer only fallbacks, or a
        # replica whose connect the calls would wait for).
        self.may_be_ejected: Callable[[Replica], bool] = lambda replica: True
        self._exits = OutageLog(LOG_INTERVAL)  # when exits from rotation are logged
        # When ejections and answers again are logged, per cause: a method answering INTERNAL
        # (its number), or the connection (None). A cause ends with an answer to that method,
        # or for the connection with any answer or connect; each cause logs its own outages.
        self._outages: dict[int | None, OutageLog] = {}
        self._causes_down = 0

    @property
    def name(self) -> str:
        return self.record.instance_id

    @property
    def address(self) -> str:
        return f"{self.record.host}:{self.record.port}"

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    @property
    def connected(self) -> bool:
        """At least one connection is open and past its handshake."""
        return any(connection.is_open for connection in self._connections)

    @property
    def pooled(self) -> bool:
        """A connection past its handshake is in the pool (`connected`, as cheap as the
        balancer needs it: a connection is dropped from the pool when it closes)."""
        return bool(self._connections)

    @property
    def load(self) -> int:
        """What the balancer compares: calls outstanding and attempts about to start."""
        return self.outstanding + self.reserved

    @property
    def in_rotation(self) -> bool:
        return self.out_of_rotation_since is None

    @property
    def closed(self) -> bool:
        """Retired, drained, and without connections."""
        return (
            self.retired
            and self.outstanding == 0
            and not self._connections
            and self._connecting is None
        )

    def eject(self, reason: str, why: str, *, failing_method: int | None = None) -> None:
        """`reason`: the metric's label (a CallFailed reason or "internal_errors"); `why`: the
        log line's detail; `failing_method`: the one method it failed (INTERNAL answers), whose
        success alone ends that outage; None: the connection failed."""
        now = self._loop.time()
        if self.ejected_until <= now:  # every call on a broken connection reports it
            metrics.REPLICA_EJECTIONS.labels(reason).inc()
            outage = self._outages.setdefault(failing_method, OutageLog(LOG_INTERVAL))
            if not outage.is_down:
                self._causes_down += 1
            held_back = outage.failed()
            if held_back is not None:
                log.warning(
                    "auth replica %s (%s) ejected for %gs: %s%s",
                    self.name,
                    self.address,
                    self._settings.eject_seconds,
                    why,
                    f" ({held_back} more short outages since the last one logged)"
                    if held_back
                    else "",
                )
        self.ejected_until = now + self._settings.eject_seconds

    def _answered(self, method: int | None = None) -> None:
        """A call of `method` answered (None: a connect succeeded): the end of the
        connection's outage, and of that method's."""
        if not self._causes_down:
            return
        for cause in {None, method}:
            outage = self._outages.get(cause)
            if outage is None or not outage.is_down:
                continue
            self._causes_down -= 1
            down_for = outage.down_for
            if outage.recovered():
                log.info(
                    "auth replica %s (%s) answers again%s after %.1fs",
                    self.name,
                    self.address,
                    "" if cause is None else f" {methods.BY_NUMBER[cause].name} calls",
                    down_for,
                )

    def _count_internal_errors(self, method: int, status: pb.Status) -> None:
        """Eject a replica that answers INTERNAL_ERRORS_TO_EJECT calls of one method in a row
        with INTERNAL, unless no other replica takes calls: one that fails at once would
        otherwise draw the calls, since the least busy replica is chosen."""
        in_a_row = self._internal_errors_in_a_row
        if status != pb.STATUS_INTERNAL:
            if in_a_row:
                in_a_row.pop(method, None)
            # Any answer proves the connection; only a success ends that method's outage (a
            # sign-up refused before its hash says nothing of the hasher that failed).
            self._answered(method if status == pb.STATUS_OK else None)
            return
        in_a_row[method] = in_a_row.get(method, 0) + 1
        if in_a_row[method] >= INTERNAL_ERRORS_TO_EJECT and self.may_be_ejected(self):
            in_a_row.clear()
            self.eject(
                "internal_errors",
                f"{INTERNAL_ERRORS_TO_EJECT} {methods.BY_NUMBER[method].name} calls in a row "
                "answered INTERNAL",
                failing_method=method,
            )

    def speaks(self, protocol: int) -> bool:
        """Whether the replica advertises `protocol` (its discovery record's range)."""
        return self.record.protocol_min <= protocol <= self.record.protocol_max

    async def call(
        self, method: int, payload: bytes, *, timeout: float, trace_id: str, since_protocol: int = 1
    ) -> pb.Envelope:
        """One attempt on this replica; raises CallFailed when no answer came, and (unsent)
        when the connection negotiated a protocol older than `since_protocol`."""
        deadline = self._loop.time() + timeout
        if self.outstanding == 0:
            # Silence while idle says nothing: health counts from the first call outstanding.
            self._busy_since = self._loop.time()
        self.outstanding += 1
        connection: RpcConnection | None = None
        try:
            connection = await self._connection_with_room(deadline)
            if connection.protocol_version < since_protocol:
                # Advertised a newer range than it speaks (a rollback under the same record).
                raise CallFailed(
                    "protocol_too_old",
                    f"{self.name} negotiated protocol {connection.protocol_version}; "
                    f"the call needs {since_protocol}",
                    sent=False,
                )
            try:
                envelope = await connection.call(
                    method, payload, timeout=deadline - self._loop.time(), trace_id=trace_id
                )
                self.last_answer_at = self._loop.time()
                self._count_internal_errors(method, envelope.status)
                return envelope
            except CallFailed as failure:
                if failure.reason == "connection_lost":
                    self.eject(failure.reason, failure.message)
                raise
        finally:
            self.outstanding -= 1
            if connection is not None:
                self._offer_room(1)
            if self.retired and self.outstanding == 0:
                self._close_connections("removed from discovery and drained")

    def retire(self) -> None:
        """Take no new calls; close the connections once the calls in flight are done."""
        self.retired = True
        self.draining = True
        # A ping still out would time out later and set the gauge cleared below, for good.
        self._cancel_probe()
        self._stop_health_metric()
        if self.outstanding == 0:
            self._close_connections("removed from discovery")

    def maintain(self) -> None:
        """Close idle extra connections and ones whose replica reads nothing, and keep the
        minimum open (called periodically)."""
        now = self._loop.time()
        idle_deadline = now - self._settings.pool_idle_timeout
        for connection in list(self._connections):
            stalled_since = connection.stalled_since
            if stalled_since is not None and now - stalled_since > self._settings.call_timeout:
                # Every call written to it is past its deadline: free the frames it holds.
                log.warning(
                    "auth replica %s (%s) read or answered none of the requests sent for %.0fs; "
                    "closing that connection",
                    self.name,
                    self.address,
                    now - stalled_since,
                )
                self._close(connection, "its replica reads no requests")
                self._offer_room()
                continue
            if connection.in_flight or connection.last_used >= idle_deadline:
                continue
            if len(self._connections) > self._settings.pool_min_connections:
                self._close(connection, "idle")
            elif connection.is_open:
                self._keep_alive(connection)
        wanted = (
            not self.draining
            and self.ejected_until <= now
            and len(self._connections) < self._settings.pool_min_connections
        )
        if wanted and self._connecting is None:
            self._start_connecting()

    def unanswered_for(self) -> float:
        """Seconds it has answered nothing with calls outstanding; 0 while it has none (silence
        while idle says nothing)."""
        if self.outstanding == 0:
            return 0.0
        return self._loop.time() - max(self.last_answer_at, self._busy_since)

    def check_health(self) -> None:
        """Ping the replica if it is silent under calls or out of rotation (called every
        GATEHOUSE_PING_INTERVAL); at most one ping at a time."""
        if self._probe is not None or self.retired:
            return
        if self.in_rotation and self.unanswered_for() < self._settings.ping_interval:
            return
        connection = self._least_busy_connection(for_calls=False)
        if connection is None:
            return  # nothing to ping over: connects and their failures eject it meanwhile
        self._probe = self._loop.create_task(
            self._health_ping(connection), name=f"health ping {self.name}"
        )

    def close(self) -> None:
        """Close everything now (shutdown)."""
        self.retired = True
        self.draining = True
        self._cancel_probe()
        self._stop_health_metric()
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        self._close_connections("shutting down")

    # internals

    async def _health_ping(self, connection: RpcConnection) -> None:
        sent_at = self._loop.time()
        try:
            await connection.call(
                methods.PING.number,
                b"",
                timeout=self._settings.ping_timeout,
                trace_id="health",
            )
        except CallFailed as failure:
            # Any answer since the ping left means slow, not frozen.
            if failure.reason == "deadline_exceeded" and self.last_answer_at < sent_at:
                self._take_out_of_rotation()
            # else the connection broke: that ejects the replica through its calls
        else:
            self.last_answer_at = self._loop.time()
            self._put_back_in_rotation()
        finally:
            self._probe = None

    def _cancel_probe(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None

    def _stop_health_metric(self) -> None:
        # A replica leaving (its lease lapsed while it was frozen, or shutdown) is no longer
        # held out by this one; if it registers again, a new Replica tracks it.
        if not self.in_rotation:
            metrics.REPLICAS_OUT_OF_ROTATION.labels(self.name).set(0)

    def _take_out_of_rotation(self) -> None:
        """A missed ping: out of rotation unless it is the last one in; while it stays out,
        each missed ping may log the exit that a flap held back (LOG_INTERVAL)."""
        if self.in_rotation:
            if not self.may_leave_rotation(self):
                return
            self.out_of_rotation_since = self._loop.time()
            self.stalled.set_result(None)
            metrics.REPLICAS_OUT_OF_ROTATION.labels(self.name).set(1)
        held_back = self._exits.failed()
        if held_back is None:
            return
        out_for = self._exits.down_for
        log.warning(
            "auth replica %s (%s) out of rotation%s: no answer to a ping within %gs, "
            "%d calls outstanding%s",
            self.name,
            self.address,
            f" for {out_for:.1f}s" if out_for > self._settings.ping_timeout else "",
            self._settings.ping_timeout,
            self.outstanding,
            f" ({held_back} more short exits since the last one logged)" if held_back else "",
        )

    def _put_back_in_rotation(self) -> None:
        if self.out_of_rotation_since is None:
            return
        away = self._loop.time() - self.out_of_rotation_since
        self.out_of_rotation_since = None
        self.stalled = self._loop.create_future()
        metrics.REPLICAS_OUT_OF_ROTATION.labels(self.name).set(0)
        if self._exits.recovered():  # else its exit was held back: so is its return
            log.info(
                "auth replica %s (%s) back in rotation: it answered a ping after %.1fs out",
                self.name,
                self.address,
                away,
            )

    def _keep_alive(self, connection: RpcConnection) -> None:
        task = self._loop.create_task(self._ping(connection), name=f"keepalive {self.name}")
        self._keepalives.add(task)
        task.add_done_callback(self._keepalives.discard)

    async def _ping(self, connection: RpcConnection) -> None:
        try:
            await connection.call(
                methods.PING.number,
                b"",
                timeout=self._settings.connect_timeout,
                trace_id="keepalive",
            )
        except CallFailed as failure:  # the connection is gone; maintain() replaces it
            log.debug("keepalive ping to %s failed: %s", self.address, failure)

    def _least_busy_connection(self, for_calls: bool = True) -> RpcConnection | None:
        """The open connection with the fewest calls in flight, of those whose replica reads
        what it is sent unless not `for_calls` (a health ping goes over any)."""
        best: RpcConnection | None = None
        for connection in self._connections:
            if not connection.is_open or (for_calls and connection.stalled_since is not None):
                continue
            if best is None or connection.in_flight < best.in_flight:
                best = connection
        if (
            best is not None
            and (best.in_flight >= GROW_AT_IN_FLIGHT or not _has_room(best))
            and len(self._connections) < self._settings.pool_max_connections
            and self._connecting is None
        ):
            self._start_connecting()
        return best

    async def _connection_with_room(self, deadline: float) -> RpcConnection:
        """The least busy open connection below its cap; else wait until `deadline` for a
        new connection or a free slot (CallFailed, unsent, when none comes)."""
        while True:
            connection = self._least_busy_connection()
            if connection is not None and _has_room(connection):
                return connection
            if self.retired and connection is None:
                raise CallFailed(
                    "connection_closed", f"{self.name} was removed from discovery", sent=False
                )
            remaining = deadline - self._loop.time()
            if connection is None and len(self._connections) >= self._settings.pool_max_connections:
                # Every connection is stalled and the pool is full: one recovers or is closed.
                metrics.POOL_SLOT_WAITS.labels(self.name).inc()
                await self._wait_for_room(remaining)
                continue
            if connection is None:
                # Everyone waiting for the first connect takes it, as far as its cap allows:
                # a burst on a fresh replica opens one connection, not one per GROW_AT_IN_FLIGHT.
                connection = await self._wait_for_connection(remaining)
                if _has_room(connection):
                    return connection
            else:
                metrics.POOL_SLOT_WAITS.labels(self.name).inc()
                await self._wait_for_room(remaining)

    async def _wait_for_room(self, timeout: float) -> None:
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._room_waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self._offer_room(1)  # woken, but leaving: the slot goes to the next in line
            else:
                waiter.cancel()
            if isinstance(exc, TimeoutError):
                raise CallFailed(
                    "deadline_exceeded",
                    f"every connection to {self.address} had as many calls in flight as it "
                    "allows until the deadline",
                    sent=False,
                ) from None
            raise

    def _offer_room(self, slots: int | None = None) -> None:
        """Wake the `slots` oldest waiting calls (None: all) to look for a connection again."""
        while self._room_waiters and (slots is None or slots > 0):
            waiter = self._room_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                if slots is not None:
                    slots -= 1

    async def _wait_for_connection(self, timeout: float) -> RpcConnection:
        connecting = self._connecting or self._start_connecting()
        try:
            async with asyncio.timeout(timeout):
                # Shielded: one caller giving up must not cancel the connect others wait for.
                return await asyncio.shield(connecting)
        except TimeoutError:
            raise CallFailed(
                "deadline_exceeded",
                f"no connection to {self.address} before the deadline",
                sent=False,
            ) from None
        finally:
            # A failed connect's error holds this frame, and the task holds the error: a cycle
            # only the garbage collector frees, rarely in the workers (services.foundation.heap).
            del connecting

    def _start_connecting(self) -> asyncio.Task[RpcConnection]:
        task = self._loop.create_task(self._open_connection(), name=f"connect {self.name}")
        task.add_done_callback(_retrieve_exception)
        self._connecting = task
        return task

    async def _open_connection(self) -> RpcConnection:
        try:
            connection = await RpcConnection.open(
                self.record.host,
                self.record.port,
                connect_timeout=self._settings.connect_timeout,
                agent=AGENT,
                max_frame_bytes=self._settings.max_frame_bytes,
                tls=self._tls,
            )
        except CallFailed as failure:
            self.eject(failure.reason, failure.message)
            raise
        finally:
            self._connecting = None
        if self.retired and self.outstanding == 0:
            connection.close("removed from discovery")
            raise CallFailed(
                "connection_closed", f"{self.name} was removed from discovery", sent=False
            )
        connection.on_closed = self._forget
        connection.on_room = self._offer_room
        if not connection.is_open:  # closed by the server before on_closed was in place
            raise CallFailed(
                "connection_closed", f"{self.name} closed the new connection", sent=False
            )
        self._connections.append(connection)
        self._offer_room()
        self._answered()
        log.debug("connected to auth replica %s (%s)", self.name, self.address)
        return connection

    def _forget(self, connection: RpcConnection, reason: str) -> None:
        """on_closed of each connection: drop one the server closed or that broke."""
        if connection in self._connections:
            self._connections.remove(connection)
            self._offer_room()  # its waiting calls look for another connection
            log.debug("connection to auth replica %s closed: %s", self.name, reason)

    def _close(self, connection: RpcConnection, reason: str) -> None:
        self._connections.remove(connection)
        connection.close(reason)

    def _close_connections(self, reason: str) -> None:
        connections, self._connections = self._connections, []
        for connection in connections:
            connection.close(reason)
        self._offer_room()


def _has_room(connection: RpcConnection) -> bool:
    """Whether a call may go on `connection`: its replica reads what it is sent, and it stays
    below its cap (less the ping slots)."""
    if connection.stalled_since is not None:
        return False
    cap = connection.max_calls_in_flight
    return cap == 0 or connection.in_flight < max(1, cap - PING_SLOTS)


def _retrieve_exception(task: asyncio.Task[RpcConnection]) -> None:
    # The failure was logged by eject() and reached every waiter; a background connect
    # that nobody waited for must not warn "exception was never retrieved".
    if not task.cancelled():
        task.exception()
