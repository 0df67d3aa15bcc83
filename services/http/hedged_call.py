"""One call of an idempotent method: attempts on one or more replicas, the first answer wins.

The first attempt goes to the replica the balancer picks. Another attempt goes to a different
replica when
- the first has not answered within the method's recent p99 (at least GATEHOUSE_HEDGE_MIN_DELAY,
  at most GATEHOUSE_ATTEMPT_TIMEOUT): a hedge, and the first keeps running;
- an attempt reaches GATEHOUSE_ATTEMPT_TIMEOUT: it is abandoned for a retry elsewhere;
- an attempt's replica is taken out of rotation (it missed a health ping): abandoned likewise;
- an attempt fails without a definite answer (connection lost, request unsent, DRAINING, an
  error another replica may not have, OVERLOADED): retried once, as before hedging existed.
Hedges, attempt-timeout retries and retries after OVERLOADED are extra load on a healthy
system, so each takes a token of the worker's ExtraAttemptBudget; a call answered OVERLOADED is
never hedged. Abandoned attempts are cancelled, which sends METHOD_CANCEL. When no other attempt
can be made, the one running keeps its full call deadline: nothing fails sooner than without
hedging. At most MAX_ATTEMPTS attempts per call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from services.contract import auth_pb2 as pb
from services.foundation.rpc.client import CallFailed
from services.foundation.rpc.protocol import RpcError
from services.http import metrics
from services.http.hedging import ExtraAttemptBudget
from services.http.replicas import Replica

MAX_ATTEMPTS = 3

# Answers that another replica would give just the same: never retried.
DEFINITE_STATUSES = frozenset(
    {
        pb.STATUS_OK,
        pb.STATUS_INVALID,
        pb.STATUS_NOT_FOUND,
        pb.STATUS_CONFLICT,
        pb.STATUS_UNAUTHENTICATED,
    }
)

# choose(avoid, strict): a replica not in `avoid`; strict: only one in rotation and not ejected.
Chooser = Callable[[set[Replica], bool], "Replica | None"]
Launcher = Callable[[Replica, float], Coroutine[Any, Any, pb.Envelope]]


def error_of(envelope: pb.Envelope) -> RpcError:
    return RpcError(
        envelope.status,
        envelope.message,
        envelope.reason,
        retry_after_seconds=envelope.retry_after_seconds,
    )


class _Attempt:
    __slots__ = ("abandon_at", "replica", "stalled")

    def __init__(self, replica: Replica, abandon_at: float | None) -> None:
        self.replica = replica
        self.abandon_at = abandon_at
        # Watched only if the replica was in rotation when the attempt began.
        self.stalled: asyncio.Future[None] | None = (
            None if replica.stalled.done() else replica.stalled
        )


class HedgedCall:
    def __init__(
        self,
        *,
        method_name: str,
        choose: Chooser,
        launch: Launcher,
        budget: ExtraAttemptBudget,
        hedge_delay: float,
        attempt_timeout: float,
        deadline: float,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._method_name = method_name
        self._choose = choose
        self._launch_on = launch
        self._budget = budget
        self._attempt_timeout = attempt_timeout
        self._deadline = deadline
        self._hedge_at: float | None = self._loop.time() + hedge_delay
        self._running: dict[asyncio.Task[pb.Envelope], _Attempt] = {}
        self._tried: set[Replica] = set()
        self._attempts = 0
        self._retried_after_failure = False
        self._hedge: asyncio.Task[pb.Envelope] | None = None
        self._last_error: RpcError | None = None

    async def run(self) -> pb.Envelope:
        """The first OK or definite answer; raises RpcError when every attempt failed."""
        envelope = await self._first_answer()
        if envelope is None:
            # Raised from a frame that holds no attempt: were the error's traceback to reach
            # a task that holds the error, only the garbage collector, which the HTTP workers
            # run rarely (services.foundation.heap), would free them.
            raise self._take_last_error()
        return envelope

    async def _first_answer(self) -> pb.Envelope | None:
        """The first OK or definite answer; None when every attempt failed."""
        first = self._choose(set(), False)
        if first is None:
            raise RpcError(
                pb.STATUS_UNAVAILABLE,
                "no auth replica can take calls (none registered, or all draining)",
                "no_replica",
            )
        self._start(first)
        winner: asyncio.Task[pb.Envelope] | None = None
        try:
            while self._running:
                waitables: set[asyncio.Future[Any]] = set(self._running)
                waitables.update(a.stalled for a in self._running.values() if a.stalled)
                await self._first_done(waitables, self._next_wake())
                for task in [task for task in self._running if task.done()]:
                    attempt = self._running.pop(task)
                    envelope = self._settle(task, attempt)
                    if envelope is not None:
                        winner = task
                        return envelope
                self._abandon_stalled()
                self._abandon_timed_out()
                self._maybe_hedge()
            return None
        finally:
            for task in self._running:
                task.cancel()
            self._running.clear()
            if self._hedge is not None:
                outcome = (
                    "none" if winner is None else "hedge" if winner is self._hedge else "first"
                )
                metrics.RPC_HEDGES.labels(self._method_name, outcome).inc()
                self._hedge = None

    async def _first_done(self, waitables: set[asyncio.Future[Any]], until: float) -> None:
        """Until one of `waitables` is done or the loop's clock reaches `until`: what
        asyncio.wait(FIRST_COMPLETED) does, without its argument checks and copies (a fifth of
        what hedging adds to every read: 27 against 22 us a call, measured in process)."""
        woken: asyncio.Future[None] = self._loop.create_future()

        def wake(_: object = None) -> None:
            if not woken.done():
                woken.set_result(None)

        timer = self._loop.call_at(until, wake)
        for waitable in waitables:
            waitable.add_done_callback(wake)
        try:
            await woken
        finally:
            timer.cancel()
            for waitable in waitables:
                waitable.remove_done_callback(wake)

    def _take_last_error(self) -> RpcError:
        error = self._last_error or CallFailed(
            "deadline_exceeded", "no answer before the deadline", sent=True
        )
        self._last_error = None
        return error

    # internals

    def _start(self, replica: Replica) -> asyncio.Task[pb.Envelope]:
        now = self._loop.time()
        self._attempts += 1
        self._tried.add(replica)
        reserved = _Reserved(replica, self._launch_on)
        task = self._loop.create_task(reserved.run(self._deadline))
        task.add_done_callback(reserved.release)  # a task cancelled before it started
        task.add_done_callback(_retrieve_exception)
        abandon_at = now + self._attempt_timeout
        self._running[task] = _Attempt(replica, abandon_at if abandon_at < self._deadline else None)
        return task

    def _next_wake(self) -> float:
        wake = self._deadline
        if self._hedge_at is not None:
            wake = min(wake, self._hedge_at)
        for attempt in self._running.values():
            if attempt.abandon_at is not None:
                wake = min(wake, attempt.abandon_at)
        return wake

    def _settle(self, task: asyncio.Task[pb.Envelope], attempt: _Attempt) -> pb.Envelope | None:
        """The answer if it ends the call; else None, after starting a retry if one is due."""
        # exception(), not result(): raised again here, the attempt's error would hold this
        # frame, which holds the task, which holds the error.
        failure = task.exception()
        if isinstance(failure, CallFailed):
            self._last_error = failure
            if failure.reason == "deadline_exceeded":
                return None  # the call's deadline: every other attempt shares it
            reason = "connection_lost" if failure.sent else "unsent"
            budgeted = False
        elif failure is not None:
            raise failure  # a bug's error: its cycle with the task is left to the collector
        else:
            envelope = task.result()
            if envelope.status in DEFINITE_STATUSES:
                return envelope
            self._last_error = error_of(envelope)
            if envelope.status == pb.STATUS_OVERLOADED:
                self._hedge_at = None  # never add load to an overload
                reason, budgeted = "overloaded", True
            else:
                reason = "draining" if envelope.status == pb.STATUS_DRAINING else "failed"
                budgeted = False
        if self._running:
            return None  # another attempt may still answer
        if budgeted:
            self._retry(reason, budgeted=True)
        elif not self._retried_after_failure:
            self._retried_after_failure = True
            self._retry(reason, budgeted=False, same_if_none=True)
        return None

    def _retry(self, reason: str, *, budgeted: bool, same_if_none: bool = False) -> bool:
        """Start another attempt elsewhere if the attempt cap and deadline allow, and for a
        budgeted one (extra load on a replica in rotation) the budget too."""
        if self._attempts >= MAX_ATTEMPTS or self._loop.time() >= self._deadline:
            return False
        replica = self._choose(self._tried, budgeted)
        if replica is None and same_if_none:
            # The only replica left: better the same one than none, as before hedging.
            replica = next((r for r in self._tried if not r.draining), None)
        if replica is None or (budgeted and not self._budget.take()):
            return False
        metrics.RPC_RETRIES.labels(self._method_name, reason).inc()
        self._start(replica)
        self._hedge_at = None  # one extra attempt is enough: no hedge on top
        return True

    def _abandon_stalled(self) -> None:
        for task, attempt in list(self._running.items()):
            if attempt.stalled is None or not attempt.stalled.done():
                continue
            attempt.stalled = None
            if len(self._running) > 1 or self._retry("unresponsive", budgeted=False):
                del self._running[task]
                task.cancel()
            # else nowhere else to go: keep waiting on it

    def _abandon_timed_out(self) -> None:
        now = self._loop.time()
        for task, attempt in list(self._running.items()):
            if attempt.abandon_at is None or attempt.abandon_at > now:
                continue
            attempt.abandon_at = None
            if len(self._running) > 1 or self._retry("attempt_timeout", budgeted=True):
                del self._running[task]
                task.cancel()
            # else no retry allowed: it keeps the rest of the call deadline

    def _maybe_hedge(self) -> None:
        if self._hedge_at is None or self._loop.time() < self._hedge_at:
            return
        self._hedge_at = None  # decided once per call
        if len(self._running) != 1 or self._attempts >= MAX_ATTEMPTS:
            return
        replica = self._choose(self._tried, True)
        if replica is None or not self._budget.take():
            return
        self._hedge = self._start(replica)


class _Reserved:
    """An attempt counted in its replica's load from the moment it is chosen: its task runs
    only on the next loop turn, and calls chosen meanwhile must see the replica as busier."""

    __slots__ = ("_launch", "_replica", "_started")

    def __init__(self, replica: Replica, launch: Launcher) -> None:
        self._replica = replica
        self._launch = launch
        self._started = False
        replica.reserved += 1

    async def run(self, deadline: float) -> pb.Envelope:
        self.release()  # from here the attempt counts in the replica's `outstanding`
        return await self._launch(self._replica, deadline)

    def release(self, _task: object = None) -> None:
        if not self._started:
            self._started = True
            self._replica.reserved -= 1


def _retrieve_exception(task: asyncio.Task[pb.Envelope]) -> None:
    # An abandoned attempt's failure was accounted for, or is of no interest: never warn.
    if not task.cancelled():
        task.exception()
