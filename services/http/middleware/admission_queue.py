"""Slots to run requests in, and a first-in first-out queue in front of them bounded by time.

A request takes one of `concurrency` slots if one is free and nobody is queued, else it waits
in line for one. It is refused only when it could not start within `target` seconds:
- it waited `target` in the queue without getting a slot;
- it would wait longer than `target` behind the line, which is refused at once rather than
  after `target`, so refusals stay cheap and the line short:
  - predicted: the line plus itself, times how long a request holds a slot (a moving
    average), over the slots. An open-loop overload makes the line grow until that passes
    the target; a closed loop (each client waits for its answer before sending again) keeps
    its line at its connections beyond the slots, and while those start within the target it
    gets latency, not refusals (the prediction is an average, so a request near the target
    may still be refused);
  - seen: the first in line has already waited `target` (a stall, which the average does not
    see yet, or a busy loop that runs the expiry timers late);
- `ceiling` requests are already running or queued (a hard bound on what a worker holds).

Nothing is refused for longer than its own check says: a closed loop's client that gets a 503
sends again at once, so a rule that went on refusing for a while after one late request would
turn a moment's pause into a storm of refusals. First in, first out is the order that keeps the
longest wait of a closed loop lowest.
"""

from __future__ import annotations

import asyncio
import collections


class _Waiter:
    __slots__ = ("counted_out", "future", "since", "timer")

    def __init__(self, future: asyncio.Future[bool], since: float) -> None:
        self.future = future
        self.since = since
        self.timer: asyncio.TimerHandle | None = None
        # Taken off `queued`: by whoever first sees it leave (expiry, a slot, cancellation).
        self.counted_out = False


# Weight of one request's slot holding time in the moving average.
HOLD_SMOOTHING = 0.02
# One sample counts for at most this many times target x concurrency: a request stuck until
# its deadline must not make the average refuse every short line for the next hundred.
HOLD_SAMPLE_CAP = 1.0


class AdmissionQueue:
    """One budget of slots; one instance per worker process and kind of request."""

    def __init__(self, concurrency: int, target: float, ceiling: int) -> None:
        self.concurrency = concurrency
        self.target = target
        self.ceiling = ceiling
        self.running = 0
        self.queued = 0  # waiters still in line (the deque also holds settled ones)
        self._line: collections.deque[_Waiter] = collections.deque()
        self.hold_seconds = 0.0  # moving average of how long a request holds a slot

    def try_take(self) -> bool | None:
        """True: a slot is taken. False: refused at once. None: the caller must queue."""
        if self.running < self.concurrency and self.queued == 0:
            self.running += 1
            return True
        if self.running + self.queued >= self.ceiling or self._would_wait_too_long():
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
        waiter = _Waiter(future, now)
        waiter.timer = loop.call_later(self.target, self._expire, waiter)
        self._line.append(waiter)
        self.queued += 1
        try:
            return await future
        except asyncio.CancelledError:
            if waiter.timer is not None:
                waiter.timer.cancel()
            if future.cancelled():
                self._count_out(waiter)  # still in line: release() skips it
            elif future.result():
                self.release()  # handed a slot in the same turn the caller left
            raise

    def release(self, held_since: float | None = None) -> None:
        """Give a slot back: to the first in line, or free. `held_since`: the loop.time() at
        which the caller got it, for the holding time's average."""
        if held_since is not None:
            cap = HOLD_SAMPLE_CAP * self.target * self.concurrency
            held = min(asyncio.get_running_loop().time() - held_since, cap)
            self.hold_seconds += HOLD_SMOOTHING * (held - self.hold_seconds)
        while self._line:
            waiter = self._line.popleft()
            if waiter.future.done():
                self._count_out(waiter)  # cancelled, its task not yet resumed
                continue
            if waiter.timer is not None:
                waiter.timer.cancel()
            self._count_out(waiter)
            waiter.future.set_result(True)  # the slot passes over: `running` stays
            return
        self.running -= 1

    def _count_out(self, waiter: _Waiter) -> None:
        if not waiter.counted_out:
            waiter.counted_out = True
            self.queued -= 1

    def _expire(self, waiter: _Waiter) -> None:
        if waiter.future.done():
            return
        self._count_out(waiter)
        waiter.future.set_result(False)
        self._drop_settled_head()

    def _drop_settled_head(self) -> None:
        """Take the waiters that left from the front of the line, counting each out once."""
        while self._line and self._line[0].future.done():
            self._count_out(self._line.popleft())

    def _would_wait_too_long(self) -> bool:
        if self.queued == 0:
            return False
        if (self.queued + 1) * self.hold_seconds / self.concurrency > self.target:
            return True
        self._drop_settled_head()
        if not self._line:
            return False
        return asyncio.get_running_loop().time() - self._line[0].since >= self.target
