"""Deadlines on request bodies, so a client trickling its body cannot hold a worker for long.

A JSON or form body must have arrived GATEHOUSE_BODY_TIMEOUT seconds after the request
started. A picture upload, which may be 5 MiB from a slow phone, must keep arriving at
GATEHOUSE_UPLOAD_MIN_RATE bytes/s over windows of GATEHOUSE_UPLOAD_GRACE seconds: its first
rate * window bytes within the first window (the grace), and each further rate * window bytes
within a window of the moment the previous ones were complete. Bytes beyond a window's quota
count for nothing later: an average would let a fast start buy a long stall, holding the
buffered body all that time. Every wait of the handler on `receive()` is bounded by the time
at which the body would be late.

When a body is late, that `receive()` raises ApiError 408 `request_timeout`, which the
handler answers like any other error; later `receive()` calls report the client gone (the
unread-body drain stops at once) and an HTTP/1.x response carries `Connection: close`, so the
server closes the connection rather than reading the rest of the body.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.http import metrics
from services.http.errors import ApiError
from services.http.middleware.unread_body import declares_body

UPLOAD_ROUTES = frozenset({("PUT", "/api/v1/me/avatar"), ("POST", "/profile/avatar")})
_CONNECTION_CLOSE = (b"connection", b"close")


def request_timeout(message: str) -> ApiError:
    return ApiError(408, "request_timeout", message, {"Connection": "close"})


class BodyDeadline:
    """ASGI middleware: 408 for bodies that arrive too slowly (see the module's docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        body_timeout: float,
        upload_grace: float,
        upload_min_rate: int,
        upload_routes: Collection[tuple[str, str]] = UPLOAD_ROUTES,
    ) -> None:
        self.app = app
        self.body_timeout = body_timeout
        self.upload_grace = upload_grace
        self.upload_min_rate = upload_min_rate
        self.upload_routes = frozenset(upload_routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not declares_body(scope):
            await self.app(scope, receive, send)
            return
        upload = (scope["method"], scope["path"]) in self.upload_routes
        loop = asyncio.get_running_loop()
        started = loop.time()
        window = self.upload_grace
        window_quota = self.upload_min_rate * window
        window_started = started  # when the current window's quota began to count
        window_received = 0
        body_done = False
        late = False

        def deadline() -> float:
            return window_started + (window if upload else self.body_timeout)

        def count(size: int) -> None:
            nonlocal window_started, window_received
            window_received += size
            if upload and window_received >= window_quota:
                window_started, window_received = loop.time(), 0

        async def receive_on_time() -> Message:
            nonlocal body_done, late
            if late:
                return {"type": "http.disconnect"}
            if body_done:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline()):
                    message = await receive()
            except TimeoutError:
                late = True
                metrics.LATE_BODIES.labels("upload" if upload else "body").inc()
                raise request_timeout(self._late_message(upload)) from None
            if message["type"] == "http.request":
                count(len(message.get("body", b"")))
                body_done = not message.get("more_body", False)
            else:
                body_done = True
            return message

        async def send_closing_when_late(message: Message) -> None:
            if (
                late
                and message["type"] == "http.response.start"
                and scope.get("http_version") in ("1.0", "1.1")
            ):
                headers = [(n, v) for n, v in message.get("headers", ()) if n != b"connection"]
                message = {**message, "headers": [*headers, _CONNECTION_CLOSE]}
            elif message["type"] == "http.response.start" and scope.get("http_version") == "2":
                # Connection-specific headers are not allowed in HTTP/2 (RFC 9113, 8.2.2).
                headers = [(n, v) for n, v in message.get("headers", ()) if n != b"connection"]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive_on_time, send_closing_when_late)

    def _late_message(self, upload: bool) -> str:
        if upload:
            return (
                f"the upload arrived slower than {self.upload_min_rate} bytes/s over "
                f"{self.upload_grace:g} s; send it again over a faster connection"
            )
        return f"the request body did not arrive within {self.body_timeout:g} s; send it again"
