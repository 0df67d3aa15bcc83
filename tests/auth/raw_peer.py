"""A hand-driven RPC client, for sending bytes no well-behaved client would."""

from __future__ import annotations

import asyncio
import contextlib

from services.contract import auth_pb2 as pb
from services.foundation.rpc.client import ClientTls
from services.foundation.rpc.framing import FrameDecoder, encode_frame
from services.foundation.rpc.protocol import hello


class RawPeer:
    """A hand-driven socket client, for sending bytes no well-behaved client would."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder(1 << 20)
        self.frames: list[bytes] = []

    @classmethod
    async def open(
        cls,
        port: int,
        *,
        handshake: bool = True,
        tls: ClientTls | None = None,
        source: str | None = None,
    ) -> RawPeer:
        """Connect (over mutual TLS with `tls`; from the address `source`, another client,
        when given) and, with `handshake`, say hello."""
        reader, writer = await asyncio.open_connection(
            "127.0.0.1",
            port,
            ssl=tls.context if tls else None,
            server_hostname=tls.server_name if tls else None,
            local_addr=(source, 0) if source else None,
        )
        peer = cls(reader, writer)
        if handshake:
            writer.write(encode_frame(hello("raw")))
            server_hello = pb.Hello.FromString(await peer.next_frame())
            assert server_hello.error == ""
        return peer

    async def next_frame(self) -> bytes:
        while not self.frames:
            data = await asyncio.wait_for(self.reader.read(65536), 5.0)
            if not data:
                raise ConnectionResetError("closed")
            self.frames.extend(self.decoder.feed(data))
        return self.frames.pop(0)

    async def closed_by_server(self) -> bool:
        """True once the server closes the socket (within 5 s); this side is closed then too
        (a stream keeps its writing half open after the peer's end of stream)."""
        try:
            while True:
                data = await asyncio.wait_for(self.reader.read(65536), 5.0)
                if not data:
                    break
                self.frames.extend(self.decoder.feed(data))
        except ConnectionResetError:
            pass
        await self.close()
        return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()
