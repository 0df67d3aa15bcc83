"""etcd building blocks: a key kept alive under a lease, and a watched prefix.

Both survive etcd outages: they retry with capped, jittered backoff, rotating through the
configured endpoints, and never raise into their owner. A watcher keeps the last known
values while etcd is away. An outage is logged once, as a warning when it begins and a line
when it ends (OutageLog: at most one such pair per OUTAGE_LOG_INTERVAL); the retries between
are debug lines, so an etcd down for an hour is not a line every few seconds per loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Iterable
from typing import Any

import aetcd

from services.foundation.etcd_access import EtcdClient, EtcdTarget, as_access
from services.foundation.held_over import HeldOver
from services.foundation.log_throttle import RepeatedWarnings
from services.foundation.logs import describe_error
from services.foundation.outage_log import OutageLog
from services.foundation.tasks import stop_task

log = logging.getLogger(__name__)

RPC_TIMEOUT = 3.0
CHANNEL_OPTIONS = {
    # A watch stream sends nothing once created: without keepalives a member that vanished
    # without a reset (power loss, partition) would leave the watch waiting for ever.
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    "grpc.keepalive_permit_without_calls": 1,
    # gRPC waits longer between connects the longer they fail (up to 120 s), in a subchannel
    # that the new client of each retry shares: after a 5-minute etcd outage a replica took
    # 40 s to register again, and the HTTP tier, which had resynced to no replica, refused
    # logins meanwhile. Backoff, Gatehouse's own, paces the retries instead.
    # "grpc.min_reconnect_backoff_ms" is left unset: gRPC core also takes it as the shortest
    # connect timeout (20 s by default), and at 200 ms each attempt had under about a second
    # for TCP, TLS and HTTP/2 settings, so an etcd whose first bytes came 1.2 s late was never
    # reached (tests/foundation/test_prefix_watcher.py).
    "grpc.initial_reconnect_backoff_ms": 200,
    "grpc.max_reconnect_backoff_ms": 1_000,
}
BACKOFF_FIRST = 0.2
BACKOFF_MAX = 5.0
# At most one warning (and one line at its end) per this many seconds, per key or prefix.
OUTAGE_LOG_INTERVAL = 60.0
# Leased keys written again under their live lease: once a minute per key at most.
_repairs = RepeatedWarnings(log, OUTAGE_LOG_INTERVAL)


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.strip().rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"etcd endpoint {endpoint!r} is not host:port")
    return host, int(port)


def parse_endpoints(raw: str) -> tuple[str, ...]:
    """GATEHOUSE_ETCD_ENDPOINTS: comma-separated host:port, at least one."""
    endpoints = tuple(item.strip() for item in raw.split(",") if item.strip())
    if not endpoints:
        raise ValueError("give at least one host:port")
    for endpoint in endpoints:
        parse_endpoint(endpoint)
    return endpoints


def connect(target: EtcdTarget, attempt: int) -> aetcd.Client:
    """A client for one of the target's endpoints, a different one on each retry."""
    access = as_access(target)
    endpoints = access.endpoints
    host, port = parse_endpoint(endpoints[attempt % len(endpoints)])
    return EtcdClient(access, host, port, timeout=int(RPC_TIMEOUT), options=CHANNEL_OPTIONS)


class Backoff:
    def __init__(self, first: float = BACKOFF_FIRST, cap: float = BACKOFF_MAX) -> None:
        self._first = first
        self._cap = cap
        self.attempt = 0

    def reset(self) -> None:
        self.attempt = 0

    async def wait(self) -> None:
        delay = min(self._cap, self._first * 2**self.attempt)
        self.attempt += 1
        await asyncio.sleep(delay * random.uniform(0.5, 1.0))


def key_name(key: bytes, strip: int) -> str | None:
    """A key's name after its `strip`-byte prefix; None when it is not UTF-8. Gatehouse names
    its keys in ASCII, so such a key (anyone who may write under the prefix can put one) is
    none of its records: callers skip it, rather than raise and stop every read of the prefix,
    or act on a name that is not the key's."""
    try:
        return key[strip:].decode()
    except UnicodeDecodeError:
        return None


def named_values(kvs: Iterable[Any], strip: int) -> dict[str, bytes]:
    """{name: value} of a range read's key-values, keys whose names are not UTF-8 left out."""
    return {name: kv.value for kv in kvs if (name := key_name(kv.key, strip)) is not None}


