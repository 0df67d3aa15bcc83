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

A body is refused the same way, with 400 `invalid_request`, when its client has sent too many
small pieces: each piece of a body (a chunk of a chunked body, a DATA frame) costs the worker
about as much as a large one, and 60,000 chunks of one byte cost 4 s of its CPU. A piece under
SMALL_PIECE_BYTES that neither begins nor ends its body takes a token from its client's bucket
(SmallPieces: SMALL_PIECES_BURST, refilled at SMALL_PIECES_PER_SECOND); with none left, the
body is refused. Counted per client (an IPv4 address, an IPv6 /64), not per request: a client
sending 1,024 pieces in each of many requests costs as much as one request of many. A small
body takes nothing (Granian hands it over as the body, then an empty end), nor does a slow
link, which still sends whole TCP segments, some 1,400 bytes each.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Collection

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.http import metrics
from services.http.errors import ApiError
from services.http.middleware.unread_body import declares_body

UPLOAD_ROUTES = frozenset({("PUT", "/api/v1/me/avatar"), ("POST", "/profile/avatar")})
_CONNECTION_CLOSE = (b"connection", b"close")
SMALL_PIECE_BYTES = 256
SMALL_PIECES_BURST = 1024
SMALL_PIECES_PER_SECOND = 256.0
# Clients whose buckets are kept; past it the least recently seen is forgotten (its bucket
# was full again, or it is one of a flood of addresses, each held to the burst anyway).
SMALL_PIECES_CLIENTS = 10_000


def _no_client(scope: Scope) -> str:
    return ""


class SmallPieces:
    """Per client, a bucket of the small body pieces it may send: SMALL_PIECES_BURST at once,
    refilled at SMALL_PIECES_PER_SECOND."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()

    def take(self, client: str) -> bool:
        now = self._clock()
        tokens, since = self._buckets.pop(client, (float(SMALL_PIECES_BURST), now))
        tokens = min(float(SMALL_PIECES_BURST), tokens + (now - since) * SMALL_PIECES_PER_SECOND)
        taken = tokens >= 1.0
        self._buckets[client] = (tokens - 1.0 if taken else tokens, now)
        if len(self._buckets) > SMALL_PIECES_CLIENTS:
            self._buckets.popitem(last=False)
        return taken


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
        client_of: Callable[[Scope], str] = _no_client,
    ) -> None:
        self.app = app
        self.client_of = client_of
        self.small_pieces = SmallPieces()
        self.body_timeout = body_timeout
        self.upload_grace = upload_grace
        self.upload_min_rate = upload_min_rate
        self.upload_routes = frozenset(upload_routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not declares_body(scope):
            await self.app(scope, receive, send)
            return
        upload = (scope["method"], scope["path"]) in self.upload_routes
        body = _TimedBody(self, scope, receive, send, upload=upload)
        await self.app(scope, body.receive, body.send)

    def late_message(self, upload: bool) -> str:
        if upload:
            return (
                f"the upload arrived slower than {self.upload_min_rate} bytes/s over "
                f"{self.upload_grace:g} s; send it again over a faster connection"
            )
        return f"the request body did not arrive within {self.body_timeout:g} s; send it again"


class _TimedBody:
    """One request's body under its deadline: the whole body within the body timeout, or for
    an upload, each window's quota of bytes within its window."""

    def __init__(
        self, limits: BodyDeadline, scope: Scope, receive: Receive, send: Send, *, upload: bool
    ) -> None:
        self._limits = limits
        self._scope = scope
        self._receive = receive
        self._send = send
        self._upload = upload
        self._loop = asyncio.get_running_loop()
        self._window_started = self._loop.time()  # when the current window's quota began
        self._window_received = 0
        self._body_done = False
        self._late = False  # refused (late or in too many pieces): the connection is to close
        self._pieces = 0

    def _deadline(self) -> float:
        limits = self._limits
        return self._window_started + (limits.upload_grace if self._upload else limits.body_timeout)

    def _count(self, size: int) -> None:
        self._window_received += size
        quota = self._limits.upload_min_rate * self._limits.upload_grace
        if self._upload and self._window_received >= quota:
            self._window_started, self._window_received = self._loop.time(), 0

    async def receive(self) -> Message:
        if self._late:
            return {"type": "http.disconnect"}
        if self._body_done:
            return await self._receive()
        try:
            async with asyncio.timeout_at(self._deadline()):
                message = await self._receive()
        except TimeoutError:
            self._late = True
            metrics.LATE_BODIES.labels("upload" if self._upload else "body").inc()
            raise request_timeout(self._limits.late_message(self._upload)) from None
        if message["type"] == "http.request":
            size = len(message.get("body", b""))
            self._count(size)
            self._body_done = not message.get("more_body", False)
            self._pieces += 1
            limits = self._limits
            if (
                not self._body_done
                and self._pieces > 1
                and size < SMALL_PIECE_BYTES
                and not limits.small_pieces.take(limits.client_of(self._scope))
            ):
                self._late = True
                metrics.FRAGMENTED_BODIES.inc()
                raise ApiError(
                    400,
                    "invalid_request",
                    f"this client sent more than {SMALL_PIECES_BURST} request body pieces of"
                    f" under {SMALL_PIECE_BYTES} bytes, faster than {SMALL_PIECES_PER_SECOND:g}"
                    " a second; send bodies in larger pieces",
                    {"Connection": "close"},
                )
        else:
            self._body_done = True
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            message = self._with_connection_header(message)
        await self._send(message)

    def _with_connection_header(self, start: Message) -> Message:
        version = self._scope.get("http_version")
        if version == "2":
            # Connection-specific headers are not allowed in HTTP/2 (RFC 9113, 8.2.2).
            headers = [(n, v) for n, v in start.get("headers", ()) if n != b"connection"]
            return {**start, "headers": headers}
        if self._late and version in ("1.0", "1.1"):
            headers = [(n, v) for n, v in start.get("headers", ()) if n != b"connection"]
            return {**start, "headers": [*headers, _CONNECTION_CLOSE]}
        return start
