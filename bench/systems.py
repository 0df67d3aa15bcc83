"""The systems under test, each as real processes on 127.0.0.1 with 2 HTTP worker processes.

- Gatehouse, started by devstack exactly as `make run` starts it: two auth replicas on one
  seeded database and one HTTP process, under Granian or Hypercorn, the auth RPC over mutual
  TLS (and a second, plaintext one beside it for the TLS cost, bench.tls_compare).
- The bare Starlette endpoint (bench.reference.bare) under the same server and worker count,
  from the project's own interpreter, so its Starlette and server are the very same versions.
- fastapi-users (bench.reference.peer_app) from its own virtualenv, on the same MariaDB.
"""

from __future__ import annotations

import json
import secrets
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from bench.seed import SeedManifest, ours_database, peer_database
from devstack.gatehouse import (
    LOCAL_AUTH_REPLICAS,
    Gatehouse,
    Secrets,
    Service,
    hash_threads_per_replica,
    http_status,
)
from devstack.ports import HOST, free_port, wait_until
from devstack.process import ManagedProcess
from devstack.stack import DataStores
from services.auth.tokens import generate_private_key_pem
from services.foundation.rpc.tls_settings import PLAINTEXT

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVERS = ("granian", "hypercorn")
HTTP_WORKERS = 2


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    tls: bool = False

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"


def server_argv(python: Path | str, server: str, app: str, port: int) -> list[str]:
    """Serve the ASGI `app` ("module:attribute") as services.http serves Gatehouse."""
    if server == "granian":
        return [
            str(python), "-m", "granian", "--interface", "asgi", "--workers", str(HTTP_WORKERS),
            "--loop", "uvloop", "--no-ws", "--log-level", "warning", "--host", HOST,
            "--port", str(port), app,
        ]  # fmt: skip
    if server == "hypercorn":
        return [
            str(python), "-m", "hypercorn", "--workers", str(HTTP_WORKERS),
            "--worker-class", "uvloop", "--bind", f"{HOST}:{port}", "--log-level", "warning", app,
        ]  # fmt: skip
    raise ValueError(f"unknown server {server!r}; use one of {', '.join(SERVERS)}")


class ReferenceServer:
    """One reference app under one server; ready once `probe_path` answers at all."""

    def __init__(
        self, name: str, argv_for_port: list[str], port: int, log: Path, env: dict[str, str]
    ) -> None:
        self.endpoint = Endpoint(HOST, port)
        self.process = ManagedProcess(name, argv_for_port, log, env=env, cwd=REPO_ROOT)

    def start(self, probe_path: str, timeout: float = 60.0) -> Endpoint:
        self.process.start()
        wait_until(
            lambda: http_status(self.endpoint.url + probe_path) != 0,
            timeout,
            f"{self.process.name} answers on {self.endpoint.url}{probe_path}",
            where=self.process.log_path,
            abort=self.process.exit_reason,
        )
        return self.endpoint

    def stop(self) -> None:
        self.process.stop()


