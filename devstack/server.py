"""What the data stores' server processes share: started in their state folder, waited for
until they answer, stopped."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from devstack.ports import wait_until
from devstack.process import ManagedProcess


class ServerProcess:
    """A server process in `state_dir`, logging to `process.log_path`; subclasses set the
    three attributes and say in `start` what "ready" means."""

    name: str
    state_dir: Path
    process: ManagedProcess

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    def stop(self, timeout: float = 10.0) -> int | None:
        return self.process.stop(timeout)

    def launch(self) -> None:
        """Start the process without waiting for it (members of one cluster start together)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.process.start()

    def _start_and_wait(self, ready: Callable[[], object], what: str, timeout: float) -> None:
        """Start the process and wait until `ready()` (or until it dies: the wait stops then)."""
        self.launch()
        wait_until(ready, timeout, what, where=self.log_path, abort=self.process.exit_reason)
