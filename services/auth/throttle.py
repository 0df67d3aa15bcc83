"""The login throttle: counters shared by every auth replica through Redis (atomic Lua scripts
in services/auth/cache.py), with each replica's own memory as the fallback while Redis is
unreachable (services/auth/throttle_memory.py).

Keys and limits (services/auth/throttle_rules.py; all are settings):
- (case-folded username as typed, client IP): after `failures` failures in `window`, every
  further attempt is refused for 1 s, 2 s, 4 s, ... up to `max_delay`; refused attempts count as
  failures too. Unknown names count exactly like known ones. A success clears the key.
- a device (its device cookie, services/auth/devices.py, valid for the account being logged
  into): the same limits on a counter of its own, instead of the two other keys, so someone
  else guessing from the owner's network or at the owner's name never locks the owner out.
- client IP: `ip_failures` failures in `window` over all usernames; past that the IP's attempts
  are refused until its failures of the last window fall below the limit.
- signups: `signup_conflicts` `username_taken` answers to one client IP per `signup_window`.

Every attempt is counted as a failure when admitted and un-counted when it succeeds (or when no
password was checked after all), so concurrent guesses cannot slip past a limit together.
The verdict comes before any password hash is queued: a refusal costs no bcrypt time.

    check = await throttle.admit(throttle.subject(username, client_ip, device_id))  # may raise
    ... verify the password ...
    await throttle.settle(check, success=ok)   # or throttle.void(check): nothing was checked
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import time
from dataclasses import dataclass

from services.auth import metrics
from services.auth.cache import THROTTLE_ATTEMPT, THROTTLE_SETTLE, WINDOW, RedisCache
from services.auth.throttle_memory import MemoryCounters
from services.auth.throttle_rules import AttemptVerdict, BlockUndo, RefusedBy, ThrottleLimits

log = logging.getLogger(__name__)

# Client IPs are keyed as given, except IPv6 ones, keyed by their /64: one subscriber usually
# holds a whole /64, so single addresses would give them 2^64 fresh keys.
IPV6_PREFIX = 64
# The key of a caller that sent no client IP (an HTTP tier older than the throttle): its
# attempts use the (account, IP) key alone, since every such call shares this "IP".
NO_CLIENT_IP = "unknown"
_MAX_IP_TEXT = 64


class TooManyAttempts(Exception):
    """Refused by the throttle; `limit` names the key that refused (for logs and metrics)."""

    def __init__(self, retry_after_seconds: int, limit: str) -> None:
        super().__init__(f"too many attempts; retry in {retry_after_seconds} s")
        self.retry_after_seconds = retry_after_seconds
        self.limit = limit


@dataclass(frozen=True)
class Subject:
    """The counters one password check is judged by."""

    attempt_key: str
    ip_key: str | None
    kind: str  # "account_ip" or "device": what the attempt key counts
    client_ip: str


@dataclass(frozen=True)
class AdmittedCheck:
    subject: Subject
    at_ms: int
    undo: BlockUndo
    in_memory: bool  # counted in this replica's memory (Redis was unreachable)


def client_ip_key(raw: str) -> str | None:
    """The client IP as a throttle key: normalised, IPv6 cut to its /64; None when absent or
    not an IP (from an HTTP tier that predates the throttle or a bad value)."""
    if not raw or len(raw) > _MAX_IP_TEXT:
        return None
    try:
        address = ipaddress.ip_address(raw.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, IPV6_PREFIX), strict=False))
    return str(address)


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
        metrics.THROTTLE_IN_MEMORY.set(0)

    @property
    def in_memory(self) -> bool:
        """Whether the last verdict came from this replica's memory (Redis unreachable)."""
        return self._in_memory

    def subject(self, username: str, client_ip: str, device_id: str | None) -> Subject:
        ip = client_ip_key(client_ip)
        shown_ip = ip or NO_CLIENT_IP
        if device_id is not None:
            return Subject(f"gh:t:d:{device_id}", None, "device", shown_ip)
        digest = hashlib.sha256(
            f"{username.casefold()}\0{shown_ip}".encode("utf-8", "surrogatepass")
        ).hexdigest()[:40]
        ip_key = f"gh:t:i:{ip}" if ip is not None else None
        return Subject(f"gh:t:a:{digest}", ip_key, "account_ip", shown_ip)

    async def admit(self, subject: Subject) -> AdmittedCheck:
        """Count the attempt and let it go ahead, or raise TooManyAttempts."""
        keys = [subject.attempt_key] + ([subject.ip_key] if subject.ip_key else [])
        limits = self.limits
        args = (
            limits.failures,
            limits.window_ms,
            limits.delay_ms(0),
            int(limits.max_delay_seconds * 1000),
            limits.ip_failures,
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
        if verdict.refused_by is not None:
            limit = subject.kind if verdict.refused_by == "attempt" else "client_ip"
            metrics.THROTTLED.labels(limit).inc()
            raise TooManyAttempts(_seconds(verdict.wait_ms), limit)
        return AdmittedCheck(subject, verdict.at_ms, verdict.undo, in_memory)

    async def settle(self, check: AdmittedCheck, *, success: bool) -> None:
        """The password was checked: a success clears the attempt key (a failure stays
        counted)."""
        if success:
            await self._settle(check, success=True)

    async def void(self, check: AdmittedCheck) -> None:
        """No password was checked after all (overloaded, cancelled): it does not count."""
        await self._settle(check, success=False)

    async def check_signup(self, client_ip: str) -> None:
        """Raise TooManyAttempts if this IP had too many `username_taken` answers."""
        key = _signup_key(client_ip)
        if key is None:
            return
        limits = self.limits
        args = (limits.signup_conflicts, limits.signup_window_ms, "check")
        wait = await self._window(key, args)
        if wait is None:
            wait = self._memory.window_wait(key, limits.signup_conflicts, limits.signup_window_ms)
        if wait > 0:
            metrics.THROTTLED.labels("signup_ip").inc()
            raise TooManyAttempts(_seconds(wait), "signup_ip")

    async def count_taken_name(self, client_ip: str) -> None:
        """One more `username_taken` answer to this IP."""
        key = _signup_key(client_ip)
        if key is None:
            return
        limits = self.limits
        args = (limits.signup_conflicts, limits.signup_window_ms, "count")
        if await self._window(key, args) is None:
            self._memory.window_count(key, limits.signup_conflicts, limits.signup_window_ms)

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

    async def _settle(self, check: AdmittedCheck, *, success: bool) -> None:
        subject = check.subject
        undo = check.undo
        if not check.in_memory and self._redis is not None:
            keys = [subject.attempt_key] + ([subject.ip_key] if subject.ip_key else [])
            args = (
                (check.at_ms, "success")
                if success
                else (check.at_ms, "void", undo.prior_level, undo.prior_until, undo.set_until)
            )
            settled = await self._redis.run_script(
                "throttle_settle", THROTTLE_SETTLE, keys, args, timeout=self._redis_timeout
            )
            if settled is not None:
                return
            # Redis went away since the attempt: settle what memory may hold for the key.
        self._memory.settle(
            subject.attempt_key, subject.ip_key, check.at_ms, None if success else undo
        )

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
            log.info("Redis is back: the login throttle counts in Redis again, shared by every replica")


# The script's code of the limit that refused an attempt (0: none).
_REFUSED_BY: dict[int, RefusedBy | None] = {0: None, 1: "attempt", 2: "client_ip"}


def _verdict(result: object) -> AttemptVerdict | None:
    if not (isinstance(result, list) and len(result) == 6):
        return None
    refused_by, wait_ms, at_ms, prior_level, prior_until, set_until = (int(v) for v in result)
    return AttemptVerdict(
        refused_by=_REFUSED_BY.get(refused_by),
        wait_ms=wait_ms,
        at_ms=at_ms,
        undo=BlockUndo(prior_level, prior_until, set_until),
    )


def _signup_key(client_ip: str) -> str | None:
    ip = client_ip_key(client_ip)
    return None if ip is None else f"gh:t:s:{ip}"


def _seconds(wait_ms: int) -> int:
    return max(1, -(-wait_ms // 1000))
