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

A request may come with a rank (the hashing budget ranks by how much of it the request's client
holds already and has used lately): a freed slot goes to the lowest rank in line, first in
first out within it, and a newcomer's wait is predicted from the waiters it would not pass
only. So a client that holds little is not refused because heavier ones fill the line, which
instead serves it first. Reads all have rank 0: one line, first in first out.
"""

from __future__ import annotations

import asyncio
import collections


class _Waiter:
    __slots__ = ("counted_out", "future", "rank", "since", "timer")

    def __init__(self, future: asyncio.Future[bool], since: float, rank: int) -> None:
        self.future = future
        self.since = since
        self.rank = rank
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
        self.queued = 0  # waiters still in line (the deques also hold settled ones)
        # A line per rank (the lowest served first), and its waiters still in line.
        self._lines: dict[int, collections.deque[_Waiter]] = {}
        self._queued_at: collections.Counter[int] = collections.Counter()
        self.hold_seconds = 0.0  # moving average of how long a request holds a slot

    def try_take(self, rank: int = 0) -> bool | None:
        """True: a slot is taken. False: refused at once. None: the caller must queue."""
        if self.running < self.concurrency and self.queued == 0:
            self.running += 1
            return True
        if self.running + self.queued >= self.ceiling or self._would_wait_too_long(rank):
            return False
        return None

    async def take(self, rank: int = 0) -> bool:
        """Take a slot, waiting at most `target` for one; False when refused. The caller must
        `release()` a slot it got."""
        taken = self.try_take(rank)
        if taken is not None:
            return taken
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        now = loop.time()
        waiter = _Waiter(future, now, rank)
        waiter.timer = loop.call_later(self.target, self._expire, waiter)
        line = self._lines.get(rank)
        if line is None:
            line = self._lines[rank] = collections.deque()
        line.append(waiter)
        self.queued += 1
        self._queued_at[rank] += 1
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
        """Give a slot back: to the first in the lowest rank's line, or free. `held_since`: the
        loop.time() at which the caller got it, for the holding time's average."""
        if held_since is not None:
            cap = HOLD_SAMPLE_CAP * self.target * self.concurrency
            held = min(asyncio.get_running_loop().time() - held_since, cap)
            self.hold_seconds += HOLD_SMOOTHING * (held - self.hold_seconds)
        for rank in sorted(self._lines) if len(self._lines) > 1 else list(self._lines):
            line = self._lines[rank]
            while line:
                waiter = line.popleft()
                if waiter.future.done():
                    self._count_out(waiter)  # cancelled, its task not yet resumed
                    continue
                if waiter.timer is not None:
                    waiter.timer.cancel()
                self._count_out(waiter)
                waiter.future.set_result(True)  # the slot passes over: `running` stays
                if not line:
                    del self._lines[rank]
                return
            del self._lines[rank]
        self.running -= 1

    def _count_out(self, waiter: _Waiter) -> None:
        if not waiter.counted_out:
            waiter.counted_out = True
            self.queued -= 1
            self._queued_at[waiter.rank] -= 1
            if not self._queued_at[waiter.rank]:
                del self._queued_at[waiter.rank]

    def _expire(self, waiter: _Waiter) -> None:
        if waiter.future.done():
            return
        self._count_out(waiter)
        waiter.future.set_result(False)
        self._drop_settled_head(waiter.rank)

    def _drop_settled_head(self, rank: int) -> None:
        """Take the waiters that left from the front of a line, counting each out once."""
        line = self._lines.get(rank)
        if line is None:
            return
        while line and line[0].future.done():
            self._count_out(line.popleft())
        if not line:
            del self._lines[rank]

    def _would_wait_too_long(self, rank: int) -> bool:
        if self.queued == 0:
            return False
        ahead = self.queued  # the waiters it would not pass: all of them, unless ranked
        if len(self._queued_at) > 1 or rank not in self._queued_at:
            ahead = sum(count for at, count in self._queued_at.items() if at <= rank)
        if (ahead + 1) * self.hold_seconds / self.concurrency > self.target:
            return True
        now = asyncio.get_running_loop().time()
        for at in [at for at in self._lines if at <= rank]:
            self._drop_settled_head(at)
            line = self._lines.get(at)
            if line and now - line[0].since >= self.target:
                return True
        return False
