"""A small HTTP/1.1 client for the drills' load: keep-alive connections from one source address.

httpx (over anyio) cost the drill about 1.5 ms of CPU per request: half a core at 333
requests/s on the 2-core machine, more than the whole stack it was measuring took, so on a busy
machine the load generator starved the stack and charged the stack for it. Here each connection
is an asyncio Protocol (uvloop's, in the drills): a request is one write, its answer is parsed
from the bytes as they come (status line, headers, a Content-Length or chunked body), and
nothing is retried.

Each answer and each failure says which connection carried it (`Via`: its local address, and
whether it had served a request before), so that a drill can tell a request on a killed
worker's connection from one that was not. A connection the server closes leaves the idle pool
as soon as the event loop sees its FIN, as a browser's does.

    pool = Http1Pool("127.0.0.1", 8000, local_address="127.0.0.2", max_connections=64)
    answer = await pool.request("GET", "/api/v1/me", headers={...}, timeout=15.0)
    answer.status_code, answer.headers["retry-after"], answer.json(), answer.via.reused
    await pool.aclose()
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

# Answers of the Gatehouse API are a few hundred bytes; anything far larger is a broken peer.
MAX_RESPONSE_BYTES = 1 << 20
_NO_BODY_STATUSES = frozenset({204, 304})


@dataclass(frozen=True)
class Via:
    """The connection a request went on."""

    local: tuple[str, int]  # its local (client) address
    reused: bool  # it had carried an answered request before this one
    written_at: float  # time.monotonic() when the request was written on it


@dataclass(frozen=True)
class Answer:
    status_code: int
    headers: Mapping[str, str]  # names in lower case
    body: bytes
    via: Via

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)


class RequestFailed(Exception):
    """No answer: the connection could not be made or broke (`timed_out` False), or none came
    within the timeout (True). `via` is None when no connection was made."""

    def __init__(self, reason: str, *, timed_out: bool, via: Via | None) -> None:
        super().__init__(reason)
        self.timed_out = timed_out
        self.via = via


@dataclass(frozen=True)
class _Head:
    status: int
    headers: dict[str, str]
    body_start: int


def _parse_head(buffer: bytearray) -> _Head | None:
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = bytes(buffer[:end]).decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    if not version.startswith("HTTP/1."):
        raise ValueError(f"not an HTTP/1 status line: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return _Head(int(rest[:3]), headers, end + 4)


def _chunked_body(buffer: bytearray, start: int) -> tuple[bytes, int] | None:
    """The decoded body and where the message ends, or None: more bytes needed."""
    body = bytearray()
    position = start
    while True:
        line_end = buffer.find(b"\r\n", position)
        if line_end < 0:
            return None
        size = int(bytes(buffer[position:line_end]).split(b";")[0], 16)
        if size == 0:
            trailers_end = buffer.find(b"\r\n\r\n", line_end)
            return None if trailers_end < 0 else (bytes(body), trailers_end + 4)
        chunk_start = line_end + 2
        if len(buffer) < chunk_start + size + 2:
            return None
        body += buffer[chunk_start : chunk_start + size]
        position = chunk_start + size + 2


def parse_response(buffer: bytearray, *, at_eof: bool) -> tuple[int, dict[str, str], bytes] | None:
    """One complete response from the start of `buffer` (consumed), or None: not complete yet.
    Raises ValueError for bytes that are no HTTP/1.1 response."""
    head = _parse_head(buffer)
    if head is None:
        return None
    if head.status in _NO_BODY_STATUSES or 100 <= head.status < 200:
        body, end = b"", head.body_start
    elif "chunked" in head.headers.get("transfer-encoding", "").lower():
        decoded = _chunked_body(buffer, head.body_start)
        if decoded is None:
            return None
        body, end = decoded
    elif "content-length" in head.headers:
        end = head.body_start + int(head.headers["content-length"])
        if len(buffer) < end:
            return None
        body = bytes(buffer[head.body_start : end])
    elif at_eof:  # delimited by the end of the connection
        body, end = bytes(buffer[head.body_start :]), len(buffer)
    else:
        return None
    del buffer[:end]
    return head.status, head.headers, body


class _Connection(asyncio.Protocol):
    """One TCP connection carrying one request at a time."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[tuple[int, dict[str, str], bytes]] | None = None
        self.open = False
        self.local: tuple[str, int] = ("", 0)
        self.answered = 0  # requests this connection has carried to an answer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are no subclasses of asyncio's, but have the same methods.
        self._transport = cast(asyncio.Transport, transport)
        self.open = True
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.local = transport.get_extra_info("sockname")[:2]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._waiter is None:
            self.close()  # bytes nobody asked for: the connection is out of step
            return
        self._answer_if_complete(at_eof=False)

    def eof_received(self) -> bool:
        self._answer_if_complete(at_eof=True)
        self._lose("the server closed the connection")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lose(f"connection lost ({exc!r})" if exc else "connection closed")

    def _answer_if_complete(self, *, at_eof: bool) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        try:
            parsed = parse_response(self._buffer, at_eof=at_eof)
        except ValueError as exc:
            waiter.set_exception(ConnectionError(f"bad response: {exc}"))
            self.close()
            return
        if parsed is not None:
            self.answered += 1
            waiter.set_result(parsed)
        elif len(self._buffer) > MAX_RESPONSE_BYTES:
            waiter.set_exception(ConnectionError("response too large"))
            self.close()

    def _lose(self, reason: str) -> None:
        self.open = False
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError(reason))

    async def exchange(self, request: bytes) -> tuple[int, dict[str, str], bytes]:
        if not self.open or self._transport is None:
            raise ConnectionError("connection closed")
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            self._transport.write(request)
            return await self._waiter
        finally:
            self._waiter = None

    def close(self) -> None:
        self.open = False
        if self._transport is not None:
            self._transport.close()


