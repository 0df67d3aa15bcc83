"""The JWT signing keys the auth replicas publish in etcd, as one HTTP worker holds them.

A watch of GATEHOUSE_JWT_KEYS_PREFIX keeps the set current (`on_change` gets every new set:
TokenVerifier.replace_published). A token whose key id the set lacks may be signed by a key
published a moment ago that the watch has not delivered yet (a new replica, or this worker just
started), so before such a token is refused `refresh()` reads the prefix once more:

- single-flight: callers arriving while a read runs wait for that read, not for a new one;
- at most one read per GATEHOUSE_JWT_KEY_REFRESH_INTERVAL: a caller within it of the last
  read's start returns at once, so a flood of tokens with made-up key ids costs etcd nothing
  and waits for nothing;
- bounded by GATEHOUSE_JWT_KEY_REFRESH_TIMEOUT.

When etcd loses its data, the keys held before stay for GATEHOUSE_JWT_KEYS_RESET_GRACE
(PrefixWatcher's reset_grace), until the auth replicas publish theirs again: dropping them at
once refused every token, and made every worker unready, until the replicas' next key sync.

    keys = SigningKeys(endpoints, prefix, verifier.replace_published, key_count=...,
                       refresh_interval=1.0, refresh_timeout=1.0, reset_grace=30.0)
    await keys.start(); ...; await keys.stop()
    keys.readiness()    # None once the set was read from etcd and holds a key
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from services.foundation.etcd import PrefixWatcher, describe_etcd_error
from services.foundation.etcd_access import EtcdTarget
from services.foundation.tasks import stop_task
from services.http import metrics

log = logging.getLogger(__name__)


class SigningKeys:
    def __init__(
        self,
        endpoints: EtcdTarget,
        prefix: str,
        on_change: Callable[[dict[str, bytes]], None],
        *,
        key_count: Callable[[], int],
        refresh_interval: float,
        refresh_timeout: float,
        reset_grace: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._prefix = prefix
        self._watcher = PrefixWatcher(
            endpoints,
            prefix,
            on_change,
            reset_grace=reset_grace,
            on_held_over=metrics.JWT_KEYS_HELD_OVER.set,
        )
        self._key_count = key_count
        self._interval = refresh_interval
        self._timeout = refresh_timeout
        self._clock = clock
        self._last_read_at: float | None = None
        self._reading: asyncio.Task[None] | None = None
        self._failing = False

    @property
    def loaded(self) -> bool:
        """True once the key set was read from etcd (it may be empty)."""
        return self._watcher.synced.is_set()

    async def wait_loaded(self) -> None:
        await self._watcher.synced.wait()

    def readiness(self) -> str | None:
        """None when tokens can be verified, else what is missing (for /readyz)."""
        if not self.loaded:
            return f"the JWT signing keys are not loaded from etcd ({self._prefix}) yet"
        if self._key_count() == 0:
            return (
                f"no JWT signing key is published under {self._prefix}; an auth replica "
                "publishes its key when it starts"
            )
        return None

    async def start(self) -> None:
        await self._watcher.start()

    async def stop(self) -> None:
        await stop_task(self._reading)
        self._reading = None
        await self._watcher.stop()

    async def refresh(self) -> None:
        """Read the key set from etcd once more, unless a read runs (then wait for it) or one
        started within the refresh interval (then return at once). Never raises but for a
        cancellation of the caller."""
        if self._reading is None:
            now = self._clock()
            if self._last_read_at is not None and now - self._last_read_at < self._interval:
                return
            self._last_read_at = now
            self._reading = asyncio.create_task(self._read(), name="jwt key refresh")
        reading = self._reading
        # Shielded: a caller that gives up (its client left) must not cancel the read others
        # wait for. The read ends by itself within the refresh timeout.
        await asyncio.shield(reading)

    async def _read(self) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                changed = await self._watcher.reread()
        except Exception as exc:  # noqa: BLE001 - etcd away: the known keys stay
            metrics.JWT_KEY_REFRESHES.labels("failed").inc()
            if not self._failing:
                log.warning(
                    "could not refresh the JWT signing keys from etcd (%s); keeping %d",
                    describe_etcd_error(exc),
                    self._key_count(),
                )
            self._failing = True
        else:
            metrics.JWT_KEY_REFRESHES.labels("changed" if changed else "unchanged").inc()
            if self._failing:
                log.info("the JWT signing keys can be refreshed from etcd again")
            self._failing = False
        finally:
            self._reading = None
