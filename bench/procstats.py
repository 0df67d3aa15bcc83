"""CPU seconds and resident memory of the processes under test, read from /proc.

A `ProcessWatch` samples named root processes and their descendants (Granian and Hypercorn
fork their workers) a few times a second on a thread. `window()` brackets one scenario:
CPU seconds each process used in it, the highest resident set seen, and the machine's busy
CPU seconds, from which the report tells how much load came from outside the benchmark and
how much of the cores the host kept (steal, on a virtual machine).

The sampler shares the machine with what it measures, so a sample reads little: each watched
process's stat file and /proc/loadavg, whose newest pid tells whether the machine made a process
or thread since the last sample. Only then does it ask the processes that may fork for their
children: every descendant of a root (a server's fork servers, its workers and theirs) and the
roots that ever had children (a server's main process), a file per thread (about 1.5 ms more for
`make run`'s stack). A new child among those makes the sample walk the trees at once, so a
worker started in place of another is counted from the next sample however late it comes. The
walk reads a file per thread of every watched process (7-10 ms for the bench's stack), so
otherwise it runs only at a window's ends. Walked on every sample, the trees took a core for
those milliseconds four times a second and put the 1000-connection p99 at 5.9-8.5 ms instead of
3.3-4.9 (docs/performance.md, "The bench's own process sampler"). Not seen until a window's end:
the first child of a root that never had one (MariaDB, Redis, etcd and the auth replicas do not
fork).
"""

from __future__ import annotations

import os
import resource
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
SAMPLE_SECONDS = 0.25
# Steal of at least this much on one vCPU between two samples counts as a pause of that vCPU by
# the host. On the bench's VM the host takes a vCPU back for 100 ms at a time while both are
# busy (docs/performance.md, "The host's 100 ms pauses").
HOST_PAUSE_SECONDS = 0.05


@dataclass(frozen=True)
class ProcessReading:
    cpu_seconds: float
    rss_bytes: int
    started_ticks: int  # when the process started: a pid reused by another process differs


def read_process(pid: int) -> ProcessReading | None:
    """CPU, resident set and start time from /proc/<pid>/stat; None when the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces; the fields after it are fixed.
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime
    # rss (field 24) is in pages; starttime is field 22.
    return ProcessReading(cpu, int(fields[21]) * _PAGE_BYTES, int(fields[19]))


def lifetime_peak_rss(pid: int) -> int | None:
    """VmHWM: the highest resident set since the process started; None when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key == "VmHWM":
            return int(value.split()[0]) * 1024
    return None


def newest_pid() -> str:
    """The pid the kernel gave last, to a process or a thread (/proc/loadavg's fifth field)."""
    return Path("/proc/loadavg").read_text().split()[4]


def children(pid: int) -> list[int]:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return []
    found: list[int] = []
    for task in tasks:
        try:
            found += [
                int(child)
                for child in Path(f"/proc/{pid}/task/{task}/children").read_text().split()
            ]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


@dataclass(frozen=True)
class MachineCpu:
    """CPU seconds since boot."""

    busy: float  # of every core, outside idle and iowait, steal included
    steal: float  # of `busy`, what the host gave to something else while the cores had work
    steal_ticks_by_cpu: tuple[int, ...]  # each vCPU's steal, in clock ticks


def machine_cpu(stat: str | None = None) -> MachineCpu:
    """From /proc/stat (`stat`: its text): its first line sums every core, then one line per
    core (`cpuN`), each user nice system idle iowait irq softirq steal guest guest_nice, in clock
    ticks (guest time is within user)."""
    lines = (Path("/proc/stat").read_text() if stat is None else stat).splitlines()
    values = [int(v) for v in lines[0].split()[1:]]
    idle = values[3] + values[4]
    by_cpu = tuple(
        int(line.split()[8]) for line in lines[1:] if line.startswith("cpu") and line[3].isdigit()
    )
    return MachineCpu(
        busy=(sum(values[:8]) - idle) / _TICKS, steal=values[7] / _TICKS, steal_ticks_by_cpu=by_cpu
    )


