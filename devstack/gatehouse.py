"""The Gatehouse processes themselves (auth replicas, HTTP tier) on top of `DataStores`.

`make run` and the end-to-end tests start them through this module, as real processes with
the environment a deployment would give them.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from devstack.etcd_auth import DEFAULT_PREFIXES, PREFIX_SETTINGS
from devstack.ports import HOST, free_port, wait_until
from devstack.process import ManagedProcess
from devstack.rpc_tls import RpcCertificates
from devstack.stack import DataStores, stop_all
from devstack.supervisor import Supervisor
from services.auth.tokens import generate_private_key_pem
from services.foundation.etcd_access import EtcdAccess
from services.foundation.rpc.client import ClientTls

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JWT_KEYS_PREFIX = "/gatehouse/jwt-keys/"
DEFAULT_ROTATION_PREFIX = "/gatehouse/keys/rotation/"
# Auth replicas that `make run` and `make bench` start on this machine.
LOCAL_AUTH_REPLICAS = 2
_MIGRATE_TIMEOUT = 120.0
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_status(url: str, timeout: float = 1.0) -> int:
    """The status code of GET `url`, or 0 when nothing answers."""
    try:
        with _NO_PROXY.open(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return 0


def hash_threads_per_replica(replicas: int) -> str:
    """GATEHOUSE_HASH_THREADS for each of `replicas` auth processes sharing this machine.

    The chart gives each replica as many threads as its own CPU limit. Here the replicas share
    the CPUs, and each one's default (every CPU) would run `replicas` times more hashing threads
    than there are CPUs. Side by side on 2 CPUs, that left the login rate where it was (31 per
    second either way) and doubled the p99 of reads during a login storm (9-10 ms against 5.5).
    """
    return str(max(1, len(os.sched_getaffinity(0)) // replicas))


def _new_peppers() -> str:
    return f"1:{secrets.token_urlsafe(32)}"


def _new_key() -> str:
    return secrets.token_urlsafe(48)


# The data stores' credentials among `DataStores.service_env()`: for the auth replicas alone.
_STORE_SECRETS = frozenset(
    {"GATEHOUSE_MYSQL_PRIMARY_DSN", "GATEHOUSE_MYSQL_REPLICA_DSNS", "GATEHOUSE_REDIS_URL"}
)


@dataclass
class Secrets:
    """Per-stack secrets, kept in the state folder so restarts keep tokens and hashes valid.
    A secret that an older state folder lacks is generated and saved on the next start."""

    jwt_private_key: str = field(default_factory=generate_private_key_pem)
    peppers: str = field(default_factory=_new_peppers)
    csrf_secret: str = field(default_factory=_new_key)
    device_cookie_secret: str = field(default_factory=_new_key)

    @classmethod
    def load_or_create(cls, path: Path) -> Secrets:
        stored = json.loads(path.read_text()) if path.exists() else {}
        known = {name: value for name, value in stored.items() if name in cls.__dataclass_fields__}
        loaded = cls(**known)
        if loaded.__dict__ != stored:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(loaded.__dict__))
            path.chmod(0o600)
        return loaded


def rotation_prefix_beside(env: dict[str, str]) -> str:
    """A stack under JWT key records of its own gets a rotation state of its own too, beside
    them (the default prefix when the keys prefix is the default)."""
    keys_prefix = env.get("GATEHOUSE_JWT_KEYS_PREFIX", DEFAULT_JWT_KEYS_PREFIX)
    if keys_prefix == DEFAULT_JWT_KEYS_PREFIX:
        return DEFAULT_ROTATION_PREFIX
    return keys_prefix.rstrip("/") + "-rotation/"


def etcd_prefixes(env: dict[str, str]) -> tuple[str, ...]:
    """The etcd prefixes a process with `env` uses, as PREFIX_SETTINGS orders them: its etcd
    user is granted these."""
    values = dict(zip(PREFIX_SETTINGS, DEFAULT_PREFIXES, strict=True))
    values["GATEHOUSE_JWT_ROTATION_PREFIX"] = rotation_prefix_beside(env)
    return tuple(env.get(name) or values[name] for name in PREFIX_SETTINGS)


def _never() -> bool:
    return False


@dataclass
class Service:
    """One Gatehouse process and the URL that tells whether it is ready; a wait for it ends
    once `stopping()` (the stack's: a Ctrl-C during start-up is not held up by it)."""

    process: ManagedProcess
    ready_url: str
    ports: dict[str, int]
    stopping: Callable[[], bool] = _never

    @property
    def name(self) -> str:
        return self.process.name

    def start(self, timeout: float = 30.0) -> None:
        self.process.start()
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 30.0) -> None:
        wait_until(
            lambda: http_status(self.ready_url) == 200,
            timeout,
            f"{self.name} answers 200 on {self.ready_url}",
            where=self.process.log_path,
            abort=self._why_not_ready,
        )

    def _why_not_ready(self) -> str | None:
        if self.stopping():
            return "the stack is stopping"
        return self.process.exit_reason()

    def terminate(self) -> None:
        """SIGTERM without waiting: the process drains and exits on its own."""
        self.process.terminate()


