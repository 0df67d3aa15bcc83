"""The login throttle: counters shared by every auth replica through Redis (atomic Lua scripts
in services/auth/store/cache.py), with each replica's own memory as the fallback while Redis is
unreachable (services/auth/throttle_memory.py).

Keys and limits (services/auth/throttle_rules.py; all are settings):
- (case-folded username as typed, client IP): after `failures` failures in `window`, every
  further attempt is refused for 1 s, 2 s, 4 s, ... up to `max_delay`; refused attempts count as
  failures too. Unknown names count exactly like known ones. A success clears the key.
- a device (its device cookie, services/auth/devices.py, valid for the account being logged
  into): the same limits on a counter of its own, instead of the two other keys, so someone
  else guessing from the owner's network or at the owner's name never locks the owner out.
- client IP (services/foundation/client_address.py): `ip_failures` failures in `window` over all
  usernames; past that the IP's attempts are refused until its failures of the last window fall
  below the limit. A refused attempt at a name this IP has no key for writes no key.
- signups: `signup_conflicts` `username_taken` answers to one client IP per `signup_window`,
  counted only if the limit allows one more, in the same atomic step.

A refused attempt counts as a failure and so moves the block on; the refusal reports the block
it has just set, so a client that waits the Retry-After it was told is admitted (once).

Every attempt is counted as a failure when admitted and un-counted when it succeeds (or when no
password was checked after all), so concurrent guesses cannot slip past a limit together.
The verdict comes before any password hash is queued: a refusal costs no bcrypt time.

    check = await throttle.admit(throttle.subject(username, client_ip, device_id))  # may raise
    ... verify the password ...
    await throttle.settle(check, success=ok)   # or throttle.void(check): nothing was checked
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass

from services.auth import metrics
from services.auth.passwords import Overloaded
from services.auth.store.cache import THROTTLE_ATTEMPT, THROTTLE_SETTLE, WINDOW, RedisCache
from services.auth.throttle_memory import MemoryCounters, Outcome
from services.auth.throttle_rules import AttemptVerdict, BlockUndo, RefusedBy, ThrottleLimits
from services.foundation.client_address import ClientAddress, client_address, client_ip_key
from services.foundation.log_throttle import RepeatedWarnings
from services.foundation.rpc.calls import current_call

log = logging.getLogger(__name__)

__all__ = ["AdmittedCheck", "LoginThrottle", "Subject", "TooManyAttempts", "client_ip_key"]

# When an attempt held back by checks still running asks again: after about one hash's time,
# then twice as long each time up to the longest, so that a client keeping dozens waiting (its
# HTTP tier lets it have GATEHOUSE_MAX_HASHING_PER_CLIENT per worker) costs Redis little.
ASK_AGAIN_SECONDS = 0.05
ASK_AGAIN_LONGEST_SECONDS = 0.4

# At most one log line per this many seconds about calls without a valid client IP.
_NO_CLIENT_IP_LOG_INTERVAL = 60.0


class TooManyAttempts(Exception):
    """Refused by the throttle; `limit` names the key that refused (for logs and metrics)."""

    def __init__(self, retry_after_ms: int, limit: str) -> None:
        self.retry_after_ms = retry_after_ms
        self.retry_after_seconds = _seconds(retry_after_ms)
        self.limit = limit
        super().__init__(f"too many attempts; retry in {self.retry_after_seconds} s")


@dataclass(frozen=True)
class Subject:
    """The counters one password check is judged by."""

    attempt_key: str
    ip_key: str | None
    kind: str  # "account_ip" or "device": what the attempt key counts
    client: ClientAddress


@dataclass(frozen=True)
class AdmittedCheck:
    subject: Subject
    at_ms: int
    undo: BlockUndo
    in_memory: bool  # counted in this replica's memory (Redis was unreachable)


class LoginThrottle:
    def __init__(
        self,
        redis: RedisCache | None,
        limits: ThrottleLimits,
        *,
        memory_keys: int = 100_000,
        redis_timeout: float = 1.0,
    ) -> None:
        """`redis` None counts in memory only (tests, tools)."""
        self._redis = redis
        self._redis_timeout = redis_timeout
        self.limits = limits
        self._memory = MemoryCounters(memory_keys)
        self._in_memory = False
        self._outage_noticed = 0.0
        # Calls without a valid client IP share one IP key: counted, and logged now and then.
        self._no_client_ip = RepeatedWarnings(log, _NO_CLIENT_IP_LOG_INTERVAL)
        metrics.THROTTLE_IN_MEMORY.set(0)

    @property
    def in_memory(self) -> bool:
        """Whether the last verdict came from this replica's memory (Redis unreachable)."""
        return self._in_memory

    def subject(self, username: str, client_ip: str, device_id: str | None) -> Subject:
        client = self.client(client_ip)
        if device_id is not None:
            return Subject(f"gh:t:d:{device_id}", None, "device", client)
        digest = hashlib.sha256(
            f"{username.casefold()}\0{client.key}".encode("utf-8", "surrogatepass")
        ).hexdigest()[:40]
        return Subject(f"gh:t:a:{digest}", f"gh:t:i:{client.key}", "account_ip", client)

    def client(self, client_ip: str) -> ClientAddress:
        """The caller's address; one without a valid client IP is noted (log, metric)."""
        client = client_address(client_ip)
        if not client.valid:
            metrics.NO_CLIENT_IP.labels(client.shown).inc()
            self._no_client_ip.warn(
                "no_client_ip",
                "a call came without a valid client IP (an HTTP tier older than the throttle?): "
                "it shares the IP key %r and its limits",
                client.key,
            )
        return client

    async def admit(self, subject: Subject, wait_until: float | None = None) -> AdmittedCheck:
        """Count the attempt and let it go ahead, or raise TooManyAttempts. An attempt that
        would be refused only while checks of its keys are still running (each may be a success,
        which clears its key) asks again (ASK_AGAIN_SECONDS) until they end, up to `wait_until`
        (loop time; None: not at all), then is refused for a second, uncounted; Overloaded, as
        for a hash, if its call is abandoned meanwhile."""
        loop = asyncio.get_running_loop()
        call = current_call.get()
        pause = 0.0
        while True:
            if pause and call is not None and call.abandoned:
                # Its caller hung up (or cancelled): nobody reads the answer, so ask no more.
                raise Overloaded("the call was cancelled while it waited for the checks ahead")
            verdict, in_memory = await self._verdict(subject)
            if not verdict.ask_again:
                break
            if not pause:
                metrics.THROTTLE_WAITS.labels(subject.kind).inc()
            pause = min(2 * pause, ASK_AGAIN_LONGEST_SECONDS) if pause else ASK_AGAIN_SECONDS
            if wait_until is None or loop.time() + pause > wait_until:
                metrics.THROTTLED.labels(subject.kind).inc()
                raise TooManyAttempts(1000, subject.kind)
            await asyncio.sleep(pause)
        if verdict.refused_by is not None:
            limit = subject.kind if verdict.refused_by == "attempt" else "client_ip"
            metrics.THROTTLED.labels(limit).inc()
            raise TooManyAttempts(verdict.wait_ms, limit)
        return AdmittedCheck(subject, verdict.at_ms, verdict.undo, in_memory)

    async def _verdict(self, subject: Subject) -> tuple[AttemptVerdict, bool]:
        """The counters' verdict, and whether it came from this replica's memory."""
        keys = [subject.attempt_key] + ([subject.ip_key] if subject.ip_key else [])
        limits = self.limits
        args = (
            limits.failures,
            limits.window_ms,
            limits.delay_ms(0),
            int(limits.max_delay_seconds * 1000),
            limits.ip_failures,
            limits.running_mark_ms,
        )
        verdict: AttemptVerdict | None = None
        started = time.monotonic()
        if self._redis is not None:
            result = await self._redis.run_script(
                "throttle_attempt", THROTTLE_ATTEMPT, keys, args, timeout=self._redis_timeout
            )
            verdict = _verdict(result)
        in_memory = verdict is None
        self._note_backend(in_memory, started)
        if verdict is None:
            verdict = self._memory.attempt(subject.attempt_key, subject.ip_key, limits)
        return verdict, in_memory

    async def settle(self, check: AdmittedCheck, *, success: bool) -> None:
        """The password was checked: a success clears the attempt key, a failure stays
        counted; either way the check no longer holds back the attempts waiting on it."""
        await self._settle(check, "success" if success else "failure")

    async def void(self, check: AdmittedCheck) -> None:
        """No password was checked after all (overloaded, cancelled): it does not count."""
        await self._settle(check, "void")

    async def check_signup(self, client: ClientAddress) -> None:
        """Raise TooManyAttempts if this IP had too many `username_taken` answers."""
        await self._signup_window(client, "check")

    async def count_taken_name(self, client: ClientAddress) -> None:
        """One more `username_taken` answer to this IP, or TooManyAttempts (and nothing
        counted) if the limit allows no more: checked and counted in one atomic step."""
        await self._signup_window(client, "add")

    async def _signup_window(self, client: ClientAddress, operation: str) -> None:
        key = f"gh:t:s:{client.key}"
        limits = self.limits
        allowed, window = limits.signup_conflicts, limits.signup_window_ms
        wait = await self._window(key, (allowed, window, operation))
        if wait is None:
            memory = self._memory
            wait = (memory.window_wait if operation == "check" else memory.window_add)(
                key, allowed, window
            )
        if wait > 0:
            metrics.THROTTLED.labels("signup_ip").inc()
            raise TooManyAttempts(wait, "signup_ip")

    async def _window(self, key: str, args: tuple[object, ...]) -> int | None:
        if self._redis is None:
            return None
        started = time.monotonic()
        result = await self._redis.run_script(
            "throttle_signup", WINDOW, [key], args, timeout=self._redis_timeout
        )
        in_memory = not isinstance(result, int)
        self._note_backend(in_memory, started)
        return int(result) if isinstance(result, int) else None

    async def _settle(self, check: AdmittedCheck, outcome: Outcome) -> None:
        subject = check.subject
        undo = check.undo
        if not check.in_memory and self._redis is not None:
            keys = [subject.attempt_key] + ([subject.ip_key] if subject.ip_key else [])
            args: tuple[object, ...] = (check.at_ms, outcome)
            if outcome == "void":
                args += (undo.prior_level, undo.prior_until, undo.set_until)
            settled = await self._redis.run_script(
                "throttle_settle", THROTTLE_SETTLE, keys, args, timeout=self._redis_timeout
            )
            if settled is not None:
                return
            # Redis went away since the attempt: settle what memory may hold for the key.
        self._memory.settle(subject.attempt_key, subject.ip_key, check.at_ms, outcome, undo)

    def _note_backend(self, in_memory: bool, started: float) -> None:
        """Log once per outage when the counters move to memory, and once when they are back.

        An answer from Redis to a call sent before the outage was noticed ends nothing: under
        load, calls in flight still complete while a later one times out.
        """
        if self._redis is None or in_memory == self._in_memory:
            return
        if not in_memory and started <= self._outage_noticed:
            return
        self._in_memory = in_memory
        metrics.THROTTLE_IN_MEMORY.set(int(in_memory))
        if in_memory:
            self._outage_noticed = time.monotonic()
            log.warning(
                "Redis is unreachable: the login throttle counts in this replica's memory until it "
                "is back (same limits, per replica: N replicas allow up to N times the guesses)"
            )
        else:
            log.info(
                "Redis is back: the login throttle counts in Redis again, shared by every replica"
            )


# The script's code of the limit that refused an attempt (0: none).
_REFUSED_BY: dict[int, RefusedBy | None] = {0: None, 1: "attempt", 2: "client_ip", 3: None}


def _verdict(result: object) -> AttemptVerdict | None:
    if not (isinstance(result, list) and len(result) == 6):
        return None
    refused_by, wait_ms, at_ms, prior_level, prior_until, set_until = (int(v) for v in result)
    return AttemptVerdict(
        refused_by=_REFUSED_BY.get(refused_by),
        wait_ms=wait_ms,
        at_ms=at_ms,
        undo=BlockUndo(prior_level, prior_until, set_until),
        ask_again=refused_by == 3,
    )


def _seconds(wait_ms: int) -> int:
    return max(1, -(-wait_ms // 1000))
