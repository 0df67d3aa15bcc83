"""The pod's ops port (GATEHOUSE_HTTP_OPS_PORT): /healthz, /readyz and /metrics, served once per
pod by the main process of `python -m services.http` rather than by every worker.

The main process (Granian's or Hypercorn's supervisor) outlives its workers and handles no API
traffic, so a flood on the API port cannot delay probes and scrapes here, and there is one
listener whatever the number of workers. It runs Hypercorn on an event loop of its own in a
daemon thread; the workers are started with the `spawn` method, so no fork copies that thread.

/healthz and /readyz answer for the workers from their heartbeats (services.http.workers.heartbeat):
alive when a worker's event loop beat within the last seconds, ready when every such worker that
may hold clients' connections is ready, as its own /readyz would say (`pod_state`: while new
connections are steered to the ready workers, one never ready since its start holds none), and,
until the pod has first been ready, once all of its GATEHOUSE_HTTP_WORKERS workers beat ready (a
worker that is not ready and holds connections would answer them 503). A ready /readyz lists
`signing_key_kids`: the kids of the signing keys that every worker taking connections holds (a
key being rotated in is held by the pod once listed). They never connect to the API port, so clients filling
the connection cap cannot fail the pod's probes. /metrics merges every worker's samples
(prometheus-client multiprocess files), rendered at most once a second
(services.foundation.metrics). /workers lists the live workers by pid, from the same
heartbeats, for fault drills and operators: {"workers": [{"pid": 123, "ready": true,
"not_ready": null, "beat_age_seconds": 0.2, "signing_key_kids": [...]}, ...]}.
From SIGTERM on (`begin_stopping`), /readyz answers 503: the workers take no new connections
then, while they finish their requests and the main process lives on for up to the graceful
timeout, and a load balancer probing /readyz must stop sending before, not after, that.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from hypercorn.asyncio import serve
from hypercorn.config import Config
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.foundation.metrics import metrics_response
from services.http.workers.heartbeat import pod_state, worker_beats

log = logging.getLogger(__name__)


STOPPING = "shutting down: the workers take no new connections and finish their requests"


def ops_port_app(
    heartbeats: Path,
    stopping: Callable[[], bool] = lambda: False,
    worker_count: int = 1,
    steered: Callable[[], bool] = lambda: False,
) -> Starlette:
    """The ops endpoints of a pod of `worker_count` workers beating in the folder `heartbeats`; not
    ready once `stopping()`; `steered()`: new connections go to the ready workers only."""
    # Until the pod has first been ready with all its workers: one spawned late would start
    # beating "not ready" after a 200, and take its share of the clients meanwhile.
    all_started = False

    def not_ready(reason: str) -> Response:
        return JSONResponse({"error": {"code": "not_ready", "message": reason}}, status_code=503)

    async def healthz(request: Request) -> Response:
        state = pod_state(heartbeats)
        if not state.alive:
            return not_ready(state.not_ready or "no worker is alive")
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        nonlocal all_started
        if stopping():
            return not_ready(STOPPING)
        # Until first ready, every worker must be: connections made before (straight to the pod)
        # stay with whichever worker took them.
        state = pod_state(heartbeats, steered=all_started and steered())
        if state.not_ready is not None:
            return not_ready(state.not_ready)
        if not all_started:
            if state.beating < worker_count:
                return not_ready(f"{state.beating} of the {worker_count} workers have started")
            all_started = True
        return JSONResponse({"status": "ready", "signing_key_kids": list(state.signing_key_kids)})

    async def workers(request: Request) -> Response:
        listed = [
            {
                "pid": beat.pid,
                "ready": beat.not_ready is None,
                "not_ready": beat.not_ready,
                "beat_age_seconds": round(beat.age_seconds, 3),
                "signing_key_kids": list(beat.signing_key_kids),
            }
            for beat in worker_beats(heartbeats)
        ]
        return JSONResponse({"workers": listed})

    async def metrics(request: Request) -> Response:
        # Rendering reads every worker's files: off the loop, so probes are never behind it.
        return await asyncio.to_thread(metrics_response)

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/workers", workers),
            Route("/metrics", metrics),
        ]
    )


class OpsPort:
    """The ops listener in a daemon thread of the main process.

    ops = OpsPort(host, ops_port, heartbeats, worker_count, steered)
    ops.start()      # raises OSError when the port cannot be bound
    ...
    ops.stop()
    """

    def __init__(
        self,
        host: str,
        port: int,
        heartbeats: Path,
        worker_count: int,
        steered: Callable[[], bool] = lambda: False,
    ) -> None:
        self._host = host
        self._port = port
        self._stopping = threading.Event()
        self._app = ops_port_app(heartbeats, self._stopping.is_set, worker_count, steered)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._shutdown: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._failure: BaseException | None = None

    def start(self, timeout: float = 10.0) -> None:
        self._thread = threading.Thread(target=self._run, name="ops-port", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise OSError(f"the ops port {self._port} did not start within {timeout:g} s")
        if self._failure is not None:
            raise OSError(f"cannot serve the ops port {self._port}: {self._failure}")

    def begin_stopping(self) -> None:
        """/readyz answers 503 from now on (the server got SIGTERM); safe in a signal handler."""
        self._stopping.set()

    def stop(self) -> None:
        if self._loop is not None and self._shutdown is not None:
            self._loop.call_soon_threadsafe(self._shutdown.set)
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._shutdown = asyncio.Event()
        config = Config()
        config.bind = [f"{self._host}:{self._port}"]
        config.accesslog = None
        config.errorlog = logging.getLogger("hypercorn.error")
        config.graceful_timeout = 1.0
        try:
            sockets = config.create_sockets()  # binds now, so a taken port fails start()
        except OSError as exc:
            self._failure = exc
            self._started.set()
            return
        for sock in sockets.insecure_sockets:
            sock.close()
        self._started.set()
        try:
            shutdown = self._shutdown.wait
            # Hypercorn types its app argument by its own ASGI protocol classes, which a
            # Starlette app satisfies at run time but not by name.
            await serve(self._app, config, shutdown_trigger=shutdown)  # type: ignore[arg-type]
        except Exception:
            log.exception("the ops port %d stopped", self._port)
