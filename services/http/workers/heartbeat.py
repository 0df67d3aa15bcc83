"""Each worker's heartbeat, which the ops port reads instead of asking the API port.

A worker writes, every HEARTBEAT_INTERVAL_SECONDS from its event loop and as soon as its
readiness or its signing keys change (looked at every _READINESS_TICK_SECONDS), a small file in
the metrics folder: the time (CLOCK_MONOTONIC, the same clock in every process of the host),
whether it is ready (why not, if not), whether it ever was, and the kids of the signing keys it
holds. The ops port of the main process (services.http.workers.ops_port) calls the pod alive when
some worker beat within HEARTBEAT_MAX_AGE_SECONDS, and ready when every such worker that may hold
clients' connections is ready (below). So probes never compete with clients for the API port's
connections: a full connection cap cannot fail them, while a worker whose event loop is stuck
stops beating. The main process removes a worker's file as soon as it sees that worker exit
(services.http.workers.respawn), so a dead worker never counts, not even for the last seconds of
its heartbeat.

A worker beats from the end of its lifespan's startup, which is when it starts accepting
connections, and one that is not ready would answer its share 503. So the main process sends
new connections only to the ready workers among those that beat, or to all of them while none
is ready (services.http.workers.respawn `serving`, services.http.workers.slot_listeners), and the
pod is ready when every worker that may hold connections is: with that steering, the ready ones
and those that were ready once (the keep-alive connections they took stay with them); a worker
never ready since it started (one replaced while etcd is away, which cannot read the signing
keys) holds none and holds nothing back. Where the kernel refuses that steering, every beating
worker takes connections and must be ready. A worker still starting (no beat yet) accepts
nothing, so it does not hold the pod back.

    beat = WorkerHeartbeat(folder, readiness, kids)  # folder None: no heartbeat (app in tests)
    await beat.start(); ...; await beat.stop()
    state = pod_state(folder, steered=True)          # in the main process
    worker_beat(folder, pid)                         # `pid`'s last beat (None: never)
    forget_worker(folder, pid)                       # the main process saw worker `pid` die
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.foundation.metrics import MULTIPROC_ENV
from services.foundation.tasks import every, stop_task

HEARTBEAT_INTERVAL_SECONDS = 0.5
_READINESS_TICK_SECONDS = 0.05
# A worker that has not beaten for this long is not answering (a worker answers in a
# millisecond; the liveness probe's own timeout is longer).
HEARTBEAT_MAX_AGE_SECONDS = 2.0
# Files of workers gone this long are removed by the reader.
_FORGOTTEN_AFTER_SECONDS = 60.0
_SUFFIX = ".heartbeat"


def heartbeat_folder() -> Path | None:
    """Where this pod's workers beat: a folder inside the metrics folder, if there is one."""
    metrics_dir = os.environ.get(MULTIPROC_ENV)
    return Path(metrics_dir) / "heartbeats" if metrics_dir else None


class WorkerHeartbeat:
    def __init__(
        self,
        folder: Path | None,
        readiness: Callable[[], str | None],
        signing_key_kids: Callable[[], tuple[str, ...]] = tuple,
    ) -> None:
        self._folder = folder
        self._readiness = readiness
        self._kids = signing_key_kids
        self._task: asyncio.Task[None] | None = None
        self._last_beat = 0.0
        self._last_reason: str | None = None
        self._last_kids: tuple[str, ...] = ()
        self._been_ready = False  # once ready, a worker may hold clients' connections for good
        self._path = folder / f"{os.getpid()}{_SUFFIX}" if folder is not None else None

    async def start(self) -> None:
        if self._folder is None:
            return
        self._folder.mkdir(parents=True, exist_ok=True)
        self._beat()
        self._task = asyncio.create_task(
            every(_READINESS_TICK_SECONDS, self._tick, "worker heartbeat"), name="worker-heartbeat"
        )

    async def stop(self) -> None:
        await stop_task(self._task)
        if self._path is not None:
            self._path.unlink(missing_ok=True)

    async def _tick(self) -> None:
        due = time.monotonic() - self._last_beat >= HEARTBEAT_INTERVAL_SECONDS
        if due or self._readiness() != self._last_reason or self._kids() != self._last_kids:
            self._beat()

    def _beat(self) -> None:
        assert self._path is not None
        self._last_beat, self._last_reason = time.monotonic(), self._readiness()
        self._last_kids = self._kids()
        self._been_ready = self._been_ready or self._last_reason is None
        state = {
            "at": self._last_beat,
            "not_ready": self._last_reason,
            "been_ready": self._been_ready,
            "signing_key_kids": list(self._last_kids),
        }
        temporary = self._path.with_suffix(".tmp")
        temporary.write_text(json.dumps(state))
        os.replace(temporary, self._path)  # a reader never sees half a file


