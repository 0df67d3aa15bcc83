"""`make run`: the data stores and the Gatehouse services, each restarted when it dies, until
SIGINT or SIGTERM, or until a process fails to start again `--restart-failures` times in a row.

`GATEHOUSE_*` variables in its own environment reach every service, over `make run`'s defaults
(`GATEHOUSE_ADMISSION_CONCURRENCY=256 make run` tries a setting); each process's ports,
instance id, keys and secrets stay devstack's.

Needs no terminal: runs the same with stdin closed or in the background.
"""

from __future__ import annotations

import argparse
import io
import os
import shlex
import shutil
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from devstack.local import LocalStack
from devstack.ports import free_port, port_is_free
from devstack.run_holds import hold_port, hold_state_dir
from devstack.stack import print_report
from devstack.supervisor import RestartPolicy, Supervisor

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_STATE_DIR = REPO_ROOT / ".state" / "run"
HTTP_PORT = 8000
# The HTTP tier's default ops port; the auth replicas' ops ports are free ephemeral ones.
HTTP_OPS_PORT = 9101
# Beside the services' state (.state/run/gatehouse/): what `gatehouse` needs to call auth-1.
CLI_ENV_FILE = "cli.env"
# Written into the state folder once it is wiped: it names the folder as a run's to whoever
# looks. It vouches for nothing else: a folder that also holds what no run makes is refused all
# the same (notes put there later; a run's state folder beneath it, still running).
STATE_MARKER = ".devstack-state"
# What a run makes at the top of its state folder (DataStores, Gatehouse): a folder that holds
# nothing else (the marker aside) is one a run made, and may be wiped.
_STATE_ENTRIES = frozenset(
    {"mariadb-primary", "mariadb-replica", "redis", "etcd", "etcd-secured", "ca", "gatehouse"}
)
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass(frozen=True)
class RunHolds:
    """What this run holds until main() returns (run_holds.py), and its two HTTP ports."""

    sockets: tuple[socket.socket, ...]
    ports: tuple[int, int]


def _hold_run(state_dir: Path, http_port: int, http_ops_port: int) -> RunHolds | str:
    """The state folder and both ports held (0: a free one picked), or why not."""
    state_hold = hold_state_dir(state_dir)
    if isinstance(state_hold, str):
        return (
            f"{state_dir} is in use by another `make run` (pid {state_hold}); stop that one "
            "first, or pass another --state-dir"
        )
    held, ports = [state_hold], []
    refused = _not_a_state_dir(state_dir)
    if refused is not None:
        state_hold.close()
        return refused
    for asked in (http_port, http_ops_port):
        port, port_hold = _held_port(asked)
        if isinstance(port_hold, str):
            return (
                f"port {port} is taken by another `make run` (pid {port_hold}); stop that one "
                "first, or pass another --http-port / --http-ops-port"
            )
        held.append(port_hold)
        if not port_is_free(port):
            # Granian listens with SO_REUSEPORT: a second stack would silently share the port.
            return f"port {port} is in use (another `make run`?); stop that process first"
        ports.append(port)
    return RunHolds(tuple(held), (ports[0], ports[1]))


def _not_a_state_dir(state_dir: Path) -> str | None:
    """Why `state_dir` must not be wiped at start, or None: it is missing, empty, or a state
    folder of an earlier run (nothing in it but what a run makes). Anything else is refused:
    `--state-dir .` wiped the checkout, and `--state-dir .state` the folder of a `make run`
    still running (its hold names only its own path, .state/run), also when `.state` was a
    run's state folder once and so holds the marker."""
    try:
        entries = {entry.name for entry in state_dir.iterdir()}
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot use {state_dir} as the state folder: {exc}"
    others = sorted(entries - _STATE_ENTRIES - {STATE_MARKER})
    if not others:
        return None
    shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
    return (
        f"{state_dir} holds {shown}: not the state folder of a `make run`, which is wiped at "
        "start; pass a new or empty folder to --state-dir"
    )


# Free ports tried when one picked is held by another run that has not bound it yet.
_PORT_PICKS = 20


def _held_port(asked: int) -> tuple[int, socket.socket | str]:
    """`asked`, held (or who holds it); for 0, a free port no other run holds."""
    if asked:
        return asked, hold_port(asked)
    for _ in range(_PORT_PICKS - 1):
        port = free_port()
        port_hold = hold_port(port)
        if not isinstance(port_hold, str):
            return port, port_hold
    port = free_port()
    return port, hold_port(port)


def settings_from_environment() -> dict[str, str]:
    """The `GATEHOUSE_*` variables of this process's environment."""
    return {name: value for name, value in os.environ.items() if name.startswith("GATEHOUSE_")}


