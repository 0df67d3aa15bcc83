"""`python -m services.http`: serve the HTTP tier with Granian (default) or Hypercorn.

Both servers run GATEHOUSE_HTTP_WORKERS worker processes on uvloop, each on a listening socket
of its own that the main process holds, over which the kernel spreads new connections
(services.http.workers.slot_listeners). A worker that dies
(an OOM kill, a crash) is replaced, while the others keep serving: only the requests it had in
progress fail
(services.http.workers.respawn; services.http.workers.granian_server and services.http.workers.hypercorn_server
supervise the workers). On SIGTERM they stop accepting connections, let the requests in
progress finish, run the app's shutdown and exit 0. The main process also serves the pod's
ops port (services.http.workers.ops_port), whose /readyz answers 503 from the SIGTERM on.

Connections: each worker holds at most GATEHOUSE_HTTP_MAX_CONNECTIONS. A connection must send
a request's headers within the idle timeout (the smaller of GATEHOUSE_HEADER_TIMEOUT and
GATEHOUSE_KEEP_ALIVE_TIMEOUT) of its start or of its previous response, else it is closed:
Granian's `header_read_timeout` and Hypercorn's `keep_alive_timeout` each run one timer for
both. A connection whose client stops reading its answers is dropped after
GATEHOUSE_STALLED_SEND_TIMEOUT (services.http.workers.stalled_sends). Granian speaks HTTP/1.1 only: in its automatic mode a connection that never sends a byte
is never timed out (HTTP/2 detection waits without a deadline), and an idle HTTP/2
connection has no timeout at all. Pods sit behind an ingress that speaks HTTP/1.1 to them.
"""

from __future__ import annotations

import logging
import multiprocessing
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from services.foundation.config import ConfigError, load_settings
from services.foundation.file_limits import SPARE_FILE_DESCRIPTORS, allow_file_descriptors
from services.foundation.logs import configure_logging
from services.foundation.metrics import prepare_multiprocess_dir
from services.http import SERVICE_NAME
from services.http.settings import HttpSettings
from services.http.workers.heartbeat import heartbeat_folder
from services.http.workers.ops_port import OpsPort
from services.http.workers.respawn import WorkerSupervision
from services.http.workers.slot_listeners import SlotListeners, SteeringReport

APP_FACTORY = "services.http.asgi:build_app"
# Beyond the call deadline a request in progress has nothing left to wait for.
SHUTDOWN_MARGIN_SECONDS = 5
# Headers are capped at GATEHOUSE_MAX_HEADER_BYTES by the app (431 with the usual body); the
# servers' own read buffers stay well above it, and past them they answer without a body.
MIN_SERVER_HEADER_BUFFER_BYTES = 64 * 1024
# Each listening socket's queue of connections not yet accepted (Granian's default).
LISTEN_BACKLOG = 1024

log = logging.getLogger(__name__)


def bind_listeners(settings: HttpSettings, steering_report: SteeringReport) -> SlotListeners | None:
    """The API port's listening sockets, one per worker; None (said on stderr) when the port
    cannot be had."""
    try:
        return SlotListeners(
            settings.host,
            settings.port,
            LISTEN_BACKLOG,
            settings.workers,
            settings.stalled_send_timeout,
            report=steering_report,
        )
    except OSError as exc:
        print(f"{SERVICE_NAME}: {exc.strerror or exc}", file=sys.stderr)
        return None


