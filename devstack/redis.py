"""A Redis server without persistence: a restart loses every key, as in production."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from urllib.parse import quote

from devstack.certs import IssuedCertificate
from devstack.ports import HOST, free_port
from devstack.process import ManagedProcess
from devstack.server import ServerProcess


class Redis(ServerProcess):
    """With `tls`, the one port speaks TLS only (`port 0`, `tls-port`): a plaintext client gets
    nothing. Clients need no certificate of their own."""

    def __init__(
        self,
        state_dir: Path,
        *,
        name: str = "redis",
        port: int | None = None,
        tls: IssuedCertificate | None = None,
    ) -> None:
        self.name = name
        self.state_dir = state_dir
        self.port = port if port is not None else free_port()
        self.tls = tls
        if tls is None:
            listen = ["--port", str(self.port)]
        else:
            listen = [
                "--port", "0",
                "--tls-port", str(self.port),
                "--tls-cert-file", str(tls.cert_path),
                "--tls-key-file", str(tls.key_path),
                "--tls-ca-cert-file", str(tls.ca_path),
                "--tls-auth-clients", "no",
            ]  # fmt: skip
        argv = [
            "redis-server",
            *listen,
            "--bind", HOST,
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", str(state_dir),
        ]  # fmt: skip
        self.process = ManagedProcess(name, argv, state_dir / "redis.log")

    @property
    def url(self) -> str:
        if self.tls is None:
            return f"redis://{HOST}:{self.port}/0"
        return f"rediss://{HOST}:{self.port}/0?ssl_ca_certs={quote(str(self.tls.ca_path))}"

    def start(self, timeout: float = 30.0) -> None:
        self._start_and_wait(self.ping, f"{self.name} answers PING on {HOST}:{self.port}", timeout)

    def restart(self, timeout: float = 30.0) -> None:
        """Stop and start on the same port; all keys are gone afterwards."""
        self.stop()
        self.start(timeout)

    def ping(self) -> bool:
        with socket.create_connection((HOST, self.port), timeout=1.0) as plain:
            if self.tls is None:
                reply = _ping(plain)
            else:
                context = ssl.create_default_context(cafile=str(self.tls.ca_path))
                with context.wrap_socket(plain, server_hostname=HOST) as secure:
                    reply = _ping(secure)
        if reply.startswith(b"+PONG"):
            return True
        raise RuntimeError(f"PING answered {reply!r}")  # e.g. -LOADING while starting


def _ping(sock: socket.socket) -> bytes:
    sock.sendall(b"PING\r\n")
    return sock.recv(64)
