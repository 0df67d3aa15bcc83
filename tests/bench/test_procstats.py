"""The bench's process sampler: cheap samples, and a worker that replaces one is still counted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import procstats
from bench.procstats import ProcessWatch
from devstack.ports import wait_until

# A worker: announces itself on the shared stdout, burns 0.3 s of CPU on SIGUSR1, then marks
# the file named by its argument, and waits for its end (SIGTERM ends it at any point).
_WORKER = """
import pathlib, signal, sys, time
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGTERM})
print("ready", flush=True)
if signal.sigwait({signal.SIGUSR1, signal.SIGTERM}) == signal.SIGTERM:
    sys.exit()
end = time.process_time() + 0.3
while time.process_time() < end:
    pass
pathlib.Path(sys.argv[1]).touch()
signal.sigwait({signal.SIGTERM})
"""

# A server: for each line on stdin, ends its worker (if any) and starts a new one, as a server
# replaces a worker that died; prints the new worker's pid.
_SERVER = """
import subprocess, sys
worker = None
for line in sys.stdin:
    if worker is not None:
        worker.terminate()
        worker.wait()
    worker = subprocess.Popen([sys.executable, "-c", sys.argv[1], line.strip()])
    print(worker.pid, flush=True)
"""


class _Server:
    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process

    def replace_worker(self, marker: Path) -> int:
        """Start a worker in place of the current one; its pid once it is ready."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{marker}\n")
        self.process.stdin.flush()
        # The server's pid line and the worker's "ready" may come in either order.
        lines = {self.process.stdout.readline().strip(), self.process.stdout.readline().strip()}
        lines.remove("ready")
        return int(lines.pop())


@pytest.fixture
def server() -> Iterator[_Server]:
    process = subprocess.Popen(
        [sys.executable, "-c", _SERVER, _WORKER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    with process:
        try:
            yield _Server(process)
        finally:
            workers = procstats.children(process.pid)
            process.kill()
            process.wait(timeout=10)
            for worker in workers:
                os.kill(worker, signal.SIGKILL)


def test_a_worker_started_in_place_of_one_that_went_is_counted_from_the_next_samples(
    server: _Server, tmp_path: Path
) -> None:
    first = server.replace_worker(tmp_path / "first")
    watch = ProcessWatch()
    watch.add("server", server.process.pid)
    with watch.window() as usage:
        second = server.replace_worker(tmp_path / "second")
        wait_until(lambda: procstats.read_process(first) is None, 10.0, "the first worker's end")
        watch._sample()  # sees the first worker gone
        watch._sample()  # finds the second
        os.kill(second, signal.SIGUSR1)
        wait_until((tmp_path / "second").exists, 10.0, "the second worker's 0.3 s of CPU")
    counted = {process.pid: process for process in usage[0].processes}
    assert counted[first].cpu_seconds < 0.2
    assert counted[second].cpu_seconds >= 0.2, "the replacement's CPU was not counted"
    assert counted[second].lifetime_peak_rss_bytes >= counted[second].peak_rss_bytes > 0


def test_samples_do_not_walk_the_process_trees_while_every_process_stays(
    server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.replace_worker(tmp_path / "worker")
    walks: list[int] = []
    descendants = procstats._descendants

    def counted_descendants(pid: int) -> list[int]:
        walks.append(pid)
        return descendants(pid)

    monkeypatch.setattr(procstats, "_descendants", counted_descendants)
    watch = ProcessWatch()
    watch.add("server", server.process.pid)
    with watch.window() as usage:
        assert len(walks) == 1  # the window's start
        for _ in range(5):
            watch._sample()
        assert len(walks) == 1, "a sample walked the trees with no process gone"
    assert len(walks) == 2  # the window's end
    assert {process.name for process in usage[0].processes} == {"server", "server worker 1"}
