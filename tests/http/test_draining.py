"""Unread request bodies are read and dropped before the answer goes out (bounded)."""

from __future__ import annotations

from starlette.types import Message, Receive, Scope, Send

from services.http.middleware.unread_body import UnreadBodyDrain

CHUNK = b"\0" * 1000


class Exchange:
    """One request whose body arrives in `chunks` messages, and what the app sent back."""

    def __init__(self, chunks: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.scope: Scope = {"type": "http", "method": "PUT", "path": "/", "headers": headers}
        self.pending = chunks
        self.received_when_answered: int | None = None
        self.delivered = 0

    async def receive(self) -> Message:
        self.pending -= 1
        self.delivered += 1
        return {"type": "http.request", "body": CHUNK, "more_body": self.pending > 0}

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.received_when_answered = self.delivered


async def answer_at_once(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 413, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def read_one_chunk_then_answer(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()
    await answer_at_once(scope, receive, send)


def with_length(chunks: int) -> list[tuple[bytes, bytes]]:
    return [(b"content-length", str(chunks * len(CHUNK)).encode())]


async def test_the_rest_of_the_body_is_read_before_the_answer() -> None:
    for app in (answer_at_once, read_one_chunk_then_answer):
        exchange = Exchange(10, with_length(10))
        await UnreadBodyDrain(app, max_bytes=1_000_000)(
            exchange.scope, exchange.receive, exchange.send
        )
        assert exchange.received_when_answered == 10


async def test_draining_stops_past_max_bytes() -> None:
    exchange = Exchange(100, with_length(100))
    await UnreadBodyDrain(answer_at_once, max_bytes=5 * len(CHUNK))(
        exchange.scope, exchange.receive, exchange.send
    )
    assert exchange.received_when_answered == 6  # 5 chunks allowed, the 6th crosses the bound


async def test_a_chunked_body_is_drained_too() -> None:
    exchange = Exchange(3, [(b"transfer-encoding", b"chunked")])
    await UnreadBodyDrain(answer_at_once, max_bytes=1_000_000)(
        exchange.scope, exchange.receive, exchange.send
    )
    assert exchange.received_when_answered == 3


async def test_requests_without_a_body_are_left_alone() -> None:
    for headers in ([], [(b"content-length", b"0")]):
        exchange = Exchange(1, headers)
        await UnreadBodyDrain(answer_at_once, max_bytes=1_000_000)(
            exchange.scope, exchange.receive, exchange.send
        )
        assert exchange.received_when_answered == 0
