"""Bounds on the picture uploads one worker process holds.

An upload's body (up to GATEHOUSE_MAX_AVATAR_BYTES) is kept in memory from its arrival to the
end of its decode, and a request waiting for its body holds no admission slot
(services.http.middleware.admission). What an upload costs is its bytes, so that is what is
bounded: the bodies of the uploads in progress may hold at most GATEHOUSE_MAX_UPLOADS_IN_FLIGHT
x GATEHOUSE_MAX_AVATAR_BYTES; an upload whose bytes would pass that is answered 503 with
Retry-After. One that starts while those bytes are all taken, or while
GATEHOUSE_MAX_UPLOADS_IN_FLIGHT bodies have arrived whole (waiting for a decoder or decoding),
is answered 503 at once, unread; one that has begun is not refused for others arriving whole
meanwhile. An upload whose body has not come holds nothing: counted by places from their
headers on, 24 uploads that never sent a byte (8 accounts on 8 addresses) once held every
place, and 51 of 52 other people's uploads got 503.

One client (an IPv4 address, an IPv6 /64), and one account (counted by the handler, once it
knows the session), may have at most GATEHOUSE_MAX_UPLOADS_PER_CLIENT uploads in progress, from
their headers on. An upload leaves every count once its answer is decided: what is left of a
refused upload's body is then only dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Iterator
from contextlib import contextmanager

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.http import metrics
from services.http.errors import RETRY_AFTER_SECONDS, ApiError, error_response
from services.http.middleware.unread_body import (
    answer_decided,
    answer_without_draining,
    declares_body,
)


def too_many_uploads() -> ApiError:
    return ApiError(
        503,
        "overloaded",
        f"this server is receiving as many pictures as it can; retry in {RETRY_AFTER_SECONDS} s",
        {"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def too_many_uploads_of_one_client(limit: int) -> ApiError:
    return ApiError(
        503,
        "overloaded",
        f"at most {limit} pictures are received at once from one client or account; retry in "
        f"{RETRY_AFTER_SECONDS} s, once one is done",
        {"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


class UploadsByClient:
    """How many uploads each client (an IP address, an account) has in progress, at most
    `limit` each: without it one client could hold every place of the worker. A client is
    counted only while it has one in progress (the connection caps bound how many do)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: dict[Hashable, int] = {}

    def enter(self, client: Hashable) -> bool:
        """Count one more upload of `client`; False, counting nothing, past its limit."""
        count = self._counts.get(client, 0)
        if count >= self.limit:
            metrics.SHED_UPLOADS.inc()
            return False
        self._counts[client] = count + 1
        return True

    def leave(self, client: Hashable) -> None:
        count = self._counts.pop(client) - 1
        if count:
            self._counts[client] = count

    @contextmanager
    def one_more(self, client: Hashable) -> Iterator[None]:
        """Around an upload of `client`: ApiError 503 past its limit."""
        if not self.enter(client):
            raise too_many_uploads_of_one_client(self.limit)
        try:
            yield
        finally:
            self.leave(client)


class UploadLimit:
    """ASGI middleware: the uploads to `routes` in progress may buffer at most `limit` x
    `max_body_bytes`; none starts while `limit` of them are whole; at most `per_client` of them
    come from one client (`client_of`: its key)."""

    def __init__(
        self,
        app: ASGIApp,
        limit: int,
        routes: Collection[tuple[str, str]],
        per_client: int,
        client_of: Callable[[Scope], str],
        max_body_bytes: int,
    ) -> None:
        self.app = app
        self.limit = limit
        self.routes = frozenset(routes)
        self.max_buffered = limit * max_body_bytes
        self.in_flight = 0  # uploads in progress, their bodies arrived or not
        self.buffered = 0  # bytes of their bodies received
        self.whole = 0  # of them, those whose body has arrived whole
        self._clients = UploadsByClient(per_client)
        self._client_of = client_of
        self._refusal = error_response(too_many_uploads())
        self._client_refusal = error_response(too_many_uploads_of_one_client(per_client))

    def _full(self) -> bool:
        """No room for another upload: as many whole as allowed, or the bytes all taken."""
        return self.whole >= self.limit or self.buffered >= self.max_buffered

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or (scope["method"], scope["path"]) not in self.routes
            or not declares_body(scope)
        ):
            await self.app(scope, receive, send)
            return
        if self._full():
            metrics.SHED_UPLOADS.inc()
            answer_without_draining(scope)
            await self._refusal(scope, receive, send)
            return
        client = self._client_of(scope)
        if not self._clients.enter(client):
            answer_without_draining(scope)
            await self._client_refusal(scope, receive, send)
            return
        self.in_flight += 1
        counted = True
        buffered = 0
        whole = False

        def leave() -> None:
            nonlocal counted
            if counted:
                counted = False
                self.in_flight -= 1
                self.buffered -= buffered
                self.whole -= whole
                self._clients.leave(client)

        # Once the answer is decided nothing of the body is kept or decoded any more: what is
        # left of it is only read to be dropped (unread_body, before the answer is sent), which
        # must not hold the place. A refused upload (401 without a session) would otherwise
        # hold it for the drain's seconds, and a few requests without an account would shut
        # everyone's uploads out.
        async def receive_counted() -> Message:
            nonlocal buffered, whole
            if answer_decided(scope):
                leave()
            message = await receive()
            if not counted or message["type"] != "http.request":
                return message
            size = len(message.get("body", b""))
            arrived = not message.get("more_body", False)
            # Only the bytes: one refused at its last byte, after minutes on a slow link,
            # because others arrived whole meanwhile, would be wasted.
            if self.buffered + size > self.max_buffered:
                metrics.SHED_UPLOADS.inc()
                leave()
                answer_without_draining(scope)
                raise too_many_uploads()  # a fresh one: a raised error keeps its frames
            buffered += size
            self.buffered += size
            if arrived:
                whole = True
                self.whole += 1
            return message

        async def send_and_leave(message: Message) -> None:
            if message["type"] == "http.response.start":
                leave()
            await send(message)

        try:
            await self.app(scope, receive_counted, send_and_leave)
        finally:
            leave()
