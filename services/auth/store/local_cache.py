"""In-process copies of Redis values, kept right by Redis's invalidation messages
(server-assisted client-side caching; docs/design.md, "The local cache").

One dedicated RESP3 connection per replica runs `CLIENT TRACKING ON BCAST` for the cache's key
prefixes: Redis then pushes the name of every such key any client changes (or that expires, is
evicted or flushed) on that connection. redis-py's asyncio client has no client-side caching
(redis/redis-py#3916), so the connection is this module's own, with a small RESP3 reader.

A copy is used only when all of these hold:
- the connection is up and its stream has proven itself within the last `interval`: this
  replica writes its own heartbeat key on it every interval / 2, and a heartbeat counts once
  Redis's invalidation of that key has come back (tracking is on and pushes arrive);
- a barrier: a PING sent on that connection after the read began has been answered. Redis
  pushes a key's invalidation before it answers any command that arrives after the change, on
  one connection whose bytes arrive in order, so every change that completed before the read
  began has dropped its copies by then: a copy is never older than Redis was at that moment.
  One PING serves every read that began while the previous one was out (at most one is out);
- the copy was filled under a placeholder set before the Redis read that produced it, which
  every invalidation of the key removes: a change racing the fill cannot leave an old copy;
- nothing was lost: a lost or stalled connection (a command unanswered within `timeout`), a
  flush, or a server other than the one the pool reaches, drops every copy (checked every
  interval / 2; the connection is then replaced: at once when the pool has moved since it was
  made, else after SERVER_MISMATCH_PATIENCE, in case the pool is the side behind).

Values are Redis's raw bytes (None: the key does not exist), so every rule that applies to a
Redis entry (gh:since, the write floor, tombstones) applies to its copy unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import ssl
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from redis.asyncio.connection import UnixDomainSocketConnection, parse_url

from services.auth.metrics import (
    LOCAL_CACHE_ANSWERING,
    LOCAL_CACHE_ENTRIES,
    LOCAL_CACHE_INVALIDATIONS,
    LOCAL_CACHE_LOOKUPS,
)
from services.foundation.logs import describe_error
from services.foundation.tasks import every, stop_task

log = logging.getLogger(__name__)

# The keys a read may copy (cache.py): their prefixes, which must not overlap (Redis refuses).
TRACKED_PREFIXES = ("gh:since", "gh:s:", "gh:p:", "gh:w:", "gh:l:")
HEARTBEAT_PREFIX = "gh:hb:"
_HEARTBEAT_TTL_MS = 60_000
RECONNECT_SECONDS = 1.0
# How long a connection may reach another server than the pool while the pool has not moved
# since it was made: long enough that a pool catching up costs no reconnect storm, short enough
# that a connection which strayed (a route that pointed elsewhere for a moment) comes back.
SERVER_MISMATCH_PATIENCE = 60.0
_LOG_INTERVAL = 10.0
# Bounds on what Redis may send: a line, one bulk value, nesting, and one message's (a reply's
# or a push's) bytes and aggregate elements in all. 8 MiB holds 100,000 key names of 70 bytes
# (today's tracked names have at most about 30).
_MAX_LINE = 64 * 1024
_MAX_BULK = 1024 * 1024
_MAX_MESSAGE_BYTES = 8 * 1024 * 1024
_MAX_ELEMENTS = 100_000
_MAX_DEPTH = 4
# A value longer than this is not copied (profiles and sessions are a few hundred bytes).
MAX_VALUE_BYTES = 2048

_HITS = LOCAL_CACHE_LOOKUPS.labels("hit")
_MISSES = LOCAL_CACHE_LOOKUPS.labels("miss")
_RUN_ID = re.compile(rb"^run_id:([0-9a-f]+)\r?$", re.MULTILINE)


class _Lost(Exception):
    """The connection ended or Redis broke the protocol: every copy is dropped."""


class _ErrorReply(Exception):
    pass


@dataclass(frozen=True)
class _Push:
    items: list[Any]


class _Command(NamedTuple):
    """A command sent and not answered yet; `takes_errors`: an error reply goes to `on_reply`
    (else it drops the connection)."""

    on_reply: Callable[[Any], None]
    timer: asyncio.TimerHandle
    takes_errors: bool


class _Copy(NamedTuple):
    value: bytes | None  # None: the key did not exist
    filled_at: float  # time.monotonic()


@dataclass
class Fill:
    """Placeholders for keys about to be read from Redis (`begin_fill`), in the read's order."""

    epoch: int
    keys: tuple[str, ...]
    tokens: dict[str, object]


