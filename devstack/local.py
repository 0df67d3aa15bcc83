"""`LocalStack`: the whole stack as `make run` runs it, supervised, for `make run` and drills.

The data stores, two auth replicas and the HTTP tier (two worker processes), each restarted
when it dies (see devstack.supervisor). A drill hurts a process through its handle:

    with LocalStack.start(state_dir, settings=...) as stack:
        auth = stack.process("auth-1")
        restart = auth.kill(signal.SIGKILL)
        auth.wait_restarted(restart)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from devstack.gatehouse import LOCAL_AUTH_REPLICAS, Gatehouse, Service, hash_threads_per_replica
from devstack.stack import DataStores, Report, print_report
from devstack.supervisor import RestartPolicy, Supervised, Supervisor


@dataclass
class LocalStack:
    stores: DataStores
    gatehouse: Gatehouse
    supervisor: Supervisor

    @classmethod
    def start(
        cls,
        state_dir: Path,
        *,
        settings: dict[str, str] | None = None,
        auth_replicas: int = LOCAL_AUTH_REPLICAS,
        http_port: int | None = None,
        http_ops_port: int | None = None,
        policy: RestartPolicy | None = None,
        supervisor: Supervisor | None = None,
        report: Report = print_report,
        rpc_tls: bool = True,
        etcd_auth: bool = False,
    ) -> LocalStack:
        """Start everything under `state_dir` (kept as it is: wipe it first for a fresh stack).

        `settings` are added to the services' environment over `make run`'s own; ports left
        None are free ones. `rpc_tls` runs the auth RPC over mutual TLS (False: plaintext). Pass a `supervisor` to
        reach it before the stack is up (a signal handler does); otherwise one with `policy` is
        made. `etcd_auth`: etcd with TLS and a user per tier, as in the chart. On failure, what
        started is stopped.
        """
        supervisor = supervisor or Supervisor(policy, report=report)
        stores = DataStores.start(state_dir, report=report, etcd_auth=etcd_auth)
        defaults = {
            "GATEHOUSE_HTTP_WORKERS": "2",
            "GATEHOUSE_HASH_THREADS": hash_threads_per_replica(auth_replicas),
        }
        system = Gatehouse(
            stores,
            state_dir / "gatehouse",
            settings={**defaults, **(settings or {})},
            supervisor=supervisor,
            rpc_tls=rpc_tls,
        )
        stack = cls(stores, system, supervisor)
        try:
            stores.supervise(supervisor)
            for _ in range(auth_replicas):
                _go_on(supervisor)
                report("starting an auth replica ...")
                auth = system.start_auth()
                report(
                    f"{auth.name} ready: RPC 127.0.0.1:{auth.ports['rpc']}, "
                    f"ops http://127.0.0.1:{auth.ports['ops']}"
                )
            _go_on(supervisor)
            report("starting the HTTP tier ...")
            http = system.start_http(port=http_port, ops_port=http_ops_port)
            report(f"{http.name} ready: {system.url()}, ops http://127.0.0.1:{http.ports['ops']}")
            _go_on(supervisor)
        except BaseException:
            stack.stop()
            raise
        return stack

    @property
    def services(self) -> list[Service]:
        return [*self.gatehouse.auth, *self.gatehouse.http]

    def url(self) -> str:
        return self.gatehouse.url()

    def process(self, name: str) -> Supervised:
        """The handle of one process: "auth-1", "auth-2", "http-1", "mariadb primary",
        "mariadb replica", "redis" or "etcd"."""
        return self.supervisor.get(name)

    def stop(self) -> None:
        """Stop everything, without restarts; safe to call twice."""
        self.supervisor.begin_shutdown()
        try:
            self.gatehouse.stop()
            self.stores.stop()
        finally:
            self.supervisor.close()

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class StartInterrupted(RuntimeError):
    """A stop (Ctrl-C, SIGTERM) was asked for while the stack was starting."""


def _go_on(supervisor: Supervisor) -> None:
    """Between the steps of a start: no further step once a stop was asked for."""
    if supervisor.stopping:
        raise StartInterrupted("a stop was asked for during start-up")
