"""What recording session use (`last_seen_at`) costs the read path: auth CPU per profile read
with GATEHOUSE_RECORD_LAST_SEEN on and off, side by side in one run.

    python -m bench.session_recording [--sessions 400] [--rounds 3] [--seconds 15]

One set of data stores; two auth replicas, one recording and one not, each alone under its own
discovery prefix with its own HTTP process (one worker). Rounds alternate between the two, so
outside load on the machine lands on both alike. Each round reads GET /api/v1/me with many
sessions (each noted once a minute at most: a round sees each session's first note) and divides
the auth process's CPU seconds (/proc) by the reads served, also net of the process's idle CPU
measured just before; it also counts the last_seen flushes, the only writes the recording adds. Bounded: rounds x seconds of load, then it stops
every process it started.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.procstats import read_process
from devstack.gatehouse import Gatehouse, Service
from devstack.stack import DataStores

PASSWORD = "password1"
CONCURRENCY = 16
# Seconds of no load before each round: the auth process's own background work (heartbeats,
# polls) over that time is subtracted, so a slow round on a busy machine is not charged for it.
IDLE_SECONDS = 5.0


@dataclass
class Side:
    name: str
    auth: Service
    http: Service
    cpu_per_read_us: list[float] = field(default_factory=list)
    net_cpu_per_read_us: list[float] = field(default_factory=list)
    reads: int = 0
    flushes: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http.ports['http']}"


def auth_cpu_seconds(side: Side) -> float:
    reading = read_process(side.auth.process.pid)
    if reading is None:
        raise RuntimeError(f"{side.auth.name} is gone; see {side.auth.process.log_path}")
    return reading.cpu_seconds


def flushes_written(side: Side) -> float:
    text = httpx.get(f"http://127.0.0.1:{side.auth.ports['ops']}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith('gatehouse_auth_last_seen_flushes_total{outcome="written"}')
    )


async def sessions_of(side: Side, count: int) -> list[str]:
    async with httpx.AsyncClient(base_url=side.url, timeout=30, trust_env=False) as client:
        username = f"bench{uuid.uuid4().hex[:12]}"
        created = await client.post(
            "/api/v1/users", json={"username": username, "password": PASSWORD}
        )
        created.raise_for_status()
        tokens = []
        for _ in range(count):
            login = await client.post(
                "/api/v1/sessions", json={"username": username, "password": PASSWORD}
            )
            login.raise_for_status()
            tokens.append(login.json()["token"])
        return tokens


async def read_for(side: Side, tokens: list[str], seconds: float) -> int:
    """GET /api/v1/me with the tokens in turn for `seconds`; the reads answered 200."""
    deadline = time.monotonic() + seconds
    served = 0
    async with httpx.AsyncClient(base_url=side.url, timeout=10, trust_env=False) as client:

        async def reader(offset: int) -> None:
            nonlocal served
            index = offset
            while time.monotonic() < deadline:
                token = tokens[index % len(tokens)]
                index += CONCURRENCY
                answer = await client.get(
                    "/api/v1/me", headers={"Authorization": f"Bearer {token}"}
                )
                if answer.status_code != 200:
                    raise RuntimeError(f"{side.name}: a read answered {answer.status_code}")
                served += 1

        await asyncio.gather(*(reader(offset) for offset in range(CONCURRENCY)))
    return served


async def measure(sides: list[Side], sessions: int, rounds: int, seconds: float) -> None:
    tokens = {side.name: await sessions_of(side, sessions) for side in sides}
    for side in sides:  # warm the caches and connections: not measured
        await read_for(side, tokens[side.name], 2.0)
    flushes_before = {side.name: flushes_written(side) for side in sides}
    for round_number in range(rounds):
        for side in sides if round_number % 2 == 0 else sides[::-1]:
            idle_from = auth_cpu_seconds(side)
            await asyncio.sleep(IDLE_SECONDS)
            idle_rate = (auth_cpu_seconds(side) - idle_from) / IDLE_SECONDS
            before, started = auth_cpu_seconds(side), time.monotonic()
            reads = await read_for(side, tokens[side.name], seconds)
            used = auth_cpu_seconds(side) - before
            net = used - idle_rate * (time.monotonic() - started)
            side.reads += reads
            side.cpu_per_read_us.append(used / reads * 1e6)
            side.net_cpu_per_read_us.append(net / reads * 1e6)
            print(
                f"round {round_number + 1} {side.name}: {reads} reads, "
                f"{used / reads * 1e6:.1f} us auth CPU per read, {net / reads * 1e6:.1f} net of idle",
                flush=True,
            )
    await asyncio.sleep(1.5)  # one more flush interval, and /metrics catching up
    for side in sides:
        side.flushes = flushes_written(side) - flushes_before[side.name]


def report(sides: list[Side]) -> None:
    print(
        "\n| last_seen recording | reads | auth CPU per read (us), mean | min..max "
        "| net of idle, mean | min..max | flushes |"
    )
    print("|---|---|---|---|---|---|---|")
    for side in sides:
        raw, net = side.cpu_per_read_us, side.net_cpu_per_read_us
        print(
            f"| {side.name} | {side.reads} | {statistics.mean(raw):.1f} "
            f"| {min(raw):.1f}..{max(raw):.1f} | {statistics.mean(net):.1f} "
            f"| {min(net):.1f}..{max(net):.1f} | {side.flushes:g} |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.session_recording", description=__doc__)
    parser.add_argument("--sessions", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15.0)
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gatehouse-bench-") as folder:
        state = Path(folder)
        stores = DataStores.start(state / "stores", report=lambda line: None)
        system = Gatehouse(
            stores,
            state / "gatehouse",
            settings={"GATEHOUSE_BCRYPT_COST": "4", "GATEHOUSE_HTTP_WORKERS": "1"},
        )
        try:
            sides = []
            for name, record in (("on", "true"), ("off", "false")):
                prefix = {"GATEHOUSE_DISCOVERY_PREFIX": f"/bench-{uuid.uuid4().hex}/auth/"}
                auth = system.start_auth({**prefix, "GATEHOUSE_RECORD_LAST_SEEN": record})
                sides.append(Side(name, auth, system.start_http(prefix)))
            asyncio.run(measure(sides, options.sessions, options.rounds, options.seconds))
            report(sides)
        finally:
            system.stop()
            stores.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
