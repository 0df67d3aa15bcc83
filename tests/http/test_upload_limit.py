"""The bounds on picture uploads in progress per worker: their buffered bytes, the bodies
whole at once, and the uploads of one client; past them 503."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from devstack.ports import wait_until_async
from services.http.errors import ApiError
from services.http.middleware.unread_body import UnreadBodyDrain, declares_body
from services.http.middleware.upload_limit import UploadLimit, UploadsByClient

UPLOAD = ("PUT", "/api/v1/me/avatar")


def upload_scope(
    path: str = UPLOAD[1], method: str = UPLOAD[0], client: str = "192.0.2.1"
) -> Scope:
    return {
        "type": "http",
        "http_version": "1.1",
        "method": method,
        "path": path,
        "headers": [(b"content-length", b"5000000")],
        "client": (client, 40000),
    }


def peer_address(scope: Scope) -> str:
    return str(scope["client"][0])


BODY_BYTES = 1000


def upload_limit(app: ASGIApp, limit: int, per_client: int) -> UploadLimit:
    return UploadLimit(
        app,
        limit,
        [UPLOAD],
        per_client=per_client,
        client_of=peer_address,
        max_body_bytes=BODY_BYTES,
    )


class SlowUpload:
    """A client whose body never arrives; it counts how often the server asked for it."""

    def __init__(self) -> None:
        self.receives = 0
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        self.receives += 1
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def send(self, message: Message) -> None:
        self.sent.append(message)


async def until(condition: Callable[[], bool]) -> None:
    """Poll `condition`, letting the other tasks run, until it holds (at most 2 s)."""
    await wait_until_async(condition, 2.0, "the uploads to reach the state under test")


async def reads_its_body(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()


async def holding(limit: UploadLimit, *clients: str) -> list[asyncio.Task[None]]:
    """Uploads from `clients` whose bodies never arrive, once each has asked for its body."""
    held = [SlowUpload() for _ in clients]
    tasks = [
        asyncio.create_task(limit(upload_scope(client=address), c.receive, c.send))
        for address, c in zip(clients, held, strict=True)
    ]
    await until(lambda: sum(c.receives for c in held) == len(held))
    return tasks


class Sends:
    """A client that sends `pieces` (bytes each, the last one ending the body unless `stall`),
    then waits for ever; it records what the server answered."""

    def __init__(self, *pieces: bytes, stall: bool = False) -> None:
        self.pieces = list(pieces)
        self.stall = stall
        self.receives = 0
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        self.receives += 1
        if self.pieces:
            body = self.pieces.pop(0)
            more = bool(self.pieces) or self.stall
            return {"type": "http.request", "body": body, "more_body": more}
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def send(self, message: Message) -> None:
        self.sent.append(message)


class Decoding:
    """A handler that reads the whole body, then holds it (a decode) until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.holding = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body", False):
            pass
        self.holding += 1
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


async def test_uploads_whose_bodies_never_come_hold_no_place() -> None:
    """Counted from their headers, 24 uploads that never sent a byte held every place, and 51
    of 52 other people's uploads got 503: what an upload costs is its bytes."""
    decoding = Decoding()
    limit = upload_limit(decoding, limit=2, per_client=2)
    tasks = await holding(limit, *(f"192.0.2.{n}" for n in range(1, 9)))
    small = Sends(b"x" * 100)
    try:
        upload = asyncio.create_task(
            limit(upload_scope(client="198.51.100.1"), small.receive, small.send)
        )
        await until(lambda: decoding.holding == 1)
        decoding.release.set()
        await asyncio.wait_for(upload, 2.0)
        assert small.sent[0]["status"] == 200
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert (limit.in_flight, limit.buffered, limit.whole) == (0, 0, 0)


