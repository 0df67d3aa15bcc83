"""What the main process of `python -m services.http` does when one of its workers dies.

Both servers' supervisors (services.http.workers.granian_server, services.http.workers.hypercorn_server) call
`worker_died` with the dead worker's pid and exit code, and start its replacement after the
delay it returns; if that start fails (START_ERRORS), `start_failed` gives the delay before the
next try. It logs one line, counts the restart, drops the dead worker's live gauges
(prometheus-client multiprocess mode) and its heartbeat, so neither /metrics nor the probes of
the ops port count a process that is gone.

The first replacement of a worker starts at once: a worker killed once (an OOM kill, a crash
on one request) is back within its start time. A replacement that dies again within
STABLE_AFTER_SECONDS of its start waits FIRST_DELAY_SECONDS, then twice as long each time, up
to GATEHOUSE_HTTP_RESPAWN_MAX_DELAY: a worker that cannot start (a bad deploy, a missing
file) costs a few starts a minute, not a CPU spinning on spawns.

A worker that lives but no longer beats (its event loop stuck, the process stopped) serves
nothing: the connections it accepted hang, and the ops port no longer counts it, so neither
probe fails while another worker beats. The supervisors call `kill_stuck` every
STUCK_CHECK_SECONDS: a worker whose last beat is older than GATEHOUSE_HTTP_WORKER_STUCK_TIMEOUT
is killed (one line), and replaced as any dead worker, its restart counted with cause "stuck".
A look that comes over PAUSED_AFTER_SECONDS after the previous one kills nothing: the main
process itself did not run meanwhile (the whole pod frozen or stopped: a cgroup freeze, a
checkpoint, SIGSTOP to the process group, Ctrl-Z), so every worker's beat is as old as that
pause, until the workers, resumed with it, beat again; the next look, a second later, judges.

    supervision = WorkerSupervision(heartbeats, max_delay=30.0, count_restart=counter)
    delay = supervision.worker_died(slot=0, pid=1234, exitcode=-9, lived_seconds=120.0)
    supervision.kill_stuck({0: 1234, 1: 1235})  # slot -> pid of each running worker
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from services.foundation.metrics import mark_worker_dead
from services.http.workers.heartbeat import forget_worker, worker_beat

# What starting a worker from the fork server raises when the fork server has died or cannot
# fork (multiprocessing.popen_forkserver: refused connection, EOF instead of the new pid).
START_ERRORS = (OSError, EOFError)

FIRST_DELAY_SECONDS = 0.5
# A worker that served this long is healthy: if it dies, its replacement starts at once.
STABLE_AFTER_SECONDS = 10.0
# How often the supervisors look for workers that stopped beating, and the default bound.
STUCK_CHECK_SECONDS = 1.0
STUCK_AFTER_SECONDS = 10.0
# A worker whose last beat is older than this gets no new connections (under Granian). Past the
# ops port's 2 s, so that a worker slowed down for a moment under load keeps its share rather
# than handing it to the other worker, which is as loaded.
STALLED_AFTER_SECONDS = 4.0
# A look for stuck workers this long after the previous one (due a second after it) finds the
# main process itself paused meanwhile, and with it, likely, the workers.
PAUSED_AFTER_SECONDS = 3 * STUCK_CHECK_SECONDS

log = logging.getLogger(__name__)


def exit_cause(exitcode: int | None) -> str:
    """'SIGKILL' for a worker killed by a signal (multiprocessing's negative exit codes),
    'exit 1' for one that exited, 'unknown' when the code could not be read."""
    if exitcode is None:
        return "unknown"
    if exitcode < 0:
        try:
            return signal.Signals(-exitcode).name
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit {exitcode}"


class RespawnBackoff:
    """The wait before each worker slot's next replacement."""

    def __init__(
        self,
        max_delay: float,
        first_delay: float = FIRST_DELAY_SECONDS,
        stable_after: float = STABLE_AFTER_SECONDS,
    ) -> None:
        self._max_delay = max_delay
        self._first_delay = first_delay
        self._stable_after = stable_after
        self._quick_deaths: dict[int, int] = {}

    def next_delay(self, slot: int, lived_seconds: float) -> float:
        streak = 0 if lived_seconds >= self._stable_after else self._quick_deaths.get(slot, 0)
        self._quick_deaths[slot] = streak + 1
        if streak == 0:
            return 0.0
        return float(min(self._max_delay, self._first_delay * 2 ** (streak - 1)))


class WorkerSupervision:
    def __init__(
        self,
        heartbeats: Path,
        max_delay: float,
        count_restart: Callable[[str], None],
        stuck_after: float = STUCK_AFTER_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._heartbeats = heartbeats
        self._backoff = RespawnBackoff(max_delay)
        self._count_restart = count_restart
        self._stuck_after = stuck_after
        self._clock = clock  # the workers' heartbeats' clock (CLOCK_MONOTONIC)
        self._killed_stuck: set[int] = set()  # pids killed by kill_stuck, not yet seen dead
        self._last_look: float | None = None  # when kill_stuck last looked

    def kill_stuck(self, workers: Mapping[int, int]) -> None:
        """SIGKILL each running worker (slot -> pid) whose last beat is older than the stuck
        bound; its death is then handled by `worker_died` like any other. Nothing when this
        process itself was paused since its last look (see the module's notes)."""
        now = self._clock()
        paused = self._last_look is not None and now - self._last_look > PAUSED_AFTER_SECONDS
        self._last_look = now
        if paused:
            return
        for slot, pid in workers.items():
            beat = worker_beat(self._heartbeats, pid, now)
            if pid in self._killed_stuck or beat is None or beat.age_seconds <= self._stuck_after:
                continue
            age = beat.age_seconds
            self._killed_stuck.add(pid)
            log.warning(
                "HTTP worker %d (pid %d) has not beaten for %.1f s (its event loop is stuck or"
                " the process is stopped); killing it to replace it",
                slot + 1,
                pid,
                age,
            )
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def serving(self, workers: Mapping[int, int]) -> set[int]:
        """The slots of the running workers (slot -> pid) that new connections go to: a worker
        beats from when it starts accepting connections, and one whose last beat is older than
        STALLED_AFTER_SECONDS (its event loop stuck, the process stopped) answers none. Of those
        that beat, the ready ones while any is: one not ready (a replacement that cannot read
        the signing keys while etcd is away) would answer its share 503. Called before
        `kill_stuck` in each look: when this process itself was paused since the last one,
        every beat looks old, and a beat of any age counts."""
        now = self._clock()
        paused = self._last_look is not None and now - self._last_look > PAUSED_AFTER_SECONDS
        beating = {}
        for slot, pid in workers.items():
            beat = worker_beat(self._heartbeats, pid, now)
            if beat is not None and (paused or beat.age_seconds <= STALLED_AFTER_SECONDS):
                beating[slot] = beat
        ready = {slot for slot, beat in beating.items() if beat.not_ready is None}
        return ready or set(beating)

    def worker_died(self, slot: int, pid: int, exitcode: int | None, lived_seconds: float) -> float:
        """Clean up after the dead worker `pid`; the seconds to wait before replacing it."""
        cause = exit_cause(exitcode)
        if pid in self._killed_stuck:
            self._killed_stuck.discard(pid)
            cause = "stuck"
        delay = self._backoff.next_delay(slot, lived_seconds)
        mark_worker_dead(pid)
        forget_worker(self._heartbeats, pid)
        self._count_restart(cause)
        log.warning(
            "HTTP worker %d (pid %d) died (%s) after %.1f s; replacing it %s",
            slot + 1,
            pid,
            cause,
            lived_seconds,
            "now" if delay == 0 else f"in {delay:g} s",
        )
        return delay

    def start_failed(self, slot: int, error: BaseException) -> float:
        """A replacement could not be started (the fork server died or could not fork, e.g.
        out of memory); the seconds to wait before trying again. The server keeps running."""
        delay = max(FIRST_DELAY_SECONDS, self._backoff.next_delay(slot, lived_seconds=0.0))
        log.warning(
            "HTTP worker %d could not be started (%s: %s); trying again in %g s",
            slot + 1,
            type(error).__name__,
            error,
            delay,
        )
        return delay
