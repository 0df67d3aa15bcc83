"""The pod's ops port (GATEHOUSE_HTTP_OPS_PORT): /healthz, /readyz and /metrics, served once per
pod by the main process of `python -m services.http` rather than by every worker.

The main process (Granian's or Hypercorn's supervisor) outlives its workers and handles no API
traffic, so a flood on the API port cannot delay probes and scrapes here, and there is one
listener whatever the number of workers. It runs Hypercorn on an event loop of its own in a
daemon thread; the workers are started with the `spawn` method, so no fork copies that thread.

/healthz and /readyz answer what the workers answer on the API port (asked over loopback, with
a short timeout): the pod is alive and ready when a worker says so, not merely when this
process runs. /metrics merges every worker's samples (prometheus-client multiprocess files),
rendered at most once a second (services.foundation.metrics).
"""

from __future__ import annotations

import asyncio
import logging
import threading

from hypercorn.asyncio import serve
from hypercorn.config import Config
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.foundation.metrics import metrics_response

log = logging.getLogger(__name__)

# A worker answers /healthz and /readyz in a millisecond; past this it is not answering.
PROBE_TIMEOUT_SECONDS = 2.0
_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})
_MAX_PROBE_ANSWER_BYTES = 64 * 1024


def loopback_for(host: str) -> str:
    """Where this process reaches the API port it binds on `host`."""
    if host in _WILDCARD_HOSTS:
        return "::1" if host == "::" else "127.0.0.1"
    return host


async def ask_api_port(host: str, port: int, path: str) -> tuple[int, bytes]:
    """Status and body of GET `path` on the API port; (0, b"") when it does not answer."""
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode("ascii"))
                answer = await reader.read(_MAX_PROBE_ANSWER_BYTES)
                while len(answer) < _MAX_PROBE_ANSWER_BYTES and (more := await reader.read(4096)):
                    answer += more
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return 0, b""
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[1].isdigit():
        return 0, b""
    return int(status_line[1]), body


def ops_port_app(api_host: str, api_port: int) -> Starlette:
    host = loopback_for(api_host)

    async def forwarded(path: str) -> Response:
        status, body = await ask_api_port(host, api_port, path)
        if status == 0:
            return JSONResponse(
                {
                    "error": {
                        "code": "not_ready",
                        "message": f"no worker answers on the API port {api_port}",
                    }
                },
                status_code=503,
            )
        return Response(body, status_code=status, media_type="application/json")

    async def healthz(request: Request) -> Response:
        return await forwarded("/healthz")

    async def readyz(request: Request) -> Response:
        return await forwarded("/readyz")

    async def metrics(request: Request) -> Response:
        # Rendering reads every worker's files: off the loop, so probes are never behind it.
        return await asyncio.to_thread(metrics_response)

    return Starlette(
        routes=[Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics)]
    )


class OpsPort:
    """The ops listener in a daemon thread of the main process.

        ops = OpsPort(host, ops_port, api_port)
        ops.start()      # raises OSError when the port cannot be bound
        ...
        ops.stop()
    """

    def __init__(self, host: str, port: int, api_port: int) -> None:
        self._host = host
        self._port = port
        self._app = ops_port_app(host, api_port)
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
            await serve(self._app, config, shutdown_trigger=shutdown)  # type: ignore[arg-type]
        except Exception:
            log.exception("the ops port %d stopped", self._port)