def print_table(stack: LocalStack) -> None:
    rows = [("what", "where", "log")]
    rows += [(what, where, str(log)) for what, where, log in stack.stores.describe()]
    rows += [
        (s.name, ", ".join(f"{k} {v}" for k, v in s.ports.items()), str(s.process.log_path))
        for s in stack.services
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    for what, where, log in rows:
        print(f"  {what:<{widths[0]}}  {where:<{widths[1]}}  {log}")
    print("environment of the services:")
    for name, value in stack.stores.service_env().items():
        print(f"  export {name}='{value}'")
    cli_env = write_cli_env(stack)
    print("the gatehouse command, with auth-1's settings (port, operator certificate):")
    print(f"  set -a; . {shlex.quote(str(cli_env))}; set +a; .venv/bin/gatehouse users show NAME")


def write_cli_env(stack: LocalStack) -> Path:
    """`CLI_ENV_FILE` in the state folder: the settings of auth-1, which the `gatehouse`
    command reads as it would inside that replica's pod (its port, the operator certificate
    when the RPC runs mutual TLS, etcd and MySQL for `keys` and `migrate`). Secrets among them:
    readable by the owner only, like secrets.json beside it."""
    replica = stack.gatehouse.auth[0].process.env or {}
    path = stack.gatehouse.state_dir / CLI_ENV_FILE
    path.touch(mode=0o600, exist_ok=True)
    path.write_text(
        "".join(
            f"{name}={shlex.quote(value)}\n"
            for name, value in sorted(replica.items())
            if name.startswith("GATEHOUSE_")
        )
    )
    return path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help="wiped at start: new, empty, or an earlier run's; any other folder is refused "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--http-port", type=int, default=HTTP_PORT, help="0 picks a free one (default: %(default)s)"
    )
    parser.add_argument(
        "--http-ops-port",
        type=int,
        default=HTTP_OPS_PORT,
        help="0 picks a free one (default: %(default)s)",
    )
    parser.add_argument(
        "--etcd-auth",
        action="store_true",
        help="run etcd with TLS and a user per tier, as the chart does (default: plain, "
        "on 127.0.0.1, so etcdctl can inspect it)",
    )
    parser.add_argument(
        "--restart-failures",
        type=int,
        default=RestartPolicy.max_failures,
        help="stop when a process fails to start again this many times in a row "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--rpc-plaintext",
        action="store_true",
        help="run the auth RPC in plaintext (GATEHOUSE_RPC_TLS=plaintext, as behind a mesh) "
        "instead of mutual TLS with throwaway certificates under the state folder's "
        "gatehouse/rpc-ca/",
    )
    options = parser.parse_args(argv)
    if options.restart_failures < 1:
        parser.error("--restart-failures must be at least 1")
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)

    supervisor = Supervisor(
        RestartPolicy(max_failures=options.restart_failures), report=print_report
    )
    received: list[str] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        # Neither print nor take a lock here: the main thread may hold it. From now on every
        # exit is expected, also that of a child the same SIGTERM reached (a group kill).
        received.append(signal.Signals(signum).name)
        supervisor.request_shutdown()

    # Installed before anything starts: a signal during start-up ends it at its next step
    # (or wait for a process to be ready), and what started is stopped.
    for signum in _STOP_SIGNALS:
        signal.signal(signum, on_signal)

    state_dir: Path = options.state_dir.resolve()
    holds = _hold_run(state_dir, options.http_port, options.http_ops_port)
    if isinstance(holds, str):
        print_report(holds)
        return 1
    http_port, http_ops_port = holds.ports
    shutil.rmtree(state_dir, ignore_errors=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / STATE_MARKER).write_text(
        "made by `make run` (python -m devstack): wiped at start\n"
    )
    settings = settings_from_environment()
    if settings:
        # Names only: some settings are secrets.
        print_report(
            f"settings from the environment for every service: {', '.join(sorted(settings))}"
        )
    try:
        stack = LocalStack.start(
            state_dir,
            settings=settings,
            http_port=http_port,
            http_ops_port=http_ops_port,
            supervisor=supervisor,
            rpc_tls=not options.rpc_plaintext,
            etcd_auth=options.etcd_auth,
        )
    except Exception as exc:  # noqa: BLE001 - reported with what to do; what started is stopped
        if received:
            # What failed then is most likely what the signal reached (a Ctrl-C reaches
            # mariadb-install-db and the migrations too): no failure of the stack.
            print_report(f"{received[0]} received during start-up; stopped")
            return 0
        print_report(f"could not start the stack: {exc}")
        return 1

    try:
        if not supervisor.stopping:
            print_table(stack)
            print_report(
                f"Gatehouse is up at {stack.url()} (pages at /login, API under /api/v1); a "
                "process that dies is restarted; stop it all with Ctrl-C or SIGTERM"
            )
        supervisor.wait()
        if received:
            print_report(f"{received[0]} received, stopping")
    finally:
        stack.stop()
    if supervisor.failure is not None:
        print_report(f"stopped: {supervisor.failure}")
        return 1
    print_report("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