async def close_quietly(client: aetcd.Client | None) -> None:
    if client is None:
        return
    with contextlib.suppress(Exception):  # a broken channel may fail to close; nothing to do
        await asyncio.wait_for(client.close(), 1.0)


class LeasedKey:
    """Keeps `key` = `value` in etcd under a lease of `ttl` seconds until stopped.

    If the lease is lost (etcd down longer than the TTL), the key is written again under a
    new lease as soon as etcd answers; found deleted or replaced at a refresh, it is written
    again under the lease it has. `held` tells whether the key is known to be in place.
    """

    def __init__(
        self,
        access: EtcdTarget,
        key: str,
        value: bytes,
        ttl: int,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self._access = access
        self._key = key.encode()
        self._value = value
        self._ttl = ttl
        self._on_change = on_change
        self._task: asyncio.Task[None] | None = None
        self._client: aetcd.Client | None = None
        self._lease_id: int | None = None
        self._outages = OutageLog(OUTAGE_LOG_INTERVAL)
        self.held = False

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"lease {self._key.decode()}")

    async def stop(self) -> None:
        """Stop renewing and revoke the lease, which deletes the key at once."""
        await stop_task(self._task)
        self._task = None
        if self._client is not None and self._lease_id is not None:
            try:
                await asyncio.wait_for(self._client.revoke_lease(self._lease_id), RPC_TIMEOUT)
            except Exception as exc:  # noqa: BLE001 - the lease then expires on its own
                log.warning(
                    "could not revoke lease of %s: %s; it expires in %ss",
                    self._key.decode(),
                    exc,
                    self._ttl,
                )
        self._set_held(False)
        await close_quietly(self._client)
        self._client = None

    def _set_held(self, held: bool) -> None:
        if held != self.held:
            self.held = held
            if self._on_change is not None:
                self._on_change(held)

    async def _run(self) -> None:
        backoff = Backoff()
        while True:
            try:
                await self._hold_once(backoff)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any etcd failure: retry
                held_back = self._outages.failed(_cause(exc))
                log.log(
                    _outage_level(held_back, self._outages),
                    "etcd key %s not held (%s); retrying%s",
                    self._key.decode(),
                    describe_etcd_error(exc),
                    _outage_suffix(held_back),
                )
            self._set_held(False)
            self._lease_id = None
            await close_quietly(self._client)
            self._client = None
            await backoff.wait()

    async def _hold_once(self, backoff: Backoff) -> None:
        self._client = connect(self._access, backoff.attempt)
        async with asyncio.timeout(RPC_TIMEOUT):
            lease = await self._client.lease(self._ttl)
            self._lease_id = lease.id
            await self._client.put(self._key, self._value, lease=lease.id)
        self._set_held(True)
        backoff.reset()
        down_for = self._outages.down_for
        log.info(
            "etcd key %s written under lease %x (ttl %ss)%s",
            self._key.decode(),
            lease.id,
            self._ttl,
            f", after {down_for:.1f} s not held" if self._outages.recovered() else "",
        )
        while True:
            await asyncio.sleep(self._ttl / 3)
            # Within a third of the TTL, so a slow refresh cannot outlive the lease unnoticed.
            async with asyncio.timeout(min(RPC_TIMEOUT, self._ttl / 3)):
                reply = await self._client.refresh_lease(lease.id)
                holder = await self._client.get(self._key)
            if reply is None or reply.TTL <= 0:
                raise RuntimeError("lease expired")
            # Deleted or overwritten while the lease lived on (by hand, or by a writer that
            # should not): its lease would keep it missing or wrong for as long as it lives.
            if holder is not None and holder.lease not in (0, lease.id):
                # Another live lease holds it: most likely a second process given the same
                # instance id. Overwriting would only swap the record between the two.
                _repairs.warn(
                    self._key.decode(),
                    "etcd key %s is held under another process's lease (two processes with one"
                    " instance id?); not overwriting it",
                    self._key.decode(),
                )
                self._set_held(False)
                continue
            if holder is None or holder.lease != lease.id or holder.value != self._value:
                _repairs.warn(
                    self._key.decode(),
                    "etcd key %s was %s while its lease lived; writing it again",
                    self._key.decode(),
                    "deleted" if holder is None else "overwritten",
                )
                async with asyncio.timeout(min(RPC_TIMEOUT, self._ttl / 3)):
                    await self._client.put(self._key, self._value, lease=lease.id)
            self._set_held(True)