class Http1Pool:
    """Keep-alive connections to one server from one local address; at most `max_connections`
    requests at a time (the others wait, inside their timeout)."""

    def __init__(
        self, host: str, port: int, *, local_address: str | None, max_connections: int
    ) -> None:
        self._host = host
        self._port = port
        self._local_address = local_address
        self._host_header = f"{host}:{port}"
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Connection] = []
        self._closed = False

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        json_body: Any = None,
        timeout: float,
    ) -> Answer:
        """The server's answer (any status), or RequestFailed."""
        message = self._message(method, path, headers or {}, json_body)
        connection: _Connection | None = None
        via: Via | None = None
        try:
            async with asyncio.timeout(timeout), self._slots:
                connection = self._idle_connection() or await self._connect()
                via = Via(connection.local, connection.answered > 0, time.monotonic())
                status, answer_headers, body = await connection.exchange(message)
        except TimeoutError as exc:
            if connection is not None:
                connection.close()  # its answer may still come: it cannot carry another
            raise RequestFailed("no answer within the timeout", timed_out=True, via=via) from exc
        except OSError as exc:  # ConnectionError included
            if connection is not None:
                connection.close()
            raise RequestFailed(str(exc) or type(exc).__name__, timed_out=False, via=via) from exc
        except BaseException:  # cancelled: the answer may still come on this connection
            if connection is not None:
                connection.close()
            raise
        assert via is not None
        if connection.open and not self._closed and _keeps_alive(answer_headers):
            self._idle.append(connection)
        else:
            connection.close()
        return Answer(status, answer_headers, body, via)

    @property
    def open_idle_connections(self) -> int:
        """Idle connections the server has not closed (as far as the event loop has seen)."""
        return sum(1 for connection in self._idle if connection.open)

    def _idle_connection(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()
            if connection.open:
                return connection
        return None

    async def _connect(self) -> _Connection:
        local = None if self._local_address is None else (self._local_address, 0)
        _transport, connection = await asyncio.get_running_loop().create_connection(
            _Connection, self._host, self._port, local_addr=local
        )
        return connection

    def _message(self, method: str, path: str, headers: Mapping[str, str], json_body: Any) -> bytes:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self._host_header}", "Accept: */*"]
        body = b""
        if json_body is not None:
            body = json.dumps(json_body).encode()
            lines.append("Content-Type: application/json")
        if body or method in {"POST", "PUT", "PATCH"}:
            lines.append(f"Content-Length: {len(body)}")
        lines += [f"{name}: {value}" for name, value in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    async def aclose(self) -> None:
        """Close the idle connections; those in use close when their request ends."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()


def _keeps_alive(headers: Mapping[str, str]) -> bool:
    return "close" not in headers.get("connection", "").lower()
