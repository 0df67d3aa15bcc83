"""A server that answers every HTTP/1.1 request at once with the same small 200: it costs so
little that a load generator driving it measures its own ceiling.

Run as `python -m bench.sink PORT`; serves until SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import typing

import uvloop

RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok"
_REQUEST_END = b"\r\n\r\n"


class _Answer(asyncio.Protocol):
    """Answers each complete request head; the harness sends no request bodies here."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._pending = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream connection; uvloop's transports are not asyncio.Transport subclasses.
        self._transport = typing.cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        data = self._pending + data
        complete = data.count(_REQUEST_END)
        self._pending = data[data.rfind(_REQUEST_END) + len(_REQUEST_END) :] if complete else data
        if complete:
            self._transport.write(RESPONSE * complete)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    server = await loop.create_server(_Answer, "127.0.0.1", port, backlog=2048)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1])))
