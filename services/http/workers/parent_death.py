"""The HTTP tier's processes die with their parent, so that no orphan keeps the port.

The main process forks nothing itself: it spawns the fork server (services.http.workers.
worker_forks), which forks the workers. If the main process is SIGKILLed (an OOM kill, the end
of a pod's grace period), the fork server does not notice (the workers hold the pipe it
watches), and the workers, which hold the listening sockets, would go on serving
unsupervised; after a `docker restart` or a restart of the container's main process, they would
hold the port next to the new ones. If the fork server alone is killed, the main process reads
every worker as dead (exit 255) and starts replacements while the old ones still run.

So the kernel SIGKILLs each of them when its parent exits (Linux PR_SET_PDEATHSIG): the fork
server when the main process does, each worker when the fork server does. The main process
then sees each worker exit, replaces it, and multiprocessing starts a new fork server for it.

    children_die_with_this_process()   # in the fork server, once
    die_with_parent()                  # first thing in each worker it forks
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1

# In the fork server, its own pid; a worker forked from it inherits the value.
_forking_parent: int | None = None


def _kill_this_process_with_its_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def children_die_with_this_process() -> None:
    """In the fork server: it dies with the main process, and the workers it forks with it.

    No worker exists yet while the fork server starts, so if the main process died before the
    call, multiprocessing's own check (the main process's end of a pipe closing) stops it."""
    global _forking_parent  # noqa: PLW0603  # read by the workers it forks
    _kill_this_process_with_its_parent()
    _forking_parent = os.getpid()


def die_with_parent() -> None:
    """In a worker: SIGKILL when the fork server exits; exit at once if it already has."""
    _kill_this_process_with_its_parent()
    if _forking_parent is not None and os.getppid() != _forking_parent:
        os._exit(1)  # The fork server died between the fork and the call above.
