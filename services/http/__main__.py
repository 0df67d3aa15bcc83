"""`python -m services.http`: serve the HTTP tier with Granian (default) or Hypercorn.

Both servers run GATEHOUSE_HTTP_WORKERS worker processes on uvloop. On SIGTERM they stop
accepting connections, let the requests in progress finish, run the app's shutdown and
exit 0.
"""

from __future__ import annotations

import logging
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from services.foundation.config import ConfigError, load_settings
from services.foundation.logs import configure_logging
from services.foundation.metrics import prepare_multiprocess_dir
from services.http import SERVICE_NAME
from services.http.settings import HttpSettings
from services.http.tokens import parse_public_keys

APP_FACTORY = "services.http.asgi:build_app"
# Beyond the call deadline a request in progress has nothing left to wait for.
SHUTDOWN_MARGIN_SECONDS = 5
# Granian's `backpressure` counts connections, idle keep-alive ones included, and defaults to
# 512 per worker: with 1000 clients one worker could get more than 512 and leave the rest
# unaccepted until they timed out. Load is bounded by requests instead (services.http.admission).
CONNECTIONS_PER_WORKER = 4096

log = logging.getLogger(__name__)


def serve_with_granian(settings: HttpSettings) -> int:
    from granian.constants import Interfaces, Loops
    from granian.log import LogLevels
    from granian.server import Server

    server = Server(
        APP_FACTORY,
        factory=True,
        address=settings.host,
        port=settings.port,
        interface=Interfaces.ASGI,
        workers=settings.workers,
        loop=Loops.uvloop,
        websockets=False,
        log_level=LogLevels(settings.log_level.lower()),
        # Granian's own lines go to the root logger, which writes JSON lines.
        log_dictconfig={"loggers": {"_granian": {"handlers": [], "propagate": True}}},
        workers_kill_timeout=int(settings.call_timeout) + SHUTDOWN_MARGIN_SECONDS,
        backpressure=CONNECTIONS_PER_WORKER,
    )
    server.serve()  # exits the process with 1 when a worker fails
    return 0


def serve_with_hypercorn(settings: HttpSettings) -> int:
    from hypercorn.config import Config
    from hypercorn.run import run

    config = Config()
    config.application_path = f"{APP_FACTORY}()"
    config.bind = [f"{settings.host}:{settings.port}"]
    config.workers = settings.workers
    config.worker_class = "uvloop"
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = settings.call_timeout + SHUTDOWN_MARGIN_SECONDS
    # multiprocessing lets no daemonic process start children, and each worker starts one per
    # picture decode (services.http.decode_pool). Hypercorn still stops its workers itself.
    config.daemon = False
    # Once the first worker has exited, Hypercorn SIGTERMs the others, cutting their requests
    # in flight. Workers inherit an ignored SIGTERM and stop through Hypercorn's shutdown event
    # instead; this process still gets its handler, installed once the workers are spawned.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return run(config)


def main() -> int:
    try:
        settings = load_settings(HttpSettings)
        parse_public_keys(settings.jwt_public_keys)  # fail here once, not in every worker
    except ConfigError as exc:
        print(f"{SERVICE_NAME}: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(SERVICE_NAME, settings.log_level)
    own_metrics_dir = not settings.metrics_dir
    metrics_dir = Path(settings.metrics_dir or tempfile.mkdtemp(prefix="gatehouse-http-metrics-"))
    # Before anything imports prometheus_client: Granian forks its workers from this process.
    prepare_multiprocess_dir(metrics_dir)
    log.info(
        "serving on http://%s:%d with %s, %d worker(s)",
        settings.host,
        settings.port,
        settings.server,
        settings.workers,
    )
    try:
        if settings.server == "granian":
            return serve_with_granian(settings)
        return serve_with_hypercorn(settings)
    finally:
        if own_metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
