"""A TCP proxy on 127.0.0.1 whose link to its target a test can cut, like a network partition.
A cut closes what is forwarded and blackholes what comes next: clients wait for their own
timeouts, as when a network drops packets. `first_reply_delay` holds back the first bytes the
target sends on each connection, like a slow link or a loaded server.

    proxy = await TcpProxy.start(target_host, target_port)
    proxy.port          # connect here instead of to the target
    proxy.connections   # how many connections were forwarded so far
    proxy.cut()         # forwarded connections are closed; new ones are accepted, unanswered
    proxy.restore()     # new connections are forwarded again; blackholed ones are closed
    proxy.freeze()      # forwarded connections go silent, left open; new ones are forwarded
    proxy.retarget(host, port)  # new connections go there (a failover moved the address)
    await proxy.close()
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from devstack.ports import HOST

_CHUNK = 65536
_CLOSE_TIMEOUT = 5.0


class TcpProxy:
    def __init__(
        self,
        server: asyncio.Server,
        target_host: str,
        target_port: int,
        first_reply_delay: float = 0.0,
    ) -> None:
        self._server = server
        self._target = (target_host, target_port)
        self._first_reply_delay = first_reply_delay
        self.connections = 0
        self._handlers: set[asyncio.Task[None]] = set()
        self._closed = asyncio.Event()  # ends the hold of first replies
        self._forwarded: set[asyncio.StreamWriter] = set()  # both ends of every link
        # Set while a link forwards; cleared by freeze() (a host gone, no RST: a half-open link).
        self._flowing: set[asyncio.Event] = set()
        self._restored = asyncio.Event()
        self._restored.set()

    @classmethod
    async def start(
        cls, target_host: str, target_port: int, *, first_reply_delay: float = 0.0
    ) -> TcpProxy:
        proxy: TcpProxy | None = None

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            assert proxy is not None, "connections are accepted after start() returned"
            handler = asyncio.current_task()
            assert handler is not None
            proxy._handlers.add(handler)
            try:
                await proxy._serve(reader, writer)
            finally:
                proxy._handlers.discard(handler)

        server = await asyncio.start_server(accept, HOST, 0)
        proxy = cls(server, target_host, target_port, first_reply_delay)
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

    def retarget(self, target_host: str, target_port: int) -> None:
        """New connections are forwarded to another server; those open stay with theirs, as
        when a failover moves an address (DNS, a Service) to the promoted server."""
        self._target = (target_host, target_port)

    def freeze(self) -> None:
        """The links forwarded so far stop forwarding, and stay open: their clients wait for
        their own timeouts, as with a host that vanished (a failover). New links forward."""
        for flowing in self._flowing:
            flowing.clear()

    async def close(self) -> None:
        """Stop accepting, close every connection and wait until each one's handler ended
        (the event loop of a test may end next: a handler still running would be cancelled)."""
        self._server.close()
        self._closed.set()
        for flowing in self._flowing:
            flowing.set()  # so that the frozen links' pipes see the cut and end
        self.cut()
        self.restore()  # closes the blackholed connections
        await self._server.wait_closed()
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=_CLOSE_TIMEOUT)

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
        self.connections += 1
        flowing = asyncio.Event()
        flowing.set()
        self._flowing.add(flowing)
        try:
            await asyncio.gather(
                _pipe(client_reader, target, flowing),
                _pipe(target_reader, client, flowing, self._hold_first_reply),
            )
        finally:
            self._forwarded.difference_update((client, target))
            self._flowing.discard(flowing)

    async def _hold_first_reply(self) -> None:
        if self._first_reply_delay:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), self._first_reply_delay)


async def _pipe(
    source: asyncio.StreamReader,
    destination: asyncio.StreamWriter,
    flowing: asyncio.Event,
    before_first: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Copy while `flowing` is set, until either side closes, then close the destination
    (which ends the other pipe); the first chunk once `before_first` returned."""
    with contextlib.suppress(OSError):
        if before_first is not None and (chunk := await source.read(_CHUNK)):
            await before_first()
            await flowing.wait()
            destination.write(chunk)
            await destination.drain()
        while chunk := await source.read(_CHUNK):
            await flowing.wait()
            destination.write(chunk)
            await destination.drain()
    destination.transport.abort()
