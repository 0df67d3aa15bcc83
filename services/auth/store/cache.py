"""Redis: the read-your-writes record and the session and profile cache (docs/design.md).

Keys (times are the primary's clock, integer microseconds since the Unix epoch):
  gh:since      the time since which Redis's record is complete; no TTL
  gh:w:<uid>    the user's last committed write; TTL 24 h
  gh:p:<uid>    profile, JSON {"v": version, "at": as-of time, "data": {...}};
                TTL GATEHOUSE_PROFILE_CACHE_TTL
  gh:s:<sid>    session: "R" (revoked: a tombstone) or JSON {"at": as-of time, "uid": user id,
                "exp": expiry}; TTL until the session expires
  gh:t:a:<hash> login throttle: failures of one (case-folded username, client IP) pair
  gh:t:d:<id>   login throttle: failures of one device (its device cookie's id)
  gh:t:i:<ip>   login throttle: failures from one client IP, any username
  gh:hb:<random> one auth replica's heartbeat for its invalidation stream (local_cache.py);
                TTL 60 s
  gh:t:s:<ip>   signup throttle: `username_taken` answers to one client IP
                (throttle keys are JSON {"f": [times, newest first], "l": level, "u": blocked
                until}, in Redis's own clock (ms), written only by the _THROTTLE_* and _WINDOW
                scripts; see services/auth/throttle.py)
An entry's as-of time is a primary time its data is known to include. Entries are written by
Lua scripts that never go backwards: a session refill never overwrites a tombstone nor a newer
entry, a profile is replaced only by a newer version, gh:since and gh:w only rise.

Reads of gh:since, gh:s, gh:p, gh:w and gh:l may be answered from in-process copies of those
values that Redis's invalidations keep right (local_cache.py), under the same rules.

Redis is an optimisation: every method degrades to "unknown" (None, or nothing stored) on any
error and never raises. An error opens a circuit breaker (breaker.py): every caller then skips
Redis at once, and every BREAK_SECONDS one probe tries it in the background, so a dead or frozen
Redis costs a timeout only to the calls in flight when it stopped answering, and no caller ever
waits for another caller's attempt. The throttle scripts' probe is the caller's own call
instead: an attempt counted only in one replica's memory is worth more to a guesser than one
bounded wait per cool-down costs the caller. A write that could not be recorded leaves Redis's record
incomplete: until gh:since has been raised to the primary's clock again, the cache is not used.
The same holds at start (a replica may have died between a commit and its record), when
gh:since is missing (Redis lost its state), and when a new connection finds another Redis server
than before (INFO's run_id: restarted from a snapshot, or failed over to a replica that may lack
the last tombstones while it holds gh:since). One caller at a time raises it; the other reads go
to the primary meanwhile, while writes are still recorded (record_write asks only the breaker).
Probes are sent when callers ask to use Redis; a replica that gets no calls (a quiet night, a
staging stack) would keep both breakers open, and report them open, long after Redis is back. So
a breaker whose probe is overdue by BREAK_SECONDS, nobody having asked, is probed by a
background task (a PING for the scripts' breaker).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection, BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError

from services.auth.metrics import (
    REDIS_BREAKER_OPEN,
    REDIS_BREAKER_TRANSITIONS,
    REDIS_COMMAND_SECONDS,
    REDIS_ERRORS,
    REDIS_MAY_EVICT,
)
from services.auth.store.breaker import Admission, CircuitBreaker
from services.auth.store.database import Database, DatabaseError
from services.auth.store.local_cache import TrackedCopies
from services.foundation.log_throttle import RepeatedWarnings
from services.foundation.logs import describe_error
from services.foundation.outage_log import OutageLog
from services.foundation.tasks import every, stop_task

log = logging.getLogger(__name__)

T = TypeVar("T")

SINCE_KEY = "gh:since"
TOMBSTONE = b"R"
WRITE_RECORD_TTL = timedelta(hours=24)
BREAK_SECONDS = 1.0
# Connections to Redis per replica; calls beyond wait for one (see RedisCache.__init__).
REDIS_POOL_CONNECTIONS = 100
_WARNING_INTERVAL = 10.0
# How often reads have the eviction policy read again (`_recheck_eviction`): it can change while
# the pooled connections, which read it when they opened, stay open for days.
EVICTION_CHECK_SECONDS = 10.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def write_key(user_id: int) -> str:
    return f"gh:w:{user_id}"


def login_key(user_id: int) -> str:
    return f"gh:l:{user_id}"


def profile_key(user_id: int) -> str:
    return f"gh:p:{user_id}"


def session_key(session_id: str) -> str:
    return f"gh:s:{session_id}"


@dataclass(frozen=True)
class LastWrite:
    """A user's write committed on the primary by `at`."""

    user_id: int
    at: datetime


@dataclass(frozen=True)
class LastLogin:
    """A user's new session committed on the primary by `at`. Kept apart from LastWrite: only
    the session list must see it, and a profile read that waited for it would answer 503
    during a primary outage for every user who logged in just before it."""

    user_id: int
    at: datetime


@dataclass(frozen=True)
class ActiveSession:
    session_id: str
    user_id: int
    expires_at: datetime
    as_of: datetime


@dataclass(frozen=True)
class SessionTombstone:
    session_id: str
    expires_at: datetime


