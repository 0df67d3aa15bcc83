"""The dev stack against the real servers: replication, lag on demand, restarts, process control."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pymysql
import pytest
import redis

from devstack import DataStores
from devstack.mariadb import MariaDB, gtid_covers
from devstack.ports import free_port, wait_until, wait_until_async
from devstack.process import ManagedProcess
from devstack.redis import Redis

REPO_ROOT = Path(__file__).resolve().parents[2]
_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def connect_dsn(dsn: str) -> pymysql.connections.Connection:
    """Connect the way the services will: from the DSN string alone."""
    url = urlsplit(dsn)
    assert url.scheme == "mysql"
    return pymysql.connect(
        host=url.hostname,
        port=url.port or 3306,
        user=unquote(url.username or ""),
        password=unquote(url.password or ""),
        database=url.path.lstrip("/"),
        autocommit=True,
        connect_timeout=5,
        read_timeout=10,
        write_timeout=10,
    )


def query(dsn: str, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
    with connect_dsn(dsn) as conn, conn.cursor() as cursor:
        cursor.execute(sql, args)
        return list(cursor.fetchall())


@pytest.fixture
def probe_table(data_stores: DataStores) -> str:
    query(
        data_stores.migration_dsn,
        "CREATE TABLE IF NOT EXISTS devstack_probe ("
        " id BIGINT AUTO_INCREMENT PRIMARY KEY, note VARCHAR(64) NOT NULL UNIQUE)",
    )
    data_stores.replication.wait_caught_up(timeout=10)
    return "devstack_probe"


def has_note(dsn: str, note: str) -> bool:
    return bool(query(dsn, "SELECT 1 FROM devstack_probe WHERE note = %s", (note,)))


def test_service_env_points_at_the_running_stores(data_stores: DataStores) -> None:
    env = data_stores.service_env()
    assert set(env) == {
        "GATEHOUSE_MYSQL_PRIMARY_DSN",
        "GATEHOUSE_MYSQL_REPLICA_DSNS",
        "GATEHOUSE_REDIS_URL",
        "GATEHOUSE_ETCD_ENDPOINTS",
        # The tests' etcd serves TLS and asks for a client certificate, as the chart's.
        "GATEHOUSE_ETCD_CA_FILE",
        "GATEHOUSE_ETCD_CERT_FILE",
        "GATEHOUSE_ETCD_KEY_FILE",
    }
    assert query(env["GATEHOUSE_MYSQL_PRIMARY_DSN"], "SELECT @@read_only") == [(0,)]
    for replica_dsn in env["GATEHOUSE_MYSQL_REPLICA_DSNS"].split(","):
        assert query(replica_dsn, "SELECT @@read_only") == [(1,)]
    assert redis.Redis.from_url(env["GATEHOUSE_REDIS_URL"], socket_timeout=2).ping()
    assert env["GATEHOUSE_ETCD_ENDPOINTS"] == data_stores.etcd_endpoint
    assert data_stores.etcd.healthy()


def test_replica_receives_rows_written_on_the_primary(
    data_stores: DataStores, probe_table: str
) -> None:
    note = uuid.uuid4().hex
    query(data_stores.primary_dsn, "INSERT INTO devstack_probe (note) VALUES (%s)", (note,))
    wait_until(
        lambda: has_note(data_stores.replica_dsn, note),
        timeout=10,
        what=f"row {note} written on the primary shows up on the replica",
        where=data_stores.replica.log_path,
    )


def test_replica_refuses_writes_from_the_app_user(
    data_stores: DataStores, probe_table: str
) -> None:
    with pytest.raises(pymysql.err.OperationalError) as caught:
        query(data_stores.replica_dsn, "INSERT INTO devstack_probe (note) VALUES ('nope')")
    assert caught.value.args[0] == 1290  # ER_OPTION_PREVENTS_STATEMENT: --read-only


def test_stopped_sql_thread_makes_the_replica_lag_until_restarted(
    data_stores: DataStores, probe_table: str
) -> None:
    replication = data_stores.replication
    note = uuid.uuid4().hex
    replication.stop_sql_thread()
    try:
        query(data_stores.primary_dsn, "INSERT INTO devstack_probe (note) VALUES (%s)", (note,))
        # The row is in the replica's relay log, so only the stopped SQL thread keeps it out.
        replication.wait_received(timeout=10)
        assert has_note(data_stores.primary_dsn, note)
        assert not has_note(data_stores.replica_dsn, note)
        assert not gtid_covers(replication.applied_position(), replication.primary_position())
    finally:
        replication.start_sql_thread()
    replication.wait_caught_up(timeout=10)
    assert has_note(data_stores.replica_dsn, note)


def test_redis_restart_loses_data_and_keeps_the_url(data_stores: DataStores) -> None:
    url = data_stores.redis_url
    client = redis.Redis.from_url(url, socket_timeout=2)
    client.set("devstack:probe", "1")
    assert client.get("devstack:probe") == b"1"
    client.close()

    data_stores.redis.restart()

    assert data_stores.redis_url == url
    client = redis.Redis.from_url(url, socket_timeout=2)
    assert client.get("devstack:probe") is None  # no persistence, as configured
    client.close()


def test_etcd_keeps_its_data_across_stop_and_start(data_stores: DataStores) -> None:
    etcd = data_stores.etcd
    endpoint = data_stores.etcd_endpoint
    etcd_put(data_stores, "/devstack/probe", "before")

    etcd.stop()
    try:
        with pytest.raises(OSError):
            etcd.healthy()
    finally:
        etcd.start()

    assert data_stores.etcd_endpoint == endpoint
    assert etcd_get(data_stores, "/devstack/probe") == "before"
    etcd_put(data_stores, "/devstack/probe", "after")
    assert etcd_get(data_stores, "/devstack/probe") == "after"


def test_wait_until_names_what_failed_and_where_to_look() -> None:
    with pytest.raises(TimeoutError, match=r"the moon is cheese.*ZeroDivisionError.*see /x.log"):
        wait_until(lambda: 1 / 0, timeout=0.1, what="the moon is cheese", where="/x.log")
    with pytest.raises(RuntimeError, match="gave up waiting until ready: it died"):
        wait_until(lambda: False, timeout=10, what="ready", abort=lambda: "it died")


async def test_wait_until_async_polls_sync_and_async_predicates() -> None:
    calls: list[int] = []

    async def third_call_succeeds() -> bool:
        calls.append(1)
        return len(calls) >= 3

    await wait_until_async(third_call_succeeds, timeout=5, what="the third call")
    assert len(calls) == 3
    with pytest.raises(TimeoutError, match=r"never.*see /y\.log"):
        await wait_until_async(lambda: False, timeout=0.1, what="never", where="/y.log")


def test_mariadb_in_a_deep_folder_leaves_no_socket_folder_behind(tmp_path: Path) -> None:
    server = MariaDB("deep mariadb", tmp_path / ("deep" * 30) / "mariadb", server_id=1)
    socket_folder = server.socket_path.parent
    assert socket_folder != server.state_dir  # the path is too long for AF_UNIX there
    assert not socket_folder.exists()  # nothing made before start()
    try:
        server.start()
        server.stop()
        assert not socket_folder.exists()
        server.start()  # a restart, as the drills do, makes it again
        assert server.ping()
    finally:
        server.stop()
    assert not socket_folder.exists()


def test_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    stubborn = ManagedProcess(
        "stubborn",
        ["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 1; done"],
        tmp_path / "stubborn.log",
    )
    stubborn.start()
    # A line of its own: the log's header line quotes the command, "echo ready" included.
    wait_until(
        lambda: "ready" in [line.strip() for line in stubborn.tail().splitlines()],
        10,
        "sh has set its trap and printed ready",
        where=stubborn.log_path,
    )
    assert stubborn.stop(timeout=0.5) == -signal.SIGKILL
    assert not stubborn.alive


def test_pause_stops_answers_and_resume_brings_them_back(tmp_path: Path) -> None:
    server = Redis(tmp_path / "redis")
    server.start()
    try:
        server.process.pause()
        with pytest.raises(OSError):  # socket.timeout: connected (backlog) but no answer
            server.ping()
        server.process.resume()
        assert server.ping()
    finally:
        server.stop()


def test_process_started_from_a_short_lived_thread_outlives_the_thread(tmp_path: Path) -> None:
    sleeper = ManagedProcess("sleeper", ["sleep", "300"], tmp_path / "sleeper.log")
    thread_ids: list[int] = []

    def start() -> None:
        thread_ids.append(threading.get_native_id())
        sleeper.start()

    thread = threading.Thread(target=start)
    thread.start()
    thread.join(10)
    # PR_SET_PDEATHSIG fires when the forking *thread* exits: wait until the OS thread is gone.
    wait_until(
        lambda: not Path(f"/proc/self/task/{thread_ids[0]}").exists(),
        10,
        "the starting thread has exited",
    )
    try:
        assert sleeper.alive, sleeper.exit_reason()
    finally:
        sleeper.stop()


CHILD = """
import sys
from pathlib import Path
from devstack.process import ManagedProcess
sleeper = ManagedProcess("sleeper", ["sleep", "300"], Path(sys.argv[1]))
sleeper.start()
print(sleeper.pid, flush=True)
sys.stdin.read()
"""


def test_processes_die_with_the_python_process_that_started_them(tmp_path: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path / "sleeper.log")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    ) as parent:
        try:
            assert parent.stdout is not None
            line = parent.stdout.readline()
            assert line.strip(), f"child printed no pid; exit code {parent.poll()}"
            pid = int(line)
            assert process_running(pid)
        finally:
            parent.kill()
            parent.wait(10)
    wait_until(
        lambda: not process_running(pid),
        10,
        f"sleep (pid {pid}) dies after its parent python was SIGKILLed",
    )


def test_free_ports_are_not_handed_out_twice() -> None:
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)


def test_free_ports_are_none_a_client_connection_could_take_meanwhile() -> None:
    """A port from the kernel's ephemeral range can become a client's source port between the
    pick and the server's bind: a full suite saw a `make run` fail with "Address already in
    use" on its ops port that way."""
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert ephemeral_low > 11_000, "this machine leaves no room below its ephemeral range"
    ports = [free_port() for _ in range(50)]
    assert all(port < ephemeral_low for port in ports), sorted(ports)[-5:]


