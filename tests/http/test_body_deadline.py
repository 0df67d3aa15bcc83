"""Deadlines on request bodies, driven with hand-written ASGI messages."""

from __future__ import annotations

import asyncio
import time

import pytest
from starlette.types import Message, Receive, Scope, Send

from services.http.errors import ApiError
from services.http.middleware.body_deadline import (
    SMALL_PIECES_BURST,
    SMALL_PIECES_PER_SECOND,
    BodyDeadline,
    SmallPieces,
)

UPLOAD = ("PUT", "/api/v1/me/avatar")
WINDOW = 0.5
RATE = 10_000  # so a window's quota is 5000 bytes


def upload_scope() -> Scope:
    return {
        "type": "http",
        "http_version": "1.1",
        "method": UPLOAD[0],
        "path": UPLOAD[1],
        "headers": [(b"content-length", b"1000000")],
    }


class FastThenStalled:
    """A client that sends `first` bytes at once, then nothing more, ever."""

    def __init__(self, first: int) -> None:
        self.first = first
        self.delivered = False

    async def receive(self) -> Message:
        if not self.delivered:
            self.delivered = True
            return {"type": "http.request", "body": b"\0" * self.first, "more_body": True}
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def reads_everything(scope: Scope, receive: Receive, send: Send) -> None:
    while (await receive()).get("more_body", False):
        pass


async def test_a_fast_start_does_not_buy_a_long_stall() -> None:
    """900 KB at once then nothing: on average that is 180 s of credit at the minimum rate;
    the body is refused one window after its last quota was met instead."""
    deadline = BodyDeadline(
        reads_everything, body_timeout=60.0, upload_grace=WINDOW, upload_min_rate=RATE
    )
    client = FastThenStalled(900_000)
    began = time.monotonic()
    with pytest.raises(ApiError) as refused:
        await asyncio.wait_for(deadline(upload_scope(), client.receive, _ignore), 5.0)
    assert (refused.value.status_code, refused.value.code) == (408, "request_timeout")
    assert time.monotonic() - began < 3 * WINDOW


async def _ignore(message: Message) -> None:
    return None


class Steady:
    """A client that sends `chunk` bytes every `interval` seconds, `count` times."""

    def __init__(self, chunk: int, interval: float, count: int) -> None:
        self.chunk, self.interval, self.left = chunk, interval, count

    async def receive(self) -> Message:
        await asyncio.sleep(self.interval)  # the client's pace, not a synchronisation
        self.left -= 1
        return {"type": "http.request", "body": b"\0" * self.chunk, "more_body": self.left > 0}


async def test_an_upload_keeping_the_minimum_rate_is_not_cut_off() -> None:
    deadline = BodyDeadline(
        reads_everything, body_timeout=60.0, upload_grace=WINDOW, upload_min_rate=RATE
    )
    # 6000 bytes every 0.25 s: 24 KB/s, over the 10 KB/s minimum in every 0.5 s window, with
    # room for a loaded machine's scheduling delays.
    client = Steady(6000, 0.25, 8)
    await asyncio.wait_for(deadline(upload_scope(), client.receive, _ignore), 10.0)
    assert client.left == 0


class Pieces:
    """A client that sends its body in `count` pieces of `size` bytes, as fast as it is read."""

    def __init__(self, size: int, count: int) -> None:
        self.size, self.left = size, count

    async def receive(self) -> Message:
        if self.left == 0:
            return {"type": "http.disconnect"}
        self.left -= 1
        return {"type": "http.request", "body": b"x" * self.size, "more_body": self.left > 0}


async def test_a_body_in_tiny_pieces_is_refused_and_its_connection_closed() -> None:
    deadline = BodyDeadline(
        reads_everything, body_timeout=60.0, upload_grace=WINDOW, upload_min_rate=RATE
    )
    client = Pieces(1, 60_000)
    began = time.monotonic()
    with pytest.raises(ApiError) as refused:
        await deadline(upload_scope(), client.receive, _ignore)
    # The bucket and what it refilled meanwhile (a busy machine may take a while over it), plus
    # the first piece, never counted, and the refused one.
    refill = (time.monotonic() - began) * SMALL_PIECES_PER_SECOND
    assert (refused.value.status_code, refused.value.code) == (400, "invalid_request")
    assert 60_000 - client.left <= SMALL_PIECES_BURST + 2 + refill
    assert refused.value.headers == {"Connection": "close"}


def per_client_deadline() -> BodyDeadline:
    """Deadlines whose small-piece buckets go by the peer address."""
    return BodyDeadline(
        reads_everything,
        body_timeout=60.0,
        upload_grace=WINDOW,
        upload_min_rate=RATE,
        client_of=lambda scope: str(scope["client"][0]),
    )


async def test_tiny_pieces_are_counted_per_client_across_requests() -> None:
    """1,024 one-byte pieces in each request of a keep-alive connection cost as much as one
    request of many: the client's bucket runs out all the same, and another client's does
    not."""
    deadline = per_client_deadline()
    hostile = {**upload_scope(), "client": ("192.0.2.1", 1)}
    requests = 0
    with pytest.raises(ApiError) as refused:
        for _ in range(20):
            await deadline(hostile, Pieces(1, SMALL_PIECES_BURST // 4).receive, _ignore)
            requests += 1
    assert refused.value.code == "invalid_request" and 4 <= requests < 10
    other = {**upload_scope(), "client": ("192.0.2.2", 1)}
    await deadline(other, Pieces(1, SMALL_PIECES_BURST // 4).receive, _ignore)


async def test_small_bodies_take_nothing_however_many() -> None:
    """Granian hands a small body over as the body, then an empty end: a client posting small
    JSON bodies fast is never refused for it."""
    deadline = per_client_deadline()
    scope = {**upload_scope(), "client": ("192.0.2.1", 1)}
    for _ in range(3 * SMALL_PIECES_BURST):
        await deadline(scope, SmallBodyAsGranianSendsIt().receive, _ignore)


class SmallBodyAsGranianSendsIt:
    def __init__(self) -> None:
        self.pieces = [
            {"type": "http.request", "body": b'{"nickname": "x"}', "more_body": True},
            {"type": "http.request", "body": b"", "more_body": False},
        ]

    async def receive(self) -> Message:
        return self.pieces.pop(0)


def test_a_bucket_refills_at_its_rate() -> None:
    now = [0.0]
    pieces = SmallPieces(clock=lambda: now[0])
    assert all(pieces.take("a") for _ in range(SMALL_PIECES_BURST))
    assert not pieces.take("a")
    now[0] += 1.0
    taken = sum(pieces.take("a") for _ in range(2 * int(SMALL_PIECES_PER_SECOND)))
    assert taken == int(SMALL_PIECES_PER_SECOND)


async def test_a_body_in_segments_of_a_slow_link_is_taken() -> None:
    """5.6 MB in 4,000 pieces of 1,400 bytes (one TCP segment each)."""
    deadline = BodyDeadline(
        reads_everything, body_timeout=60.0, upload_grace=WINDOW, upload_min_rate=RATE
    )
    client = Pieces(1400, 4000)
    await asyncio.wait_for(deadline(upload_scope(), client.receive, _ignore), 10.0)
    assert client.left == 0
