"""64-bit ids (Snowflake) and the etcd claim of the worker id that keeps them unique.

An id is 41 bits of milliseconds since 2024-01-01T00:00:00Z, 10 bits of worker id and 12 bits
of sequence, below a zero sign bit, so it fits a signed BIGINT and sorts by creation time.
Ids are unique as long as no two processes use the same worker id at once: each replica claims
one in etcd under a lease and stops making ids as soon as it can no longer be sure it holds it.

Worker id 1023 (`DATABASE_WORKER_ID`) is never claimed in etcd: it belongs to the id blocks the
MySQL primary hands out while a replica holds no claim (id_blocks.py). Each claimer also puts
its key without a lease, so releases that predate the reservation never claim it either.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import aetcd

from services.foundation.etcd import RPC_TIMEOUT, Backoff, connect, describe_etcd_error
from services.foundation.etcd_access import EtcdTarget
from services.foundation.tasks import stop_task

logger = logging.getLogger(__name__)

EPOCH_UNIX_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
TIMESTAMP_BITS = 41
WORKER_ID_BITS = 10
SEQUENCE_BITS = 12
WORKER_ID_COUNT = 1 << WORKER_ID_BITS
# Reserved for ids from database blocks; etcd claims the ids below it.
DATABASE_WORKER_ID = WORKER_ID_COUNT - 1
CLAIMABLE_WORKER_IDS = DATABASE_WORKER_ID
_RESERVATION_VALUE = b"reserved: user id blocks of the MySQL primary (never claim)"
_SEQUENCE_MASK = (1 << SEQUENCE_BITS) - 1
_TIMESTAMP_LIMIT = 1 << TIMESTAMP_BITS

# The lease is treated as lost this fraction of its TTL before etcd would expire it, so clock
# rate differences between this host and etcd never leave two holders of one worker id.
_EXPIRY_MARGIN_FRACTION = 0.1


@dataclass(frozen=True)
class SnowflakeParts:
    unix_ms: int
    worker_id: int
    sequence: int


def decode_id(snowflake_id: int) -> SnowflakeParts:
    return SnowflakeParts(
        unix_ms=(snowflake_id >> (WORKER_ID_BITS + SEQUENCE_BITS)) + EPOCH_UNIX_MS,
        worker_id=(snowflake_id >> SEQUENCE_BITS) & (WORKER_ID_COUNT - 1),
        sequence=snowflake_id & _SEQUENCE_MASK,
    )


def _unix_time_ms() -> int:
    return time.time_ns() // 1_000_000


class SnowflakeGenerator:
    """Makes increasing, unique ids for one worker id."""

    def __init__(self, worker_id: int, clock_ms: Callable[[], int] = _unix_time_ms) -> None:
        """`clock_ms` returns Unix time in milliseconds; tests pass a fake one."""
        if not 0 <= worker_id < WORKER_ID_COUNT:
            raise ValueError(f"worker id {worker_id} is outside 0..{WORKER_ID_COUNT - 1}")
        self._worker_id = worker_id
        self._clock_ms = clock_ms
        self._lock = threading.Lock()
        self._last_timestamp = -1  # milliseconds since EPOCH_UNIX_MS
        self._sequence = 0

    @property
    def worker_id(self) -> int:
        return self._worker_id

    def next_id(self) -> int:
        with self._lock:
            now = self._now()
            if now > self._last_timestamp:
                self._last_timestamp = now
                self._sequence = 0
            else:
                # Same millisecond, or the clock stepped back: stay on the last timestamp, so
                # no id is ever made twice, until the clock catches up.
                self._sequence = (self._sequence + 1) & _SEQUENCE_MASK
                if self._sequence == 0:
                    self._last_timestamp += 1
                    self._wait_for(self._last_timestamp)
            if self._last_timestamp >= _TIMESTAMP_LIMIT:
                raise OverflowError("Snowflake timestamps ran out (year 2093); move the epoch")
            return (
                (self._last_timestamp << (WORKER_ID_BITS + SEQUENCE_BITS))
                | (self._worker_id << SEQUENCE_BITS)
                | self._sequence
            )

    def _now(self) -> int:
        now = self._clock_ms() - EPOCH_UNIX_MS
        if now < 0:
            raise RuntimeError("the system clock reads a time before 2024; fix the clock")
        return now

    def _wait_for(self, timestamp: int) -> None:
        # All 4096 ids of a millisecond are used. Normally the clock is at most 1 ms short of
        # `timestamp`: spin until it gets there, so ids never run ahead of real time. After the
        # clock stepped back, waiting could take long, so the timestamp is borrowed from the
        # future instead; it stays ahead until the clock catches up.
        while 0 < timestamp - self._now() <= 1:
            pass


class WorkerIdClaim:
    """Claims a free worker id in etcd under a lease, keeps it alive, and re-claims when lost.

    The key is `prefix` + worker id with the instance id as value. Without a held id,
    `worker_id` and `generator` are None; new ids cannot be made until a claim succeeds.
    `endpoints` (host:port, at least one) and `lease_ttl` (2 s at least) are checked by the
    settings loader.
    """

    def __init__(
        self, endpoints: EtcdTarget, prefix: str, instance_id: str, *, lease_ttl: int = 10
    ) -> None:
        self._endpoints = endpoints
        self._prefix = prefix
        self._instance_id = instance_id
        self._lease_ttl = lease_ttl
        self._connections = 0  # each new connection uses the next endpoint
        self._client: aetcd.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._lease_id: int | None = None
        self._generator: SnowflakeGenerator | None = None
        self._held_until = 0.0  # time.monotonic() after which the claim may have lapsed
        self._failed_claims = 0  # attempts failed since the last claim
        self._claimed = asyncio.Event()  # set at each successful claim

    @property
    def worker_id(self) -> int | None:
        generator = self.generator
        return None if generator is None else generator.worker_id

    @property
    def generator(self) -> SnowflakeGenerator | None:
        """The generator of the held worker id; None while none is held."""
        # Checked on every read, so the id is dropped on time even if the keep-alive task lags.
        if self._generator is None or time.monotonic() >= self._held_until:
            return None
        return self._generator

    def next_id(self) -> int | None:
        """A new id of the held worker id, or None while none is held."""
        generator = self.generator
        if generator is None:
            return None
        made = generator.next_id()
        # Checked again after the generator read the clock: a process paused between the
        # first check and that read (SIGSTOP, a stalled VM) would otherwise stamp an id with
        # a time after the lease may have passed to another replica.
        if time.monotonic() >= self._held_until:
            return None
        return made

    async def start(self) -> None:
        """Start claiming in the background; returns at once, even while etcd is down."""
        if self._task is None:
            self._task = asyncio.create_task(self._claim_forever(), name="worker-id-claim")

    async def wait_until_held(self) -> None:
        """Return once a worker id is held: at once if one is, else at the next claim."""
        while self.generator is None:
            self._claimed.clear()
            await self._claimed.wait()

    async def stop(self) -> None:
        """Stop keeping the claim and revoke its lease, freeing the worker id at once."""
        await stop_task(self._task)
        self._task = None
        await self._disconnect()

    # internals

    async def _claim_forever(self) -> None:
        backoff = Backoff()
        while True:
            try:
                await self._claim_and_keep(backoff)
            except Exception as exc:  # noqa: BLE001 - whatever failed, keep trying to claim
                # One warning per outage; the retries every few seconds after it are debug
                # lines, counted in the line of the claim that ends it.
                self._failed_claims += 1
                logger.log(
                    logging.WARNING if self._failed_claims == 1 else logging.DEBUG,
                    "no Snowflake worker id held (%s); retrying",
                    describe_etcd_error(exc),
                )
            finally:
                await self._release()
            await backoff.wait()

    async def _claim_and_keep(self, backoff: Backoff) -> None:
        """Claim a worker id and keep it; returns when the claim is lost."""
        client = await self._reconnect()
        granted_at = time.monotonic()
        async with asyncio.timeout(RPC_TIMEOUT):
            lease = await client.lease(self._lease_ttl)
        self._lease_id = lease.id
        worker_id = await self._claim_free_worker_id(client, lease.id)
        if worker_id is None:
            raise RuntimeError(
                f"all {CLAIMABLE_WORKER_IDS} worker ids under {self._prefix} are taken; "
                "run fewer replicas or delete stale keys"
            )
        self._held_until = granted_at + _usable_seconds(lease.ttl)
        if self._generator is None or self._generator.worker_id != worker_id:
            # A re-claimed id keeps its generator, which knows the last timestamp it used.
            self._generator = SnowflakeGenerator(worker_id)
        self._claimed.set()
        backoff.reset()
        failed, self._failed_claims = self._failed_claims, 0
        logger.info(
            "claimed Snowflake worker id %d under lease %x%s",
            worker_id,
            lease.id,
            f" after {failed} failed attempts" if failed else "",
        )
        await self._keep_alive(client, lease.id, f"{self._prefix}{worker_id}".encode())

    async def _claim_free_worker_id(self, client: aetcd.Client, lease_id: int) -> int | None:
        await self._reserve_database_worker_id(client)
        async with asyncio.timeout(RPC_TIMEOUT):
            taken = await client.get_prefix(self._prefix.encode(), keys_only=True)
        taken_names = {kv.key.decode("utf-8", "replace").removeprefix(self._prefix) for kv in taken}
        start = random.randrange(CLAIMABLE_WORKER_IDS)
        for offset in range(CLAIMABLE_WORKER_IDS):
            worker_id = (start + offset) % CLAIMABLE_WORKER_IDS
            if str(worker_id) in taken_names:
                continue
            key = f"{self._prefix}{worker_id}".encode()
            # Creates the key only if it does not exist, so two replicas never share an id.
            async with asyncio.timeout(RPC_TIMEOUT):
                claimed, _ = await client.transaction(
                    compare=[client.transactions.version(key) == 0],
                    success=[client.transactions.put(key, self._instance_id.encode(), lease_id)],
                    failure=[],
                )
            if claimed:
                return worker_id
        return None

    async def _reserve_database_worker_id(self, client: aetcd.Client) -> None:
        """Put the database's worker id key, without a lease, if it is missing.

        This release never claims that id; the key keeps older releases, which could, off it.
        A key some older replica holds under a lease stays (see docs/design.md, "User ids").
        """
        key = f"{self._prefix}{DATABASE_WORKER_ID}".encode()
        async with asyncio.timeout(RPC_TIMEOUT):
            await client.transaction(
                compare=[client.transactions.version(key) == 0],
                success=[client.transactions.put(key, _RESERVATION_VALUE)],
                failure=[],
            )

    async def _keep_alive(self, client: aetcd.Client, lease_id: int, key: bytes) -> None:
        """Refresh the lease every TTL/3 until the claim is lost, then return."""
        while True:
            await asyncio.sleep(self._lease_ttl / 3)
            sent_at = time.monotonic()
            try:
                async with asyncio.timeout(RPC_TIMEOUT):
                    reply = await client.refresh_lease(lease_id)
                    holder = await client.get(key)
            except (aetcd.ClientError, TimeoutError) as exc:
                if time.monotonic() >= self._held_until:
                    logger.warning(
                        "lost the Snowflake worker id: etcd unreachable for the lease TTL (%s)",
                        describe_etcd_error(exc),
                    )
                    return
                logger.info(
                    "could not refresh the worker-id lease (%s); trying the next etcd endpoint",
                    describe_etcd_error(exc),
                )
                client = await self._reconnect()
                continue
            if reply is None or reply.TTL <= 0:
                logger.warning("lost the Snowflake worker id: its lease expired or was revoked")
                return
            if holder is None or holder.lease != lease_id:
                logger.warning(
                    "lost the Snowflake worker id: its key %s was deleted or replaced", key.decode()
                )
                return
            self._held_until = sent_at + _usable_seconds(reply.TTL)

    async def _release(self) -> None:
        """Drop the worker id here at once, then revoke its lease in etcd if it may be live."""
        self._held_until = 0.0
        lease_id, self._lease_id = self._lease_id, None
        if lease_id is None or self._client is None:
            return
        try:
            async with asyncio.timeout(RPC_TIMEOUT):
                await self._client.revoke_lease(lease_id)
        except (aetcd.ClientError, TimeoutError) as exc:
            logger.info(
                "could not revoke worker-id lease %x (%s); it expires on its own",
                lease_id,
                describe_etcd_error(exc),
            )

    async def _reconnect(self) -> aetcd.Client:
        await self._disconnect()
        self._client = connect(self._endpoints, self._connections)
        self._connections += 1
        return self._client

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            async with asyncio.timeout(RPC_TIMEOUT):
                await client.close()
        except (aetcd.ClientError, TimeoutError) as exc:
            logger.debug("closing an etcd client failed: %s", exc)


def _usable_seconds(ttl: int) -> float:
    return ttl * (1 - _EXPIRY_MARGIN_FRACTION)
