"""Stop a login or signup whose HTTP client has gone away.

These requests wait on a password hash in the auth service: seconds, when hashing is
saturated. A client that gives up (its timeout, a closed tab, a proxy's deadline) would still
cost a hash nobody reads, and a login storm of impatient clients would spend the hashing
threads on abandoned calls. Once such a request's body has been read, this middleware listens
for `http.disconnect` and cancels the handler; its RPC then sends METHOD_CANCEL, and the auth
service skips the hash if it has not started. The access log records the request as 499.

Picture uploads are watched too: once their body is in, they wait for a decoder and decode
for up to seconds, and a cancelled upload kills its decoding child (services.http.avatars.decode_pool)
or leaves the decoders' queue.

Only these requests are watched: a listening task per request would cost profile reads more
than they could gain.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.http import metrics


class CancelOnDisconnect:
    """ASGI middleware: cancel requests to `routes` (method, path) when their client
    disconnects."""

    def __init__(self, app: ASGIApp, routes: Collection[tuple[str, str]]) -> None:
        self.app = app
        self.routes = frozenset(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"], scope["path"]) not in self.routes:
            await self.app(scope, receive, send)
            return
        channel = _WatchedReceive(receive)
        handler = asyncio.ensure_future(self.app(scope, channel.receive, send))
        watcher = asyncio.ensure_future(channel.watch(handler))
        try:
            await handler
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not channel.disconnected.is_set() or (current and current.cancelling()):
                raise
            metrics.CLIENT_DISCONNECTS.inc()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


class _WatchedReceive:
    """The request's receive channel, shared by the handler and a disconnect watcher.

    Until the body has been read the handler receives as usual. After that the watcher owns
    the server's receive (two tasks must not wait on it at once), and a handler that asks for
    another message gets the disconnect when it comes.
    """

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._body_read = asyncio.Event()
        self.disconnected = asyncio.Event()

    async def receive(self) -> Message:
        if self._body_read.is_set():
            await self.disconnected.wait()
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self.disconnected.set()
            self._body_read.set()
        elif not message.get("more_body", False):
            self._body_read.set()
        return message

    async def watch(self, handler: asyncio.Future[None]) -> None:
        await self._body_read.wait()
        if self.disconnected.is_set():
            return
        # Past the body, the only message an ASGI server may send is the disconnect.
        if (await self._receive())["type"] == "http.disconnect":
            self.disconnected.set()
            handler.cancel()