async def test_past_the_buffered_bytes_an_upload_is_refused() -> None:
    """limit x max_body_bytes of bodies at most: an upload whose next bytes would pass it is
    answered 503 then, one that finds no room left is answered 503 at once, its body unread."""
    limit = upload_limit(reads_everything, limit=2, per_client=2)
    first = Sends(b"x" * 1500, stall=True)
    held = asyncio.create_task(limit(upload_scope(client="192.0.2.1"), first.receive, first.send))
    await until(lambda: limit.buffered == 1500)
    try:
        second = Sends(b"x" * 400, b"x" * 400, stall=True)
        with pytest.raises(ApiError) as refused:
            await asyncio.wait_for(
                limit(upload_scope(client="192.0.2.2"), second.receive, second.send), 2.0
            )
        assert (refused.value.status_code, refused.value.code) == (503, "overloaded")
        assert limit.buffered == 1500  # the refused one's bytes are given back

        third = Sends(b"x" * 500, stall=True)  # takes the rest
        filling = asyncio.create_task(
            limit(upload_scope(client="192.0.2.3"), third.receive, third.send)
        )
        await until(lambda: limit.buffered == 2000)
        fourth = Sends(b"x")
        await asyncio.wait_for(
            limit(upload_scope(client="192.0.2.4"), fourth.receive, fourth.send), 2.0
        )
        assert fourth.sent[0]["status"] == 503 and fourth.receives == 0
        assert b"as many pictures as it can" in fourth.sent[1]["body"]
        filling.cancel()
        await asyncio.gather(filling, return_exceptions=True)
    finally:
        held.cancel()
        await asyncio.gather(held, return_exceptions=True)
    assert (limit.in_flight, limit.buffered) == (0, 0)


async def test_past_the_whole_bodies_an_upload_is_refused() -> None:
    """At most `limit` bodies arrived whole (waiting for a decoder or decoding)."""
    decoding = Decoding()
    limit = upload_limit(decoding, limit=1, per_client=2)
    first = Sends(b"x" * 10)
    held = asyncio.create_task(limit(upload_scope(client="192.0.2.1"), first.receive, first.send))
    await until(lambda: decoding.holding == 1)
    try:
        second = Sends(b"x" * 10)
        await asyncio.wait_for(
            limit(upload_scope(client="192.0.2.2"), second.receive, second.send), 2.0
        )
        assert second.sent[0]["status"] == 503 and second.receives == 0
        other = SlowUpload()  # other routes are not counted
        other_request = asyncio.create_task(
            limit(upload_scope("/api/v1/me", "PATCH"), other.receive, other.send)
        )
        await until(lambda: other.receives == 1)
        other_request.cancel()
        await asyncio.gather(other_request, return_exceptions=True)
    finally:
        decoding.release.set()
        await asyncio.wait_for(held, 2.0)
    assert (limit.in_flight, limit.buffered, limit.whole) == (0, 0, 0)


async def reads_everything(scope: Scope, receive: Receive, send: Send) -> None:
    while (await receive()).get("more_body", False):
        pass