def pauses_between(before: MachineCpu, after: MachineCpu) -> int:
    """vCPUs that lost HOST_PAUSE_SECONDS or more to the host between the two readings."""
    least = round(HOST_PAUSE_SECONDS * _TICKS)
    return sum(
        1
        for then, now in zip(before.steal_ticks_by_cpu, after.steal_ticks_by_cpu, strict=False)
        if now - then >= least
    )


def children_cpu_seconds() -> float:
    """CPU of this process's finished, reaped children (the load generators)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class ProcessUsage:
    name: str
    pid: int
    cpu_seconds: float
    peak_rss_bytes: int  # highest resident set sampled in the window
    lifetime_peak_rss_bytes: int  # VmHWM at the window's end, or at its last rise if gone


@dataclass
class WindowUsage:
    seconds: float
    processes: list[ProcessUsage]
    machine_busy_seconds: float
    generator_cpu_seconds: float  # wrk and loadgen processes that ended in the window
    harness_cpu_seconds: float
    machine_steal_seconds: float = 0.0  # part of machine_busy_seconds: the host's
    # Per vCPU, the samples (every SAMPLE_SECONDS) after which it had lost HOST_PAUSE_SECONDS or
    # more to the host; 0 when nothing sampled between the window's ends (remote runs).
    host_pauses: int = 0

    @property
    def outside_cpu_seconds(self) -> float:
        """Busy CPU not used by anything this benchmark runs: other work on the machine (the
        host's steal is counted apart)."""
        ours = sum(p.cpu_seconds for p in self.processes)
        return max(
            0.0,
            self.machine_busy_seconds
            - self.machine_steal_seconds
            - ours
            - self.generator_cpu_seconds
            - self.harness_cpu_seconds,
        )


@dataclass
class _Tracked:
    name: str
    start_cpu: float
    last: ProcessReading
    peak_rss: int
    lifetime_peak_rss: int  # VmHWM, read again whenever a sample's resident set has grown


@dataclass
class ProcessWatch:
    """Watches named process trees; `roots` maps a name to a root pid."""

    roots: dict[str, int] = field(default_factory=dict)
    _tracked: dict[int, _Tracked] = field(default_factory=dict)
    _members: dict[int, str] = field(default_factory=dict)  # the last walk's `tree()`
    _forkers: dict[int, set[int]] = field(default_factory=dict)  # may fork: children known
    _newest_pid: str = ""  # `newest_pid()` when the forkers were last asked
    _last_failure: str = ""
    _machine_seen: MachineCpu | None = None  # at the last sample
    _host_pauses: int = 0  # since the watch started
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _sampling: threading.Lock = field(default_factory=threading.Lock)  # one sample at a time
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def add(self, name: str, pid: int) -> None:
        with self._lock:
            self.roots[name] = pid

    def remove(self, name: str) -> None:
        with self._lock:
            self.roots.pop(name, None)

    @contextmanager
    def watching(self, roots: dict[str, int]) -> Iterator[None]:
        """Watch `roots` (name -> pid) inside the block only."""
        for name, pid in roots.items():
            self.add(name, pid)
        try:
            yield
        finally:
            for name in roots:
                self.remove(name)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="procstats", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def tree(self) -> dict[int, str]:
        """pid -> name for every watched process alive now (workers named after their root)."""
        return self._walk_trees()[0]

    def _walk_trees(self) -> tuple[dict[int, str], dict[int, set[int]]]:
        """`tree()`, and the children of each of its processes that has any."""
        with self._lock:
            roots = dict(self.roots)
        members: dict[int, str] = {}
        parents: dict[int, set[int]] = {}
        for name, root in roots.items():
            members[root] = name
            descendants: list[int] = []
            pending = [root]
            while pending:
                pid = pending.pop()
                found = children(pid)
                if found:
                    parents[pid] = set(found)
                descendants += found
                pending += found
            for number, child in enumerate(sorted(descendants), start=1):
                members[child] = f"{name} worker {number}"
        return members, parents

    @contextmanager
    def window(self) -> Iterator[list[WindowUsage]]:
        """Measure what happens inside the block; the list holds the usage once it ends."""
        outcome: list[WindowUsage] = []
        started = time.monotonic()
        machine, generators, harness = machine_cpu(), children_cpu_seconds(), own_cpu_seconds()
        pauses_before = self._sample(walk=True, restart=True)
        yield outcome
        pauses = self._sample(walk=True) - pauses_before
        with self._sampling:
            processes = [
                ProcessUsage(
                    name=tracked.name,
                    pid=pid,
                    cpu_seconds=tracked.last.cpu_seconds - tracked.start_cpu,
                    peak_rss_bytes=tracked.peak_rss,
                    lifetime_peak_rss_bytes=self._lifetime_peak(pid, tracked),
                )
                for pid, tracked in self._tracked.items()
            ]
        machine_now = machine_cpu()
        outcome.append(
            WindowUsage(
                seconds=time.monotonic() - started,
                processes=sorted(processes, key=lambda p: p.name),
                machine_busy_seconds=machine_now.busy - machine.busy,
                generator_cpu_seconds=children_cpu_seconds() - generators,
                harness_cpu_seconds=own_cpu_seconds() - harness,
                machine_steal_seconds=machine_now.steal - machine.steal,
                # Only the sampler thread reads often enough to see a pause.
                host_pauses=pauses if self._thread is not None else 0,
            )
        )

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            try:
                self._sample()
            except (OSError, ValueError) as exc:  # a window's ends still read every process
                if repr(exc) != self._last_failure:  # once per kind of failure, not per sample
                    self._last_failure = repr(exc)
                    print(
                        f"procstats: a sample failed ({exc!r}); sampling goes on", file=sys.stderr
                    )

    def _sample(self, *, walk: bool = False, restart: bool = False) -> int:
        """Read every watched process, walking the trees first when `walk` or when a process
        that may fork has a new child (asked only if the machine made a pid since the last
        sample). `restart`: forget what earlier samples read (a window starts). Returns the
        host's pauses counted since the watch started, this sample's included."""
        with self._sampling:
            if restart:
                self._tracked.clear()
            machine = machine_cpu()
            if self._machine_seen is not None:
                self._host_pauses += pauses_between(self._machine_seen, machine)
            self._machine_seen = machine
            newest = newest_pid()
            if walk or (newest != self._newest_pid and self._new_children()):
                self._walk()
            self._newest_pid = newest
            for pid, name in self._members.items():
                reading = read_process(pid)
                tracked = self._tracked.get(pid)
                if reading is None or (
                    tracked is not None and tracked.last.started_ticks != reading.started_ticks
                ):
                    continue  # gone (its pid may be another process's now)
                if tracked is None:
                    peak = lifetime_peak_rss(pid) or reading.rss_bytes
                    self._tracked[pid] = _Tracked(
                        name, reading.cpu_seconds, reading, reading.rss_bytes, peak
                    )
                    continue
                if reading.rss_bytes > tracked.last.rss_bytes:  # VmHWM may have risen too
                    tracked.lifetime_peak_rss = lifetime_peak_rss(pid) or tracked.lifetime_peak_rss
                tracked.last = reading
                tracked.peak_rss = max(tracked.peak_rss, reading.rss_bytes)
            return self._host_pauses

    def _walk(self) -> None:
        self._members, parents = self._walk_trees()
        with self._lock:
            roots = set(self.roots.values())
        self._forkers = {
            pid: parents.get(pid, set())
            for pid in self._members
            if pid not in roots or pid in parents or pid in self._forkers
        }

    def _new_children(self) -> bool:
        """Whether a process that may fork has a child it did not have at the last walk."""
        return any(not set(children(pid)) <= known for pid, known in self._forkers.items())

    def _lifetime_peak(self, pid: int, tracked: _Tracked) -> int:
        """VmHWM now if the process is still the one tracked, else as last read."""
        reading = read_process(pid)
        if reading is None or reading.started_ticks != tracked.last.started_ticks:
            return tracked.lifetime_peak_rss
        return lifetime_peak_rss(pid) or tracked.lifetime_peak_rss
