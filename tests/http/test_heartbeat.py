"""Worker heartbeats, as the ops port reads them."""

from __future__ import annotations

import time
from pathlib import Path

from services.http.heartbeat import HEARTBEAT_MAX_AGE_SECONDS, WorkerHeartbeat, pod_state


async def test_a_beating_worker_makes_the_pod_alive_and_says_whether_it_is_ready(
    tmp_path: Path,
) -> None:
    reason: list[str | None] = ["no auth replica is registered"]
    beat = WorkerHeartbeat(tmp_path, lambda: reason[0])
    assert not pod_state(tmp_path).alive  # nobody beats yet
    await beat.start()
    try:
        state = pod_state(tmp_path)
        assert state.alive and state.not_ready == "no auth replica is registered"
        reason[0] = None
        beat._beat()  # the next beat, without waiting for its timer
        assert pod_state(tmp_path).not_ready is None
        # A worker whose event loop stopped beating is not alive, whatever it said last.
        later = time.monotonic() + HEARTBEAT_MAX_AGE_SECONDS + 1
        assert not pod_state(tmp_path, now=later).alive
    finally:
        await beat.stop()
    assert not pod_state(tmp_path).alive  # a stopped worker removes its beat