@dataclass(frozen=True)
class CachedProfile:
    user_id: int
    version: int
    as_of: datetime
    data: Mapping[str, Any]  # JSON-serialisable; its meaning is the caller's


CacheEntry = LastWrite | LastLogin | ActiveSession | SessionTombstone | CachedProfile


@dataclass(frozen=True)
class SessionView:
    """What Redis knows for one GetProfile, with stale entries already dropped."""

    required: datetime  # the primary time a replica or a cached profile must cover for this user
    session_revoked: bool
    session: ActiveSession | None  # only if stamped at or after gh:since
    profile: CachedProfile | None  # only if stamped at or after `required`


@dataclass(frozen=True)
class _Script:
    source: str

    @property
    def sha(self) -> str:
        return hashlib.sha1(self.source.encode()).hexdigest()


# KEYS[1] value key; ARGV: new value (integer), TTL in ms (0: none)
_RAISE = _Script("""
local current = tonumber(redis.call('GET', KEYS[1]))
if current and current >= tonumber(ARGV[1]) then return 0 end
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
return 1
""")

# KEYS[1] session key; ARGV: entry JSON, its as-of time, TTL in ms
_REFILL_SESSION = _Script("""
local current = redis.call('GET', KEYS[1])
if current == 'R' then return 0 end
if current then
  local ok, old = pcall(cjson.decode, current)
  if ok and type(old) == 'table' and tonumber(old.at) and tonumber(old.at) >= tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
""")

# KEYS[1] profile key; ARGV: entry JSON, version, as-of time, TTL in ms
_SET_PROFILE_IF_NEWER = _Script("""
local current = redis.call('GET', KEYS[1])
if current then
  local ok, old = pcall(cjson.decode, current)
  if ok and type(old) == 'table' and tonumber(old.v) and tonumber(old.at) then
    local version, as_of = tonumber(ARGV[2]), tonumber(ARGV[3])
    if tonumber(old.v) > version or (tonumber(old.v) == version and tonumber(old.at) >= as_of) then
      return 0
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[4])
return 1
""")

# Shared by the throttle scripts: Redis's clock in ms (one clock for every auth replica), and
# the stored state of a key. A value not written by these scripts counts as empty.
_THROTTLE_HELPERS = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local function load(key)
  local raw = redis.call('GET', key)
  if raw then
    local ok, state = pcall(cjson.decode, raw)
    if ok and type(state) == 'table' and type(state.f) == 'table' then
      state.l = tonumber(state.l) or 0
      state.u = tonumber(state.u) or 0
      if type(state.p) ~= 'table' then state.p = {} end
      return state
    end
  end
  return {f = {}, p = {}, l = 0, u = 0}
