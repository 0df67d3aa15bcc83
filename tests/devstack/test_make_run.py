"""`make run` (python -m devstack) as a whole process: when it stops, and what it says."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import socket
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from devstack import __main__ as devstack_main
from devstack.ports import HOST, wait_until
from devstack.process import ManagedProcess, children_of
from services.foundation.rpc.client import CallFailed, RpcConnection
from tests.devstack.test_stack import process_running
from tests.gatehouse_cli import environment_without_settings, run_gatehouse

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 180.0

pytestmark = pytest.mark.slow


class MakeRun:
    """`python -m devstack` on free ports, its output in a log file."""

    def __init__(self, tmp_path: Path, *options: str, env: dict[str, str] | None = None) -> None:
        argv = [sys.executable, "-m", "devstack", "--state-dir", str(tmp_path / "state")]
        argv += ["--http-port", "0", "--http-ops-port", "0", *options]
        self.process = ManagedProcess(
            "make run", argv, tmp_path / "make-run.log", cwd=REPO_ROOT, env=env
        )

    def start(self) -> None:
        self.process.start()
        self.wait_for("Gatehouse is up at", STARTUP_TIMEOUT)

    def lines(self) -> list[str]:
        text = self.process.log_path.read_text(errors="replace")
        return [line for line in text.splitlines() if line.startswith("devstack: ")]

    def wait_for(self, text: str, timeout: float) -> str:
        found: list[str] = []

        def said() -> bool:
            found[:] = [line for line in self.lines() if text in line]
            return bool(found)

        wait_until(said, timeout, f"make run says {text!r}", where=self.process.log_path)
        return found[0]

    def wait_exit(self, timeout: float) -> int:
        wait_until(
            lambda: not self.process.alive,
            timeout,
            "make run exits",
            where=self.process.log_path,
        )
        code = self.process.returncode
        assert code is not None
        return code

    def descendants(self) -> list[int]:
        found: list[int] = []
        parents = [self.process.pid]
        while parents:
            pids = children_of(parents.pop())
            found += pids
            parents += pids
        return found

    def pid_of(self, name: str) -> int:
        """A child's pid: by GATEHOUSE_INSTANCE_ID for a service, by program for a store."""
        for pid in self.descendants():
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                program = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if f"GATEHOUSE_INSTANCE_ID={name}".encode() in environ:
                return pid
            # Redis rewrites its command line into one string: "redis-server 127.0.0.1:6379".
            if os.path.basename(program.decode().split(" ")[0]) == name:
                return pid
        raise LookupError(f"no child of make run is {name}; see {self.process.log_path}")


@pytest.fixture
def make_run(tmp_path: Path) -> Iterator[Callable[..., MakeRun]]:
    """Starts `make run` with the given options; stops it after the test if still running."""
    runs: list[MakeRun] = []

    def started(*options: str, env: dict[str, str] | None = None) -> MakeRun:
        run = MakeRun(tmp_path, *options, env=env)
        runs.append(run)
        run.start()
        return run

    yield started
    for run in runs:
        run.process.stop(timeout=60)


def test_a_sigterm_to_the_whole_group_stops_everything_without_restarts(
    make_run: Callable[..., MakeRun],
) -> None:
    run = make_run()
    everything = run.descendants()
    redis = run.pid_of("redis-server")
    # As a service manager does: every process gets SIGTERM, and here the children first, so
    # that one of them has exited before the supervisor hears of it.
    for pid in everything:
        os.kill(pid, signal.SIGTERM)
    # Reaped: the supervisor has seen the exit before its own SIGTERM comes.
    wait_until(lambda: not Path(f"/proc/{redis}").exists(), 10, "make run reaps redis")
    os.killpg(run.process.pid, signal.SIGTERM)  # kill -TERM -- -<pgid>

    assert run.wait_exit(120) == 0, run.process.tail(30)
    lines = run.lines()
    assert "devstack: SIGTERM received, stopping" in lines
    assert lines[-1] == "devstack: stopped"
    assert not [line for line in lines if "restarting" in line or "is back" in line]
    wait_until(
        lambda: not any(process_running(pid) for pid in everything),
        10,
        "every process of the stack has exited",
    )


@pytest.mark.parametrize(
    ("signum", "to_group"),
    [(signal.SIGINT, True), (signal.SIGTERM, False)],
    ids=["ctrl-c", "sigterm-to-make-run"],
)
def test_a_stop_during_start_up_ends_it_there_without_starting_the_rest(
    tmp_path: Path, signum: signal.Signals, to_group: bool
) -> None:
    """A Ctrl-C while the first auth replica started went unheeded: the second replica and the
    HTTP tier started, "Gatehouse is up" was printed, and only then did the stack stop (7.5 and
    9.5 s after the SIGINT in two runs); one that reached the migrations' process ended in
    "could not start the stack" and exit 1."""
    run = MakeRun(tmp_path)
    run.process.start()
    try:
        run.wait_for("starting an auth replica", STARTUP_TIMEOUT)
        everything = run.descendants()
        if to_group:  # a terminal's Ctrl-C: the foreground group, the migrations' process too
            os.killpg(run.process.pid, signum)
        else:
            os.kill(run.process.pid, signum)
        assert run.wait_exit(60) == 0, run.process.tail(30)
    finally:
        run.process.stop(timeout=60)
    lines = run.lines()
    assert lines[-1] == f"devstack: {signum.name} received during start-up; stopped", lines
    assert not [line for line in lines if "Gatehouse is up" in line or "HTTP tier" in line]
    wait_until(
        lambda: not any(process_running(pid) for pid in everything),
        10,
        "every process of the stack has exited",
    )


