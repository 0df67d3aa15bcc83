"""CancelOnDisconnect, driven with hand-written ASGI messages."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from services.http import metrics
from services.http.app import create_app
from services.http.middleware.body_deadline import UPLOAD_ROUTES
from services.http.middleware.disconnect import CancelOnDisconnect
from services.http.settings import HttpSettings
from tests.http.gateway import TEST_CSRF_SECRET

WATCHED = "/api/v1/sessions"


def http_scope(path: str = WATCHED, method: str = "POST") -> Scope:
    return {"type": "http", "method": method, "path": path, "headers": []}


class Client:
    """The server's side of one request: a body, then (when told) the disconnect."""

    def __init__(self, body: bytes = b'{"username":"u"}') -> None:
        self.messages: asyncio.Queue[Message] = asyncio.Queue()
        self.messages.put_nowait({"type": "http.request", "body": body, "more_body": False})
        self.sent: list[Message] = []
        self.receives = 0

    async def receive(self) -> Message:
        self.receives += 1
        return await self.messages.get()

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    def go_away(self) -> None:
        self.messages.put_nowait({"type": "http.disconnect"})


class SlowHandler:
    """Reads the body, then waits for an answer that only `answer` gives."""

    def __init__(self) -> None:
        self.body_read = asyncio.Event()
        self.answer = asyncio.Event()
        self.cancelled = False
        self.received: list[Message] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.received.append(await receive())
        self.body_read.set()
        try:
            await self.answer.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def disconnects() -> float:
    return metrics.CLIENT_DISCONNECTS._value.get()  # type: ignore[attr-defined,no-any-return]


async def test_a_watched_request_is_cancelled_when_its_client_goes_away() -> None:
    handler, client = SlowHandler(), Client()
    before = disconnects()
    request = asyncio.ensure_future(
        CancelOnDisconnect(handler, [("POST", WATCHED)])(http_scope(), client.receive, client.send)
    )
    await asyncio.wait_for(handler.body_read.wait(), 5.0)
    client.go_away()
    await asyncio.wait_for(request, 5.0)  # returns: the server gets no exception
    assert handler.cancelled
    assert client.sent == []
    assert disconnects() == before + 1


async def test_a_watched_request_whose_client_stays_is_answered() -> None:
    handler, client = SlowHandler(), Client()
    request = asyncio.ensure_future(
        CancelOnDisconnect(handler, [("POST", WATCHED)])(http_scope(), client.receive, client.send)
    )
    await asyncio.wait_for(handler.body_read.wait(), 5.0)
    handler.answer.set()
    await asyncio.wait_for(request, 5.0)
    assert not handler.cancelled
    assert [m["type"] for m in client.sent] == ["http.response.start", "http.response.body"]
    assert client.receives == 2  # the body, and the watcher's wait for a disconnect


@pytest.mark.parametrize(("path", "method"), [("/api/v1/me", "GET"), (WATCHED, "GET")])
async def test_other_requests_are_not_watched(path: str, method: str) -> None:
    channels: list[Receive] = []

    async def records_its_channel(scope: Scope, receive: Receive, send: Send) -> None:
        channels.append(receive)

    client = Client()
    await CancelOnDisconnect(records_its_channel, [("POST", WATCHED)])(
        http_scope(path, method), client.receive, client.send
    )
    assert channels == [client.receive]  # the server's own channel: nothing listens beside


async def test_a_handler_waiting_for_more_after_the_body_shares_the_one_receive() -> None:
    received: list[Message] = []

    async def reads_twice(scope: Scope, receive: Receive, send: Send) -> None:
        received.append(await receive())
        received.append(await receive())

    client = Client()
    request = asyncio.ensure_future(
        CancelOnDisconnect(reads_twice, [("POST", WATCHED)])(
            http_scope(), client.receive, client.send
        )
    )
    client.go_away()
    await asyncio.wait_for(request, 5.0)
    # The server's receive was awaited once past the body (by the watcher), never twice at once.
    assert client.receives == 2
    assert [m["type"] for m in received] == ["http.request"]


async def test_the_servers_own_cancellation_still_propagates() -> None:
    handler, client = SlowHandler(), Client()
    request = asyncio.ensure_future(
        CancelOnDisconnect(handler, [("POST", WATCHED)])(http_scope(), client.receive, client.send)
    )
    await asyncio.wait_for(handler.body_read.wait(), 5.0)
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    assert handler.cancelled


async def test_a_disconnect_during_the_body_reaches_the_handler_unchanged() -> None:
    seen: list[Any] = []

    async def reads_body(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((await receive())["type"])

    client = Client()
    client.messages.get_nowait()  # the client leaves before its body arrives
    client.go_away()
    await asyncio.wait_for(
        CancelOnDisconnect(reads_body, [("POST", WATCHED)])(
            http_scope(), client.receive, client.send
        ),
        5.0,
    )
    assert seen == ["http.disconnect"]


@pytest.mark.parametrize(("method", "path"), sorted(UPLOAD_ROUTES))
async def test_the_app_cancels_a_picture_upload_whose_client_went_away(
    method: str, path: str
) -> None:
    """An upload waits for a decoder and decodes for seconds: not for a client that left."""
    app = create_app(HttpSettings(csrf_secret=TEST_CSRF_SECRET))
    (configured,) = [m for m in app.user_middleware if m.cls is CancelOnDisconnect]
    handler, client = SlowHandler(), Client(b"\x89PNG")
    watching = CancelOnDisconnect(handler, *configured.args, **configured.kwargs)
    request = asyncio.ensure_future(watching(http_scope(path, method), client.receive, client.send))
    await asyncio.wait_for(handler.body_read.wait(), 5.0)
    client.go_away()
    await asyncio.wait_for(request, 5.0)
    assert handler.cancelled