class PrefixWatcher:
    """Mirrors every key under `prefix` and reports the full set after each change.

    `on_change` gets {key suffix: value}. While etcd is unreachable the last set stays.
    `reread()` reads the prefix at once, besides the watch (a key the watch has not delivered
    yet): the set each one reports is never older than the last one reported, by etcd revision.

    When etcd's history begins again (its data lost), the set is what it holds now; with a
    `reset_grace`, each entry of the set before that is still reported until the new history
    writes its name, or for that many seconds of the watch working (HeldOver: an outage pauses
    the grace; `on_held_over` gets their number).
    """

    def __init__(
        self,
        access: EtcdTarget,
        prefix: str,
        on_change: Callable[[dict[str, bytes]], None],
        *,
        reset_grace: float = 0.0,
        on_held_over: Callable[[int], None] = lambda count: None,
    ) -> None:
        self._access = access
        self._prefix = prefix.encode()
        self._on_change = on_change
        # What etcd holds under the prefix as of `revision`; `values` adds the held-over entries.
        self._current: dict[str, bytes] = {}
        self._held_over = HeldOver(reset_grace, on_end=self._end_held_over, on_count=on_held_over)
        # Resets seen: a read sent before the last one began is judged by `_take_read`.
        self._resets = 0
        self._task: asyncio.Task[None] | None = None
        self._client: aetcd.Client | None = None
        self._reread_client: aetcd.Client | None = None
        self._reread_attempt = 0
        self._outages = OutageLog(OUTAGE_LOG_INTERVAL)
        self.values: dict[str, bytes] = {}
        self.revision = 0  # the etcd revision `values` reflect
        self.synced = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"watch {self._prefix.decode()}")

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None
        self._held_over.clear()
        await close_quietly(self._client)
        self._client = None
        await close_quietly(self._reread_client)
        self._reread_client = None

    async def reread(self) -> bool:
        """Read the whole prefix now (one etcd range read); True when the set changed.

        Raises what the read raised (etcd unreachable, a timeout of the caller); the next
        reread then tries the next endpoint."""
        if self._reread_client is None:
            self._reread_client = connect(self._access, self._reread_attempt)
        known, resets = self.revision, self._resets
        try:
            snapshot = await self._reread_client.get_prefix(self._prefix)
        except BaseException:
            self._reread_attempt += 1
            client, self._reread_client = self._reread_client, None
            await close_quietly(client)
            raise
        changed = self._take_read(snapshot, known, resets)
        self.synced.set()
        return changed is True

    async def _run(self) -> None:
        backoff = Backoff()
        while True:
            try:
                await self._watch_once(backoff)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any etcd failure: keep the last set, retry
                self._held_over.watch_down()
                held_back = self._outages.failed(_cause(exc))
                log.log(
                    _outage_level(held_back, self._outages),
                    "watch of %s interrupted (%s); keeping %d known entries, retrying%s",
                    self._prefix.decode(),
                    describe_etcd_error(exc),
                    len(self.values),
                    _outage_suffix(held_back),
                )
            await close_quietly(self._client)
            self._client = None
            await backoff.wait()

    async def _watch_once(self, backoff: Backoff) -> None:
        self._client = connect(self._access, backoff.attempt)
        known, resets = self.revision, self._resets
        async with asyncio.timeout(RPC_TIMEOUT):
            snapshot = await self._client.get_prefix(self._prefix)
            watch = await self._client.watch_prefix(
                self._prefix, start_revision=snapshot.header.revision + 1
            )
        strip = len(self._prefix)
        if self._take_read(snapshot, known, resets) is None:
            raise RuntimeError("the watch began in etcd's history before its data was lost")
        self.synced.set()
        backoff.reset()
        self._held_over.watch_up()
        down_for = self._outages.down_for
        if self._outages.recovered():
            log.info("watch of %s works again after %.1f s", self._prefix.decode(), down_for)
        async for event in watch:
            # A delete event's kv carries the revision of the delete. The events of one
            # transaction share its revision: one at the revision already reported is applied
            # (a reread's snapshot at that revision already holds it, so that is a no-op).
            if event.kv.mod_revision < self.revision:
                continue  # a reread() already reported this change
            name = key_name(event.kv.key, strip)
            if name is None:
                continue  # none of ours (key_name)
            values = dict(self._current)
            if event.kind == "PUT":
                values[name] = event.kv.value
            else:
                values.pop(name, None)
            self._publish(values, event.kv.mod_revision)
        raise RuntimeError("watch stream ended")

    def _take_read(self, snapshot: Any, known: int, resets: int) -> bool | None:
        """Report the prefix as `snapshot` read it, sent once revision `known` was reported and
        `resets` resets seen: True if reported, False if not (older than what was), None if it
        was answered by the history before a reset found while it was in flight.

        A linearizable read answered as of a revision older than `known`: etcd's history began
        again (its data lost, or restored from a snapshot). What it holds now is the truth,
        else its revisions would have to pass the old ones first. (Compared with `known`, not
        with the revision now: a reread or the watch may have reported a newer one while this
        read was in flight.) Once another read found the reset, this one is from the new
        history if it is older than `known`, and then an ordinary read; else it is from the
        lost one, and dropped: its higher revision would hide the new history's changes."""
        read_at = snapshot.header.revision
        if resets != self._resets:
            if read_at >= known:
                return None
        elif read_at < known:
            self._note_history_reset(known, read_at)
        return self._publish(named_values(snapshot, len(self._prefix)), read_at)

    def _note_history_reset(self, known: int, read_at: int) -> None:
        self._resets += 1
        self._held_over.hold(self.values)
        held_over = (
            f", and keeps the earlier entries ({len(self._held_over)}) for a grace unless"
            " written again"
            if self._held_over
            else ""
        )
        log.warning(
            "etcd's revision went back from %d to %d: its data was lost or restored; the"
            " watch of %s takes what it holds now%s",
            known,
            read_at,
            self._prefix.decode(),
            held_over,
        )
        self.revision = 0

    def _end_held_over(self, names: list[str]) -> None:
        log.info(
            "the watch of %s drops the entries the new etcd history did not write again (%d): %s",
            self._prefix.decode(),
            len(names),
            ", ".join(name[:80] for name in names[:10]),
        )
        self._publish(self._current, self.revision)

    def _publish(self, values: dict[str, bytes], revision: int) -> bool:
        """Report `values`, as of `revision`, unless a newer set was reported; True if reported."""
        if revision < self.revision:
            return False
        self.revision = revision
        self._current = values
        values = self._held_over.merged(values)
        if values == self.values:
            return False
        self.values = values
        try:
            self._on_change(values)
        except Exception:  # a faulty subscriber must not stop the watch
            log.exception("subscriber of %s failed", self._prefix.decode())
        return True


