"""Open-loop HTTP/1.1 load: requests leave on a fixed schedule, whatever the server does.

Request i is due at `start + i / rate`. It goes out on an idle keep-alive connection, or waits
for one; either way its latency counts from the time it was due, so a server that stalls is
charged for every request it held up (no coordinated omission). The connections are opened
before the clock starts. A request without an answer after `timeout` seconds counts
as a timeout and its connection is replaced.

`--closed` sends the next request as soon as the previous one on the same connection is done
(latency from the send): used to measure this generator's own ceiling against `bench.sink`.

Run as `python -m bench.loadgen --spec spec.json --out result.json` (the harness pins it to a
core with taskset); the spec names the host, port, rate, duration, connections and the raw
requests to cycle through.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import ssl
import sys
import time
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path

import uvloop

_HEADER_END = b"\r\n\r\n"
_CONTENT_LENGTH = b"content-length:"
# How long the generator waits, after the schedule ends, for answers still in flight.
DRAIN_SECONDS = 5.0
TIMEOUT_STATUS = 0  # status recorded for a request that got no answer in time
CONNECTION_ERROR_STATUS = -1  # the connection broke before the answer came
# uvloop's loop.time() ticks in milliseconds: too coarse for latencies of a few hundred µs.
_now = time.perf_counter


@dataclass(frozen=True)
class LoadSpec:
    host: str
    port: int
    rate: float  # requests per second (ignored with closed=True)
    duration: float
    connections: int
    requests: list[str]  # raw HTTP/1.1 requests (latin-1 text), cycled through in order
    timeout: float = 10.0
    closed: bool = False
    tls: bool = False  # https (a remote ingress); certificates are verified

    @classmethod
    def from_json(cls, text: str) -> LoadSpec:
        return cls(**json.loads(text))


@dataclass
class LoadResult:
    """Per request: due time (s after start), latency (s) and status, in completion order."""

    started_at: float  # time.time() when the schedule started
    duration: float
    scheduled: int = 0
    due: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    status: list[int] = field(default_factory=list)
    lag_max: float = 0.0  # worst delay between a request's due time and its send (s)

    def record(self, due: float, latency: float, status: int) -> None:
        self.due.append(due)
        self.latency.append(latency)
        self.status.append(status)


class _Client(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self, generator: _Generator) -> None:
        self._generator = generator
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._expected: int | None = None  # total bytes of the response being read
        self._status = 0
        self.due = 0.0  # _now() when the current request was due
        self.sent = 0.0  # _now() when it was written
        self.busy = False
        self.connected: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream connection; uvloop's transports are not asyncio.Transport subclasses.
        self._transport = typing.cast(asyncio.Transport, transport)
        self.connected.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.connected.done():
            self.connected.set_exception(exc or ConnectionError("closed during connect"))
        self._transport = None
        self._generator.lost(self)

    def send(self, request: bytes, due: float, now: float) -> None:
        assert self._transport is not None
        self.busy = True
        self.due = due
        self.sent = now
        self._transport.write(request)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    @property
    def open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while self._complete_response():
            pass

    def _complete_response(self) -> bool:
        if self._expected is None:
            end = self._buffer.find(_HEADER_END)
            if end < 0:
                return False
            head = bytes(self._buffer[:end]).lower()
            self._status = int(head[9:12])
            start = head.find(_CONTENT_LENGTH)
            length = 0
            if start >= 0:
                stop = head.find(b"\r\n", start)
                length = int(head[start + len(_CONTENT_LENGTH) : stop if stop >= 0 else None])
            self._expected = end + len(_HEADER_END) + length
        if len(self._buffer) < self._expected:
            return False
        del self._buffer[: self._expected]
        self._expected = None
        self.busy = False
        self._generator.answered(self, self._status)
        return True


class _Generator:
    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self._loop = asyncio.get_running_loop()
        self._requests = [request.encode("latin-1") for request in spec.requests]
        self._next_request = 0
        self._idle: collections.deque[_Client] = collections.deque()
        self._waiting: collections.deque[float] = collections.deque()  # due times
        self._clients: list[_Client] = []
        self._start = 0.0
        self._stopping = False
        self.result = LoadResult(started_at=0.0, duration=spec.duration)

    async def connect(self) -> None:
        """Open every connection before the clock starts."""
        self._clients = await asyncio.gather(*(self._open() for _ in range(self.spec.connections)))

    async def _open(self) -> _Client:
        _, client = await self._loop.create_connection(
            lambda: _Client(self),
            self.spec.host,
            self.spec.port,
            ssl=ssl.create_default_context() if self.spec.tls else None,
        )
        await client.connected
        return client

    def _take_request(self) -> bytes:
        request = self._requests[self._next_request % len(self._requests)]
        self._next_request += 1
        return request

    async def run(self) -> LoadResult:
        self._idle.extend(self._clients)
        self._start = _now()
        self.result.started_at = time.time()
        if self.spec.closed:
            for client in list(self._idle):
                self._idle.remove(client)
                self._dispatch(client, self._start)
            await asyncio.sleep(self.spec.duration)
        else:
            await self._schedule()
        self._stopping = True
        deadline = _now() + min(DRAIN_SECONDS, self.spec.timeout)
        while _now() < deadline and (  # noqa: ASYNC110 - busy clients signal no event; bounded
            self._waiting or any(client.busy for client in self._clients)
        ):
            await asyncio.sleep(0.01)
        now = _now()
        for due in self._waiting:
            self.result.record(due - self._start, now - due, TIMEOUT_STATUS)
        for client in self._clients:
            if client.busy:
                self.result.record(client.due - self._start, now - client.due, TIMEOUT_STATUS)
                client.busy = False  # recorded once: closing must not count it as broken too
            client.close()
        return self.result

    async def _schedule(self) -> None:
        interval = 1.0 / self.spec.rate
        total = int(self.spec.rate * self.spec.duration)
        sent = 0
        while sent < total:
            now = _now()
            due_count = min(total, int((now - self._start) / interval) + 1)
            while sent < due_count:
                due = self._start + sent * interval
                sent += 1
                if self._idle:
                    self._dispatch(self._idle.popleft(), due)
                else:
                    self._waiting.append(due)
            self._expire(now)
            next_due = self._start + sent * interval
            # At least 1 ms: uvloop returns from shorter sleeps at once, and above ~2,000 req/s
            # the generator then spun a whole core that the system under test needed. Sends
            # are at most ~1 ms late and latency still counts from each request's due time.
            await asyncio.sleep(max(0.001, next_due - _now()))
        self.result.scheduled = total

    def _dispatch(self, client: _Client, due: float) -> None:
        now = _now()
        self.result.lag_max = max(self.result.lag_max, now - due)
        client.send(self._take_request(), due, now)

    def _expire(self, now: float) -> None:
        """Requests unanswered after the timeout: record them and replace their connection."""
        for client in self._clients:
            if client.busy and now - client.due > self.spec.timeout:
                client.busy = False
                self.result.record(client.due - self._start, now - client.due, TIMEOUT_STATUS)
                client.close()  # connection_lost replaces it

    def answered(self, client: _Client, status: int) -> None:
        now = _now()
        origin = client.sent if self.spec.closed else client.due
        self.result.record(client.due - self._start, now - origin, status)
        if self.spec.closed:
            self.result.scheduled += 1
            if not self._stopping:
                self._dispatch(client, now)
            return
        if self._waiting:
            self._dispatch(client, self._waiting.popleft())
        else:
            self._idle.append(client)

    def lost(self, client: _Client) -> None:
        if client in self._idle:
            self._idle.remove(client)
        if client.busy:
            client.busy = False
            now = _now()
            self.result.record(client.due - self._start, now - client.due, CONNECTION_ERROR_STATUS)
        if client in self._clients and not self._stopping:
            self._loop.create_task(self._replace(client))

    async def _replace(self, client: _Client) -> None:
        try:
            fresh = await self._open()
        except OSError:
            return  # the server is gone; the requests waiting will time out
        self._clients[self._clients.index(client)] = fresh
        if self._waiting:
            self._dispatch(fresh, self._waiting.popleft())
        elif not self._stopping:
            self._idle.append(fresh)


async def generate(spec: LoadSpec) -> LoadResult:
    generator = _Generator(spec)
    await generator.connect()
    return await generator.run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("--spec", type=Path, required=True, help="LoadSpec as JSON")
    parser.add_argument(
        "--out", type=Path, required=True, help="where to write the LoadResult JSON"
    )
    options = parser.parse_args(argv)
    spec = LoadSpec.from_json(options.spec.read_text())
    try:
        result = uvloop.run(generate(spec))
    except OSError as exc:
        print(f"loadgen: cannot reach {spec.host}:{spec.port}: {exc}", file=sys.stderr)
        return 1
    options.out.write_text(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