def forget_worker(folder: Path, pid: int) -> None:
    """Drop the heartbeat of a worker known to be dead, so that it no longer counts for the pod
    (the main process calls this as soon as it sees the worker exit)."""
    (folder / f"{pid}{_SUFFIX}").unlink(missing_ok=True)


def worker_beat(folder: Path, pid: int, now: float | None = None) -> WorkerBeat | None:
    """Worker `pid`'s last beat, however long ago; None before its first beat or once its file
    is gone."""
    now = time.monotonic() if now is None else now
    beat = _read_beat(folder / f"{pid}{_SUFFIX}")
    return None if beat is None else _worker_beat(pid, now, *beat)


def _read_beat(path: Path) -> tuple[float, dict[str, Any]] | None:
    """A heartbeat file's time and state; None while it is being replaced or once removed."""
    try:
        state = json.loads(path.read_text())
        return float(state["at"]), state
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True)
class WorkerBeat:
    pid: int
    age_seconds: float
    not_ready: str | None  # None: ready
    signing_key_kids: tuple[str, ...] = ()
    # Ready at some time since it started (a beat without the field: taken as yes).
    been_ready: bool = True


def worker_beats(folder: Path, now: float | None = None) -> list[WorkerBeat]:
    """The workers that beat within HEARTBEAT_MAX_AGE_SECONDS, by pid."""
    now = time.monotonic() if now is None else now
    beats: list[WorkerBeat] = []
    try:
        paths = list(folder.glob(f"*{_SUFFIX}"))
    except OSError:
        paths = []
    for path in paths:
        beat = _read_beat(path)
        try:
            pid = int(path.name.removesuffix(_SUFFIX))
        except ValueError:
            continue
        if beat is None:
            continue  # being replaced or removed right now
        worker = _worker_beat(pid, now, *beat)
        if worker.age_seconds > _FORGOTTEN_AFTER_SECONDS:
            path.unlink(missing_ok=True)
        if worker.age_seconds <= HEARTBEAT_MAX_AGE_SECONDS:
            beats.append(worker)
    return sorted(beats, key=lambda beat: beat.pid)


def _worker_beat(pid: int, now: float, at: float, state: dict[str, Any]) -> WorkerBeat:
    reason = state.get("not_ready")
    kids = state.get("signing_key_kids")
    held = tuple(str(kid) for kid in kids) if isinstance(kids, list) else ()
    been_ready = state.get("been_ready", True) is not False
    return WorkerBeat(pid, now - at, None if reason is None else str(reason), held, been_ready)


@dataclass(frozen=True)
class PodState:
    alive: bool
    not_ready: str | None  # None: ready
    # The kids of the signing keys that every worker taking connections holds.
    signing_key_kids: tuple[str, ...] = ()
    beating: int = 0  # the workers that beat lately


def pod_state(folder: Path, now: float | None = None, *, steered: bool = False) -> PodState:
    """Alive when some worker beat lately; ready when every one of those taking connections is
    ready: with `steered` (new connections go to the ready ones, while any is), those that are
    or ever were ready (one that turned not ready keeps the connections it took), else every
    one that beat."""
    beats = worker_beats(folder, now)
    if not beats:
        return PodState(
            alive=False,
            not_ready=f"no worker has beaten within {HEARTBEAT_MAX_AGE_SECONDS:g} s",
        )
    ready = [beat for beat in beats if beat.not_ready is None]
    taking = beats
    if steered and ready:
        taking = [beat for beat in beats if beat.not_ready is None or beat.been_ready]
    held_by_all = set.intersection(*(set(beat.signing_key_kids) for beat in taking))
    kids = tuple(sorted(held_by_all))
    waiting = [beat for beat in taking if beat.not_ready is not None]
    if not waiting:
        return PodState(alive=True, not_ready=None, signing_key_kids=kids, beating=len(beats))
    first = waiting[0]
    if len(waiting) == len(taking):
        return PodState(
            alive=True, not_ready=first.not_ready, signing_key_kids=kids, beating=len(beats)
        )
    return PodState(
        alive=True,
        not_ready=(
            f"{first.not_ready} (worker {first.pid}: {len(waiting)} of the {len(taking)} "
            "workers taking connections are not ready)"
        ),
        signing_key_kids=kids,
        beating=len(beats),
    )
