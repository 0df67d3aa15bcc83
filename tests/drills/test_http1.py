"""The drills' HTTP/1.1 client against a scripted server on a loopback port: bodies of each
framing, keep-alive reuse, and failures that name the connection they went on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from devstack.ports import wait_until_async
from drills.http1 import Http1Pool, RequestFailed, parse_response

Script = Callable[[bytes], bytes | None]  # request head -> raw response (None: close at once)


@asynccontextmanager
async def scripted_server(script: Script) -> AsyncIterator[int]:
    """A server answering each request on a connection with `script(request head)`."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                await reader.readexactly(length)
                answer = script(head)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def ok(body: bytes = b'{"a": 1}') -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nRetry-After: 1\r\n\r\n%s" % (len(body), body)


def test_each_framing_parses_and_leaves_the_rest() -> None:
    buffer = bytearray(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n"
        b"HTTP/1.1 204 No Content\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\n\r\nhel"
    )
    assert parse_response(buffer, at_eof=False) == (
        200,
        {"transfer-encoding": "chunked"},
        b"abcde",
    )
    assert parse_response(buffer, at_eof=False) == (204, {}, b"")
    assert parse_response(buffer, at_eof=False) is None  # 3 of 5 bytes so far
    buffer += b"lo"
    assert parse_response(buffer, at_eof=False) == (201, {"content-length": "5"}, b"hello")
    assert buffer == b""
    with pytest.raises(ValueError):
        parse_response(bytearray(b"SSH-2.0-x\r\n\r\n"), at_eof=False)


async def test_a_keep_alive_connection_carries_the_next_request() -> None:
    seen: list[bytes] = []

    def script(head: bytes) -> bytes:
        seen.append(head)
        return ok()

    async with scripted_server(script) as port:
        pool = Http1Pool("127.0.0.1", port, local_address="127.0.0.2", max_connections=4)
        first = await pool.request("POST", "/x", json_body={"k": "v"}, timeout=5.0)
        second = await pool.request("GET", "/y", headers={"Authorization": "t"}, timeout=5.0)
        await pool.aclose()
    assert (first.status_code, first.json(), first.headers["retry-after"]) == (200, {"a": 1}, "1")
    assert first.via.local[0] == "127.0.0.2"
    assert not first.via.reused
    assert second.via.reused and second.via.local == first.via.local
    assert seen[0].startswith(b"POST /x HTTP/1.1\r\n") and b"Content-Length: 10" in seen[0]
    assert b"Authorization: t" in seen[1]


async def test_a_request_on_a_connection_the_server_closes_fails_naming_it() -> None:
    def script(head: bytes) -> bytes | None:
        return ok() if b"/first" in head else None

    async with scripted_server(script) as port:
        pool = Http1Pool("127.0.0.1", port, local_address=None, max_connections=4)
        first = await pool.request("GET", "/first", timeout=5.0)
        # The server closes that connection when its next request arrives: a request on it
        # fails, naming the connection, which the pool then drops.
        with pytest.raises(RequestFailed) as failure:
            await pool.request("GET", "/close", timeout=5.0)
        assert not failure.value.timed_out
        assert failure.value.via is not None and failure.value.via.reused
        assert failure.value.via.local == first.via.local
        third = await pool.request("GET", "/first", timeout=5.0)
        await pool.aclose()
    assert not third.via.reused and third.via.local != first.via.local


async def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(ok())  # keep-alive as far as its headers say; closed right after
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer_once, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = Http1Pool("127.0.0.1", port, local_address=None, max_connections=4)
    try:
        first = await pool.request("GET", "/", timeout=5.0)
        await wait_until_async(
            lambda: pool.open_idle_connections == 0, 5.0, "the client sees the server's FIN"
        )
        second = await pool.request("GET", "/", timeout=5.0)
    finally:
        await pool.aclose()
        server.close()
        await server.wait_closed()
    assert not second.via.reused and second.via.local != first.via.local


async def test_no_answer_within_the_timeout_fails_as_timed_out() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers; returns when the client closes
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = Http1Pool("127.0.0.1", port, local_address=None, max_connections=1)
    try:
        with pytest.raises(RequestFailed) as failure:
            await pool.request("GET", "/", timeout=0.2)
    finally:
        await pool.aclose()
        server.close()
        await server.wait_closed()
    assert failure.value.timed_out and failure.value.via is not None


async def test_a_refused_connection_fails_with_no_connection() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    pool = Http1Pool("127.0.0.1", port, local_address=None, max_connections=1)
    with pytest.raises(RequestFailed) as failure:
        await pool.request("GET", "/", timeout=5.0)
    assert not failure.value.timed_out and failure.value.via is None