def test_settings_in_its_environment_reach_every_service(
    make_run: Callable[..., MakeRun],
) -> None:
    setting = "GATEHOUSE_ADMISSION_QUEUE_TARGET=0.123"
    name, _, value = setting.partition("=")
    run = make_run(env={**environment_without_settings(), name: value})
    assert run.wait_for("settings from the environment", 1).endswith(f"every service: {name}")
    environs = []
    for pid in run.descendants():
        try:
            environs.append(Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))
        except OSError:
            continue  # gone meanwhile
    auth = [
        env for env in environs if any(v.startswith(b"GATEHOUSE_INSTANCE_ID=auth-") for v in env)
    ]
    http = [env for env in environs if any(v.startswith(b"GATEHOUSE_HTTP_PORT=") for v in env)]
    assert len(auth) == 2 and http, (len(auth), len(http))
    assert all(setting.encode() in env for env in auth + http)


def test_a_process_that_cannot_start_again_stops_the_stack_naming_it_and_its_log(
    make_run: Callable[..., MakeRun],
) -> None:
    run = make_run("--restart-failures", "2")
    ready = run.wait_for("auth-1 ready: RPC", 5)
    match = re.search(r"RPC 127\.0\.0\.1:(\d+)", ready)
    assert match, ready
    rpc_port = int(match.group(1))
    everything = run.descendants()
    os.kill(run.pid_of("auth-1"), signal.SIGKILL)

    # Its port taken while it is down: every restart fails to listen and exits.
    with socket.socket() as squatter:
        # Past the TIME_WAIT of the killed replica's connections, not past a listener.
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)

        def take_port() -> bool:
            squatter.bind((HOST, rpc_port))
            return True

        wait_until(take_port, 10, f"port {rpc_port} is free to take")
        squatter.listen()
        assert run.wait_exit(120) == 1, run.process.tail(30)

    log = run.process.log_path.parent / "state" / "gatehouse" / "auth-1.log"
    lines = run.lines()
    assert sum("auth-1 did not start again" in line for line in lines) == 1
    assert lines[-1].startswith("devstack: stopped: auth-1 failed to start again 2 times in a row")
    assert lines[-1].endswith(f"see its log {log}")
    assert "address already in use" in log.read_text().lower()
    wait_until(
        lambda: not any(process_running(pid) for pid in everything),
        10,
        "every process of the stack has exited",
    )


def cli_environment(run: MakeRun) -> dict[str, str]:
    """What an operator sources before `.venv/bin/gatehouse`: the file `make run` names."""
    printed = run.process.log_path.read_text()
    match = re.search(r"set -a; \. (\S+); set \+a", printed)
    assert match, printed
    env = environment_without_settings()
    for line in Path(shlex.split(match.group(1))[0]).read_text().splitlines():
        name, _, value = shlex.split(line)[0].partition("=")
        env[name] = value
    return env


@pytest.mark.parametrize("options", [(), ("--etcd-auth",)], ids=["default", "etcd-auth"])
def test_the_gatehouse_command_works_against_make_run_over_mutual_tls(
    make_run: Callable[..., MakeRun], options: tuple[str, ...], tmp_path: Path
) -> None:
    run = make_run(*options)
    url = run.wait_for("Gatehouse is up at", 5).split("Gatehouse is up at ")[1].split(" ")[0]
    username = f"cli{uuid.uuid4().hex[:12]}"
    with httpx.Client(base_url=url, timeout=15.0, trust_env=False) as client:
        created = client.post("/api/v1/users", json={"username": username, "password": "password1"})
        assert created.status_code == 201, created.text
    env = cli_environment(run)

    shown = run_gatehouse("users", "show", username, env=env)
    keys = run_gatehouse("keys", "list", env=env)

    assert env["GATEHOUSE_RPC_TLS"] == "mtls"
    assert shown.exit_code == 0 and username in shown.stdout, shown.stderr
    assert keys.exit_code == 0, keys.stderr
    # Without the operator certificate the replica's port refuses the connection.
    port = int(env["GATEHOUSE_AUTH_PORT"])
    with pytest.raises(CallFailed):
        asyncio.run(RpcConnection.open(HOST, port, connect_timeout=5.0, agent="plain"))
    # etcd: plain on 127.0.0.1 by default (etcdctl can look), TLS with auth when asked.
    etcd_scheme = "https" if options else "http"
    assert any(
        line.lstrip().startswith("etcd ") and f"{etcd_scheme}://127.0.0.1:" in line
        for line in run.process.log_path.read_text().splitlines()
    )
    # The next run may wipe this folder: it holds nothing a run does not make.
    assert devstack_main._not_a_state_dir(tmp_path / "state") is None, sorted(
        entry.name for entry in (tmp_path / "state").iterdir()
    )
