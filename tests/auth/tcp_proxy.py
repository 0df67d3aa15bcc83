"""A TCP proxy on 127.0.0.1 whose link to its target a test can cut, like a network partition.
A cut closes what is forwarded and blackholes what comes next: clients wait for their own
timeouts, as when a network drops packets.

    proxy = await TcpProxy.start(target_host, target_port)
    proxy.port          # connect here instead of to the target
    proxy.cut()         # forwarded connections are closed; new ones are accepted, unanswered
    proxy.restore()     # new connections are forwarded again; blackholed ones are closed
    await proxy.close()
"""

from __future__ import annotations

import asyncio
import contextlib

from devstack.ports import HOST

_CHUNK = 65536


class TcpProxy:
    def __init__(self, server: asyncio.Server, target_host: str, target_port: int) -> None:
        self._server = server
        self._target = (target_host, target_port)
        self._forwarded: set[asyncio.StreamWriter] = set()  # both ends of every link
        self._restored = asyncio.Event()
        self._restored.set()

    @classmethod
    async def start(cls, target_host: str, target_port: int) -> TcpProxy:
        proxy: TcpProxy | None = None

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            assert proxy is not None, "connections are accepted after start() returned"
            await proxy._serve(reader, writer)

        server = await asyncio.start_server(accept, HOST, 0)
        proxy = cls(server, target_host, target_port)
        return proxy

    @property
    def port(self) -> int:
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def cut(self) -> None:
        self._restored.clear()
        for writer in list(self._forwarded):
            writer.transport.abort()

    def restore(self) -> None:
        self._restored.set()

    async def close(self) -> None:
        self._server.close()
        self.cut()
        self.restore()  # closes the blackholed connections
        await self._server.wait_closed()

    async def _serve(
        self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        if not self._restored.is_set():
            await self._restored.wait()
            client.transport.abort()
            return
        try:
            target_reader, target = await asyncio.open_connection(*self._target)
        except OSError:
            client.transport.abort()
            return
        if not self._restored.is_set():  # cut while connecting
            client.transport.abort()
            target.transport.abort()
            return
        self._forwarded.update((client, target))
        try:
            await asyncio.gather(_pipe(client_reader, target), _pipe(target_reader, client))
        finally:
            self._forwarded.difference_update((client, target))


async def _pipe(source: asyncio.StreamReader, destination: asyncio.StreamWriter) -> None:
    """Copy until either side closes, then close the destination (which ends the other pipe)."""
    with contextlib.suppress(OSError):
        while chunk := await source.read(_CHUNK):
            destination.write(chunk)
            await destination.drain()
    destination.transport.abort()
