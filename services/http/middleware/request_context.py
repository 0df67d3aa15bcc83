"""Per-request context: request id (trace id), the RPCs' time budget
(services.http.call_budget), latency metric, access log, last-resort 500, and
`X-Content-Type-Options: nosniff` on every response (uploaded pictures are served back).
At each request's end it also publishes the worker's garbage collections counted since the last
one (services.foundation.heap: the collector's callback may not touch a metric itself), and
when no other request is in progress, the latencies the worker buffered
(services.foundation.metrics.BufferedHistograms).

Plain ASGI rather than BaseHTTPMiddleware: it sits on every request's hot path.
"""

from __future__ import annotations

import logging
import os
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.foundation.heap import CollectionCounts
from services.foundation.logs import trace_id_var
from services.foundation.metrics import BufferedHistograms, flush_histograms
from services.http import metrics
from services.http.call_budget import begin_request, end_request
from services.http.errors import error_response, internal_error

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = b"x-request-id"
NOSNIFF_HEADER = (b"x-content-type-options", b"nosniff")
_SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,64}")
# A request whose client went away before any response was sent (nginx's convention).
CLIENT_CLOSED_STATUS = 499
_REQUEST_SECONDS = BufferedHistograms(metrics.REQUEST_SECONDS)


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    """The caller's X-Request-ID when it is a short plain token, else a fresh random one."""
    for name, value in headers:
        if name == REQUEST_ID_HEADER:
            if _SANE_REQUEST_ID.fullmatch(value):
                return value.decode("ascii")
            break
    return os.urandom(8).hex()


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, gc_collections: CollectionCounts | None = None) -> None:
        self.app = app
        self._gc_collections = gc_collections
        self._in_progress = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = request_id_from(scope["headers"])
        request_id_header = (REQUEST_ID_HEADER, request_id.encode("ascii"))
        context_token = trace_id_var.set(request_id)
        budget_token = begin_request()
        status = CLIENT_CLOSED_STATUS
        response_started = False
        connection_lost: OSError | None = None
        self._in_progress += 1

        async def send_with_request_id(message: Message) -> None:
            nonlocal status, response_started, connection_lost
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message["headers"] = [
                    *message.get("headers", ()),
                    request_id_header,
                    NOSNIFF_HEADER,
                ]
            try:
                await send(message)
            except OSError as error:
                # Hypercorn raises the socket's error (a reset, a stalled send timed out).
                connection_lost = error
                raise

        try:
            await self.app(scope, receive, send_with_request_id)
        except Exception as error:
            if connection_lost is not None and error is connection_lost:
                log.info(
                    "%s %s: the connection was lost while answering (%s)",
                    scope["method"],
                    scope["path"],
                    error,
                )
            else:
                log.exception("%s %s failed", scope["method"], scope["path"])
                if not response_started:
                    await error_response(internal_error())(scope, receive, send_with_request_id)
        finally:
            self._in_progress -= 1
            route = scope.get("route")
            route_template = route.path if route is not None else "unmatched"
            elapsed = time.perf_counter() - started
            _REQUEST_SECONDS(route_template, str(status)).observe(elapsed)
            if self._gc_collections is not None and self._gc_collections.any_new:
                for generation, collections in self._gc_collections.take_new():
                    metrics.GC_COLLECTIONS.labels(str(generation)).inc(collections)
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "%s %s %d %.1f ms", scope["method"], scope["path"], status, elapsed * 1000
                )
            trace_id_var.reset(context_token)
            end_request(budget_token)
            if not self._in_progress:
                flush_histograms()
