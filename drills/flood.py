"""Connection floods: idle keep-alive connections that never send a byte, and slowloris ones
that send a request head one line at a time, each from its own loopback address range."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

OPEN_BATCH = 100  # connections opened at once
SLOWLORIS_PERIOD = 1.0  # seconds between two header lines of a slowloris connection
# 127.0.1.x for idle ones, 127.0.2.x for slowloris: apart from the load's 127.0.0.x.
IDLE_NETWORK, SLOWLORIS_NETWORK = "127.0.1", "127.0.2"


class ConnectionFlood:
    def __init__(self, host: str, port: int, *, idle: int, slowloris: int) -> None:
        self._host = host
        self._port = port
        self._idle = idle
        self._slowloris = slowloris
        self._writers: list[asyncio.StreamWriter] = []
        self._dribblers: list[asyncio.Task[None]] = []

    @property
    def open_count(self) -> int:
        return sum(1 for w in self._writers if not w.is_closing())

    async def _connect(self, source: str) -> asyncio.StreamWriter | None:
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(self._host, self._port, local_addr=(source, 0)), 5.0
            )
        except (OSError, TimeoutError):
            return None  # refused or full: the flood is as big as the server lets it be
        return writer

    async def open(self) -> None:
        for start in range(0, self._idle, OPEN_BATCH):
            batch = range(start, min(self._idle, start + OPEN_BATCH))
            sources = [f"{IDLE_NETWORK}.{2 + index % 250}" for index in batch]
            opened = await asyncio.gather(*(self._connect(source) for source in sources))
            self._writers += [w for w in opened if w is not None]
        for index in range(self._slowloris):
            source = f"{SLOWLORIS_NETWORK}.{2 + index % 250}"
            self._dribblers.append(asyncio.create_task(self._dribble(source)))

    async def _dribble(self, source: str) -> None:
        """One slowloris connection at a time from `source`: a header line a second, until the
        server closes it; then the next one."""
        while True:
            writer = await self._connect(source)
            if writer is None:
                await asyncio.sleep(SLOWLORIS_PERIOD)  # the next attempt's pace
                continue
            self._writers.append(writer)
            try:
                writer.write(b"GET /api/v1/me HTTP/1.1\r\nHost: drill\r\n")
                line = 0
                while not writer.is_closing():
                    await asyncio.sleep(SLOWLORIS_PERIOD)  # the attack's own pace
                    line += 1
                    writer.write(f"X-Slow-{line}: 1\r\n".encode())
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()
                self._writers.remove(writer)

    async def close(self) -> None:
        for task in self._dribblers:
            task.cancel()
        for task in self._dribblers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for writer in self._writers:
            writer.close()
        self._writers.clear()


async def hold(host: str, port: int, idle: int, slowloris: int, seconds: float) -> None:
    """Open the flood, say how many connections it opened, hold it `seconds`, close it."""
    flood = ConnectionFlood(host, port, idle=idle, slowloris=slowloris)
    await flood.open()
    print(f"opened {flood.open_count}", flush=True)
    await asyncio.sleep(seconds)  # the flood's duration
    await flood.close()


def main(argv: list[str] | None = None) -> int:
    """Run as its own process, so the flood's CPU is not charged to the drill's load clients."""
    parser = argparse.ArgumentParser(prog="python -m drills.flood", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--idle", type=int, required=True)
    parser.add_argument("--slowloris", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    options = parser.parse_args(argv)
    asyncio.run(hold("127.0.0.1", options.port, options.idle, options.slowloris, options.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
