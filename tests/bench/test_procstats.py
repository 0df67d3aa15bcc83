"""The bench's process sampler: cheap samples, and a worker that replaces one is still counted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import procstats
from bench.procstats import ProcessUsage, ProcessWatch, WindowUsage, machine_cpu
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

# A worker that forks one `_WORKER` (its argv[1], with argv[2]) on SIGUSR1.
_FORKING_WORKER = """
import signal, subprocess, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
print("ready", flush=True)
signal.sigwait({signal.SIGUSR1})
subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]]).wait()
"""

# A server that starts one worker: its argv[1] with the rest of its arguments.
_NESTING_SERVER = """
import subprocess, sys
subprocess.Popen([sys.executable, "-c", *sys.argv[1:]]).wait()
"""

# A server: for each line "replace PATH" on stdin, ends its last worker (if any) and starts a
# new one, as a server replaces a worker that died; for "add PATH", starts one more. Prints
# each new worker's pid.
_SERVER = """
import subprocess, sys
workers = []
for line in sys.stdin:
    command, marker = line.split()
    if command == "replace" and workers:
        workers[-1].terminate()
        workers.pop().wait()
    workers.append(subprocess.Popen([sys.executable, "-c", sys.argv[1], marker]))
    print(workers[-1].pid, flush=True)