async def refuses_without_reading(scope: Scope, receive: Receive, send: Send) -> None:
    """A handler that answers 401 before reading any of the body (no session)."""
    await send({"type": "http.response.start", "status": 401, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def test_a_refused_upload_leaves_the_count_while_its_body_is_drained() -> None:
    """What is left of a refused upload's body is read only to be dropped, for up to the
    drain's 5 s: holding the place meanwhile let a few requests without an account refuse
    every user's uploads."""
    limit = upload_limit(UnreadBodyDrain(refuses_without_reading, max_bytes=10**7), 1, 1)
    refused = SlowUpload()
    draining = asyncio.create_task(limit(upload_scope(), refused.receive, refused.send))
    try:
        await until(lambda: refused.receives == 1)  # the drain waits for the rest of the body
        assert not draining.done()
        allowed = SlowUpload()
        next_upload = asyncio.create_task(limit(upload_scope(), allowed.receive, allowed.send))
        await until(lambda: allowed.receives == 1 or bool(allowed.sent))
        assert allowed.sent == [], "the next upload was refused while the first one drained"
        next_upload.cancel()
        await asyncio.gather(next_upload, return_exceptions=True)
    finally:
        draining.cancel()
        await asyncio.gather(draining, return_exceptions=True)
    assert limit.in_flight == 0


async def test_one_client_address_cannot_take_every_place() -> None:
    """Slow uploads within the body rate rules may last minutes: one client holding all of
    a worker's places shut everyone else's uploads out."""
    limit = upload_limit(reads_its_body, limit=8, per_client=2)
    tasks = await holding(limit, "192.0.2.1", "192.0.2.1")
    try:
        third = SlowUpload()
        await asyncio.wait_for(limit(upload_scope(), third.receive, third.send), 2.0)
        assert third.sent[0]["status"] == 503 and third.receives == 0
        assert b"from one client or account" in third.sent[1]["body"]
        other = SlowUpload()  # another address still gets a place
        tasks.append(
            asyncio.create_task(limit(upload_scope(client="192.0.2.2"), other.receive, other.send))
        )
        await until(lambda: other.receives == 1)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert limit.in_flight == 0
    again = SlowUpload()  # the address's places are given back
    retry = asyncio.create_task(limit(upload_scope(), again.receive, again.send))
    await until(lambda: again.receives == 1)
    retry.cancel()
    await asyncio.gather(retry, return_exceptions=True)


def test_one_account_counts_its_uploads_wherever_they_come_from() -> None:
    uploads = UploadsByClient(2)
    with uploads.one_more(7), uploads.one_more(7):
        with pytest.raises(ApiError) as refused, uploads.one_more(7):
            pass
        assert refused.value.status_code == 503
        with uploads.one_more(8):
            pass
    with uploads.one_more(7), uploads.one_more(7):
        pass


def test_a_body_is_declared_by_transfer_encoding_whatever_content_length_says() -> None:
    """HTTP/1.1 servers (h11 under Hypercorn) read a chunked body when both headers come: a
    Content-Length of 0 ahead of it must not take the upload past its limits and deadline."""
    both = upload_scope()
    both["headers"] = [(b"content-length", b"0"), (b"transfer-encoding", b"chunked")]
    assert declares_body(both)
    empty = upload_scope()
    empty["headers"] = [(b"content-length", b"0")]
    assert not declares_body(empty)


class Gated:
    """A client that sends `first`, then, once `go` is set, `last`, ending its body."""

    def __init__(self, first: bytes, last: bytes) -> None:
        self.pieces = [first, last]
        self.go = asyncio.Event()
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        if len(self.pieces) == 1:
            await self.go.wait()
        body = self.pieces.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(self.pieces)}

    async def send(self, message: Message) -> None:
        self.sent.append(message)


async def test_an_upload_that_has_begun_may_finish_while_others_are_whole() -> None:
    """Refused at its last byte because others arrived whole meanwhile, a slow upload's
    minutes of sending would be wasted."""
    decoding = Decoding()
    limit = upload_limit(decoding, limit=1, per_client=2)
    slow = Gated(b"x" * 500, b"x" * 100)
    slow_upload = asyncio.create_task(
        limit(upload_scope(client="192.0.2.1"), slow.receive, slow.send)
    )
    await until(lambda: limit.buffered == 500)
    fast = Sends(b"x" * 10)
    fast_upload = asyncio.create_task(
        limit(upload_scope(client="192.0.2.2"), fast.receive, fast.send)
    )
    await until(lambda: decoding.holding == 1)
    slow.go.set()
    await until(lambda: decoding.holding == 2)  # its body taken whole, not refused
    decoding.release.set()
    await asyncio.wait_for(asyncio.gather(slow_upload, fast_upload), 2.0)
    assert slow.sent[0]["status"] == fast.sent[0]["status"] == 200
    assert (limit.in_flight, limit.buffered, limit.whole) == (0, 0, 0)
