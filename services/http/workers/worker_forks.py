"""Where the HTTP workers come from: a fork server that has imported their libraries once.

A spawned worker imports the app and its libraries (Starlette, gRPC for etcd, protobuf,
cryptography, Pillow, Jinja...) itself: about 0.9 s of CPU, and several seconds of wall time on
a busy node, during which a pod that lost a worker serves on fewer. multiprocessing's
"forkserver" start method forks each worker from a single-threaded process started once per
pod, which has imported all of it (PRELOAD_MODULE, which also keeps the fork server's metrics
out of /metrics): a new worker starts with the code in memory, shared copy-on-write, and only
builds its app and connects.

The fork server ignores SIGTERM (PRELOAD_MODULE sets it): the main process learns of its
workers' exits through the fork server, which must outlive a SIGTERM sent to the whole process
group while the workers drain. Workers inherit the ignored SIGTERM; Granian's install their
own handler, Hypercorn's keep ignoring it and stop on their shutdown event.

The fork server dies with the main process, and each worker with the fork server
(services.http.workers.parent_death): no worker is left running unsupervised.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.context import ForkServerContext

PRELOAD_MODULE = "services.http.workers.worker_preload"


def worker_context() -> ForkServerContext:
    """The multiprocessing context that starts the workers."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([PRELOAD_MODULE])
    return context
