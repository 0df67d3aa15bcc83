"""Reading what is left of a request body before answering, so the client gets the answer.

A handler may answer before it reads the body: 413 from Content-Length alone, 401 without a
session, 403 without the CSRF token. A server that then closes the connection with unread
data makes the kernel reset it, and a client still sending the body (most HTTP libraries send
the whole body before they read) sees a connection error instead of the answer. Like nginx's
lingering close, the rest is read and dropped first, at most `max_bytes` and for at most
DRAIN_SECONDS; past that the connection is left to close. The body is never kept.

While draining, the answer is already decided: a `receive` that refuses the body then (a late
body's 408, an overloaded worker's 503) only ends the drain, and the decided answer is sent.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.http.errors import ApiError

DRAIN_SECONDS = 5.0
# Set in a request's scope by a handler that answers without waiting for any of the body
# (`answer_without_draining`): the server then reads what has already arrived and closes.
_NO_DRAIN = "gatehouse.no_drain"
# Set once the handler has chosen its answer and what is left of the body is only dropped.
_ANSWERED = "gatehouse.answered"


def answer_without_draining(scope: Scope) -> None:
    """Answer this request without waiting for the rest of its body."""
    scope[_NO_DRAIN] = True


def answer_decided(scope: Scope) -> bool:
    """Whether the handler has answered and the body is read only to be dropped."""
    return bool(scope.get(_ANSWERED, False))


def declares_body(scope: Scope) -> bool:
    """Whether the request may carry a body: a Transfer-Encoding (which wins over any
    Content-Length, as HTTP/1.1 servers read it), a non-zero Content-Length, or an HTTP/2
    stream without Content-Length (its body ends with the stream, not at a length)."""
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    length: bytes | None = None
    for name, value in headers:
        if name == b"transfer-encoding":
            return True
        if name == b"content-length" and length is None:
            length = value.strip()
    if length is not None:
        return length != b"0"
    return scope.get("http_version") == "2"


async def _drain(receive: Receive, max_bytes: int) -> None:
    dropped = 0
    try:
        async with asyncio.timeout(DRAIN_SECONDS):
            while dropped <= max_bytes:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    return
                dropped += len(message.get("body", b""))
    except (TimeoutError, ApiError):
        return


class UnreadBodyDrain:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not declares_body(scope):
            await self.app(scope, receive, send)
            return
        body_read = False

        async def receive_tracked() -> Message:
            nonlocal body_read
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_read = True
            return message

        async def send_after_draining(message: Message) -> None:
            nonlocal body_read
            if message["type"] == "http.response.start" and not body_read:
                body_read = True
                scope[_ANSWERED] = True
                if not scope.get(_NO_DRAIN, False):
                    await _drain(receive, self.max_bytes)
            await send(message)

        await self.app(scope, receive_tracked, send_after_draining)
