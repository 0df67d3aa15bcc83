"""The side HTTP port of a process that has no HTTP API of its own: /healthz, /readyz, /metrics.

Served by Hypercorn inside the process's own event loop, so it needs no thread and shuts down
with the process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager

from hypercorn.asyncio import serve
from hypercorn.config import Config
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.foundation.metrics import metrics_response
from services.foundation.tasks import running

log = logging.getLogger(__name__)


def ops_app(
    readiness: Callable[[], str | None],
    details: Callable[[], Mapping[str, object]] | None = None,
) -> Starlette:
    """`readiness()` returns None when ready, else the reason it is not; `details()`, members
    added to /readyz's body when ready (the HTTP worker's signing key ids). A 503 is the plain
    error envelope."""

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        reason = readiness()
        if reason is None:
            extra = details() if details is not None else {}
            return JSONResponse({"status": "ready", **extra})
        return JSONResponse({"error": {"code": "not_ready", "message": reason}}, status_code=503)

    async def metrics(request: Request) -> Response:
        return metrics_response()

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
        ]
    )


async def serve_ops(
    host: str, port: int, readiness: Callable[[], str | None], shutdown: asyncio.Event
) -> None:
    """Serve the ops endpoints until `shutdown` is set."""
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 1.0
    # Hypercorn types its app argument by its own ASGI protocol classes, which a Starlette app
    # satisfies at run time but not by name.
    await serve(ops_app(readiness), config, shutdown_trigger=shutdown.wait)  # type: ignore[arg-type]


@asynccontextmanager
async def serving_ops(
    host: str, port: int, readiness: Callable[[], str | None]
) -> AsyncIterator[None]:
    """Serve the ops endpoints for the duration of the `async with`, then shut down gracefully."""
    shutdown = asyncio.Event()
    async with running(serve_ops(host, port, readiness, shutdown), "ops", ask_to_stop=shutdown.set):
        yield
