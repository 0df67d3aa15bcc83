"""`make run`: the data stores and the Gatehouse services until SIGINT or SIGTERM.

Needs no terminal: runs the same with stdin closed or in the background.
"""

from __future__ import annotations

import argparse
import io
import shutil
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from devstack.gatehouse import LOCAL_AUTH_REPLICAS, Gatehouse, Service, hash_threads_per_replica
from devstack.ports import port_is_free
from devstack.stack import DataStores, print_report

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_STATE_DIR = REPO_ROOT / ".state" / "run"
HTTP_PORT = 8000
# The HTTP tier's default ops port; the auth replicas' ops ports are free ephemeral ones.
HTTP_OPS_PORT = 9101
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def start_services(stores: DataStores, state_dir: Path) -> Gatehouse:
    """Two auth replicas and the HTTP tier (two worker processes) on http://127.0.0.1:8000."""
    settings = {
        "GATEHOUSE_HTTP_WORKERS": "2",
        "GATEHOUSE_HASH_THREADS": hash_threads_per_replica(LOCAL_AUTH_REPLICAS),
    }
    system = Gatehouse(stores, state_dir / "gatehouse", settings=settings)
    for _ in range(LOCAL_AUTH_REPLICAS):
        print_report("starting an auth replica ...")
        auth = system.start_auth()
        print_report(
            f"{auth.name} ready: RPC 127.0.0.1:{auth.ports['rpc']}, ops http://127.0.0.1:{auth.ports['ops']}"
        )
    print_report(f"starting the HTTP tier on port {HTTP_PORT} (ops port {HTTP_OPS_PORT}) ...")
    system.start_http(port=HTTP_PORT, ops_port=HTTP_OPS_PORT)
    return system


def print_table(stores: DataStores, services: list[Service]) -> None:
    rows = [("what", "where", "log")]
    rows += [(what, where, str(log)) for what, where, log in stores.describe()]
    rows += [
        (s.name, ", ".join(f"{k} {v}" for k, v in s.ports.items()), str(s.process.log_path))
        for s in services
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    for what, where, log in rows:
        print(f"  {what:<{widths[0]}}  {where:<{widths[1]}}  {log}")
    print("environment of the services:")
    for name, value in stores.service_env().items():
        print(f"  export {name}='{value}'")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help="wiped at start (default: %(default)s)",
    )
    options = parser.parse_args(argv)
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)

    stop_requested = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if not stop_requested.is_set():
            print_report(f"{signal.Signals(signum).name} received, stopping")
        stop_requested.set()

    # Installed before anything starts: a signal during startup stops the stack right after.
    for signum in _STOP_SIGNALS:
        signal.signal(signum, on_signal)

    for port in (HTTP_PORT, HTTP_OPS_PORT):
        if not port_is_free(port):
            # Granian listens with SO_REUSEPORT: a second stack would silently share the port.
            print_report(f"port {port} is in use (another `make run`?); stop that process first")
            return 1
    state_dir: Path = options.state_dir.resolve()
    shutil.rmtree(state_dir, ignore_errors=True)
    try:
        stores = DataStores.start(state_dir)
    except Exception as exc:  # noqa: BLE001 - reported with what to do; the stores are stopped
        print_report(f"could not start the data stores: {exc}")
        return 1

    system: Gatehouse | None = None
    services: list[Service] = []
    exit_code = 0
    try:
        system = start_services(stores, state_dir)
        services = [*system.auth, *system.http]
        print_table(stores, services)
        print_report(
            f"Gatehouse is up at {system.url()} (pages at /login, API under /api/v1); stop it with Ctrl-C or SIGTERM"
        )
        watched = [
            stores.primary.process,
            stores.replica.process,
            stores.redis.process,
            stores.etcd.process,
            *(service.process for service in services),
        ]
        while not stop_requested.wait(1.0):
            dead = [reason for p in watched if (reason := p.exit_reason()) is not None]
            if dead:
                print_report("a process of the stack died; stopping the rest:\n" + "\n".join(dead))
                exit_code = 1
                break
    except Exception as exc:  # noqa: BLE001 - still stop everything below
        print_report(f"error: {exc}")
        exit_code = 1
    finally:
        if system is not None:
            system.stop()
        stores.stop()
        print_report("stopped")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