end
local function since(times, from)
  local kept = {}
  for _, at in ipairs(times) do
    at = tonumber(at)
    if at and at > from then kept[#kept + 1] = at end
  end
  return kept
end
local function without(times, at)
  local kept, dropped = {}, false
  for _, t in ipairs(times) do
    if not dropped and tonumber(t) == at then dropped = true else kept[#kept + 1] = t end
  end
  return kept
end
local function save(key, state, ttl)
  if #state.f == 0 and #state.p == 0 and state.u <= now then
    redis.call('DEL', key)
  elseif ttl then
    redis.call('SET', key, cjson.encode(state), 'PX', math.max(1, math.floor(ttl)))
  else
    redis.call('SET', key, cjson.encode(state), 'KEEPTTL')
  end
end
"""

# One password check asks to go ahead; it is counted as a failure at once (and un-counted by
# _THROTTLE_SETTLE if it succeeds), so concurrent guesses cannot slip past the limit together.
# Until it is settled it is also marked as running (`p`): an attempt that would be refused only
# while some check of a refusing key is still running is not refused (a success clears the
# attempt key and leaves the IP key): it is told to ask again once they end, and nothing counts.
# Running marks older than ARGV[6] ms (their replica died) stop holding anyone back; the attempt
# stays counted as a failure.
# KEYS[1] attempt key (gh:t:a or gh:t:d); KEYS[2] (optional) client IP key
# ARGV: failures allowed per window, window ms, first delay ms, longest delay ms, IP failures
# allowed per window, running marks' lifetime ms
# Returns {refused by: 0 none, 1 the attempt key, 2 the IP key, 3 none yet: ask again when the
# checks running end; ms to wait; this attempt's time; the attempt key's level and
# blocked-until before it, and its blocked-until after it}
_THROTTLE_ATTEMPT = _Script(
    _THROTTLE_HELPERS
    + """
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local first_delay, longest_delay = tonumber(ARGV[3]), tonumber(ARGV[4])
local ip_limit = tonumber(ARGV[5])
local running_since = now - tonumber(ARGV[6])
local attempt_existed = redis.call('EXISTS', KEYS[1]) == 1
local attempt = load(KEYS[1])
attempt.p = since(attempt.p, running_since)
local refused_by, wait, final = 0, 0, false
if attempt.u > now then refused_by, wait, final = 1, attempt.u - now, #attempt.p == 0 end
local client
if #KEYS > 1 then
  client = load(KEYS[2])
  client.f = since(client.f, now - window)
  client.p = since(client.p, running_since)
  if #client.f >= ip_limit then
    if client.f[ip_limit] + window - now > wait then
      refused_by, wait = 2, client.f[ip_limit] + window - now
    end
    final = final or #client.p == 0
  end
end
if refused_by ~= 0 and not final then return {3, 0, now, 0, 0, 0} end
if client then
  if refused_by == 0 then
    table.insert(client.f, 1, now)
    while #client.f > ip_limit do table.remove(client.f) end
    table.insert(client.p, 1, now)
    while #client.p > ip_limit do table.remove(client.p) end
  end
  save(KEYS[2], client, window)
end
-- Past its IP limit, an address trying a name it never tried writes nothing: each sprayed name
-- would otherwise leave a key behind for a window, at no cost to the sprayer.
if refused_by == 2 and not attempt_existed then
  return {refused_by, math.ceil(wait), now, 0, 0, 0}
end
-- Refused attempts count too: the delay keeps growing while the guessing goes on.
local prior_level, prior_until = attempt.l, attempt.u
attempt.f = since(attempt.f, now - window)
table.insert(attempt.f, 1, now)
while #attempt.f > limit do table.remove(attempt.f) end
if refused_by == 0 then
  table.insert(attempt.p, 1, now)
  while #attempt.p > limit do table.remove(attempt.p) end
end
if #attempt.f >= limit then
  attempt.u = now + math.min(first_delay * 2 ^ math.min(attempt.l, 40), longest_delay)
  attempt.l = attempt.l + 1
else
  attempt.l = 0
end
-- A refusal reports the block it has just set: a client that waits that long is admitted.
if refused_by ~= 0 then wait = math.max(wait, attempt.u - now) end
save(KEYS[1], attempt, math.max(window, attempt.u - now))
return {refused_by, math.ceil(wait), now, prior_level, prior_until, attempt.u}
"""
)

# The outcome of an admitted attempt, which stops running. ARGV: its time, and "success" (the
# attempt key is cleared), "failure" (it stays counted) or "void" (no password was checked: the
# attempt no longer counts anywhere, and a block it started is undone unless a later attempt
# moved it), then for "void" the level and blocked-until _THROTTLE_ATTEMPT returned as before it
# and the blocked-until it set.
# KEYS as for _THROTTLE_ATTEMPT; unless it failed, the attempt is removed from the IP key.
_THROTTLE_SETTLE = _Script(
    _THROTTLE_HELPERS
    + """
local at, outcome = tonumber(ARGV[1]), ARGV[2]
if outcome == 'success' then
  redis.call('DEL', KEYS[1])
else
  local attempt = load(KEYS[1])
  attempt.p = without(attempt.p, at)
  if outcome == 'void' then
    attempt.f = without(attempt.f, at)
    if attempt.u == tonumber(ARGV[5]) then
      attempt.l, attempt.u = tonumber(ARGV[3]), tonumber(ARGV[4])
    end
  end
  save(KEYS[1], attempt, nil)
end
if #KEYS > 1 then
  local client = load(KEYS[2])
  client.p = without(client.p, at)
  if outcome ~= 'failure' then client.f = without(client.f, at) end
  save(KEYS[2], client, nil)
end
return 1
"""
)

# A sliding-window count (signups' `username_taken` answers). KEYS[1] the key; ARGV: events
# allowed per window, window ms, then "check" (ms until one more is allowed, 0: now) or "add"
# (record one event now if the limit allows it and return 0, else record nothing and return
# the ms until one more is allowed: checking and recording in one step, so concurrent events
# cannot pass the limit together).
_WINDOW = _Script(
    _THROTTLE_HELPERS
    + """
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local state = load(KEYS[1])
state.f = since(state.f, now - window)
if #state.f >= limit then return math.max(1, math.ceil(state.f[limit] + window - now)) end
if ARGV[3] == 'check' then return 0 end
table.insert(state.f, 1, now)
save(KEYS[1], state, window)
return 0
"""
)

_SCRIPTS = (
    _RAISE,
    _REFILL_SESSION,
    _SET_PROFILE_IF_NEWER,
    _THROTTLE_ATTEMPT,
    _THROTTLE_SETTLE,
    _WINDOW,
)

THROTTLE_ATTEMPT = _THROTTLE_ATTEMPT
THROTTLE_SETTLE = _THROTTLE_SETTLE
WINDOW = _WINDOW


class RedisCache:
    def __init__(
        self,
        url: str,
        *,
        timeout: float,
        profile_ttl: float,
        primary: Database,
        script_timeout: float | None = None,
        local_interval: float | None = None,
        local_entries: int = 20_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`primary` tells the primary's clock when gh:since must be raised. `timeout` bounds a
        cache command, `script_timeout` (default: the same) a run_script call and its probes.
        `local_interval`: keep in-process copies of the values reads fetch (local_cache.py),
        at most `local_entries`, whose invalidations must prove themselves that often; None:
        every read asks Redis. `clock` times the breakers' cool-downs."""
        script_timeout = max(script_timeout or 0.0, timeout)
        pool = BlockingConnectionPool.from_url(
            url,
            # A burst wider than the pool waits for a connection (within the call's deadline)
            # instead of failing: redis-py's default pool raises past 100 connections, which
            # counted as Redis failing and opened the breaker under a wide closed loop.
            max_connections=REDIS_POOL_CONNECTIONS,
            timeout=script_timeout,
            # The client's own timeouts allow the longest call; each call's own deadline is
            # asyncio.timeout's in _command (a cancelled command drops its connection).
            socket_timeout=script_timeout,
            socket_connect_timeout=script_timeout,
            # One immediate retry on a broken connection (Redis restarted since it was pooled);
            # more, or retrying timeouts, would only delay the fallback to MySQL.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            redis_connect_func=self._on_connect,
        )
        self._redis = Redis.from_pool(pool)
        # The server every connection so far reached (INFO's run_id); None before the first,
        # or when INFO is refused (a proxy, a renamed command): then nothing is compared.
        self._server_run_id: str | None = None
        self._run_id_unknown_logged = False
        # Whether that server may evict keys (`_check_eviction`): then the cache is not used.
        self._server_may_evict = False
        REDIS_MAY_EVICT.set(0)
        self._eviction_checked_at = time.monotonic()
        self._eviction_check: asyncio.Task[None] | None = None
        self._timeout = timeout
        self._profile_ttl_ms = int(profile_ttl * 1000)
        self._primary = primary
        self._warnings = RepeatedWarnings(log, _WARNING_INTERVAL)
        # One warning when a breaker opens and one line when it closes again, at most one such
        # pair per interval (a flapping Redis), timed by the breakers' clock.
        self._breaker_outages = {
            name: OutageLog(_WARNING_INTERVAL, clock=clock) for name in ("cache", "scripts")
        }
        # The cache's own, and the throttle scripts' (run_script): a cache read timing out under
        # load must not send the throttle to its weaker in-memory counters. A script failing, or
        # Redis refusing connections, opens both.
        self._breaker = self._new_breaker("cache", clock)
        self._script_breaker = self._new_breaker("scripts", clock)
        # gh:since covers every write missed before the `_covered` one; start counts as a miss.
        self._missed = 1
        self._covered = 0
        self._raising_since = False
        # The highest write floor gh:since was raised to, or is being raised to, from here.
        self._since_raised_to = _EPOCH
        # The cause of the last failure (None once a probe succeeds): a probe failing for the
        # same cause is not logged again.
        self._probe_failure: str | None = None
        # The cache breaker's probe runs in the background: no read ever pays for one.
        self._probe_task: asyncio.Task[None] | None = None
        # Probes the breakers no caller probes (`_probe_idle_breakers`), from start() on.
        self._idle_probes: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._script_timeout = script_timeout
        self._copies = (
            None
            if local_interval is None
            else TrackedCopies(
                url,
                timeout=timeout,
                interval=local_interval,
                max_entries=local_entries,
                # Redis expires a key when it is read, or when its sampling finds it: a copy,
                # read from memory, would outlive the entry's TTL as long as reads keep it.
                max_age=profile_ttl,
                server_run_id=lambda: self._server_run_id,
            )
        )

    @property
    def breaker_open(self) -> bool:
        """Whether the cache's breaker is open: reads skip Redis and go to MySQL."""
        return self._breaker.is_open

    async def start(self) -> None:
        """Load the scripts and raise gh:since; with Redis down, both happen once it answers."""
        if self._copies is not None:
            self._copies.start()
        self._idle_probes = asyncio.create_task(
            every(
                BREAK_SECONDS,
                self._probe_idle_breakers,
                "the Redis idle probe",
                until=self._closing,
            ),
            name="redis idle probe",
        )
        admission = self._breaker.admit()
        if (
            admission is not None
            and await self._command("load_scripts", self._load_scripts, admission) is not None
        ):
            await self._admit()

    async def close(self) -> None:
        # Asked, not cancelled: a probe cancelled while it connects can leave its socket open.
        if self._idle_probes is not None:
            await stop_task(
                self._idle_probes, ask_to_stop=self._closing.set, grace=self._timeout + 1.0
            )
        if self._probe_task is not None:
            await stop_task(self._probe_task)
        if self._eviction_check is not None:
            await stop_task(self._eviction_check)
        if self._copies is not None:
            await self._copies.close()
        await self._redis.aclose()

    async def session_view(
        self, user_id: int, session_id: str, *, floor: datetime | None = None
    ) -> SessionView | None:
        """Everything a GetProfile needs, in one MGET; None when Redis cannot be trusted now.
        `floor`: the write floor (revocations.py), which counts as gh:since when above it."""
        admission = await self._admit_read()
        if admission is None:
            return None
        misses = self._missed
        keys = (SINCE_KEY, session_key(session_id), profile_key(user_id), write_key(user_id))
        values = await self._mget("session_view", keys, admission)
        if values is None or self._missed != misses:  # a new server was found meanwhile
            return None
        since_raw, session_raw, profile_raw, write_raw = values
        since = self._since_or_lost(since_raw)
        if since is None:
            return None
        since = await self._at_least_floor(since, floor, admission)
        required = _required(since, _parse_micros(write_raw))
        session = _parse_session(session_raw, session_id)
        profile = _parse_profile(profile_raw, user_id)
        return SessionView(
            required=required,
            session_revoked=session_raw == TOMBSTONE,
            session=session if session is not None and session.as_of >= since else None,
            profile=profile if profile is not None and profile.as_of >= required else None,
        )

    async def required_for(
        self, user_id: int, *, floor: datetime | None = None, logins: bool = False
    ) -> datetime | None:
        """The primary time a replica must have applied to hold the user's last write (and,
        with `logins`, their last new session); None when Redis cannot tell (read the primary).
        `floor` as for `session_view`."""
        admission = await self._admit_read()
        if admission is None:
            return None
        misses = self._missed
        keys = (SINCE_KEY, write_key(user_id), *([login_key(user_id)] if logins else []))
        values = await self._mget("required_for", keys, admission)
        if values is None or self._missed != misses:  # a new server was found meanwhile
            return None
        since = self._since_or_lost(values[0])
        if since is None:
            return None
        since = await self._at_least_floor(since, floor, admission)
        recorded = [at for at in map(_parse_micros, values[1:]) if at is not None]
        return _required(since, max(recorded, default=None))

    async def refill(self, entries: Sequence[CacheEntry]) -> bool:
        """Store what a read found; losing it only costs a later cache miss. Whether Redis
        has what it needs (an expired session needs nothing)."""
        commands = self._commands(entries)
        if not commands:
            return True
        admission = await self._admit()
        return (
            admission is not None
            and await self._command("refill", lambda: self._pipeline(commands), admission)
            is not None
        )

    async def record_write(self, entries: Sequence[CacheEntry]) -> bool:
        """Store what a committed write changed; whether Redis has it. If not, gh:since is
        raised to the primary's clock before the cache is used again.

        Only the breaker is asked, not whether gh:since is current: recording a write is right
        whatever gh:since says, and skipping it while another caller raises gh:since would
        count it as missed, which costs another raise (the cache bypassed meanwhile, a logout
        degraded), so that under steady writes each raise would beget the next."""
        commands = self._commands(entries)
        if not commands:
            return True
        admission = self._leave()
        if (
            admission is not None
            and await self._command("record_write", lambda: self._pipeline(commands), admission)
            is not None
        ):
            return True
        self._missed += 1
        if self._missed == self._covered + 1:  # the first since the cache was last current
            self._warnings.warn(
                "write_not_recorded",
                "a write was not recorded in Redis; the cache is bypassed until gh:since is raised",
            )
        else:
            log.debug("a write was not recorded in Redis either")
        return False

    async def run_script(
        self,
        operation: str,
        script: _Script,
        keys: Sequence[str],
        args: Sequence[Any],
        *,
        timeout: float | None = None,
    ) -> Any | None:
        """EVALSHA one of this module's scripts; None when Redis failed (the caller falls back).

        Unlike the cache reads, this does not wait for gh:since: throttle counters do not
        depend on the record of writes being complete. `timeout` (default `script_timeout`)
        may be longer than the cache's: falling back costs the throttle more than a slow answer.
        """
        # The probe, once the cool-down is over, is this call itself (see the module's notes).
        admission = self._script_breaker.admit()
        if admission is None:
            return None
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        results = await self._command(
            operation,
            lambda: self._pipeline([command]),
            admission,
            timeout=timeout or self._script_timeout,
            script=True,
        )
        return None if results is None else results[0]

    async def _mget(
        self, operation: str, keys: Sequence[str], admission: Admission
    ) -> list[Any] | None:
        """The values of `keys`: from the in-process copies when they may answer, else from
        Redis (and copied). None when Redis failed."""
        copies = self._copies
        if copies is None:
            return await self._command(operation, lambda: self._redis.mget(keys), admission)
        try:
            copied = await copies.read(keys)
        except TimeoutError as exc:  # the barrier went unanswered: Redis is frozen
            self._breaker.failed(admission)
            self._count_failure(operation, exc)
            return None
        if copied is not None:
            return copied
        fill = copies.begin_fill(keys)
        misses = self._missed
        values: list[Any] | None = None
        try:
            values = await self._command(operation, lambda: self._redis.mget(keys), admission)
        finally:  # cancelled too: a placeholder left behind would never go
            if fill is not None:
                copies.end_fill(fill, values if self._missed == misses else None)
        return values

    async def _on_connect(self, connection: AbstractConnection) -> None:
        """Every new connection: the usual handshake, then which server answered. A server
        other than the last one (restarted from a snapshot, a replica promoted by a failover)
        may hold gh:since without the tombstones and write records its predecessor took last,
        so it counts as a missed write: gh:since is raised before its entries are trusted, and
        a read already sent to it is not trusted either (`misses` in the reads)."""
        await connection.on_connect()
        await connection.send_command("INFO", "server")
        try:
            info = await connection.read_response()
        except ResponseError as exc:
            if not self._run_id_unknown_logged:
                self._run_id_unknown_logged = True
                log.warning(
                    "Redis refuses INFO (%s): a Redis that comes back with older state (a restored"
                    " snapshot, a failover that lost writes) cannot be told from the same one",
                    exc,
                )
            return
        await self._check_eviction(connection)
        run_id = _run_id(info)
        if run_id is None or run_id == self._server_run_id:
            return
        if self._server_run_id is not None:
            self._missed += 1
            self._warnings.warn(
                "server_changed",
                "Redis is another server than before (restarted or failed over): its entries are"
                " not trusted until gh:since is raised",
            )
        self._server_run_id = run_id

    async def _check_eviction(self, connection: AbstractConnection) -> None:
        """Whether the server may evict keys (a `maxmemory` with a policy other than
        noeviction, as ElastiCache's default volatile-lru): an evicted tombstone together with
        the user's gh:w leaves nothing that sends the session's read past a lagging replica,
        whose stale "live" row is then refilled as a live entry stamped after gh:since. The
        cache is not read while it may (reads go to MySQL; writes, refills and the repair of
        flagged logouts go on), and the keys evicted meanwhile count as missed writes once it
        may not (gh:since is raised first)."""
        await connection.send_command("INFO", "memory")
        try:
            info = await connection.read_response()
        except ResponseError:
            return  # INFO refused: logged with the run_id check
        self._note_eviction(_eviction_policy(info))

    def _recheck_eviction_when_due(self) -> None:
        """Read the eviction policy again in the background every EVICTION_CHECK_SECONDS: a
        `CONFIG SET maxmemory-policy` (a parameter group applied) reaches no pooled connection,
        and those stay open for as long as the replica runs."""
        now = time.monotonic()
        if self._eviction_check is not None or now - self._eviction_checked_at < (
            EVICTION_CHECK_SECONDS
        ):
            return
        self._eviction_checked_at = now
        self._eviction_check = asyncio.create_task(
            self._recheck_eviction(), name="redis eviction check"
        )

    async def _recheck_eviction(self) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                info = await self._redis.info("memory")
        except (RedisError, OSError, TimeoutError) as exc:  # an outage: the breaker tells it
            log.debug("cannot read Redis's eviction policy: %s", describe_error(exc))
        else:
            self._note_eviction(_eviction_policy(info))
        finally:
            self._eviction_check = None

    def _note_eviction(self, policy: str | None) -> None:
        """Act on `_eviction_policy`'s answer: stop or resume reading the cache on a change."""
        if policy is None or (policy != "") == self._server_may_evict:
            return  # not told, or no change
        self._server_may_evict = policy != ""
        REDIS_MAY_EVICT.set(int(self._server_may_evict))
        if self._server_may_evict:
            log.error(
                "Redis may evict keys (maxmemory-policy %s with a maxmemory): an evicted logout"
                " record could revive the session, so the cache is not used and every read goes"
                " to MySQL; set maxmemory-policy noeviction (README: A Redis that may evict keys)",
                policy,
            )
        else:
            self._missed += 1  # keys evicted until now: raise gh:since before trusting entries
            log.info("Redis no longer evicts keys: the cache is used again once gh:since is raised")

    async def _at_least_floor(
        self, since: datetime, floor: datetime | None, admission: Admission
    ) -> datetime:
        """gh:since as a read must take it: the write floor when that is higher. The first caller
        to see a higher floor also raises gh:since to it, so that Redis says so itself (later
        replicas, tools reading Redis alone); the others do not wait for that."""
        if floor is None or floor <= since:
            return since
        if floor > self._since_raised_to:
            previous, self._since_raised_to = self._since_raised_to, floor
            command = ("EVALSHA", _RAISE.sha, 1, SINCE_KEY, _micros(floor), 0)
            raised = await self._command(
                "raise_since_to_floor", lambda: self._pipeline([command]), admission
            )
            if raised is None:
                self._since_raised_to = previous  # the next caller tries again
        return floor

    def _since_or_lost(self, raw: bytes | str | None) -> datetime | None:
        since = _parse_micros(raw)
        if since is None:
            self._warnings.warn(
                "since_missing",
                "gh:since is missing: Redis lost its state; reading the primary until it is raised",
            )
            self._missed += 1  # so that the next call raises it
        return since

    async def _admit_read(self) -> Admission | None:
        """`_admit` for a read of entries: None too while the server may evict them
        (`_check_eviction`). Writes and refills go on: they are right whatever it evicts."""
        self._recheck_eviction_when_due()
        return None if self._server_may_evict else await self._admit()

    async def _admit(self) -> Admission | None:
        """Leave to use the cache now, or None: read the primary (Redis is skipped, or its
        record of writes is incomplete). Never waits for another caller's attempt."""
        admission = self._leave()
        if admission is None or self._covered == self._missed:
            return admission
        if self._raising_since:
            # Another caller is raising gh:since: read the primary rather than queue behind it.
            return None
        self._raising_since = True
        try:
            raised = await self._raise_since(admission)
        finally:
            self._raising_since = False
        return admission if raised and self._covered == self._missed else None

    def _leave(self) -> Admission | None:
        """Leave for a caller to use the cache now, or None. When the open breaker's cool-down
        is over, the probe starts in the background and the caller takes its fallback at once."""
        admission = self._breaker.admit()
        if admission is None or not admission.probe:
            return admission
        self._probe_task = asyncio.create_task(self._probe(admission), name="redis probe")
        return None

    async def _probe_idle_breakers(self) -> None:
        """Probe each breaker left open with nobody calling: the cache's as a read would (in
        the background), the scripts' with a PING (its probe is otherwise a caller's script)."""
        if self._breaker.probe_overdue(BREAK_SECONDS):
            self._leave()
        if self._script_breaker.probe_overdue(BREAK_SECONDS):
            admission = self._script_breaker.admit()
            if admission is not None:
                await self._command(
                    "probe", lambda: self._pipeline([("PING",)]), admission, script=True
                )

    async def _probe(self, admission: Admission) -> None:
        """Whether Redis answers again: a PING, or with writes missed, raising gh:since (which
        the cache needs before it is used again anyway)."""
        try:
            if self._covered < self._missed and not self._raising_since:
                self._raising_since = True
                try:
                    await self._raise_since(admission)
                finally:
                    self._raising_since = False
            else:
                await self._command(
                    "probe", lambda: self._pipeline([("PING",)]), admission, timeout=self._timeout
                )
        finally:
            self._probe_task = None

    async def _raise_since(self, admission: Admission) -> bool:
        missed = self._missed
        try:
            # Read after every missed write committed, so the new gh:since covers them.
            now = await self._primary.server_time()
        except DatabaseError as exc:
            self._breaker.abandoned(admission)  # says nothing about Redis
            self._warnings.warn(
                "since_without_clock", "cannot raise gh:since without the primary's clock: %s", exc
            )
            return False
        command = ("EVALSHA", _RAISE.sha, 1, SINCE_KEY, _micros(now), 0)
        if await self._command("raise_since", lambda: self._pipeline([command]), admission) is None:
            return False
        self._covered = missed
        log.info("gh:since raised to %s: the cache is used again", now.isoformat())
        return True

    async def _command(
        self,
        operation: str,
        call: Callable[[], Awaitable[T]],
        admission: Admission,
        *,
        timeout: float | None = None,
        script: bool = False,
    ) -> T | None:
        """Run `call` under `admission` from the breaker of its kind (`script`: a run_script
        call, whose failure also opens the cache's breaker) and tell the breaker how it went."""
        breaker = self._script_breaker if script else self._breaker
        started = time.perf_counter()
        verdict = False
        try:
            async with asyncio.timeout(max(timeout or 0.0, self._timeout)):
                result = await call()
        except (RedisError, OSError, TimeoutError) as exc:
            verdict = True
            breaker.failed(admission)
            if script:
                self._breaker.trip()
            elif _refused(exc):
                self._script_breaker.trip()
            self._count_failure(operation, exc, probe=admission.probe)
            if admission.probe:
                self._note_breaker_outage("scripts" if script else "cache")
            return None
        else:
            verdict = True
            breaker.succeeded(admission)
            if admission.probe:
                self._probe_failure = None
            return result
        finally:
            if not verdict:  # cancelled: no word on Redis
                if admission.probe:
                    # A throttle probe runs in its caller's task: a caller that gives up must not
                    # let the next one probe at once (one attempt per cool-down, whatever happens).
                    breaker.failed(admission)
                else:
                    breaker.abandoned(admission)
            REDIS_COMMAND_SECONDS.labels(operation).observe(time.perf_counter() - started)

    def _count_failure(self, operation: str, exc: BaseException, *, probe: bool = False) -> None:
        """Count and log a failed call. A probe's failure goes on an outage the breaker's open
        line reported: it is logged only when its cause differs from the last probe's, so an
        outage costs a few lines however long it lasts."""
        REDIS_ERRORS.inc()
        cause = describe_error(exc)
        if probe and cause == self._probe_failure:
            log.debug("Redis %s failed again (%s)", operation, cause)
            return
        self._probe_failure = cause
        self._warnings.warn(
            "command_failed",
            "Redis %s failed (%s); reads go to MySQL until a probe gets an answer",
            operation,
            cause,
        )

    def _new_breaker(self, name: str, clock: Callable[[], float]) -> CircuitBreaker:
        REDIS_BREAKER_OPEN.labels(name).set(0)

        def changed(opened: bool) -> None:
            REDIS_BREAKER_OPEN.labels(name).set(int(opened))
            REDIS_BREAKER_TRANSITIONS.labels(name, "open" if opened else "closed").inc()
            if opened:
                self._note_breaker_outage(name)
            elif self._breaker_outages[name].recovered():
                log.info("Redis %s breaker closed: Redis answers again", name)

        return CircuitBreaker(BREAK_SECONDS, changed, clock=clock)

    def _note_breaker_outage(self, name: str) -> None:
        """The `name` breaker opened, or its probe failed: its warning, when due (an outage
        held back as a flap gets its line once it outlasts the interval)."""
        held_back = self._breaker_outages[name].failed()
        if held_back is not None:
            log.warning(
                "Redis %s breaker open: calls skip Redis; one probe every %g s%s",
                name,
                BREAK_SECONDS,
                f" ({held_back} more short outages since the last one logged)" if held_back else "",
            )

    async def _pipeline(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Run `commands` in one round trip; once more after reloading the scripts if Redis
        lost them (every command here may safely run twice)."""
        results = await self._execute(commands)
        if any(isinstance(result, NoScriptError) for result in results):
            await self._load_scripts()
            results = await self._execute(commands)
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results

    async def _execute(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        pipe = self._redis.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return await pipe.execute(raise_on_error=False)

    async def _load_scripts(self) -> list[str]:
        return [await self._redis.script_load(script.source) for script in _SCRIPTS]

    def _commands(self, entries: Sequence[CacheEntry]) -> list[tuple[Any, ...]]:
        now = datetime.now(UTC)
        commands: list[tuple[Any, ...]] = []
        for entry in entries:
            match entry:
                case LastWrite() | LastLogin():
                    ttl = int(WRITE_RECORD_TTL.total_seconds() * 1000)
                    key = (write_key if isinstance(entry, LastWrite) else login_key)(entry.user_id)
                    commands.append(("EVALSHA", _RAISE.sha, 1, key, _micros(entry.at), ttl))
                case CachedProfile():
                    value = json.dumps(
                        {"v": entry.version, "at": _micros(entry.as_of), "data": entry.data}
                    )
                    commands.append(
                        (
                            "EVALSHA",
                            _SET_PROFILE_IF_NEWER.sha,
                            1,
                            profile_key(entry.user_id),
                            value,
                            entry.version,
                            _micros(entry.as_of),
                            self._profile_ttl_ms,
                        )
                    )
                case ActiveSession():
                    ttl = _ms_until(entry.expires_at, now)
                    if ttl > 0:
                        value = json.dumps(
                            {
                                "at": _micros(entry.as_of),
                                "uid": entry.user_id,
                                "exp": _micros(entry.expires_at),
                            }
                        )
                        commands.append(
                            (
                                "EVALSHA",
                                _REFILL_SESSION.sha,
                                1,
                                session_key(entry.session_id),
                                value,
                                _micros(entry.as_of),
                                ttl,
                            )
                        )
                case SessionTombstone():
                    ttl = _ms_until(entry.expires_at, now)
                    if ttl > 0:  # an expired session is refused anyway
                        commands.append(
                            ("SET", session_key(entry.session_id), TOMBSTONE, "PX", ttl)
                        )
        return commands


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def _required(since: datetime, last_write: datetime | None) -> datetime:
    # gh:w expires after WRITE_RECORD_TTL, so it cannot vouch for anything older than that.
    return max(since, last_write or since, datetime.now(UTC) - WRITE_RECORD_TTL)


def _ms_until(moment: datetime, now: datetime) -> int:
    return int((moment - now).total_seconds() * 1000)


# The same Redis value always parses to the same entry, and the local cache hands every read
# of a key the same bytes: a warm read then parses nothing (a quarter of an auth replica's CPU
# per GetProfile otherwise). The entries are shared between reads, so they are never changed.
# 1,024 of each kind take about 2.3 MB (profiles with their names, the values kept as keys).
PARSED_VALUES_KEPT = 1024


@functools.lru_cache(maxsize=PARSED_VALUES_KEPT)
def _parse_micros(raw: bytes | str | None) -> datetime | None:
    if raw is None:
        return None
    try:
        return _from_micros(int(raw))
    except (ValueError, OverflowError):
        return None  # not written by us: as good as missing


@functools.lru_cache(maxsize=PARSED_VALUES_KEPT)
def _parse_session(raw: bytes | str | None, session_id: str) -> ActiveSession | None:
    if raw is None or raw == TOMBSTONE:
        return None
    try:
        entry = json.loads(raw)
        return ActiveSession(
            session_id=session_id,
            user_id=int(entry["uid"]),
            expires_at=_from_micros(int(entry["exp"])),
            as_of=_from_micros(int(entry["at"])),
        )
    except (ValueError, TypeError, KeyError, OverflowError):
        return None


@functools.lru_cache(maxsize=PARSED_VALUES_KEPT)
def _parse_profile(raw: bytes | str | None, user_id: int) -> CachedProfile | None:
    if raw is None:
        return None
    try:
        entry = json.loads(raw)
        data = entry["data"]
        if not isinstance(data, dict):
            return None
        return CachedProfile(
            user_id=user_id,
            version=int(entry["v"]),
            as_of=_from_micros(int(entry["at"])),
            data=data,
        )
    except (ValueError, TypeError, KeyError, OverflowError):
        return None


_RUN_ID = re.compile(rb"^run_id:([0-9a-f]+)\r?$", re.MULTILINE)


def _run_id(info: object) -> str | None:
    """The run_id line of an INFO reply (a new one each time a Redis server starts)."""
    raw = info.encode() if isinstance(info, str) else info
    if not isinstance(raw, bytes):
        return None
    match = _RUN_ID.search(raw)
    return match.group(1).decode() if match else None


_MAXMEMORY = re.compile(rb"^maxmemory:(\d+)\r?$", re.MULTILINE)
_MAXMEMORY_POLICY = re.compile(rb"^maxmemory_policy:([a-z-]+)\r?$", re.MULTILINE)


def _eviction_policy(info: object) -> str | None:
    """From an INFO memory reply (raw, or as redis-py parses it): the eviction policy when the
    server may evict keys (a maxmemory is set and the policy is not noeviction), "" when it may
    not, None when the reply does not say."""
    if isinstance(info, dict):
        limit, name = info.get("maxmemory"), info.get("maxmemory_policy")
        if not isinstance(limit, int) or not isinstance(name, str):
            return None
        return "" if limit == 0 or name == "noeviction" else name
    raw = info.encode() if isinstance(info, str) else info
    if not isinstance(raw, bytes):
        return None
    found_limit, found_policy = _MAXMEMORY.search(raw), _MAXMEMORY_POLICY.search(raw)
    if found_limit is None or found_policy is None:
        return None
    name = found_policy.group(1).decode()
    return "" if int(found_limit.group(1)) == 0 or name == "noeviction" else name


def _refused(exc: BaseException) -> bool:
    """Whether Redis is out of reach (connection refused, reset...), as opposed to slow: a
    timeout may be this process starved of CPU. (The built-in TimeoutError, which
    asyncio.timeout raises, is an OSError.)"""
    return isinstance(exc, (RedisConnectionError, OSError)) and not isinstance(exc, TimeoutError)