def test_parallel_test_workers_pick_from_separate_shares(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two pytest-xdist workers do not know each other's picks: each takes its own share."""
    picks: dict[str, set[int]] = {}
    for worker in ("gw0", "gw1"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
        picks[worker] = {free_port() for _ in range(40)}
    assert max(picks["gw0"]) < min(picks["gw1"])


def process_running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped (in a container PID 1 may never reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def etcd_put(stores: DataStores, key: str, value: str) -> None:
    async def put() -> None:
        client = stores.etcd_client()
        try:
            await client.put(key.encode(), value.encode())
        finally:
            await client.close()

    asyncio.run(put())


def etcd_get(stores: DataStores, key: str) -> str | None:
    async def get() -> str | None:
        client = stores.etcd_client()
        try:
            found = await client.get(key.encode())
        finally:
            await client.close()
        return None if found is None else bytes(found.value).decode()

    return asyncio.run(get())


def test_a_mariadb_restarted_after_its_data_directory_vanished_refuses_to_start_empty(
    tmp_path: Path,
) -> None:
    """As `make clean`, or a second run wiping the state folder, under a running stack: the
    supervisor's restart must not bring up a blank server and call it back."""
    server = MariaDB("mariadb primary", tmp_path / "mariadb", server_id=1)
    try:
        server.start()
        server.execute("CREATE DATABASE kept")
        server.kill()
        shutil.rmtree(server.datadir)

        with pytest.raises(RuntimeError, match=r"data directory .* is gone"):
            server.start()
        assert not server.process.alive
    finally:
        server.stop()