class TrackedCopies:
    def __init__(
        self,
        url: str,
        *,
        timeout: float,
        interval: float,
        max_entries: int,
        max_age: float,
        server_run_id: Callable[[], str | None],
    ) -> None:
        """`server_run_id` is the Redis server the cache's pool reaches (cache.py): copies are
        used only while this connection reaches that one too. A copy answers for `max_age`
        seconds after its fill at most (then the read asks Redis, which expires what is due)."""
        self._options = parse_url(url)
        self._timeout = timeout
        self._interval = interval
        self._max_entries = max_entries
        self._max_age = max_age
        self._pool_run_id = server_run_id
        self._heartbeat_key = HEARTBEAT_PREFIX + secrets.token_hex(8)
        # The oldest copy is dropped first: popitem(last=False) finds it at once, where a
        # dict's first item is found by a walk over the slots its evictions emptied.
        self._entries: OrderedDict[str, _Copy] = OrderedDict()
        self._placeholders: dict[str, object] = {}
        # Bumped whenever the connection is made or lost: fills begun before do not count.
        self._epoch = 0
        self._writer: asyncio.StreamWriter | None = None
        self._run_id: str | None = None
        self._pool_run_id_at_connect: str | None = None  # the pool's when this connection began
        self._mismatch_since: float | None = None  # when the two servers were first seen apart
        self._replies: deque[_Command] = deque()
        self._gathering: list[asyncio.Future[None]] = []  # reads waiting for the next PING
        self._in_flight: list[asyncio.Future[None]] | None = None  # those the PING out serves
        # Send times of heartbeats whose invalidation has not come back yet, oldest first.
        self._beats_pending: deque[float] = deque()
        self._beat_out = False
        self._proven_at = -float("inf")  # send time of the newest heartbeat proven
        self._proven_on_connection = False  # a heartbeat proven since this connection began
        # Why Redis refuses the heartbeat's write (OOM, READONLY, NOPERM...), once logged; None
        # once one is taken again.
        self._beat_refused: str | None = None
        self._answering = False
        self._last_logged: dict[str, float] = {}
        self._dropped_epoch = -1  # the epoch this side last dropped the connection into
        # Since a connection was last lost or failed to open, none has been made: further
        # failures to open it are that outage's, logged once.
        self._reopening = False
        # Why the connection was last lost or failed to open: a retry failing for another cause
        # (an ACL or a proxy refusing CLIENT TRACKING once Redis is back) is logged, not hidden.
        self._last_failure: str | None = None
        self._reader: _Reader | None = None
        self._connection: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        LOCAL_CACHE_ANSWERING.set(0)
        LOCAL_CACHE_ENTRIES.set(0)

    @property
    def client_name(self) -> str:
        """The connection's name in CLIENT LIST."""
        return "gatehouse-copies-" + self._heartbeat_key.removeprefix(HEARTBEAT_PREFIX)

    def start(self) -> None:
        """Connect and keep connected (a second call changes nothing)."""
        if self._connection is not None:
            return
        self._connection = asyncio.create_task(self._keep_connected(), name="local cache")
        self._heartbeat = asyncio.create_task(
            every(self._interval / 2, self._beat, "local cache heartbeat"),
            name="local cache heartbeat",
        )

    async def close(self) -> None:
        await stop_task(self._heartbeat)
        await stop_task(self._connection)
        self._lose(_Lost("closed"), quiet=True)

    def answering(self) -> bool:
        """Whether copies may be used now (the module's first and last rules)."""
        answering = (
            self._writer is not None
            and time.monotonic() - self._proven_at < self._interval
            and self._run_id is not None
            and self._run_id == self._pool_run_id()
        )
        if answering != self._answering:
            self._answering = answering
            LOCAL_CACHE_ANSWERING.set(int(answering))
            self._log_change(answering)
        return answering

    async def read(self, keys: Sequence[str]) -> list[bytes | None] | None:
        """The values of `keys` as Redis held them at least when this call began, or None: a
        key is not copied, or the copies cannot be trusted now (read Redis). Raises
        TimeoutError when Redis did not answer the barrier in time (Redis is frozen), unless
        bytes kept arriving (the answer is behind invalidations not read yet): then None."""
        if not self.answering() or any(key not in self._entries for key in keys):
            _MISSES.inc()
            return None
        epoch = self._epoch
        waiter = asyncio.get_running_loop().create_future()
        self._gathering.append(waiter)
        if self._in_flight is None:
            self._send_barrier()
        try:
            await waiter
        except _Lost:
            _MISSES.inc()
            return None
        filled_since = time.monotonic() - self._max_age
        values: list[bytes | None] = []
        for key in keys:
            copy = self._entries.get(key)
            if epoch != self._epoch or copy is None or copy.filled_at < filled_since:
                _MISSES.inc()
                return None
            values.append(copy.value)
        _HITS.inc()
        return values

    def begin_fill(self, keys: Sequence[str]) -> Fill | None:
        """Placeholders for `keys`, to call before reading them from Redis; None when copies
        are not kept now."""
        if not self.answering():
            return None
        # A key's placeholder is shared by every fill begun since its last invalidation: a new
        # one for each fill would void every fill still out, and under steady overlapping
        # misses (gh:since, in every read, once its copy ages) none would ever be kept.
        placeholders = self._placeholders
        tokens = {key: placeholders.setdefault(key, object()) for key in keys}
        return Fill(self._epoch, tuple(keys), tokens)

    def end_fill(self, fill: Fill, values: Sequence[Any] | None) -> None:
        """Copy what the Redis read found (`values`, in the order of the keys; None: it
        failed) for every key no invalidation touched since `begin_fill`."""
        keep = values is not None and fill.epoch == self._epoch and self.answering()
        filled_at = time.monotonic()
        for index, key in enumerate(fill.keys):  # a key named twice is taken the first time
            if self._placeholders.get(key) is not fill.tokens[key]:
                continue
            del self._placeholders[key]
            if not keep or values is None:
                continue
            value = values[index]
            if value is not None and len(value) > MAX_VALUE_BYTES:
                continue
            self._entries.pop(key, None)  # re-inserted last: evicted last
            while len(self._entries) >= self._max_entries:
                self._entries.popitem(last=False)
            self._entries[key] = _Copy(value, filled_at)
        LOCAL_CACHE_ENTRIES.set(len(self._entries))

    def _send_barrier(self) -> None:
        waiters, self._gathering = self._gathering, []
        self._in_flight = waiters

        def answered(_reply: Any) -> None:
            self._in_flight = None
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
            if self._gathering:
                self._send_barrier()

        if not self._send([b"PING"], answered):
            self._in_flight = None
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(_Lost("not connected"))

    async def _beat(self) -> None:
        if self._reaches_another_server_too_long():
            self._drop(_Lost("the invalidation connection reaches another server than the pool"))
            return
        if self._writer is None or self._beat_out:
            return
        sent_at = time.monotonic()
        pending = self._beats_pending
        if len(pending) > 1 and sent_at - pending[0] > self._timeout:
            # A later heartbeat was answered, and Redis pushes a change's invalidation before
            # it answers what follows: this one's was lost (a proxy passing no pushes).
            self._drop(_Lost("Redis answers the heartbeat's writes but no invalidation comes"))
            return
        self._beat_out = True

        def answered(reply: Any) -> None:
            self._beat_out = False
            if not isinstance(reply, _ErrorReply):
                self._beat_refused = None
                return
            # Redis full (OOM), read-only, or an ACL: no invalidation will prove this beat. The
            # copies lapse within the interval; the connection and its stream stay.
            if sent_at in pending:
                pending.remove(sent_at)
            self._heartbeat_refused(str(reply))

        command = [b"SET", self._heartbeat_key.encode(), b"1", b"PX", b"%d" % _HEARTBEAT_TTL_MS]
        if self._send(command, answered, takes_errors=True):
            pending.append(sent_at)
        else:
            self._beat_out = False
        self.answering()  # notices (and logs) a lapse while no read asks

    def _heartbeat_refused(self, cause: str) -> None:
        """One line per cause until a heartbeat is taken again: Redis may refuse every beat,
        four a second, for as long as it is full."""
        if cause != self._beat_refused:
            self._beat_refused = cause
            self._log("local cache: Redis refuses the heartbeat's write; copies stay off", cause)

    def _reaches_another_server_too_long(self) -> bool:
        """Whether to replace a connection that reaches another server than the pool: at once
        when the pool moved since the connection was made (a failover that left this one up);
        when the pool has not (it may be behind: Redis restarted, the replica idle, and
        reconnecting would find the same server again), only after SERVER_MISMATCH_PATIENCE."""
        pool_run_id = self._pool_run_id()
        if self._run_id is None or pool_run_id in (None, self._run_id):
            self._mismatch_since = None
            return False
        now = time.monotonic()
        if self._mismatch_since is None:
            self._mismatch_since = now
        return (
            pool_run_id != self._pool_run_id_at_connect
            or now - self._mismatch_since >= SERVER_MISMATCH_PATIENCE
        )

    def _send(
        self, command: list[bytes], on_reply: Callable[[Any], None], *, takes_errors: bool = False
    ) -> bool:
        writer = self._writer
        if writer is None:
            return False
        epoch = self._epoch
        timer = asyncio.get_running_loop().call_later(self._timeout, self._stalled, epoch)
        self._replies.append(_Command(on_reply, timer, takes_errors))
        writer.write(_encode(command))
        return True

    def _stalled(self, epoch: int) -> None:
        if epoch != self._epoch or self._writer is None:
            return
        reader = self._reader
        if reader is not None and time.monotonic() - reader.last_read < self._timeout:
            # Redis is sending: the answer is queued behind invalidations this replica has not
            # read yet. Redis is not frozen, so the waiting reads ask it instead (not a failure
            # for the breaker); the connection still goes, which bounds the backlog.
            self._drop(_Lost("the invalidation connection fell behind by more than the timeout"))
        else:
            self._drop(TimeoutError("Redis did not answer the invalidation connection in time"))

    def _drop(self, exc: BaseException) -> None:
        """Drop the connection from this side: `_lose`, logged now, not again when its reader
        then fails."""
        self._lose(exc)
        self._dropped_epoch = self._epoch

    def _invalidated(self, keys: Any) -> None:
        if keys is None:  # FLUSHALL / FLUSHDB
            LOCAL_CACHE_INVALIDATIONS.inc()
            self._entries.clear()
            self._placeholders.clear()
            LOCAL_CACHE_ENTRIES.set(0)
            return
        if not isinstance(keys, list):
            raise _Lost(f"unexpected invalidation message {keys!r}")
        for raw in keys:
            # Any client may write a name that is not UTF-8: it matches no copy, and cannot fail.
            key = raw.decode(errors="surrogateescape") if isinstance(raw, bytes) else str(raw)
            if key == self._heartbeat_key:
                if self._beats_pending:
                    self._proven_at = self._beats_pending.popleft()
                    self._proven_on_connection = True
                continue
            LOCAL_CACHE_INVALIDATIONS.inc()
            self._entries.pop(key, None)
            self._placeholders.pop(key, None)
        LOCAL_CACHE_ENTRIES.set(len(self._entries))

    async def _keep_connected(self) -> None:
        while True:
            try:
                await self._serve()
            except Exception as exc:  # noqa: BLE001 - a bug here must not end the copies for good
                # A connection this side dropped was lost (and logged) already, when dropped.
                self._lose(exc, quiet=self._dropped_epoch == self._epoch)
            await asyncio.sleep(RECONNECT_SECONDS)

    async def _serve(self) -> None:
        options = self._options
        async with asyncio.timeout(self._timeout * 4):
            if options.get("connection_class") is UnixDomainSocketConnection:  # unix://
                stream, writer = await asyncio.open_unix_connection(
                    options.get("path"), limit=_MAX_LINE
                )
            else:
                stream, writer = await asyncio.open_connection(
                    options.get("host", "127.0.0.1"),
                    int(options.get("port", 6379)),
                    ssl=_tls_context(dict(options)),
                    limit=_MAX_LINE,
                )
        reader = _Reader(stream)
        try:
            async with asyncio.timeout(self._timeout * 4):
                run_id = await self._handshake(reader, writer)
            self._epoch += 1
            self._entries.clear()
            self._placeholders.clear()
            self._run_id = run_id
            self._pool_run_id_at_connect = self._pool_run_id()
            self._mismatch_since = None
            self._reader = reader
            self._writer = writer
            self._reopening = False
            self._proven_on_connection = False
            while True:
                value = await _read_message(reader)
                if isinstance(value, _Push):
                    kind = value.items[0] if value.items else None
                    if kind == b"invalidate":
                        if len(value.items) != 2:
                            raise _Lost(f"unexpected invalidation message {value.items!r:.200}")
                        self._invalidated(value.items[1])
                    continue
                if not self._replies:
                    raise _Lost("a reply nobody asked for")
                pending = self._replies.popleft()
                pending.timer.cancel()
                if isinstance(value, _ErrorReply) and not pending.takes_errors:
                    raise value
                pending.on_reply(value)
        finally:
            writer.transport.abort()

    async def _handshake(self, reader: _Reader, writer: asyncio.StreamWriter) -> str | None:
        """RESP3, tracking on for the prefixes; the server's run_id."""
        options = self._options
        hello = [b"HELLO", b"3", b"SETNAME", self.client_name.encode()]
        if options.get("password"):
            user = str(options.get("username") or "default")
            hello += [b"AUTH", user.encode(), str(options["password"]).encode()]
        tracking = [b"CLIENT", b"TRACKING", b"ON", b"BCAST"]
        for prefix in (*TRACKED_PREFIXES, self._heartbeat_key):
            tracking += [b"PREFIX", prefix.encode()]
        writer.write(_encode(hello) + _encode(tracking) + _encode([b"INFO", b"server"]))
        replies = [await _read_message(reader) for _ in range(3)]
        for reply in replies:
            if isinstance(reply, (_ErrorReply, _Push)):
                raise _ErrorReply(f"Redis refused client-side tracking: {reply}")
        run_id = _RUN_ID.search(replies[2] if isinstance(replies[2], bytes) else b"")
        return run_id.group(1).decode() if run_id else None

    def _lose(self, exc: BaseException, *, quiet: bool = False) -> None:
        """Drop the connection and every copy; fail the reads waiting for a barrier."""
        was_connected = self._writer is not None
        if self._writer is not None:
            self._writer.transport.abort()
        self._writer = None
        self._reader = None
        self._run_id = None
        self._epoch += 1
        self._entries.clear()
        self._placeholders.clear()
        LOCAL_CACHE_ENTRIES.set(0)
        for pending in self._replies:
            pending.timer.cancel()
        self._replies.clear()
        self._beats_pending.clear()
        self._beat_out = False
        self._proven_at = -float("inf")
        failure: BaseException = exc if isinstance(exc, TimeoutError) else _Lost(str(exc))
        for waiter in [*(self._in_flight or []), *self._gathering]:
            if not waiter.done():
                waiter.set_exception(failure)
        self._in_flight = None
        self._gathering = []
        cause = describe_error(exc)
        if quiet:
            pass
        elif was_connected and (self._proven_on_connection or cause != self._last_failure):
            self._log("local cache: the invalidation connection lost", cause)
        elif was_connected:  # one that never proved itself, lost as the one before it was
            log.debug("local cache: the invalidation connection lost again (%s)", exc)
        elif not self._reopening or cause != self._last_failure:
            self._log("local cache: the invalidation connection cannot be opened", cause)
        else:  # a retry of the same outage, for the cause its last line reported
            log.debug("local cache: the invalidation connection still cannot be opened (%s)", exc)
        self._reopening = True
        if not quiet:  # a quiet loss follows one already said (a connection this side dropped)
            self._last_failure = cause
        self.answering()  # updates the gauge

    def _log_change(self, answering: bool) -> None:
        if answering:
            self._log("local cache answers reads: invalidations from Redis arrive")
        else:
            self._log("local cache stopped answering: invalidations not proven; reading Redis")

    def _log(self, message: str, *args: object) -> None:
        """Each message at most once per _LOG_INTERVAL: a flapping stream is no log storm."""
        now = time.monotonic()
        if now - self._last_logged.get(message, -_LOG_INTERVAL) >= _LOG_INTERVAL:
            self._last_logged[message] = now
            log.info(message + (" (%s)" if args else ""), *args)