def bare_server(server: str, state_dir: Path) -> ReferenceServer:
    port = free_port()
    return ReferenceServer(
        f"starlette ({server})",
        server_argv(sys.executable, server, "bench.reference.bare:app", port),
        port,
        state_dir / f"starlette-{server}.log",
        {"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
    )


def peer_server(
    server: str, python: Path, stores: DataStores, users: int, manifest: SeedManifest,
    jwt_secret: str, state_dir: Path,
) -> ReferenceServer:  # fmt: skip
    port = free_port()
    address = f"{stores.app_user}:{stores.app_password}@{HOST}:{stores.primary.port}"
    env = {
        "PYTHONPATH": str(REPO_ROOT),
        "PATH": "/usr/bin:/bin",
        "BENCH_PEER_DATABASE_URL": f"mysql+aiomysql://{address}/{peer_database(users)}",
        "BENCH_PEER_JWT_SECRET": jwt_secret,
        "BENCH_PEER_BCRYPT_COST": str(manifest.bcrypt_cost),
    }
    return ReferenceServer(
        f"fastapi-users ({server})",
        server_argv(python, server, "bench.reference.peer_app:app", port),
        port,
        state_dir / f"fastapi-users-{server}-{users}.log",
        env,
    )


class GatehouseUnderTest:
    """Gatehouse on the seeded stores: the auth replicas follow the table size under test."""

    # Production defaults except what the bench needs (the seed's cost, a quick drain) and what
    # replicas sharing one machine need (as `make run`): hashing threads for their CPU share.
    SETTINGS: ClassVar[dict[str, str]] = {
        "GATEHOUSE_HTTP_WORKERS": str(HTTP_WORKERS),
        "GATEHOUSE_HASH_THREADS": hash_threads_per_replica(LOCAL_AUTH_REPLICAS),
        "GATEHOUSE_DRAIN_DELAY": "0.5",
    }

    def __init__(
        self, stores: DataStores, state_dir: Path, manifest: SeedManifest, *, rpc_tls: bool,
        jwt_private_key: str | None = None, etcd_prefix: str | None = None,
    ) -> None:  # fmt: skip
        """`rpc_tls`: the auth RPC over mutual TLS, else plaintext (said explicitly either way,
        whatever devstack's default). Stacks side by side share `jwt_private_key` (tokens the
        bench mints pass both) and each keeps its etcd records under its own `etcd_prefix`."""
        self.stores = stores
        # The seed's hashes were made with its pepper: the replicas must hold the same one.
        secrets_path = state_dir / "secrets.json"
        secrets_path.parent.mkdir(parents=True, exist_ok=True)
        # The bench mints tokens with this run's key: the key folder must hold it alone.
        shutil.rmtree(state_dir / "jwt-keys", ignore_errors=True)
        secrets_path.write_text(
            json.dumps(
                {
                    "jwt_private_key": jwt_private_key or generate_private_key_pem(),
                    "peppers": manifest.pepper,
                }
            )
        )
        settings = {**self.SETTINGS, "GATEHOUSE_BCRYPT_COST": str(manifest.bcrypt_cost)}
        if not rpc_tls:
            settings["GATEHOUSE_RPC_TLS"] = PLAINTEXT
        if etcd_prefix is not None:
            settings["GATEHOUSE_DISCOVERY_PREFIX"] = f"{etcd_prefix}services/auth/"
            settings["GATEHOUSE_JWT_KEYS_PREFIX"] = f"{etcd_prefix}jwt-keys/"
        self.system = Gatehouse(stores, state_dir, settings=settings, rpc_tls=rpc_tls)
        self.users: int | None = None
        self.http: Service | None = None

    @property
    def secrets(self) -> Secrets:
        return self.system.secrets

    def serve_database(self, users: int) -> None:
        """Two auth replicas serving the seeded table of `users` users."""
        if self.users == users:
            return
        for replica in self.system.auth:
            replica.process.stop()
        self.system.auth.clear()
        database = ours_database(users)
        self.system.settings["GATEHOUSE_MYSQL_PRIMARY_DSN"] = self.stores.app_dsn(database)
        self.system.settings["GATEHOUSE_MYSQL_REPLICA_DSNS"] = self.stores.app_dsn(
            database, replica=True
        )
        for _ in range(LOCAL_AUTH_REPLICAS):
            self.system.start_auth()
        self.users = users
        if self.http is not None:  # wait until its workers know the new replicas
            self.http.wait_ready()

    def start_http(self, server: str) -> Endpoint:
        self.stop_http()
        self.http = self.system.start_http({"GATEHOUSE_HTTP_SERVER": server})
        return Endpoint(HOST, self.http.ports["http"])

    def stop_http(self) -> None:
        if self.http is not None:
            self.http.process.stop()
            self.system.http.remove(self.http)
            self.http = None

    def auth_metrics_urls(self) -> list[str]:
        return [f"http://{HOST}:{replica.ports['ops']}/metrics" for replica in self.system.auth]

    def processes(self) -> dict[str, int]:
        named = {service.name: service.process.pid for service in self.system.auth}
        if self.http is not None:
            named[self.http.name] = self.http.process.pid
        return named

    def stop(self) -> None:
        self.system.stop()


def new_jwt_secret() -> str:
    return secrets.token_urlsafe(32)
