"""The two ceilings measured in every run: bcrypt's and the open-loop generator's own."""

from __future__ import annotations

import socket
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import bcrypt

from bench.scenarios import Runner
from bench.systems import REPO_ROOT, Endpoint
from devstack.ports import free_port, wait_until
from devstack.process import ManagedProcess
from services.auth.passwords import usable_cpus


@dataclass(frozen=True)
class BcryptCeiling:
    cost: int
    verify_seconds: float  # median of single verifies on one core
    cpus: int

    @property
    def per_second(self) -> float:
        """Verifies per second the machine can do: usable CPUs / one verify."""
        return self.cpus / self.verify_seconds


def bcrypt_ceiling(cost: int, rounds: int = 7) -> BcryptCeiling:
    password = b"A" * 44  # what Gatehouse hands bcrypt: base64 of an HMAC-SHA256
    hashed = bcrypt.hashpw(password, bcrypt.gensalt(cost))
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        bcrypt.checkpw(password, hashed)
        timings.append(time.perf_counter() - started)
    return BcryptCeiling(cost, statistics.median(timings), usable_cpus())


def bcrypt_on_every_cpu(cost: int, verifies_per_cpu: int = 4) -> float:
    """Verifies per second with one thread per usable CPU verifying at once (bcrypt releases
    the GIL): what the ceiling's "usable CPUs / one verify" becomes when every CPU hashes, with
    whatever else the machine runs meanwhile (a Gatehouse stack at rest: its heartbeats and
    polls) and however its cores share caches and clocks."""
    password = b"A" * 44
    hashed = bcrypt.hashpw(password, bcrypt.gensalt(cost))
    cpus = usable_cpus()
    start = threading.Barrier(cpus + 1)

    def verify() -> None:
        start.wait()
        for _ in range(verifies_per_cpu):
            bcrypt.checkpw(password, hashed)

    threads = [threading.Thread(target=verify, daemon=True) for _ in range(cpus)]
    for thread in threads:
        thread.start()
    start.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return cpus * verifies_per_cpu / (time.perf_counter() - started)


def generator_ceiling(runner: Runner, state_dir: Path, seconds: float) -> float:
    """Requests per second bench.loadgen completes against a server that does no work (the
    sink on the first core, the generator on the last, as in every scenario)."""
    port = free_port()
    sink = ManagedProcess(
        "sink", [sys.executable, "-m", "bench.sink", str(port)], state_dir / "sink.log",
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"}, cwd=REPO_ROOT,
    )  # fmt: skip
    cores = "0" if runner.cpu else None
    if cores is not None:
        sink.argv = ["taskset", "-c", cores, *sink.argv]
    sink.start()
    try:
        wait_until(
            lambda: _accepts(port), 10.0, f"the sink listens on port {port}",
            where=sink.log_path, abort=sink.exit_reason,
        )  # fmt: skip
        request = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
        result = runner.open(
            "loadgen", "sink", "generator-ceiling", Endpoint("127.0.0.1", port), [request],
            rate=0, connections=64, seconds=seconds, closed=True,
        )  # fmt: skip
    finally:
        sink.stop()
    return result.summary.rate


def _accepts(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1.0):
        return True
