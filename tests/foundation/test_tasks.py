"""The background task helper: periodic loops that survive a failing step, and stopping a task."""

from __future__ import annotations

import asyncio
import logging

import pytest

from devstack.ports import wait_until_async
from services.foundation.tasks import every, running, stop_task


async def test_a_failing_step_is_logged_once_per_streak_and_the_loop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outcomes = iter([ValueError("one"), ValueError("two"), None, ValueError("three"), None])
    steps = 0

    async def step() -> None:
        nonlocal steps
        steps += 1
        failure = next(outcomes, None)
        if failure is not None:
            raise failure

    caplog.set_level(logging.INFO, logger="services.foundation.tasks")
    task = asyncio.create_task(every(0.001, step, "the test step"))
    await wait_until_async(lambda: steps >= 6, 5.0, "six steps")
    await stop_task(task)
    failures = [r for r in caplog.records if "the test step failed" in r.getMessage()]
    assert [r.exc_info[1].args[0] for r in failures if r.exc_info and r.exc_info[1]] == [
        "one",
        "three",
    ]
    assert sum("the test step works again" in r.getMessage() for r in caplog.records) == 2


async def test_stop_task_waits_for_the_end_and_logs_a_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cleaned_up = asyncio.Event()
    started = asyncio.Event()

    async def loop_forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0)  # cleanup that needs the loop
            cleaned_up.set()

    task = asyncio.create_task(loop_forever())
    await started.wait()
    await stop_task(task)
    assert task.cancelled() and cleaned_up.is_set()

    async def fail() -> None:
        raise RuntimeError("broken")

    failed = asyncio.create_task(fail(), name="failing task")
    await asyncio.wait([failed])
    await stop_task(failed)  # does not raise
    assert any("failing task had failed" in r.getMessage() for r in caplog.records)
    await stop_task(None)


async def test_the_caller_being_cancelled_is_not_swallowed() -> None:
    started = asyncio.Event()

    async def slow_to_stop() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.shield(asyncio.sleep(0.5))

    inner = asyncio.create_task(slow_to_stop())
    await started.wait()
    stopper = asyncio.create_task(stop_task(inner))
    await wait_until_async(lambda: inner.cancelling() > 0, 5.0, "the stop to begin")
    stopper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopper
    await asyncio.wait([inner])


async def test_running_asks_first_and_cancels_only_after_the_grace() -> None:
    shutdown = asyncio.Event()
    ended_gracefully = False

    async def server() -> None:
        nonlocal ended_gracefully
        await shutdown.wait()
        ended_gracefully = True

    async with running(server(), "server", ask_to_stop=shutdown.set) as task:
        assert not task.done()
    assert task.done() and ended_gracefully and not task.cancelled()

    async def deaf() -> None:
        await asyncio.Event().wait()

    ignored = asyncio.create_task(deaf())
    await stop_task(ignored, ask_to_stop=lambda: None, grace=0.01)
    assert ignored.cancelled()


async def test_a_task_that_swallows_its_cancellation_is_cancelled_again() -> None:
    swallowed = asyncio.Event()
    waiting = asyncio.Event()

    async def retry_loop() -> None:
        while True:
            try:
                waiting.set()
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed.is_set():
                    raise
                swallowed.set()  # as a retry loop catching a TimeoutError made of a cancel

    task = asyncio.create_task(retry_loop())
    await waiting.wait()  # the loop is inside its sleep: the cancel lands there
    await asyncio.wait_for(stop_task(task), timeout=10.0)
    assert swallowed.is_set() and task.cancelled()


async def test_a_loop_with_until_ends_between_steps_uncancelled() -> None:
    """Asked to stop while a step runs, the step finishes (no CancelledError inside it) and the
    loop ends without waiting out its interval."""
    until = asyncio.Event()
    in_step, release = asyncio.Event(), asyncio.Event()
    finished: list[bool] = []

    async def step() -> None:
        in_step.set()
        try:
            await release.wait()
        except asyncio.CancelledError:
            finished.append(False)
            raise
        finished.append(True)

    task = asyncio.create_task(every(3600.0, step, "the test step", until=until))
    await in_step.wait()
    stopping = asyncio.create_task(stop_task(task, ask_to_stop=until.set, grace=30.0))
    await wait_until_async(until.is_set, 5.0, "the loop is asked to stop")
    release.set()
    async with asyncio.timeout(5.0):  # not the hour's interval, nor the 30 s grace
        await stopping
    assert finished == [True] and task.done() and not task.cancelled()
