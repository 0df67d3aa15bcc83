"""A small auth RPC server for the HTTP tier's tests: real framing and handshake, scripted answers.

Each call is answered by `handler(envelope)` (default: OK with an empty payload, which decodes
as every reply type), after `delay` seconds. It records the calls and connections it saw. The HTTP tier's health
pings (PING with trace id "health") are answered at once, without the handler or the delay,
and counted apart; METHOD_CANCELs are recorded apart and not answered. `pause()` holds every
answer, health pings' too, as a frozen (SIGSTOPped) process would, until `resume()`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from services.contract import auth_pb2 as pb
from services.foundation.discovery import ServiceRecord
from services.foundation.rpc.framing import FrameDecoder, encode_frame
from services.foundation.rpc.protocol import PROTOCOL_MAX, hello


@dataclass
class Answer:
    status: pb.Status = pb.STATUS_OK
    payload: bytes = b""
    reason: str = ""
    message: str = ""
    retry_after_seconds: int = 0


Handler = Callable[[pb.Envelope], Awaitable[Answer]]


async def answer_ok(envelope: pb.Envelope) -> Answer:
    return Answer()


class StubAuthServer:
    def __init__(
        self,
        handler: Handler = answer_ok,
        *,
        delay: float = 0.0,
        name: str = "stub",
        advertised_max: int = PROTOCOL_MAX,
        spoken_max: int = PROTOCOL_MAX,
        max_calls_in_flight: int = 0,
    ) -> None:
        """`advertised_max`: the protocol range's top in its discovery record; `spoken_max`:
        in its Hello (they differ only for a replica that misreports itself);
        `max_calls_in_flight`: the cap per connection its Hello advertises (not enforced)."""
        self.max_calls_in_flight = max_calls_in_flight
        self.most_calls_on_one_connection = 0
        self.handler = handler
        self.advertised_max = advertised_max
        self.spoken_max = spoken_max
        self.delay = delay
        self.name = name
        self.calls: list[pb.Envelope] = []
        self.cancels: list[int] = []  # call ids
        self.health_pings = 0
        self.health_ping_delay = 0.0  # an event loop too busy to answer pings in time
        self._unpaused = asyncio.Event()
        self._unpaused.set()
        self.connections_accepted = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.host = "127.0.0.1"
        self.port = 0

    async def start(self, port: int = 0) -> StubAuthServer:
        self._server = await asyncio.start_server(self._serve_connection, self.host, port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def record(self, started_at: str = "2026-11-23T00:00:00Z") -> ServiceRecord:
        return ServiceRecord(
            self.name, self.host, self.port, 1, self.advertised_max, "test", started_at
        )

    @property
    def open_connections(self) -> int:
        return len(self._writers)

    def calls_of(self, method: int) -> int:
        return sum(1 for call in self.calls if call.method == method)

    def pause(self) -> None:
        self._unpaused.clear()

    def resume(self) -> None:
        self._unpaused.set()

    def break_connections(self) -> None:
        """Reset every open connection, as a crashing replica would."""
        for writer in list(self._writers):
            writer.transport.abort()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self.break_connections()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.connections_accepted += 1
        self._writers.add(writer)
        decoder = FrameDecoder()
        greeted = False
        on_this_connection: set[asyncio.Task[None]] = set()
        try:
            while data := await reader.read(65536):
                for body in decoder.feed(data):
                    if not greeted:
                        writer.write(
                            encode_frame(
                                hello(
                                    f"stub-auth/{self.name}",
                                    protocol_max=self.spoken_max,
                                    max_calls_in_flight=self.max_calls_in_flight,
                                )
                            )
                        )
                        greeted = True
                        continue
                    envelope = pb.Envelope.FromString(body)
                    if envelope.method == pb.METHOD_CANCEL:
                        self.cancels.append(envelope.call_id)
                        continue
                    if envelope.method == pb.METHOD_PING and envelope.trace_id == "health":
                        self.health_pings += 1
                    else:
                        self.calls.append(envelope)
                    task = asyncio.create_task(self._answer(envelope, writer))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                    on_this_connection.add(task)
                    task.add_done_callback(on_this_connection.discard)
                    self.most_calls_on_one_connection = max(
                        self.most_calls_on_one_connection, len(on_this_connection)
                    )
        except ConnectionError:
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _answer(self, envelope: pb.Envelope, writer: asyncio.StreamWriter) -> None:
        if envelope.trace_id == "health" and envelope.method == pb.METHOD_PING:
            if self.health_ping_delay:
                await asyncio.sleep(self.health_ping_delay)
            answer = Answer()
        else:
            if self.delay:
                await asyncio.sleep(self.delay)
            answer = await self.handler(envelope)
        await self._unpaused.wait()
        if writer.is_closing():
            return
        reply = pb.Envelope(
            call_id=envelope.call_id,
            method=envelope.method,
            status=answer.status,
            payload=answer.payload,
            reason=answer.reason,
            message=answer.message,
            retry_after_seconds=answer.retry_after_seconds,
        )
        writer.write(encode_frame(reply.SerializeToString()))
