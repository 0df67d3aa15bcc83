"""Granian's process supervisor, made to keep serving when a worker dies.

Granian alone either exits when a worker dies (its default: the healthy workers are stopped
with it) or, with `respawn_failed_workers`, respawns it but gives up and exits when the new
worker dies again within 5.5 s. `RespawningGranian` replaces that main loop: a dead worker is
replaced after the delay of services.http.workers.respawn (its metrics and heartbeat dropped first),
for as long as the server runs; SIGTERM and SIGINT stop it as before.

It also keeps one listening socket, bound by the main process and shared by the workers,
where Granian on Linux gives each worker a socket of its own on the port (SO_REUSEPORT).
With a socket per worker, the connections the kernel had queued for a worker that dies are
reset with it, and a pod of one worker has its port closed until the new worker binds. With
the shared socket, the port stays open while the main process lives, and a connection waits
in the one queue until any live worker accepts it: only the connections a dead worker had
already accepted are lost.

Workers are forked from the fork server of services.http.workers.worker_forks rather than spawned, so
that a replacement starts in a fraction of a second.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

from granian._granian import ListenerSpec, SocketHolder
from granian.server.mp import MPServer, WorkerProcess

from services.http.workers.parent_death import die_with_parent
from services.http.workers.respawn import START_ERRORS, STUCK_CHECK_SECONDS, WorkerSupervision
from services.http.workers.stalled_sends import drop_stalled_sends
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
        stalled_send_timeout: float,
        on_stop: Callable[[], None] = lambda: None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._supervision = supervision
        self._on_stop = on_stop
        self._stalled_send_timeout = stalled_send_timeout
        self._forks = worker_context()
        # Worker slot -> when (time.monotonic) its replacement is due.
        self._replacements_due: dict[int, float] = {}

    def signal_handler_interrupt(self, *args: Any, **kwargs: Any) -> None:
        # SIGTERM or SIGINT: `on_stop` first (the ops port's /readyz turns 503), as the
        # workers stop accepting next.
        self._on_stop()
        super().signal_handler_interrupt(*args, **kwargs)  # type: ignore[no-untyped-call]  # Granian leaves it untyped

    def _init_shared_socket(self) -> None:
        # What Granian does where SO_REUSEPORT is not used (MPServer._init_shared_socket):
        # one socket, inherited by every worker.
        holder = ListenerSpec(self.bind_addr, self.bind_port, self.backlog).build()
        self._ssp = None
        self._shd = holder  # type: ignore[assignment]  # Granian's untyped __init__ says None
        self._sfd = holder.get_fd()
        shared = socket.socket(fileno=self._sfd)
        shared.set_inheritable(True)
        drop_stalled_sends(shared, self._stalled_send_timeout)
        self._sso = shared

    def _spawn_worker(  # type: ignore[override]  # MPServer's own takes no socket_loader either
        self, idx: int, target: Callable[..., None], callback_loader: Callable[..., Any]
    ) -> WorkerProcess:
        worker = super()._spawn_worker(idx=idx, target=target, callback_loader=callback_loader)
        # Granian built a process of the `spawn` method, not started yet: the same target and
        # arguments run in a process of the fork server instead (multiprocessing keeps a
        # process's arguments in `_args`).
        planned = worker.inner
        worker.inner = self._forks.Process(
            name=planned.name, target=_forked_worker, args=(target, *planned._args)
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
