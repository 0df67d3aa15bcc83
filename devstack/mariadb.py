"""A MariaDB server in a state folder, and GTID replication between two of them."""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pymysql
import pymysql.connections
import pymysql.cursors

from devstack.certs import IssuedCertificate
from devstack.ports import HOST, free_port, wait_until
from devstack.process import ManagedProcess
from devstack.server import ServerProcess
from services.auth.store.bootstrap import (
    Account,
    Granted,
    bootstrap_statements,
    granted_queries,
)

# AF_UNIX paths are limited to 108 bytes; deeper state folders get their socket under /tmp.
_MAX_SOCKET_PATH = 100


class MariaDB(ServerProcess):
    """One mariadbd, with its data directory, socket and log under `state_dir`.

    With `tls`, TCP clients must use TLS (require_secure_transport: a plaintext login is
    refused) and the server presents that certificate; the unix socket stays plaintext.
    """

    def __init__(
        self,
        name: str,
        state_dir: Path,
        *,
        server_id: int,
        read_only: bool = False,
        port: int | None = None,
        tls: IssuedCertificate | None = None,
    ) -> None:
        self.name = name
        self.tls = tls
        self.state_dir = state_dir
        self.server_id = server_id
        self.read_only = read_only
        self.port = port if port is not None else free_port()
        self.datadir = state_dir / "data"
        # Own tmpdir: two servers (or two install-db runs) sharing /tmp clash on the names of
        # their internal temporary tables ("Error on delete of '/tmp/#sql-temptable-...'").
        self.tmpdir = state_dir / "tmp"
        self.socket_path = self._socket_path()
        self.install_log = state_dir / "install.log"
        self.process = ManagedProcess(name, self._server_argv(), state_dir / "mariadbd.log")

    @property
    def host(self) -> str:
        return HOST

    def _socket_path(self) -> Path:
        wanted = self.state_dir / "mysqld.sock"
        if len(str(wanted)) <= _MAX_SOCKET_PATH:
            return wanted
        # Made by start() and removed by stop(), so that no run leaves folders behind in /tmp.
        folder = f"devstack-mariadb-{secrets.token_hex(6)}"
        return Path(tempfile.gettempdir()) / folder / "mysqld.sock"

    @property
    def _socket_folder_of_its_own(self) -> Path | None:
        folder = self.socket_path.parent
        return None if folder == self.state_dir else folder

    def _server_argv(self) -> list[str]:
        argv = [
            "mariadbd",
            "--no-defaults",
            "--user=root",  # mariadbd refuses to run as root without it
            f"--datadir={self.datadir}",
            f"--tmpdir={self.tmpdir}",
            f"--port={self.port}",
            f"--socket={self.socket_path}",
            f"--pid-file={self.state_dir / 'mariadbd.pid'}",
            f"--bind-address={HOST}",
            f"--server-id={self.server_id}",
            "--log-bin=mysql-bin",
            "--relay-log=relay-bin",
            "--binlog-format=ROW",
            "--log-slave-updates",
            "--gtid-strict-mode=ON",
            "--skip-name-resolve",
            "--max-connections=500",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_unicode_ci",
            "--slave-net-timeout=10",
            # Dev stack only: trade durability on power loss for fast commits and start.
            "--innodb-flush-log-at-trx-commit=2",
            "--sync-binlog=0",
            *_INNODB_SIZES,
        ]
        if self.read_only:
            argv.append("--read-only=ON")  # the replication SQL thread is exempt
        if self.tls is not None:
            argv += [
                f"--ssl-ca={self.tls.ca_path}",
                f"--ssl-cert={self.tls.cert_path}",
                f"--ssl-key={self.tls.key_path}",
                "--require-secure-transport=ON",
            ]
        return argv

    def initialize(self) -> None:
        """Create the system tables once; a data directory that exists is kept."""
        if (self.datadir / "mysql").is_dir():
            return
        if shutil.which("mariadb-install-db") is None or shutil.which("mariadbd") is None:
            raise RuntimeError(
                "mariadb-install-db/mariadbd not found on PATH; run `make system-deps` "
                "(scripts/install-system-deps.sh)"
            )
        self.datadir.mkdir(parents=True, exist_ok=True)
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        argv = [
            "mariadb-install-db",
            "--no-defaults",
            "--user=root",
            f"--datadir={self.datadir}",
            f"--tmpdir={self.tmpdir}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--skip-name-resolve",
            *_INNODB_SIZES,  # so the first start does not have to resize the redo log
        ]
        with open(self.install_log, "wb") as log:
            result = subprocess.run(
                argv, check=False, stdin=subprocess.DEVNULL, stdout=log, stderr=log, timeout=120
            )
        if result.returncode != 0:
            raise RuntimeError(
                f"mariadb-install-db for {self.name} failed with code {result.returncode}; "
                f"see {self.install_log}"
            )

    def start(self, timeout: float = 60.0) -> None:
        if self.process.starts and not (self.datadir / "mysql").is_dir():
            # A restart (the supervisor's) must not create an empty server in place of the
            # one that died: it would answer, be reported back, and hold no database, no user
            # and no replication account; every write would fail from then on.
            raise RuntimeError(
                f"{self.name}: its data directory {self.datadir} is gone (removed under the "
                "running stack?); not starting an empty server in its place"
            )
        self.initialize()
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        if self._socket_folder_of_its_own is not None:
            self._socket_folder_of_its_own.mkdir(mode=0o700, exist_ok=True)
        accepts = f"{self.name} accepts root connections on {self.socket_path}"
        self._start_and_wait(self.ping, accepts, timeout)

    def stop(self, timeout: float = 30.0) -> int | None:
        code = self.process.stop(timeout)
        if self._socket_folder_of_its_own is not None:
            shutil.rmtree(self._socket_folder_of_its_own, ignore_errors=True)
        return code

    def kill(self) -> int | None:
        return self.process.kill()

    def ping(self) -> bool:
        # PyMySQL leaks its unix socket when the connect itself fails (the server not
        # listening yet), so that is probed first with a socket closed here either way.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(5)
            probe.connect(str(self.socket_path))
        with self.connect() as conn:
            conn.ping(reconnect=False)
        return True

    def connect(
        self,
        user: str = "root",
        password: str = "",
        database: str | None = None,
        *,
        tcp: bool = False,
    ) -> pymysql.connections.Connection:
        """Root (or any user) over the unix socket, or TCP as the services connect.

        Autocommit, with timeouts on connect, reads and writes.
        """
        where: dict[str, Any] = (
            {"host": HOST, "port": self.port} if tcp else {"unix_socket": str(self.socket_path)}
        )
        if tcp and self.tls is not None:
            where["ssl"] = {"ca": str(self.tls.ca_path)}
        return pymysql.connect(
            **where,
            user=user,
            password=password,
            database=database,
            autocommit=True,
            connect_timeout=5,
            read_timeout=30,
            write_timeout=30,
            charset="utf8mb4",
        )

    def execute(self, sql: str, args: Any = None) -> list[dict[str, Any]]:
        """Run one statement as root; rows as dicts (empty for statements without results)."""
        with self.connect() as conn, conn.cursor(pymysql.cursors.DictCursor) as cursor:
            try:
                cursor.execute(sql, args)
            except pymysql.MySQLError as exc:
                raise RuntimeError(
                    f"{self.name}: {sql!r} failed: {exc}; see {self.log_path}"
                ) from exc
            return list(cursor.fetchall())

    def variable(self, name: str) -> str:
        """A global system variable, e.g. variable('gtid_binlog_pos')."""
        rows = self.execute(f"SELECT @@GLOBAL.{name} AS value")
        return str(rows[0]["value"])

    def bootstrap(self, database: str, *accounts: Account) -> None:
        """The database and `accounts` with exactly their privileges, by the bootstrap the
        chart's hook Job runs (services/auth/store/bootstrap.py), as root on the socket."""
        granted = Granted(*[self.execute(sql, args) for sql, args in granted_queries(database)])
        for sql, args in bootstrap_statements(database, HOST, accounts, granted):
            self.execute(sql, args or None)

    def dsn(self, user: str, password: str, database: str) -> str:
        """The services' DSN; with TLS on, verifying this server's certificate and address."""
        credentials = f"{quote(user, safe='')}:{quote(password, safe='')}"
        options = ""
        if self.tls is not None:
            options = f"?ssl-mode=verify-identity&ssl-ca={quote(str(self.tls.ca_path))}"
        return f"mysql://{credentials}@{HOST}:{self.port}/{database}{options}"


