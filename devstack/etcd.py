"""An etcd 3.4 member with its own data directory: a cluster of its own by default."""

from __future__ import annotations

import json
import shutil
import ssl
import urllib.request
from pathlib import Path

from devstack.certs import IssuedCertificate
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
        tls: IssuedCertificate | None = None,
        client_certificate: IssuedCertificate | None = None,
        auth_token_ttl: int | None = None,
        member: str = "default",
        initial_cluster: str | None = None,
    ) -> None:
        """`tls`: clients must speak TLS, verified with `tls.ca_path` (peers stay plaintext, on
        loopback). `client_certificate` (with `tls`): clients must also show a certificate of
        its CA, as this one (the health check's) is. `auth_token_ttl`: seconds an idle auth
        token lives (etcd's default 300), short to test that clients outlive their token.
        `initial_cluster`: etcd's `name=peer URL,...` of every member, `member` one of them
        (start them with `launch()`, then wait until each is `healthy()`: none is before a
        quorum runs); by default one member alone."""
        self.name = name
        self.tls = tls
        self.client_certificate = client_certificate
        self.state_dir = state_dir
        self.client_port = client_port if client_port is not None else free_port()
        self.peer_port = peer_port if peer_port is not None else free_port()
        self.scheme = "https" if tls is not None else "http"
        client_url = f"{self.scheme}://{HOST}:{self.client_port}"
        peer_url = f"http://{HOST}:{self.peer_port}"
        argv = [
            "etcd",
            "--name", member,
            "--data-dir", str(state_dir / "data"),
            "--listen-client-urls", client_url,
            "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", initial_cluster or f"{member}={peer_url}",
            "--initial-cluster-state", "new",  # ignored on restart: the data dir knows its cluster
            "--initial-cluster-token", "gatehouse-dev",
            # A short election timeout makes a leader (and a ready cluster) in well under 1 s.
            "--heartbeat-interval", "50",
            "--election-timeout", "500",
            "--logger", "zap",
            "--log-outputs", "stderr",
        ]  # fmt: skip
        if tls is not None:
            argv += ["--cert-file", str(tls.cert_path), "--key-file", str(tls.key_path)]
        if tls is not None and client_certificate is not None:
            argv += ["--client-cert-auth", "--trusted-ca-file", str(client_certificate.ca_path)]
            # etcd's JSON gateway (/v3/*) calls etcd itself with the server's certificate,
            # which the client CA did not sign: refused once a second, logged each time.
            argv += ["--enable-grpc-gateway=false"]
        if auth_token_ttl is not None:
            argv += ["--auth-token-ttl", str(auth_token_ttl)]
        self.process = ManagedProcess(name, argv, state_dir / "etcd.log")

    @property
    def endpoint(self) -> str:
        return f"{HOST}:{self.client_port}"

    def start(self, timeout: float = 30.0) -> None:
        """Start, or start again on the same data dir and ports after `stop()`."""
        healthy = f'{self.name} reports {{"health":"true"}} on {self.url}/health'
        self._start_and_wait(self.healthy, healthy, timeout)

    def restart_emptied(self) -> None:
        """Stop, lose every key, revision and user, and start afresh on the same ports: a
        member whose volume was replaced or wiped."""
        self.stop()
        shutil.rmtree(self.state_dir / "data")
        self.start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.endpoint}"

    def healthy(self) -> bool:
        url = f"{self.url}/health"
        opener = _direct
        if self.tls is not None:
            context = ssl.create_default_context(cafile=str(self.tls.ca_path))
            if self.client_certificate is not None:
                context.load_cert_chain(
                    self.client_certificate.cert_path, self.client_certificate.key_path
                )
            opener = urllib.request.build_opener(
                urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
            )
        with opener.open(url, timeout=2.0) as response:
            body = json.loads(response.read())
        if body.get("health") == "true":
            return True
        raise RuntimeError(f"{url} answered {body}")
