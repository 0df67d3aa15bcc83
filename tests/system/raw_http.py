"""A raw HTTP/1.1 client for hostile-client tests: it sends exactly the bytes it is told, when
it is told, and reads answers with a bounded wait."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

HOST = "127.0.0.1"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def error(self) -> tuple[int, str]:
        return self.status, self.json()["error"]["code"]


class RawConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, host: str = HOST, source: str | None = None) -> RawConnection:
        """A connection to `host`:`port`, from the address `source` (127.0.0.0/8 holds many:
        each one another client) when given."""
        local = (source, 0) if source is not None else None
        reader, writer = await asyncio.open_connection(host, port, local_addr=local)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self, timeout: float) -> Answer:
        """The next response (Content-Length framed), read within `timeout` seconds."""
        async with asyncio.timeout(timeout):
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return Answer(status, headers, body)

    async def closed_by_server(self, timeout: float) -> bool:
        """Whether the server closes the connection within `timeout` seconds (what it sends
        before closing is read and dropped). When it does, this side is closed too: a stream
        keeps its writing half open after the peer's end of stream."""
        try:
            async with asyncio.timeout(timeout):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except ConnectionError:
            pass
        self.close()
        return True

    def close(self) -> None:
        self.writer.close()


def request_head(
    method: str, path: str, headers: dict[str, str] | None = None, *, host: str = HOST
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