"""


class _Server:
    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process

    def replace_worker(self, marker: Path) -> int:
        """Start a worker in place of the last one; its pid once it is ready."""
        return self._start_worker("replace", marker)

    def add_worker(self, marker: Path) -> int:
        """Start one more worker; its pid once it is ready."""
        return self._start_worker("add", marker)

    def _start_worker(self, command: str, marker: Path) -> int:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{command} {marker}\n")
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
        start_new_session=True,  # its workers too end with its process group
    )
    with process:
        try:
            yield _Server(process)
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def _burn(worker: int, marker: Path) -> None:
    """Have a `_WORKER` burn its 0.3 s of CPU, and wait until it has."""
    os.kill(worker, signal.SIGUSR1)
    wait_until(marker.exists, 10.0, f"worker {worker}'s 0.3 s of CPU")


def _counted(usage: list[WindowUsage]) -> dict[int, ProcessUsage]:
    return {process.pid: process for process in usage[0].processes}


def test_a_worker_started_in_place_of_one_that_went_is_counted_from_the_next_sample(
    server: _Server, tmp_path: Path
) -> None:
    first = server.replace_worker(tmp_path / "first")
    watch = ProcessWatch()
    watch.add("server", server.process.pid)
    with watch.window() as usage:
        second = server.replace_worker(tmp_path / "second")
        wait_until(lambda: procstats.read_process(first) is None, 10.0, "the first worker's end")
        watch._sample()  # finds the second, a new child of the server
        _burn(second, tmp_path / "second")
    counted = _counted(usage)
    assert counted[first].cpu_seconds < 0.2
    assert counted[second].cpu_seconds >= 0.2, "the replacement's CPU was not counted"
    # Sampled resident sets (pages in /proc/<pid>/stat) in bytes, as VmHWM is.
    peak = counted[second].lifetime_peak_rss_bytes
    assert peak >= counted[second].peak_rss_bytes >= peak // 2 > 0


def test_a_worker_started_with_no_process_gone_is_counted_from_the_next_sample(
    server: _Server, tmp_path: Path
) -> None:
    server.replace_worker(tmp_path / "first")
    watch = ProcessWatch()
    watch.add("server", server.process.pid)
    with watch.window() as usage:
        added = server.add_worker(tmp_path / "added")
        watch._sample()  # sees the server's new child
        _burn(added, tmp_path / "added")
    counted = _counted(usage)
    assert counted[added].cpu_seconds >= 0.2, "the added worker's CPU was not counted"


def test_a_child_forked_later_by_a_worker_is_counted_from_the_next_sample(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "grandchild"
    argv = [sys.executable, "-c", _NESTING_SERVER, _FORKING_WORKER, _WORKER, str(marker)]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, start_new_session=True) as root:
        assert root.stdout is not None
        try:
            assert root.stdout.readline().strip() == "ready"  # the worker, with no child yet
            (worker,) = procstats.children(root.pid)
            watch = ProcessWatch()
            watch.add("server", root.pid)
            with watch.window() as usage:
                os.kill(worker, signal.SIGUSR1)  # it forks its child now
                assert root.stdout.readline().strip() == "ready"
                watch._sample()  # finds the worker's new child
                (grandchild,) = procstats.children(worker)
                _burn(grandchild, marker)
        finally:
            os.killpg(root.pid, signal.SIGKILL)
    counted = _counted(usage)
    assert counted[grandchild].cpu_seconds >= 0.2, "the worker's child's CPU was not counted"


def test_samples_ask_for_children_only_when_a_pid_was_made_and_never_walk_unprompted(
    server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = server.replace_worker(tmp_path / "worker")
    asked: list[int] = []
    children = procstats.children

    def counted_children(pid: int) -> list[int]:
        asked.append(pid)
        return children(pid)

    newest = ["1"]
    monkeypatch.setattr(procstats, "children", counted_children)
    monkeypatch.setattr(procstats, "newest_pid", lambda: newest[0])
    # A root with no children, like MariaDB: only a walk asks for them.
    with subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"]) as quiet:
        try:
            watch = ProcessWatch()
            watch.add("server", server.process.pid)
            watch.add("quiet", quiet.pid)
            with watch.window() as usage:
                assert quiet.pid in asked  # the window's start walks every tree
                asked.clear()
                for _ in range(5):
                    watch._sample()
                assert asked == [], "a sample asked for children with no pid made"
                newest[0] = "2"  # a process or thread was made somewhere
                watch._sample()
                assert worker in asked, "a worker that may fork was not asked"
                assert quiet.pid not in asked, "a sample walked the trees with nothing forked"
            assert quiet.pid in asked  # the window's end walks again
        finally:
            quiet.kill()
    names = {process.name for process in usage[0].processes}
    assert names == {"server", "server worker 1", "quiet"}


def test_the_machine_s_busy_time_counts_the_host_s_steal_and_says_how_much() -> None:
    ticks = os.sysconf("SC_CLK_TCK")
    # user nice system idle iowait irq softirq steal guest guest_nice, then each core's line.
    stat = (
        f"cpu  {100 * ticks} 0 {20 * ticks} 500 40 0 {5 * ticks} {7 * ticks} 3 0\n"
        "cpu0 1 0 2 3 0 0 0 400 0 0\n"
        "cpu1 1 0 2 3 0 0 0 300 0 0\n"
        "intr 12345\n"
    )
    machine = machine_cpu(stat)
    assert machine.busy == 132.0  # idle and iowait left out; guest time is within user
    assert machine.steal == 7.0
    assert machine.steal_ticks_by_cpu == (400, 300)


def reading(*steal_ticks: int) -> procstats.MachineCpu:
    return procstats.MachineCpu(100.0, sum(steal_ticks) / TICKS, steal_ticks)


TICKS = os.sysconf("SC_CLK_TCK")
PAUSE_TICKS = round(procstats.HOST_PAUSE_SECONDS * TICKS)


def test_a_pause_is_counted_per_vcpu_from_exactly_the_threshold() -> None:
    before = reading(1000, 2000)
    assert procstats.pauses_between(before, reading(1000 + PAUSE_TICKS - 1, 2000)) == 0
    assert procstats.pauses_between(before, reading(1000 + PAUSE_TICKS, 2000)) == 1
    # Both vCPUs, or steal spread over them that is under the threshold on each.
    assert procstats.pauses_between(before, reading(1000 + PAUSE_TICKS, 2000 + PAUSE_TICKS)) == 2
    half = PAUSE_TICKS // 2 + 1
    assert procstats.pauses_between(before, reading(1000 + half, 2000 + half)) == 0


@pytest.fixture
def steal(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Each vCPU's steal in ticks, which every machine_cpu() reading then reports."""
    ticks = [1000, 2000]
    monkeypatch.setattr(procstats, "machine_cpu", lambda: reading(*ticks))
    return ticks


def test_a_window_counts_the_pauses_between_its_own_samples_only(steal: list[int]) -> None:
    watch = ProcessWatch()
    watch._thread = threading.current_thread()  # as if the sampler ran: samples come from here
    watch._sample()
    steal[0] += PAUSE_TICKS  # before the window: not its
    watch._sample()
    with watch.window() as usage:
        for kept in (1, PAUSE_TICKS - 1, 2 * PAUSE_TICKS, 0, PAUSE_TICKS):
            steal[1] += kept
            watch._sample()
    steal[0] += PAUSE_TICKS  # after the window: not its
    watch._sample()
    assert usage[0].host_pauses == 2


def test_a_window_with_no_sampler_running_counts_no_pause(steal: list[int]) -> None:
    watch = ProcessWatch()
    with watch.window() as usage:
        steal[0] += 10 * PAUSE_TICKS  # two readings a window apart say nothing of a pause
    assert usage[0].host_pauses == 0
