"""Imported once by the HTTP workers' fork server (services.http.workers.worker_forks), never by a
worker or the main process: it imports the whole app, and sets the fork server's signals.

In multiprocess mode every Prometheus metric created here writes to a file named after the
fork server's pid; it would be merged into /metrics as one more worker (with a `pid` label on
the `live` gauges). So the app is imported with the multiprocess folder pointed at a scratch
folder, deleted at once. prometheus-client resets its values into the real folder, under
the worker's own pid, on the first metric a forked worker touches (it notices that its pid
changed), and forgets the fork server's.
"""

from __future__ import annotations

import os
import signal
import tempfile

# What the servers run in a worker before the app: Granian's event loop setup (0.1 s on its
# own) and worker targets, Hypercorn's worker.
import granian._loops
import granian.server.mp  # noqa: F401
import hypercorn.asyncio.run  # noqa: F401

from services.foundation.metrics import MULTIPROC_ENV
from services.http.workers.parent_death import children_die_with_this_process


def _import_the_app() -> None:
    real_folder = os.environ.get(MULTIPROC_ENV)
    with tempfile.TemporaryDirectory(prefix="gatehouse-fork-server-") as scratch:
        os.environ[MULTIPROC_ENV] = scratch
        try:
            import services.http.asgi  # noqa: F401
        finally:
            if real_folder is None:
                del os.environ[MULTIPROC_ENV]
            else:
                os.environ[MULTIPROC_ENV] = real_folder


_import_the_app()
# The fork server outlives a SIGTERM sent to the process group (services.http.workers.worker_forks).
signal.signal(signal.SIGTERM, signal.SIG_IGN)
# No orphans: it dies with the main process, its workers with it (services.http.workers.parent_death).
children_die_with_this_process()