# Failures that only say etcd is out of reach (down, cut off, slow): one cause, whichever
# an outage goes through. Any other (auth refused, permission denied, ...) is its own.
_UNREACHABLE = (
    aetcd.exceptions.ConnectionFailedError,
    aetcd.exceptions.ConnectionTimeoutError,
    TimeoutError,
    OSError,
)


# What gRPC reports when etcd ended the TLS handshake over the client's certificate (none, or
# not of the CA etcd trusts for clients, or expired): the alert comes as the first read fails.
_CERTIFICATE_REFUSED = ("TSI_DATA_CORRUPTED", "BAD_CERTIFICATE", "CERTIFICATE_REQUIRED")


def describe_etcd_error(exc: BaseException) -> str:
    """describe_error, and what to check when etcd refused the client's certificate."""
    text = describe_error(exc)
    if any(marker in text for marker in _CERTIFICATE_REFUSED):
        text += (
            " (etcd refused the TLS handshake: it asks for a client certificate of the CA it"
            " trusts for clients; check GATEHOUSE_ETCD_CERT_FILE and GATEHOUSE_ETCD_KEY_FILE)"
        )
    return text


def _cause(exc: Exception) -> str:
    return "unreachable" if isinstance(exc, _UNREACHABLE) else type(exc).__name__


def _outage_level(held_back: int | None, outages: OutageLog) -> int:
    """A warning when the outage's is due, or when it now fails in a way it had not (etcd back
    but refusing this identity); else a debug line."""
    return logging.WARNING if held_back is not None or outages.new_cause else logging.DEBUG


def _outage_suffix(held_back: int | None) -> str:
    """The end of an outage's warning: that its retries are not logged, and how many short
    outages were not logged before it."""
    if held_back is None:
        return ""
    earlier = f"; {held_back} more short outages since the last one logged" if held_back else ""
    return f" (retries are logged at debug level until it works again{earlier})"
