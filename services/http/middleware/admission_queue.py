"""Slots to run requests in, and a first-in first-out queue in front of them bounded by time.

A request takes one of `concurrency` slots if one is free and nobody is queued, else it waits
in line for one. It is refused only when it could not start within `target` seconds:
- it waited `target` in the queue without getting a slot;
- the queue is standing above the target (a queued request was refused for that within the
  last `target` seconds and the queue has not emptied since, or the first in line has already
  waited `target`): a newcomer behind it would wait as long, so it is refused at once rather than after `target`, which keeps refusals cheap and
  the waiting of the admitted short (CoDel's idea, with a refusal for a drop);
- `ceiling` requests are already running or queued (a hard bound on what a worker holds).

A closed loop (each client waits for its answer before sending again) slows down by itself:
as long as its requests start within the target it gets latency, never a refusal. First in,
first out is the order that keeps the longest wait of such a loop lowest.
"""

from __future__ import annotations

import asyncio
import collections
import math


class _Waiter:
    __slots__ = ("future", "since", "timer")

    def __init__(
        self, future: asyncio.Future[bool], since: float, timer: asyncio.TimerHandle
    ) -> None:
        self.future = future
        self.since = since
        self.timer = timer


class AdmissionQueue:
    """One budget of slots; one instance per worker process and kind of request."""

    def __init__(self, concurrency: int, target: float, ceiling: int) -> None:
        self.concurrency = concurrency
        self.target = target
        self.ceiling = ceiling
        self.running = 0
        self.queued = 0  # waiters still in line (the deque also holds settled ones)
        self._line: collections.deque[_Waiter] = collections.deque()
        self._last_expiry = -math.inf

    def try_take(self) -> bool | None:
        """True: a slot is taken. False: refused at once. None: the caller must queue."""
        if self.running < self.concurrency and self.queued == 0:
            self.running += 1
            return True
        if self.running + self.queued >= self.ceiling or self._standing():
            return False
        return None

    async def take(self) -> bool:
        """Take a slot, waiting at most `target` for one; False when refused. The caller must
        `release()` a slot it got."""
        taken = self.try_take()
        if taken is not None:
            return taken
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        now = loop.time()
        waiter = _Waiter(future, now, loop.call_later(self.target, self._expire, future))
        self._line.append(waiter)
        self.queued += 1
        try:
            return await future
        except asyncio.CancelledError:
            waiter.timer.cancel()
            if future.cancelled():
                self.queued -= 1  # still in line: release() skips it
            elif future.result():
                self.release()  # handed a slot in the same turn the caller left
            raise

    def release(self) -> None:
        """Give a slot back: to the first in line, or free."""
        while self._line:
            waiter = self._line.popleft()
            if waiter.future.done():
                continue  # expired or cancelled, already counted out
            waiter.timer.cancel()
            self.queued -= 1
            waiter.future.set_result(True)  # the slot passes over: `running` stays
            if self.queued == 0:
                self._last_expiry = -math.inf  # the queue has emptied: no longer standing
            return
        self.running -= 1
        self._last_expiry = -math.inf

    def _expire(self, future: asyncio.Future[bool]) -> None:
        if future.done():
            return
        self.queued -= 1
        self._last_expiry = asyncio.get_running_loop().time()
        future.set_result(False)
        while self._line and self._line[0].future.done():
            self._line.popleft()

    def _standing(self) -> bool:
        if self.queued == 0:
            return False
        now = asyncio.get_running_loop().time()
        if now - self._last_expiry < self.target:
            return True
        # A busy loop runs the expiry timers late: the first in line tells without them.
        while self._line[0].future.done():
            self._line.popleft()
        return now - self._line[0].since >= self.target