_INNODB_SIZES = ("--innodb-buffer-pool-size=64M", "--innodb-log-file-size=48M")


class MariaDBReplication:
    """GTID replication from `primary` to `replica` (MASTER_USE_GTID=slave_pos)."""

    def __init__(
        self, primary: MariaDB, replica: MariaDB, user: str = "repl", password: str = "repl-dev"
    ) -> None:
        self.primary = primary
        self.replica = replica
        self.user = user
        self.password = password

    def start(self, timeout: float = 30.0) -> None:
        """Create the replication user on the primary and start the replica's threads.

        Call it on fresh servers before anything else is written, so that every later write,
        the app database and user included, reaches the replica through the binlog.
        """
        self.primary.execute(
            "CREATE USER IF NOT EXISTS %s@'127.0.0.1' IDENTIFIED BY %s", (self.user, self.password)
        )
        self.primary.execute("GRANT REPLICATION SLAVE ON *.* TO %s@'127.0.0.1'", (self.user,))
        tls = self.primary.tls
        self.replica.execute(
            "CHANGE MASTER TO MASTER_HOST=%s, MASTER_PORT=%s, MASTER_USER=%s, MASTER_PASSWORD=%s, "
            "MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1"
            + (", MASTER_SSL=1, MASTER_SSL_VERIFY_SERVER_CERT=1, MASTER_SSL_CA=%s" if tls else ""),
            (HOST, self.primary.port, self.user, self.password)
            + ((str(tls.ca_path),) if tls else ()),
        )
        self.replica.execute("START SLAVE")
        wait_until(
            self._threads_running,
            timeout,
            f"{self.replica.name} replicates from {self.primary.name} "
            "(Slave_IO_Running and Slave_SQL_Running = Yes)",
            where=self.replica.log_path,
            abort=self.replica.process.exit_reason,
        )
        self.wait_caught_up(timeout)

    def status(self) -> dict[str, Any]:
        rows = self.replica.execute("SHOW SLAVE STATUS")
        if not rows:
            raise RuntimeError(f"{self.replica.name} is not configured as a replica")
        return rows[0]

    def _threads_running(self) -> bool:
        status = self.status()
        if status["Slave_IO_Running"] == "Yes" and status["Slave_SQL_Running"] == "Yes":
            return True
        raise RuntimeError(
            f"Slave_IO_Running={status['Slave_IO_Running']} "
            f"(Last_IO_Error: {status['Last_IO_Error'] or '-'}), "
            f"Slave_SQL_Running={status['Slave_SQL_Running']} "
            f"(Last_SQL_Error: {status['Last_SQL_Error'] or '-'})"
        )

    def primary_position(self) -> str:
        return self.primary.variable("gtid_binlog_pos")

    def applied_position(self) -> str:
        """What the replica's SQL thread has applied."""
        return self.replica.variable("gtid_slave_pos")

    def received_position(self) -> str:
        """What the replica's IO thread has fetched into its relay log (applied or not)."""
        return str(self.status()["Gtid_IO_Pos"])

    def wait_caught_up(self, timeout: float = 30.0) -> None:
        """Wait until the replica has applied everything the primary has binlogged so far."""
        target = self.primary_position()

        def caught_up() -> bool:
            applied = self.applied_position()
            if gtid_covers(applied, target):
                return True
            status = self.status()
            raise RuntimeError(
                f"replica applied {applied or '(nothing)'}, primary is at {target}; "
                f"Slave_SQL_Running={status['Slave_SQL_Running']} "
                f"(Last_SQL_Error: {status['Last_SQL_Error'] or '-'})"
            )

        wait_until(
            caught_up,
            timeout,
            f"{self.replica.name} caught up with {self.primary.name} at GTID {target or '(empty)'}",
            where=self.replica.log_path,
            abort=self.replica.process.exit_reason,
        )

    def wait_received(self, timeout: float = 30.0) -> None:
        """Wait until the replica's IO thread has fetched everything the primary binlogged."""
        target = self.primary_position()
        wait_until(
            lambda: gtid_covers(self.received_position(), target),
            timeout,
            f"{self.replica.name} received (not necessarily applied) GTID {target or '(empty)'}",
            where=self.replica.log_path,
            abort=self.replica.process.exit_reason,
        )

    def stop_sql_thread(self) -> None:
        """Replica keeps fetching but stops applying: reads from it go stale on purpose."""
        self.replica.execute("STOP SLAVE SQL_THREAD")

    def start_sql_thread(self) -> None:
        self.replica.execute("START SLAVE SQL_THREAD")


def gtid_covers(have: str, want: str) -> bool:
    """True when GTID position `have` includes every domain's sequence number of `want`."""
    have_seq = _seq_by_domain(have)
    return all(have_seq.get(domain, -1) >= seq for domain, seq in _seq_by_domain(want).items())


def _seq_by_domain(position: str) -> dict[int, int]:
    result: dict[int, int] = {}
    for listed in position.split(","):
        item = listed.strip()
        if not item:
            continue
        domain, _server, seq = item.split("-")
        result[int(domain)] = int(seq)
    return result
