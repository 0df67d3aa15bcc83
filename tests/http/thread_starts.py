"""A thread pool whose next thread fails to start, as under a pod's PID limit."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

THREAD_START_FAILURE = "can't start new thread"


def fail_the_next_thread_start(pool: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch) -> None:
    """`pool`'s next submit raises RuntimeError as Python's does when no thread can start, with
    the work already queued (ThreadPoolExecutor queues it first); later ones start threads."""
    start_thread = pool._adjust_thread_count  # type: ignore[attr-defined]
    refusals = iter([RuntimeError(THREAD_START_FAILURE)])

    def fails_once() -> None:
        refusal = next(refusals, None)
        if refusal is not None:
            raise refusal
        start_thread()

    monkeypatch.setattr(pool, "_adjust_thread_count", fails_once)
