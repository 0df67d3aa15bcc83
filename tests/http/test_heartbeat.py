"""Worker heartbeats, as the ops port reads them."""

from __future__ import annotations

import json
import time
from pathlib import Path

from services.http.workers.heartbeat import (
    HEARTBEAT_MAX_AGE_SECONDS,
    PodState,
    WorkerHeartbeat,
    forget_worker,
    pod_state,
    worker_beats,
)


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


def write_beat(
    folder: Path,
    pid: int,
    not_ready: str | None,
    kids: tuple[str, ...] = (),
    *,
    been_ready: bool = True,
) -> None:
    """A beat as worker `pid` writes it now."""
    state = {
        "at": time.monotonic(),
        "not_ready": not_ready,
        "been_ready": been_ready,
        "signing_key_kids": list(kids),
    }
    (folder / f"{pid}.heartbeat").write_text(json.dumps(state))


async def test_a_dead_workers_beat_is_forgotten_at_once(tmp_path: Path) -> None:
    # Two beats as two workers would write them: a dead worker cannot remove its own.
    write_beat(tmp_path, 1001, "no auth replica is registered")
    write_beat(tmp_path, 1002, None)
    assert [(beat.pid, beat.not_ready) for beat in worker_beats(tmp_path)] == [
        (1001, "no auth replica is registered"),
        (1002, None),
    ]
    assert pod_state(tmp_path).not_ready is not None
    forget_worker(tmp_path, 1001)  # the main process saw worker 1001 exit
    assert [beat.pid for beat in worker_beats(tmp_path)] == [1002]
    assert pod_state(tmp_path).not_ready is None
    forget_worker(tmp_path, 1001)  # twice is harmless


def test_the_pod_is_ready_only_when_every_beating_worker_is(tmp_path: Path) -> None:
    """The workers share the API port's socket: one that is not ready answers its share of the
    clients 503, so the pod is not ready while any worker that beats is not."""
    write_beat(tmp_path, 2001, None)
    write_beat(tmp_path, 2002, "no auth replica is registered")
    state = pod_state(tmp_path)
    assert state.alive
    assert state.not_ready == (
        "no auth replica is registered "
        "(worker 2002: 1 of the 2 workers taking connections are not ready)"
    )
    write_beat(tmp_path, 2002, None)
    assert pod_state(tmp_path) == PodState(alive=True, not_ready=None, beating=2)


def test_with_steering_the_pod_is_ready_while_a_ready_worker_takes_the_connections(
    tmp_path: Path,
) -> None:
    """New connections go to the ready workers only: one that is not ready holds the pod back
    no more (a pod whose worker is replaced while etcd is away stays in the Service), and the
    kids listed are those of the workers taking connections."""
    write_beat(tmp_path, 2101, None, kids=("current",))
    write_beat(tmp_path, 2102, "the token signing keys are not loaded yet", been_ready=False)
    assert pod_state(tmp_path, steered=True) == PodState(
        alive=True, not_ready=None, signing_key_kids=("current",), beating=2
    )
    assert pod_state(tmp_path).not_ready is not None  # the kernel spreads them over both
    # One that was ready keeps the keep-alive connections it took: it counts.
    write_beat(tmp_path, 2102, "no auth replica is registered", been_ready=True)
    assert pod_state(tmp_path, steered=True).not_ready is not None
    write_beat(tmp_path, 2102, "no auth replica is registered", been_ready=False)
    write_beat(tmp_path, 2101, "no auth replica is registered")
    assert pod_state(tmp_path, steered=True).not_ready is not None  # none ready


async def test_a_beat_says_whether_the_worker_was_ever_ready(tmp_path: Path) -> None:
    reason: list[str | None] = ["the token signing keys are not loaded yet"]
    beat = WorkerHeartbeat(tmp_path, lambda: reason[0])
    beat._beat()
    assert [b.been_ready for b in worker_beats(tmp_path)] == [False]
    reason[0] = None
    await beat._tick()  # readiness changed: it beats at once
    reason[0] = "no auth replica is registered"
    await beat._tick()
    assert [(b.not_ready, b.been_ready) for b in worker_beats(tmp_path)] == [(reason[0], True)]


async def test_a_worker_beats_at_once_when_the_kids_it_holds_change(tmp_path: Path) -> None:
    kids: list[tuple[str, ...]] = [("current",)]
    beat = WorkerHeartbeat(tmp_path, lambda: None, lambda: kids[0])
    beat._beat()
    assert [b.signing_key_kids for b in worker_beats(tmp_path)] == [("current",)]
    kids[0] = ("current", "next")
    await beat._tick()  # a readiness tick, long before the next periodic beat is due
    assert [b.signing_key_kids for b in worker_beats(tmp_path)] == [("current", "next")]
    assert pod_state(tmp_path).signing_key_kids == ("current", "next")
