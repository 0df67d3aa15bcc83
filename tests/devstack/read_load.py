"""A steady, bounded read load on a local stack: GET /api/v1/me at a fixed rate.

Used by the supervision tests, and runnable to measure what a fault costs:

    python -m tests.devstack.read_load http://127.0.0.1:8000 --rate 100 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import httpx

# Every request is bounded: one that takes longer counts as failed.
REQUEST_TIMEOUT = 10.0


@dataclass
class Reads:
    sent: int = 0
    statuses: Counter[str] = field(default_factory=Counter)

    @property
    def failed(self) -> int:
        return sum(count for status, count in self.statuses.items() if status != "200")

    def summary(self) -> str:
        by_status = ", ".join(f"{status}: {n}" for status, n in sorted(self.statuses.items()))
        return f"{self.failed} of {self.sent} reads failed ({by_status})"


async def session_token(client: httpx.AsyncClient) -> str:
    """A new user's token, signing up and logging in."""
    credentials = {"username": f"r{uuid.uuid4().hex[:12]}", "password": "password1"}
    created = await client.post("/api/v1/users", json=credentials)
    created.raise_for_status()
    login = await client.post("/api/v1/sessions", json=credentials)
    login.raise_for_status()
    return str(login.json()["token"])


async def steady_reads(
    client: httpx.AsyncClient,
    token: str,
    rate: float,
    stop: asyncio.Event,
    *,
    max_reads: int,
    reads: Reads | None = None,
) -> Reads:
    """Send `rate` reads a second (open loop: a slow answer does not slow the schedule) until
    `stop` is set or `max_reads` were sent; returns once every read has its answer."""
    reads = reads or Reads()
    headers = {"Authorization": f"Bearer {token}"}

    async def one() -> None:
        try:
            response = await client.get("/api/v1/me", headers=headers, timeout=REQUEST_TIMEOUT)
            reads.statuses[str(response.status_code)] += 1
        except httpx.HTTPError as exc:
            reads.statuses[type(exc).__name__] += 1

    started = time.monotonic()
    pending: set[asyncio.Task[None]] = set()
    while not stop.is_set() and reads.sent < max_reads:
        pause = started + reads.sent / rate - time.monotonic()
        if pause > 0:
            try:
                await asyncio.wait_for(stop.wait(), pause)
                break
            except TimeoutError:
                pass
        task = asyncio.create_task(one())
        pending.add(task)
        task.add_done_callback(pending.discard)
        reads.sent += 1
    await asyncio.gather(*pending)
    return reads


async def _main(url: str, rate: float, seconds: float) -> None:
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=url, trust_env=False, limits=limits) as client:
        token = await session_token(client)
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(seconds, stop.set)
        reads = await steady_reads(client, token, rate, stop, max_reads=int(rate * seconds) + 1)
    print(reads.summary())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    options = parser.parse_args()
    asyncio.run(_main(options.url, options.rate, options.seconds))