@dataclass
class Gatehouse:
    """Auth replicas and HTTP processes sharing one set of data stores and secrets.

    With a `supervisor`, every process started is restarted when it dies (`make run`);
    without one, a process killed stays dead until the caller starts it (the tests' faults).
    """

    stores: DataStores
    state_dir: Path
    settings: dict[str, str] = field(default_factory=dict)
    supervisor: Supervisor | None = None
    # Mutual TLS on the auth RPC, as in the cluster; False runs GATEHOUSE_RPC_TLS=plaintext.
    rpc_tls: bool = True
    auth: list[Service] = field(default_factory=list)
    http: list[Service] = field(default_factory=list)
    _started: dict[str, int] = field(default_factory=dict)
    _migrated: set[Path] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.secrets = Secrets.load_or_create(self.state_dir / "secrets.json")
        self.key_folder = self.state_dir / "jwt-keys"
        if not self.key_folder.exists():
            # The stack's first signing key; `gatehouse keys rotate` rotates to the next file.
            self.key_folder.mkdir(parents=True)
            first = self.key_folder / "key-1.pem"
            first.write_text(self.secrets.jwt_private_key)
            first.chmod(0o600)
        self.rpc_certificates = (
            RpcCertificates.issue(self.state_dir / "rpc-ca") if self.rpc_tls else None
        )

    def base_env(self, code_root: Path) -> dict[str, str]:
        """What every process of the stack gets; the stores' credentials go to the auth
        replicas only, as files (`start_auth`)."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("GATEHOUSE_")}
        env.update(
            (name, value)
            for name, value in self.stores.service_env().items()
            if name not in _STORE_SECRETS
        )
        env["PYTHONPATH"] = str(code_root)
        env.update(self.settings)
        return env

    def start_auth(
        self, extra: dict[str, str] | None = None, *, wait: bool = True, code_root: Path = REPO_ROOT
    ) -> Service:
        """Start one process; `code_root` runs another checkout of the code (compatibility tests)."""
        self.migrate(code_root)
        name = self._next_name("auth")
        rpc_port, ops_port = free_port(), free_port()
        env = self.base_env(code_root)
        env.update(
            GATEHOUSE_INSTANCE_ID=name,
            GATEHOUSE_AUTH_HOST=HOST,
            GATEHOUSE_AUTH_PORT=str(rpc_port),
            GATEHOUSE_OPS_PORT=str(ops_port),
            GATEHOUSE_JWT_KEYS_DIR=str(self.key_folder),
        )
        env.update(
            self._secret_files(
                {
                    "GATEHOUSE_PEPPERS": self.secrets.peppers,
                    "GATEHOUSE_DEVICE_COOKIE_SECRET": self.secrets.device_cookie_secret,
                }
                | {
                    name: value
                    for name, value in self.stores.service_env().items()
                    if name in _STORE_SECRETS
                },
                {**self.settings, **(extra or {})},
            )
        )
        if self.rpc_certificates is not None:
            env.update(self.rpc_certificates.auth_env())
        else:  # the gatehouse command's way in, as the chart's plaintext mode sets it
            # The replica makes the folder, its user's only.
            env["GATEHOUSE_OPERATOR_SOCKET"] = str(self.state_dir / "operator" / f"{name}.sock")
        env.update(extra or {})
        env.setdefault("GATEHOUSE_JWT_ROTATION_PREFIX", rotation_prefix_beside(env))
        env = {**env, **self.stores.tier_env("auth", etcd_prefixes(env)), **(extra or {})}
        service = self._launch(
            name,
            "services.auth",
            env,
            code_root,
            f"http://{HOST}:{ops_port}/readyz",
            {"rpc": rpc_port, "ops": ops_port},
            wait=wait,
        )
        self.auth.append(service)
        return service

    def migrate(self, code_root: Path = REPO_ROOT) -> None:
        """Apply `code_root`'s migrations as the migration user, once, as the chart's migration
        Job does: the auth replicas only have the application user, which cannot change the
        schema (their own migrations on start then find nothing to do)."""
        if code_root in self._migrated:
            return
        env = self.base_env(code_root)
        # Both names: a checkout older than GATEHOUSE_MYSQL_MIGRATION_DSN reads the primary's.
        env["GATEHOUSE_MYSQL_PRIMARY_DSN"] = self.stores.migration_dsn
        env["GATEHOUSE_MYSQL_MIGRATION_DSN"] = self.stores.migration_dsn
        result = subprocess.run(
            [sys.executable, "-m", "services.auth", "migrate"],
            env=env,
            cwd=code_root,
            capture_output=True,
            text=True,
            timeout=_MIGRATE_TIMEOUT,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"migrations as {self.stores.migration_user} failed with code"
                f" {result.returncode}: {result.stderr.strip()[-2000:]}"
            )
        self._migrated.add(code_root)

    def start_http(
        self,
        extra: dict[str, str] | None = None,
        *,
        port: int | None = None,
        ops_port: int | None = None,
        wait: bool = True,
        code_root: Path = REPO_ROOT,
    ) -> Service:
        """Start one process; `code_root` runs another checkout of the code (compatibility tests)."""
        name = self._next_name("http")
        port = port or free_port()
        ops_port = ops_port or free_port()
        env = self.base_env(code_root)
        env.update(
            GATEHOUSE_HTTP_HOST=HOST,
            GATEHOUSE_HTTP_PORT=str(port),
            GATEHOUSE_HTTP_OPS_PORT=str(ops_port),
            GATEHOUSE_METRICS_DIR=str(self.state_dir / f"{name}-metrics"),
        )
        env.update(
            self._secret_files(
                {"GATEHOUSE_CSRF_SECRET": self.secrets.csrf_secret},
                {**self.settings, **(extra or {})},
            )
        )
        if self.rpc_certificates is not None:
            env.update(self.rpc_certificates.http_env())
        env.update(extra or {})
        env = {**env, **self.stores.tier_env("http", etcd_prefixes(env)), **(extra or {})}
        service = self._launch(
            name,
            "services.http",
            env,
            code_root,
            # The pod's readiness, as the chart probes it: 200 once every worker is ready.
            f"http://{HOST}:{ops_port}/readyz",
            {"http": port, "ops": ops_port},
            wait=wait,
        )
        self.http.append(service)
        return service

    def _secret_files(self, secrets: dict[str, str], given: dict[str, str]) -> dict[str, str]:
        """`<VARIABLE>_FILE` for each secret, written into the state folder (its user's only), as
        the chart mounts them: no process's environment holds the stack's secrets. A secret
        `given` as a variable (a test's own peppers) or as a file of its own stays that."""
        folder = self.state_dir / "secrets"
        folder.mkdir(mode=0o700, exist_ok=True)
        files = {}
        for variable, value in secrets.items():
            if variable in given or f"{variable}_FILE" in given:
                continue
            path = folder / variable
            if not path.exists() or path.read_text() != value:
                path.touch(mode=0o600)
                path.write_text(value)
            files[f"{variable}_FILE"] = str(path)
        return files

    def _launch(
        self,
        name: str,
        module: str,
        env: dict[str, str],
        code_root: Path,
        ready_url: str,
        ports: dict[str, int],
        *,
        wait: bool,
    ) -> Service:
        """Start `python -m module` as `name`, logging to the state folder; with `wait`, until
        `ready_url` answers 200."""
        process = ManagedProcess(
            name,
            [sys.executable, "-m", module],
            self.state_dir / f"{name}.log",
            env=env,
            cwd=code_root,
        )
        service = Service(process, ready_url, ports, stopping=self._stopping)
        if wait:
            try:
                service.start()
            except BaseException:
                # Not in self.auth or self.http yet: stop() would not reach it.
                process.stop()
                raise
        else:
            service.process.start()
        if self.supervisor is not None:
            self.supervisor.watch(name, process, service.start, service.wait_ready)
        return service

    def _stopping(self) -> bool:
        return self.supervisor is not None and self.supervisor.stopping

    def _next_name(self, kind: str) -> str:
        self._started[kind] = self._started.get(kind, 0) + 1
        return f"{kind}-{self._started[kind]}"

    def tier_access(self, tier: str) -> EtcdAccess:
        """How a test acts in etcd as this stack's `tier` ("auth" or "http"), with its rights
        (the user granted this stack's prefixes)."""
        return self.stores.tier_access(tier, etcd_prefixes(self.base_env(REPO_ROOT)))

    def client_tls(self, operator: bool = False) -> ClientTls | None:
        """The TLS a direct RPC client of this stack's replicas needs (None in plaintext): the
        HTTP tier's identity, or the operator's."""
        if self.rpc_certificates is None:
            return None
        return self.rpc_certificates.client_tls(operator)

    def url(self, index: int = 0) -> str:
        return f"http://{HOST}:{self.http[index].ports['http']}"

    def start(self, auth_replicas: int, http_processes: int) -> None:
        """Start that many auth replicas and HTTP processes all at once, then wait until each
        is ready: one after another, each would wait out the others' start-up."""
        started = [self.start_auth(wait=False) for _ in range(auth_replicas)]
        started += [self.start_http(wait=False) for _ in range(http_processes)]
        for service in started:
            service.wait_ready()

    def stop(self) -> None:
        """Stop every process, all at once: each drains on its own (GATEHOUSE_DRAIN_DELAY)."""
        stop_all([service.process.stop for service in [*self.http, *self.auth]])
