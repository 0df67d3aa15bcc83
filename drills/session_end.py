"""How long an ended session keeps working: DELETE /api/v1/sessions/{id}, then the time until
every HTTP process refuses its token, p50/p99 over many tries.

    python -m drills.session_end [--tries 100]

A fresh local stack (drills.stack: two auth replicas) with a second HTTP process; two workers
each. Each try opens a session, reads with it through both HTTP processes (so every layer holds
it as live: Redis, the auth replicas' reads), ends it with another session of the same user,
and from the moment the 204 arrives polls GET /api/v1/me with the ended token on both HTTP
processes at once until each answers 401. The try's time is the slower process's. Bounded: a
try gives up after GIVE_UP seconds (counted as a miss), and the stack is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from drills.stack import drill_settings, fresh_stack

PASSWORD = "password1"
GIVE_UP = 5.0  # seconds; the contract is 1 s
REQUIRED = 1.0


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def log_in(client: httpx.AsyncClient, username: str) -> str:
    login = await client.post("/api/v1/sessions", json={"username": username, "password": PASSWORD})
    login.raise_for_status()
    token: str = login.json()["token"]
    return token


async def refused_after(client: httpx.AsyncClient, token: str, since: float) -> float:
    """Seconds from `since` until `client`'s process answers 401 for `token`."""
    while time.monotonic() - since < GIVE_UP:
        if (await client.get("/api/v1/me", headers=bearer(token))).status_code == 401:
            return time.monotonic() - since
    return float("inf")


async def one_try(clients: list[httpx.AsyncClient], username: str) -> float:
    keeper = await log_in(clients[0], username)
    victim = await log_in(clients[1], username)
    for client in clients:
        for _ in range(2):  # each read may go to either worker and either auth replica
            assert (await client.get("/api/v1/me", headers=bearer(victim))).status_code == 200
    listed = (await clients[0].get("/api/v1/sessions", headers=bearer(victim))).json()
    (victim_id,) = [session["id"] for session in listed["sessions"] if session["current"]]
    ended = await clients[0].delete(f"/api/v1/sessions/{victim_id}", headers=bearer(keeper))
    answered = time.monotonic()
    if ended.status_code != 204:
        raise RuntimeError(f"DELETE answered {ended.status_code}: {ended.text}")
    times = await asyncio.gather(*(refused_after(client, victim, answered) for client in clients))
    await clients[0].delete("/api/v1/sessions/current", headers=bearer(keeper))
    return max(times)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def measure(urls: list[str], tries: int) -> list[float]:
    clients = [httpx.AsyncClient(base_url=url, timeout=10, trust_env=False) for url in urls]
    try:
        username = f"drill{uuid.uuid4().hex[:12]}"
        created = await clients[0].post(
            "/api/v1/users", json={"username": username, "password": PASSWORD}
        )
        created.raise_for_status()
        return [await one_try(clients, username) for _ in range(tries)]
    finally:
        for client in clients:
            await client.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m drills.session_end", description=__doc__)
    parser.add_argument("--tries", type=int, default=100)
    options = parser.parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="gatehouse-drill-") as folder,
        fresh_stack(Path(folder), drill_settings(), report=print) as system,
    ):
        system.start_http()
        urls = [system.url(index) for index in range(len(system.http))]
        times = asyncio.run(measure(urls, options.tries))
    finite = [seconds for seconds in times if seconds != float("inf")]
    late = sum(1 for seconds in times if seconds > REQUIRED)
    print(
        f"ended session refused by both HTTP processes ({len(times)} tries): "
        f"p50 {percentile(finite, 0.5) * 1000:.1f} ms, p99 {percentile(finite, 0.99) * 1000:.1f} ms,"
        f" max {max(finite) * 1000:.1f} ms, mean {statistics.mean(finite) * 1000:.1f} ms;"
        f" over {REQUIRED:g} s: {late}"
    )
    return 1 if late else 0


if __name__ == "__main__":
    raise SystemExit(main())
