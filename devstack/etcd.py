"""A single-member etcd 3.4 cluster with its own data directory."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from devstack.ports import HOST, free_port
from devstack.process import ManagedProcess
from devstack.server import ServerProcess

# Loopback only: never route through an http_proxy from the environment.
_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Etcd(ServerProcess):
    def __init__(
        self,
        state_dir: Path,
        *,
        name: str = "etcd",
        client_port: int | None = None,
        peer_port: int | None = None,
    ) -> None:
        self.name = name
        self.state_dir = state_dir
        self.client_port = client_port if client_port is not None else free_port()
        self.peer_port = peer_port if peer_port is not None else free_port()
        client_url = f"http://{HOST}:{self.client_port}"
        peer_url = f"http://{HOST}:{self.peer_port}"
        argv = [
            "etcd",
            "--name", "default",
            "--data-dir", str(state_dir / "data"),
            "--listen-client-urls", client_url,
            "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"default={peer_url}",
            "--initial-cluster-state", "new",  # ignored on restart: the data dir knows its cluster
            "--initial-cluster-token", "gatehouse-dev",
            # One member: a short election timeout makes it leader (and ready) in well under 1 s.
            "--heartbeat-interval", "50",
            "--election-timeout", "500",
            "--logger", "zap",
            "--log-outputs", "stderr",
        ]  # fmt: skip
        self.process = ManagedProcess(name, argv, state_dir / "etcd.log")

    @property
    def endpoint(self) -> str:
        return f"{HOST}:{self.client_port}"

    def start(self, timeout: float = 30.0) -> None:
        """Start, or start again on the same data dir and ports after `stop()`."""
        healthy = f'{self.name} reports {{"health":"true"}} on http://{self.endpoint}/health'
        self._start_and_wait(self.healthy, healthy, timeout)

    def healthy(self) -> bool:
        url = f"http://{self.endpoint}/health"
        with _direct.open(url, timeout=2.0) as response:
            body = json.loads(response.read())
        if body.get("health") == "true":
            return True
        raise RuntimeError(f"{url} answered {body}")
