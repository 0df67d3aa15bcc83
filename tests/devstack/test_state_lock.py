"""A second `make run` on the state folder of a running one: refused before anything is wiped."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from devstack.ports import free_port, port_is_free, wait_until
from devstack.process import ManagedProcess
from tests.devstack.test_make_run import REPO_ROOT, STARTUP_TIMEOUT, MakeRun

pytestmark = pytest.mark.slow

PORTS_PICKED = ("--http-port", "0", "--http-ops-port", "0")


def test_a_second_run_on_the_same_state_folder_is_refused_while_the_first_starts(
    tmp_path: Path,
) -> None:
    first = MakeRun(tmp_path)
    state_dir = tmp_path / "state"
    second = ManagedProcess(
        "second make run",
        [sys.executable, "-m", "devstack", "--state-dir", str(state_dir), *PORTS_PICKED],
        tmp_path / "second-make-run.log",
        cwd=REPO_ROOT,
    )
    try:
        # Not up yet: the first run's HTTP port is not held, so no port check can tell.
        first.process.start()
        first.wait_for("starting mariadb primary", 60)
        mariadb_data = state_dir / "mariadb-primary" / "data"
        wait_until(mariadb_data.exists, 60, "the first run has a data directory")

        second.start()
        wait_until(lambda: not second.alive, 30, "the second run gives up", where=second.log_path)

        said = second.log_path.read_text()
        assert second.returncode == 1, said
        assert f"{state_dir} is in use by another `make run` (pid {first.process.pid})" in said
        assert "starting mariadb" not in said
        # The first run goes on, on its own files.
        first.wait_for("Gatehouse is up at", STARTUP_TIMEOUT)
        assert mariadb_data.exists()
        assert not [line for line in first.lines() if "could not start" in line]
    finally:
        second.stop(timeout=60)
        first.process.stop(timeout=60)


@pytest.mark.parametrize("shared", ["--http-port", "--http-ops-port"])
def test_a_second_run_on_a_port_of_a_starting_one_is_refused(tmp_path: Path, shared: str) -> None:
    """Granian listens with SO_REUSEPORT: a second stack that found the port free (the first
    one's HTTP tier not listening yet, or being restarted) would share it, and the kernel would
    split connections between two stacks with two databases."""
    port = free_port()
    first = MakeRun(tmp_path)
    first.process.argv[first.process.argv.index(shared) + 1] = str(port)
    argv = [sys.executable, "-m", "devstack", "--state-dir", str(tmp_path / "second-state")]
    argv += ["--http-port", "0", "--http-ops-port", "0"]
    argv[argv.index(shared) + 1] = str(port)
    second = ManagedProcess(
        "second make run", argv, tmp_path / "second-make-run.log", cwd=REPO_ROOT
    )
    try:
        first.process.start()
        first.wait_for("starting mariadb primary", 60)
        assert port_is_free(port)  # what the second run's own check sees

        second.start()
        wait_until(lambda: not second.alive, 30, "the second run gives up", where=second.log_path)

        said = second.log_path.read_text()
        assert second.returncode == 1, said
        assert f"port {port} is taken by another `make run` (pid {first.process.pid})" in said
        first.wait_for("Gatehouse is up at", STARTUP_TIMEOUT)
    finally:
        second.stop(timeout=60)
        first.process.stop(timeout=60)
