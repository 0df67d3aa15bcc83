"""A Redis server without persistence: a restart loses every key, as in production."""

from __future__ import annotations

import socket
from pathlib import Path

from devstack.ports import HOST, free_port
from devstack.process import ManagedProcess
from devstack.server import ServerProcess


class Redis(ServerProcess):
    def __init__(self, state_dir: Path, *, name: str = "redis", port: int | None = None) -> None:
        self.name = name
        self.state_dir = state_dir
        self.port = port if port is not None else free_port()
        argv = [
            "redis-server",
            "--port", str(self.port),
            "--bind", HOST,
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", str(state_dir),
        ]  # fmt: skip
        self.process = ManagedProcess(name, argv, state_dir / "redis.log")

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self, timeout: float = 30.0) -> None:
        self._start_and_wait(self.ping, f"{self.name} answers PING on {HOST}:{self.port}", timeout)

    def restart(self, timeout: float = 30.0) -> None:
        """Stop and start on the same port; all keys are gone afterwards."""
        self.stop()
        self.start(timeout)

    def ping(self) -> bool:
        with socket.create_connection((HOST, self.port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
        if reply.startswith(b"+PONG"):
            return True
        raise RuntimeError(f"PING answered {reply!r}")  # e.g. -LOADING while starting