def _encode(command: list[bytes]) -> bytes:
    parts = [b"*%d\r\n" % len(command)]
    for part in command:
        parts.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(parts)


class _Reader:
    """The connection's stream, and when it last gave any bytes."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self._stream = stream
        self.last_read = time.monotonic()

    async def readuntil(self, separator: bytes) -> bytes:
        data = await self._stream.readuntil(separator)
        self.last_read = time.monotonic()
        return data

    async def readexactly(self, size: int) -> bytes:
        data = await self._stream.readexactly(size)
        self.last_read = time.monotonic()
        return data


@dataclass
class _Budget:
    """What one message may still take (`_read_message`)."""

    bytes: int = _MAX_MESSAGE_BYTES
    elements: int = _MAX_ELEMENTS + 2  # an invalidation push's own two, then its keys

    def spend(self, size: int, elements: int = 0) -> None:
        self.bytes -= size
        self.elements -= elements
        if self.bytes < 0 or self.elements < 0:
            raise _Lost("RESP3 message too long")


async def _read_message(reader: _Reader) -> Any:
    """One top-level RESP3 value (a reply or a push), bounded in total."""
    return await _read_value(reader, 0, _Budget())


async def _read_value(reader: _Reader, depth: int, budget: _Budget) -> Any:
    """One RESP3 value; bounded in size and nesting, and with the rest of its message by
    `budget` (errors end the connection)."""
    if depth > _MAX_DEPTH:
        raise _Lost("RESP3 nesting too deep")
    line = await reader.readuntil(b"\r\n")
    budget.spend(len(line))
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest
    if kind == b"-":
        return _ErrorReply(rest.decode(errors="replace"))
    if kind in (b":", b"("):
        return int(rest)
    if kind == b"_":
        return None
    if kind in (b",", b"#"):
        return rest
    if kind in (b"$", b"=", b"!"):
        size = int(rest)
        if size < 0:
            return None
        if size > _MAX_BULK:
            raise _Lost("RESP3 bulk value too long")
        budget.spend(size + 2)
        data = (await reader.readexactly(size + 2))[:-2]
        if kind == b"=":
            data = data[4:]  # "txt:" / "mkd:"
        return _ErrorReply(data.decode(errors="replace")) if kind == b"!" else data
    if kind in (b"*", b"~", b">", b"%", b"|"):
        count = int(rest)
        if count < 0:
            return None
        if kind in (b"%", b"|"):
            count *= 2
        budget.spend(0, count)
        items = [await _read_value(reader, depth + 1, budget) for _ in range(count)]
        if kind == b">":
            return _Push(items)
        if kind == b"|":  # attributes precede the value they describe, and count as a level
            return await _read_value(reader, depth + 1, budget)
        return items
    raise _Lost(f"RESP3 type {kind!r} unknown")


def _tls_context(options: Mapping[str, Any]) -> ssl.SSLContext | None:
    if options.get("connection_class") is None or "SSL" not in options["connection_class"].__name__:
        return None
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
    if options.get("ssl_cert_reqs") == "none":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif str(options.get("ssl_check_hostname", True)).lower() in ("false", "0"):
        context.check_hostname = False
    return context