def serve_with_granian(
    settings: HttpSettings,
    supervision: WorkerSupervision,
    steering_report: SteeringReport,
    on_stop: Callable[[], None],
) -> int:
    from granian.constants import HTTPModes, Interfaces, Loops
    from granian.http import HTTP1Settings
    from granian.log import LogLevels

    from services.http.workers.granian_server import RespawningGranian

    # Spawned, not forked: the ops port's thread runs in this process (see services.http.workers.ops_port).
    multiprocessing.set_start_method("spawn", force=True)
    http1 = HTTP1Settings(
        header_read_timeout=round(settings.idle_timeout * 1000),
        max_buffer_size=max(
            HTTP1Settings.max_buffer_size,
            2 * settings.max_header_bytes,
            MIN_SERVER_HEADER_BUFFER_BYTES,
        ),
    )

    listeners = bind_listeners(settings, steering_report)
    if listeners is None:
        return 1
    server = RespawningGranian(
        APP_FACTORY,
        supervision=supervision,
        listeners=listeners,
        on_stop=on_stop,
        factory=True,
        address=settings.host,
        port=settings.port,
        interface=Interfaces.ASGI,
        workers=settings.workers,
        loop=Loops.uvloop,
        websockets=False,
        http=HTTPModes.http1,
        http1_settings=http1,
        backlog=LISTEN_BACKLOG,
        log_level=LogLevels(settings.log_level.lower()),
        # Granian's own lines go to the root logger, which writes JSON lines.
        log_dictconfig={"loggers": {"_granian": {"handlers": [], "propagate": True}}},
        workers_kill_timeout=int(settings.call_timeout) + SHUTDOWN_MARGIN_SECONDS,
        # Connections, idle keep-alive ones included. Past it Granian stops accepting: the next
        # connections wait in the listen backlog until the idle timeout, or the stalled-send
        # timeout, frees a place.
        backpressure=settings.max_connections,
    )
    server.serve()
    return 0


def serve_with_hypercorn(
    settings: HttpSettings,
    supervision: WorkerSupervision,
    steering_report: SteeringReport,
    on_stop: Callable[[], None],
) -> int:
    from hypercorn.config import Config

    from services.http.workers.hypercorn_server import serve_supervised

    config = Config()
    config.application_path = f"{APP_FACTORY}()"
    config.bind = [f"{settings.host}:{settings.port}"]
    config.workers = settings.workers
    config.worker_class = "uvloop"
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = settings.call_timeout + SHUTDOWN_MARGIN_SECONDS
    # Runs from a connection's start and after each response: the idle and header timeout in
    # one. The per-worker connection cap is services.http.workers.hypercorn_connections.
    config.keep_alive_timeout = settings.idle_timeout
    config.h11_max_incomplete_size = max(
        2 * settings.max_header_bytes, MIN_SERVER_HEADER_BUFFER_BYTES
    )
    listeners = bind_listeners(settings, steering_report)
    if listeners is None:
        return 1
    return serve_supervised(config, supervision, listeners, on_stop)


def main() -> int:
    try:
        settings = load_settings(HttpSettings)
    except ConfigError as exc:
        print(f"{SERVICE_NAME}: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(SERVICE_NAME, settings.log_level)
    own_metrics_dir = not settings.metrics_dir
    metrics_dir = Path(settings.metrics_dir or tempfile.mkdtemp(prefix="gatehouse-http-metrics-"))
    # Before anything imports prometheus_client: the workers inherit the environment.
    prepare_multiprocess_dir(metrics_dir)
    allow_file_descriptors(
        settings.workers * settings.max_connections + SPARE_FILE_DESCRIPTORS,
        "GATEHOUSE_HTTP_MAX_CONNECTIONS x workers",
    )
    heartbeats = heartbeat_folder()
    assert heartbeats is not None  # prepare_multiprocess_dir set the metrics folder
    # Only now may prometheus_client be imported (see prepare_multiprocess_dir).
    from services.http.workers.supervisor_metrics import WORKER_RESTARTS, steering_metrics

    supervision = WorkerSupervision(
        heartbeats,
        max_delay=settings.respawn_max_delay,
        stuck_after=settings.worker_stuck_timeout,
        count_restart=lambda cause: WORKER_RESTARTS.labels(cause=cause).inc(),
    )
    # Set while the kernel runs the program that sends new connections to the ready workers.
    steered = threading.Event()
    ops = OpsPort(settings.host, settings.ops_port, heartbeats, settings.workers, steered.is_set)
    try:
        ops.start()
    except OSError as exc:
        print(f"{SERVICE_NAME}: {exc}", file=sys.stderr)
        if own_metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
        return 1
    log.info(
        "serving on http://%s:%d with %s, %d worker(s); ops port %d",
        settings.host,
        settings.port,
        settings.server,
        settings.workers,
        settings.ops_port,
    )
    serve = serve_with_granian if settings.server == "granian" else serve_with_hypercorn
    try:
        return serve(settings, supervision, steering_metrics(steered), ops.begin_stopping)
    finally:
        ops.stop()
        if own_metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
