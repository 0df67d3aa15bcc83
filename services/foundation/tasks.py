"""Background tasks: the one way to run a periodic loop, and the one way to stop a task.

    task = asyncio.create_task(every(0.25, heartbeat.beat, "heartbeat"), name="heartbeat")
    ...
    await stop_task(task)

or, tied to a scope (an `AsyncExitStack` stops it in reverse order of start):

    await stack.enter_async_context(running(publish_key(), "publish jwt key"))

Tasks that do something else in the background own their task and stop it with `stop_task`;
nothing else cancels a background task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

log = logging.getLogger(__name__)

ResultT = TypeVar("ResultT")

# Seconds a task asked to stop (a server finishing its requests) gets before it is cancelled.
STOP_GRACE_SECONDS = 5.0


async def every(
    interval: float,
    step: Callable[[], Awaitable[None]],
    what: str,
    *,
    until: asyncio.Event | None = None,
) -> None:
    """Run `step` forever, `interval` seconds apart; `what` names it in logs. With `until`, the
    loop ends once that event is set, between steps: a task whose steps must not be cancelled
    halfway (a connection being opened) is stopped with `stop_task(task, ask_to_stop=until.set)`.

    A step that raises does not end the loop (a bug there must not stop it for good): the first
    failure of a streak is logged with its traceback, the next ones are not until a step works.
    """
    failing = False
    while until is None or not until.is_set():
        try:
            await step()
        except Exception:
            if not failing:
                log.exception("%s failed unexpectedly; trying again every %g s", what, interval)
            failing = True
        else:
            if failing:
                log.info("%s works again", what)
            failing = False
        if until is None:
            await asyncio.sleep(interval)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(until.wait(), interval)


# How long a cancelled task may take to end before it is cancelled again.
RECANCEL_SECONDS = 1.0


async def stop_task(
    task: asyncio.Task[Any] | None,
    *,
    ask_to_stop: Callable[[], object] | None = None,
    grace: float = STOP_GRACE_SECONDS,
) -> None:
    """Stop `task` and wait until it has ended: cancel it, or first call `ask_to_stop` (a task
    that ends by itself, gracefully) and cancel it only if it is still running after `grace`
    seconds. A failure of the task is logged, not raised; a cancellation of the caller while it
    waits is raised as usual."""
    if task is None:
        return
    if ask_to_stop is not None and not task.done():
        ask_to_stop()
        await asyncio.wait([task], timeout=grace)
    task.cancel()
    await asyncio.wait([task], timeout=RECANCEL_SECONDS)
    while not task.done():
        # The task went on after its cancellation: it swallowed it (Python 3.11's
        # asyncio.timeout can turn a cancel that lands as the timeout fires into a TimeoutError,
        # which a retry loop then catches). Cancel it again rather than wait forever.
        log.warning(
            "background task %s did not stop when cancelled; cancelling again", task.get_name()
        )
        task.cancel()
        await asyncio.wait([task], timeout=RECANCEL_SECONDS)
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("background task %s had failed: %r", task.get_name(), error, exc_info=error)


@asynccontextmanager
async def running(
    coroutine: Coroutine[Any, Any, ResultT],
    name: str,
    *,
    ask_to_stop: Callable[[], object] | None = None,
) -> AsyncIterator[asyncio.Task[ResultT]]:
    """Run `coroutine` as a task for the duration of the `async with`; then stop it, as
    `stop_task` does."""
    task = asyncio.create_task(coroutine, name=name)
    try:
        yield task
    finally:
        await stop_task(task, ask_to_stop=ask_to_stop)
