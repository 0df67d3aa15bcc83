"""Granian's process supervisor, made to keep serving when a worker dies.

Granian alone either exits when a worker dies (its default: the healthy workers are stopped
with it) or, with `respawn_failed_workers`, respawns it but gives up and exits when the new
worker dies again within 5.5 s. `RespawningGranian` replaces that main loop: a dead worker is
replaced after the delay of services.http.workers.respawn (its metrics and heartbeat dropped first),
for as long as the server runs; SIGTERM and SIGINT stop it as before.

It also gives each worker slot a listening socket of its own (SO_REUSEPORT, as Granian does on
Linux), but bound and held by the main process (services.http.workers.slot_listeners): the kernel
spreads new connections evenly over the workers, the port stays open while the main process
lives, a replacement takes over its slot's socket, and new connections are steered to the
slots whose worker serves, away from a dead one's until its replacement beats.

Workers are forked from the fork server of services.http.workers.worker_forks rather than spawned, so
that a replacement starts in a fraction of a second.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from granian._granian import SocketHolder
from granian.server.mp import MPServer, WorkerProcess

from services.http.workers.parent_death import die_with_parent
from services.http.workers.respawn import START_ERRORS, STUCK_CHECK_SECONDS, WorkerSupervision
from services.http.workers.slot_listeners import SlotListeners
from services.http.workers.worker_forks import worker_context


def _forked_worker(target: Callable[..., None], *args: Any) -> None:
    """Run Granian's worker `target` in a process forked from the fork server.

    Granian hands each worker the listening socket twice: a socket object, which multiprocessing
    passes on (under a new descriptor number here), and a holder of the parent's descriptor
    number, which is only right where the number is kept (spawned processes). The holder is
    made again from the socket object.
    """
    die_with_parent()
    worker_id, process_name, callback_loader, (listener, shared), *rest = args
    _spec, parents_holder = listener
    _fd, uds, backlog = parents_holder.__getstate__()
    # Granian's stub lists one argument; the class takes its pickled state, all three.
    holder = SocketHolder(shared.fileno(), uds, backlog)  # type: ignore[call-arg]
    target(worker_id, process_name, callback_loader, ((None, holder), shared), *rest)


class RespawningGranian(MPServer):
    def __init__(
        self,
        *args: Any,
        supervision: WorkerSupervision,
        listeners: SlotListeners,
        on_stop: Callable[[], None] = lambda: None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._supervision = supervision
        self._on_stop = on_stop
        self._listeners = listeners
        self._forks = worker_context()
        # Worker slot -> when (time.monotonic) its replacement is due.
        self._replacements_due: dict[int, float] = {}

    def signal_handler_interrupt(self, *args: Any, **kwargs: Any) -> None:
        # SIGTERM or SIGINT: `on_stop` first (the ops port's /readyz turns 503), as the
        # workers stop accepting next.
        self._on_stop()
        super().signal_handler_interrupt(*args, **kwargs)  # type: ignore[no-untyped-call]  # Granian leaves it untyped

    def _init_shared_socket(self) -> None:
        # Granian's own socket attributes stay empty: each worker is given its slot's socket.
        self._ssp = self._shd = self._sso = None

    def _drop_shared_socket(self) -> None:
        self._listeners.close()

    def _spawn_worker(  # type: ignore[override]  # MPServer's own takes no socket_loader either
        self, idx: int, target: Callable[..., None], callback_loader: Callable[..., Any]
    ) -> WorkerProcess:
        worker = super()._spawn_worker(idx=idx, target=target, callback_loader=callback_loader)
        # Granian built a process of the `spawn` method, not started yet: the same target and
        # arguments run in a process of the fork server instead (multiprocessing keeps a
        # process's arguments in `_args`).
        planned = worker.inner
        arguments = list(planned._args)
        sock = self._listeners.for_slot(idx)
        # (listener, shared): _forked_worker makes the holder again in the worker.
        arguments[3] = ((None, SocketHolder(sock.fileno(), False, self.backlog)), sock)  # type: ignore[call-arg]
        worker.inner = self._forks.Process(
            name=planned.name, target=_forked_worker, args=(target, *arguments)
        )
        return worker

    def _serve_loop(
        self, spawn_target: Callable[..., None], target_loader: Callable[..., Any]
    ) -> None:
        while True:
            self.main_loop_interrupt.wait(self._seconds_to_next_replacement())
            # Cleared before reading what woke it: a worker dying from here on sets it again.
            self.main_loop_interrupt.clear()
            if self.interrupt_signal:
                return
            self._note_dead_workers()
            # Before a replacement's start, which can wait on the fork server.
            self._listeners.steer(self._supervision.serving(self._running_workers()))
            self._replace_due_workers(spawn_target, target_loader)
            self._supervision.kill_stuck(self._running_workers())
            if self.reload_signal:
                # SIGHUP: Granian's rolling restart replaces every worker, dead ones included.
                self._replacements_due.clear()
                self._reload(spawn_target, target_loader)  # type: ignore[no-untyped-call]  # Granian leaves _reload untyped

    def _seconds_to_next_replacement(self) -> float:
        """Until the next replacement is due, at most until the next look for stuck workers."""
        if not self._replacements_due:
            return STUCK_CHECK_SECONDS
        due = min(self._replacements_due.values()) - time.monotonic()
        return max(0.0, min(due, STUCK_CHECK_SECONDS))

    def _running_workers(self) -> dict[int, int]:
        """Slot -> pid of each worker not waiting for its replacement."""
        return {
            slot: worker.inner.pid
            for slot, worker in enumerate(self.wrks)
            if slot not in self._replacements_due and worker.inner.pid is not None
        }

    def _note_dead_workers(self) -> None:
        # Granian's watcher threads append the slot of each worker that exited unasked.
        while self.interrupt_children:
            slot = self.interrupt_children.pop(0)
            dead = self.wrks[slot]
            delay = self._supervision.worker_died(
                slot,
                pid=dead.inner.pid,
                exitcode=dead.inner.exitcode,
                lived_seconds=time.monotonic() - dead.birth,
            )
            self._replacements_due[slot] = time.monotonic() + delay

    def _replace_due_workers(
        self, spawn_target: Callable[..., None], target_loader: Callable[..., Any]
    ) -> None:
        now = time.monotonic()
        for slot, due in sorted(self._replacements_due.items()):
            if due > now:
                continue
            del self._replacements_due[slot]
            replacement = self._spawn_worker(
                idx=slot, target=spawn_target, callback_loader=target_loader
            )
            try:
                replacement.start()  # Granian logs "Spawning worker-N with PID: ..."
            except START_ERRORS as error:
                delay = self._supervision.start_failed(slot, error)
                self._replacements_due[slot] = time.monotonic() + delay
                continue
            self.wrks[slot] = replacement
