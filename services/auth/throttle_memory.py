"""The login throttle's counters in this process's memory: what each replica uses while Redis
is unreachable. The rules are those of the Lua scripts in services/auth/store/cache.py
(_THROTTLE_ATTEMPT, _THROTTLE_SETTLE, _WINDOW), so a replica limits alone what the replicas
limit together when Redis is up; N replicas then allow up to N times as many guesses.

At most `max_keys` keys are kept; beyond that the least recently used one is forgotten.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from services.auth.throttle_rules import AttemptVerdict, BlockUndo, RefusedBy, ThrottleLimits


@dataclass
class _Counter:
    times: list[int] = field(default_factory=list)  # ms, newest first
    running: list[int] = field(default_factory=list)  # admitted, not yet settled; newest first
    level: int = 0
    blocked_until: int = 0
    expires: int = 0


Outcome = Literal["success", "failure", "void"]


class MemoryCounters:
    def __init__(self, max_keys: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_keys = max_keys
        self._clock = clock
        self._counters: OrderedDict[str, _Counter] = OrderedDict()

    def __len__(self) -> int:
        return len(self._counters)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._holds(key, self._now())

    def attempt(self, key: str, ip_key: str | None, limits: ThrottleLimits) -> AttemptVerdict:
        now = self._now()
        window = limits.window_ms
        running_since = now - limits.running_mark_ms
        attempt_existed = self._holds(key, now)
        attempt = self._load(key, now)
        attempt.running = _since(attempt.running, running_since)
        refused_by: RefusedBy | None = None
        wait = 0
        final = False
        if attempt.blocked_until > now:
            refused_by, wait = "attempt", attempt.blocked_until - now
            final = not attempt.running
        client: _Counter | None = None
        allowed = limits.ip_failures
        if ip_key is not None:
            client = self._load(ip_key, now)
            client.times = _since(client.times, now - window)
            client.running = _since(client.running, running_since)
            if len(client.times) >= allowed:
                if client.times[allowed - 1] + window - now > wait:
                    refused_by, wait = "client_ip", client.times[allowed - 1] + window - now
                final = final or not client.running
        if refused_by is not None and not final:
            return AttemptVerdict(None, 0, now, BlockUndo(0, 0, 0), ask_again=True)
        if ip_key is not None and client is not None:
            if refused_by is None:
                client.times = [now, *client.times][:allowed]
                client.running = [now, *client.running][:allowed]
            self._save(ip_key, client, now, now + window)
        if refused_by == "client_ip" and not attempt_existed:
            # As in Redis: a name sprayed past the IP limit leaves no key behind.
            return AttemptVerdict(refused_by, wait, now, BlockUndo(0, 0, 0))
        undo_level, undo_until = attempt.level, attempt.blocked_until
        attempt.times = [now, *_since(attempt.times, now - window)][: limits.failures]
        if refused_by is None:
            attempt.running = [now, *attempt.running][: limits.failures]
        if len(attempt.times) >= limits.failures:
            attempt.blocked_until = now + limits.delay_ms(attempt.level)
            attempt.level += 1
        else:
            attempt.level = 0
        if refused_by is not None:
            wait = max(wait, attempt.blocked_until - now)  # the block this refusal has just set
        self._save(key, attempt, now, now + max(window, attempt.blocked_until - now))
        return AttemptVerdict(
            refused_by=refused_by,
            wait_ms=wait,
            at_ms=now,
            undo=BlockUndo(undo_level, undo_until, attempt.blocked_until),
        )

    def settle(
        self, key: str, ip_key: str | None, at_ms: int, outcome: Outcome, undo: BlockUndo
    ) -> None:
        """The admitted attempt at `at_ms` stops running: a success clears the key, a failure
        stays counted, a void attempt is undone."""
        now = self._now()
        if outcome == "success":
            self._counters.pop(key, None)
        elif (attempt := self._counters.get(key)) is not None:
            attempt.running = _without(attempt.running, at_ms)
            if outcome == "void":
                attempt.times = _without(attempt.times, at_ms)
                if attempt.blocked_until == undo.set_until:
                    attempt.level, attempt.blocked_until = undo.prior_level, undo.prior_until
        if ip_key is not None and (client := self._counters.get(ip_key)) is not None:
            client.running = _without(client.running, at_ms)
            if outcome != "failure":
                client.times = _without(client.times, at_ms)
        for name in (key, ip_key):
            if name is None:
                continue
            counter = self._counters.get(name)
            if (
                counter is not None
                and not counter.times
                and not counter.running
                and counter.blocked_until <= now
            ):
                del self._counters[name]

    def window_wait(self, key: str, allowed: int, window_ms: int) -> int:
        """Ms until one more event is allowed under `key` (0: now)."""
        now = self._now()
        times = _since(self._load(key, now).times, now - window_ms)
        return max(1, times[allowed - 1] + window_ms - now) if len(times) >= allowed else 0

    def window_add(self, key: str, allowed: int, window_ms: int) -> int:
        """Record one event under `key` if the limit allows it (0), else the ms until it would."""
        wait = self.window_wait(key, allowed, window_ms)
        if wait:
            return wait
        now = self._now()
        counter = self._load(key, now)
        counter.times = [now, *_since(counter.times, now - window_ms)][:allowed]
        self._save(key, counter, now, now + window_ms)
        return 0

    def _holds(self, key: str, now: int) -> bool:
        counter = self._counters.get(key)
        return counter is not None and counter.expires > now

    def _now(self) -> int:
        return int(self._clock() * 1000)

    def _load(self, key: str, now: int) -> _Counter:
        counter = self._counters.get(key)
        if counter is None or counter.expires <= now:
            return _Counter()
        return counter

    def _save(self, key: str, counter: _Counter, now: int, expires: int) -> None:
        counter.expires = expires
        self._counters[key] = counter
        self._counters.move_to_end(key)
        while len(self._counters) > self._max_keys:
            self._counters.popitem(last=False)


def _since(times: list[int], start: int) -> list[int]:
    return [at for at in times if at > start]


def _without(times: list[int], at_ms: int) -> list[int]:
    if at_ms in times:
        times = list(times)
        times.remove(at_ms)
    return times
