"""Hypercorn's worker processes, supervised so that one dead worker is replaced.

`hypercorn.run.run` stops every worker and exits once one worker exits with an error, so a
single OOM kill would take the pod's HTTP port down. `serve_supervised` does what it does
otherwise (workers stop when the shutdown event is set) but replaces a dead worker after the
delay of services.http.workers.respawn, and stops only on SIGTERM or SIGINT: it then sets the
shutdown event, lets the workers finish their requests for up to the graceful timeout, and kills
those still running after it. Each worker accepts from its slot's socket of the main process's
services.http.workers.slot_listeners, which it steers after each look at the workers, as the
Granian supervisor does.

Workers are forked from the fork server of services.http.workers.worker_forks, so that a replacement
starts in a fraction of a second. They ignore SIGTERM and SIGINT, as the shutdown reaches them
through the event: a signal sent to the whole process group (a service manager, Ctrl-C in a
terminal) must not cut the requests they have in flight.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event
from types import FrameType

from hypercorn.asyncio.run import uvloop_worker
from hypercorn.config import Config, Sockets

from services.http.workers.parent_death import die_with_parent
from services.http.workers.respawn import START_ERRORS, STUCK_CHECK_SECONDS, WorkerSupervision
from services.http.workers.slot_listeners import SlotListeners
from services.http.workers.worker_forks import worker_context

# Beyond the graceful timeout (which a worker counts from when it sees the shutdown event),
# before the workers still running are killed; and how long a killed one is waited for.
_STOP_MARGIN_SECONDS = 5.0
_KILL_WAIT_SECONDS = 5.0
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}

log = logging.getLogger(__name__)


def _worker(config: Config, sockets: Sockets, shutdown_event: Event) -> None:
    """The target of each worker process (module level, so that `spawn` can import it)."""
    die_with_parent()
    # The fork server's child starts with SIGTERM ignored but SIGINT's default handler.
    for signum in _STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    uvloop_worker(config, sockets, shutdown_event)


@dataclass
class _Slot:
    process: BaseProcess | None = None
    started_at: float = 0.0
    replace_at: float | None = None  # time.monotonic() when a replacement is due


def serve_supervised(
    config: Config,
    supervision: WorkerSupervision,
    listeners: SlotListeners,
    on_stop: Callable[[], None] = lambda: None,
) -> int:
    """Run config.workers Hypercorn workers until SIGTERM or SIGINT (which call `on_stop`
    first); the exit code."""
    context = worker_context()
    shutdown_event = context.Event()
    wake_reader, wake_writer = os.pipe()
    os.set_blocking(wake_writer, False)
    stopping = False

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        on_stop()
        shutdown_event.set()
        # Wakes the wait below, even in a backoff; a full pipe already holds a wake-up.
        with contextlib.suppress(BlockingIOError):
            os.write(wake_writer, b"\0")

    def start(index: int, slot: _Slot) -> None:
        sockets = Sockets(
            secure_sockets=[], insecure_sockets=[listeners.for_slot(index)], quic_sockets=[]
        )
        process = context.Process(
            target=_worker,
            kwargs={"config": config, "sockets": sockets, "shutdown_event": shutdown_event},
            name="hypercorn-worker",
        )
        # Not daemonic: multiprocessing lets no daemonic process start children, and each
        # worker starts a fork server for the picture decoders.
        process.daemon = False
        process.start()
        log.info("started HTTP worker (pid %s)", process.pid)
        slot.process, slot.started_at, slot.replace_at = process, time.monotonic(), None

    slots = [_Slot() for _ in range(config.workers)]
    previous = {signum: signal.signal(signum, request_stop) for signum in _STOP_SIGNALS}
    try:
        for index, slot in enumerate(slots):
            start(index, slot)
        while not stopping:
            _wait_for_change(slots, wake_reader)
            for index, slot in enumerate(slots):
                process = slot.process
                if process is not None and not process.is_alive() and not stopping:
                    process.join()
                    delay = supervision.worker_died(
                        index,
                        pid=process.pid or 0,
                        exitcode=process.exitcode,
                        lived_seconds=time.monotonic() - slot.started_at,
                    )
                    process.close()
                    slot.process, slot.replace_at = None, time.monotonic() + delay
            if not stopping:
                # Before a replacement's start, which can wait on the fork server.
                listeners.steer(supervision.serving(_running_workers(slots)))
            for index, slot in enumerate(slots):
                if (
                    slot.process is None
                    and slot.replace_at is not None
                    and slot.replace_at <= time.monotonic()
                    and not stopping
                ):
                    try:
                        start(index, slot)
                    except START_ERRORS as error:
                        delay = supervision.start_failed(index, error)
                        slot.replace_at = time.monotonic() + delay
            if not stopping:
                supervision.kill_stuck(_running_workers(slots))
    finally:
        shutdown_event.set()
        stop_by = time.monotonic() + config.graceful_timeout + _STOP_MARGIN_SECONDS
        _stop_workers(slots, deadline=stop_by)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        listeners.close()
        os.close(wake_reader)
        os.close(wake_writer)
    return 0


def _running_workers(slots: list[_Slot]) -> dict[int, int]:
    return {
        index: slot.process.pid
        for index, slot in enumerate(slots)
        if slot.process is not None and slot.process.pid is not None
    }


def _wait_for_change(slots: list[_Slot], wake_reader: int) -> None:
    """Until a worker exits, a replacement is due, a stop is requested or it is time to look
    for stuck workers."""
    due = [slot.replace_at for slot in slots if slot.process is None and slot.replace_at]
    timeout = STUCK_CHECK_SECONDS
    if due:
        timeout = max(0.0, min(min(due) - time.monotonic(), timeout))
    sentinels: list[int] = [slot.process.sentinel for slot in slots if slot.process is not None]
    woken = wait([*sentinels, wake_reader], timeout)
    if wake_reader in woken:
        os.read(wake_reader, 64)


def _stop_workers(slots: list[_Slot], deadline: float) -> None:
    """The shutdown event is set: wait for the workers to drain, and kill what outlives it."""
    running = [slot.process for slot in slots if slot.process is not None]
    for process in running:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in running:
        if process.is_alive():
            log.warning(
                "HTTP worker (pid %s) still running after the graceful timeout", process.pid
            )
            process.kill()
            process.join(_KILL_WAIT_SECONDS)
