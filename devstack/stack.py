"""`DataStores`: every data store Gatehouse needs, started the same way for `make run` and tests."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import aetcd

from devstack.certs import CertificateAuthority
from devstack.etcd import Etcd
from devstack.etcd_auth import DEFAULT_PREFIXES, SecuredEtcd
from devstack.mariadb import MariaDB, MariaDBReplication
from devstack.redis import Redis
from devstack.supervisor import Supervisor
from services.auth.store.bootstrap import APP_PRIVILEGES, MIGRATION_PRIVILEGES, Account
from services.foundation.etcd import parse_endpoint
from services.foundation.etcd_access import EtcdAccess, EtcdClient

APP_DATABASE = "gatehouse"
# The auth service's user (rows only) and the migrations' (schema changes too), made by the
# bootstrap the chart runs (services/auth/store/bootstrap.py).
APP_USER = "gatehouse"
APP_PASSWORD = "gatehouse-dev"
MIGRATION_USER = "gatehouse_ddl"
MIGRATION_PASSWORD = "gatehouse-ddl-dev"

Report = Callable[[str], None]


def print_report(line: str) -> None:
    print(f"devstack: {line}", flush=True)


class _Steps:
    """Thread-safe progress lines with timings: `starting X ...` then `X ready in 1.2 s`."""

    def __init__(self, report: Report) -> None:
        self._report = report
        self._lock = threading.Lock()

    def say(self, line: str) -> None:
        with self._lock:
            self._report(line)

    def run(self, label: str, where: str, step: Callable[[], None]) -> None:
        self.say(f"starting {label} on {where} ...")
        started = time.monotonic()
        step()
        self.say(f"{label} ready in {time.monotonic() - started:.1f} s")


def stop_all(stoppers: list[Callable[[], object]]) -> None:
    """Call every stopper at once, each in a thread of its own; an error is printed, not raised,
    so that one failure leaves nothing else running."""
    if not stoppers:
        return
    with ThreadPoolExecutor(len(stoppers), thread_name_prefix="devstack-stop") as pool:
        futures = [pool.submit(stop) for stop in stoppers]
    for future in futures:
        error = future.exception()
        if error is not None:
            print(f"devstack: error while stopping: {error}", file=sys.stderr)


@dataclass
class DataStores:
    state_dir: Path
    primary: MariaDB
    replica: MariaDB
    replication: MariaDBReplication
    redis: Redis
    etcd: Etcd
    # Set when etcd serves TLS with auth on (`etcd_auth`): the users' variables come from it.
    etcd_security: SecuredEtcd | None = None
    app_user: str = APP_USER
    app_password: str = APP_PASSWORD
    app_database: str = APP_DATABASE
    migration_user: str = MIGRATION_USER
    migration_password: str = MIGRATION_PASSWORD

    @classmethod
    def start(
        cls,
        state_dir: Path,
        *,
        report: Report = print_report,
        tls: bool = False,
        etcd_auth: bool = False,
    ) -> DataStores:
        """Start all stores on free ports under `state_dir`; on failure stop what started.

        With `tls`, MariaDB and Redis accept TLS clients only, with certificates of a throwaway
        CA in `state_dir`/ca, and the DSNs and URL verify them. With `etcd_auth`, etcd serves
        TLS only with auth on, bootstrapped as the chart does (devstack/etcd_auth.py).
        """
        state_dir.mkdir(parents=True, exist_ok=True)
        security = SecuredEtcd(state_dir / "etcd-secured") if etcd_auth else None
        server_cert = CertificateAuthority(state_dir / "ca").issue("data-stores") if tls else None
        primary = MariaDB(
            "mariadb primary", state_dir / "mariadb-primary", server_id=1, tls=server_cert
        )
        replica = MariaDB(
            "mariadb replica",
            state_dir / "mariadb-replica",
            server_id=2,
            read_only=True,
            tls=server_cert,
        )
        stores = cls(
            state_dir=state_dir,
            primary=primary,
            replica=replica,
            replication=MariaDBReplication(primary, replica),
            redis=Redis(state_dir / "redis", tls=server_cert),
            etcd=security.etcd if security is not None else Etcd(state_dir / "etcd"),
            etcd_security=security,
        )
        try:
            stores._start(_Steps(report))
        except BaseException:
            stores.stop()
            raise
        return stores

    def _start(self, steps: _Steps) -> None:
        started = time.monotonic()
        servers: list[tuple[str, str, Callable[[], None]]] = [
            ("mariadb primary", f"{self.primary.host}:{self.primary.port}", self.primary.start),
            ("mariadb replica", f"{self.replica.host}:{self.replica.port}", self.replica.start),
            ("redis", self.redis.url, self.redis.start),
            ("etcd", self.etcd.url, self.etcd.start),
        ]
        # Mostly waiting on child processes: threads overlap the waits on 2 cores.
        with ThreadPoolExecutor(max_workers=len(servers), thread_name_prefix="devstack") as pool:
            futures = [pool.submit(steps.run, *server) for server in servers]
            errors = [f.exception() for f in futures]
        failures = [error for error in errors if error is not None]
        if failures:
            details = "\n".join(f"  - {error}" for error in failures)
            raise RuntimeError(f"{len(failures)} data store(s) did not start:\n{details}")

        if self.etcd_security is not None:
            steps.run("etcd users and roles", self.etcd.url, self.etcd_security.bootstrap)
        steps.run(
            "replication primary -> replica",
            f"127.0.0.1:{self.primary.port} -> 127.0.0.1:{self.replica.port}",
            self.replication.start,
        )

        def app_database() -> None:
            # Written on the primary only: the replica gets database and user by replication.
            self.create_database(self.app_database)
            self.replication.wait_caught_up()
            for server in (self.primary, self.replica):
                try:
                    with server.connect(
                        self.app_user, self.app_password, self.app_database, tcp=True
                    ):
                        pass
                except Exception as exc:
                    raise RuntimeError(
                        f"{self.app_user} cannot log into {server.name} over TCP: {exc}; "
                        f"see {server.log_path}"
                    ) from exc

        steps.run(
            f"database `{self.app_database}`, users `{self.app_user}` and `{self.migration_user}`",
            "primary",
            app_database,
        )
        took = time.monotonic() - started
        steps.say(f"data stores ready in {took:.1f} s (state in {self.state_dir})")

    def supervise(self, supervisor: Supervisor) -> None:
        """Have `supervisor` restart any store that dies, on its port and data directory.

        The replica keeps its replication settings in its data directory and resumes from its
        GTID position; the services reconnect to each store on their own.
        """
        for store in (self.primary, self.replica, self.redis, self.etcd):
            supervisor.watch(store.name, store.process, store.start)

    def stop(self) -> None:
        """Stop every store (in parallel); safe to call twice or after a failed start."""
        stop_all([self.replica.stop, self.primary.stop, self.redis.stop, self.etcd.stop])

    def create_database(self, database: str) -> None:
        """`database` on the primary, usable by the application and migration users with
        their privileges only (the bootstrap the chart runs); idempotent."""
        self.primary.bootstrap(
            database,
            Account(self.app_user, self.app_password, APP_PRIVILEGES),
            Account(self.migration_user, self.migration_password, MIGRATION_PRIVILEGES),
        )

    def app_dsn(self, database: str, *, replica: bool = False) -> str:
        """The auth service's DSN of `database` (the application user)."""
        server = self.replica if replica else self.primary
        return server.dsn(self.app_user, self.app_password, database)

    def migration_dsn_of(self, database: str) -> str:
        """The migrations' DSN of `database` on the primary (the migration user)."""
        return self.primary.dsn(self.migration_user, self.migration_password, database)

    @property
    def primary_dsn(self) -> str:
        return self.app_dsn(self.app_database)

    @property
    def replica_dsn(self) -> str:
        return self.app_dsn(self.app_database, replica=True)

    @property
    def migration_dsn(self) -> str:
        return self.migration_dsn_of(self.app_database)

    @property
    def redis_url(self) -> str:
        return self.redis.url

    @property
    def etcd_endpoint(self) -> str:
        return self.etcd.endpoint

    def service_env(self) -> dict[str, str]:
        """The variables Gatehouse processes read to find these stores."""
        return {
            "GATEHOUSE_MYSQL_PRIMARY_DSN": self.primary_dsn,
            "GATEHOUSE_MYSQL_REPLICA_DSNS": self.replica_dsn,  # comma-separated when several
            "GATEHOUSE_REDIS_URL": self.redis_url,
            "GATEHOUSE_ETCD_ENDPOINTS": self.etcd_endpoint,  # comma-separated when several
        } | ({} if self.etcd_security is None else self.etcd_security.tls_env())

    def tier_env(self, tier: str, prefixes: tuple[str, ...] = DEFAULT_PREFIXES) -> dict[str, str]:
        """The etcd user of `tier` ("auth" or "http") when etcd auth is on, granted `prefixes`
        (as PREFIX_SETTINGS orders them); else nothing."""
        if self.etcd_security is None:
            return {}
        return self.etcd_security.client_env(self._tier_user(tier, prefixes))

    def tier_access(self, tier: str, prefixes: tuple[str, ...] = DEFAULT_PREFIXES) -> EtcdAccess:
        """How a test acts as `tier` ("auth" or "http") in etcd, with that tier's rights."""
        if self.etcd_security is None:
            return self.etcd_access()
        return self.etcd_security.access(self._tier_user(tier, prefixes))

    def _tier_user(self, tier: str, prefixes: tuple[str, ...]) -> str:
        assert self.etcd_security is not None
        auth_user, http_user = self.etcd_security.users_for(prefixes)
        return auth_user if tier == "auth" else http_user

    def etcd_access(self, user: str = "root") -> EtcdAccess:
        """How a test or a tool reaches etcd as `user` (anyone when auth is off)."""
        if self.etcd_security is None:
            return EtcdAccess(endpoints=(self.etcd_endpoint,))
        return self.etcd_security.access(user)

    def etcd_client(self, user: str = "root", timeout: int = 5) -> aetcd.Client:
        """An etcd client as `user` (root sets tests up); close it after use."""
        host, port = parse_endpoint(self.etcd_endpoint)
        return EtcdClient(self.etcd_access(user), host, port, timeout=timeout)

    def describe(self) -> Iterator[tuple[str, str, Path]]:
        """(what, address, log file) of each store, for the `make run` table."""
        yield "mariadb primary", self.primary_dsn, self.primary.log_path
        yield "mariadb replica", self.replica_dsn, self.replica.log_path
        yield "redis", self.redis_url, self.redis.log_path
        yield "etcd", self.etcd.url, self.etcd.log_path
