"""What the machine gave a drill: the load generator's own CPU, and how busy the host was.

The drills run on the machine they measure, often shared: a latency target missed while the
host's other work held both cores says little about the stack. Each drill's notes carry these
figures for its load period, so a reader can tell the two apart.

    watch = MachineWatch.start()
    ...  # the load
    share = watch.stop()
    share.note()  # "the load generator used 8% of one core; ..."
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
_IDLE_FIELDS = (3, 4)  # idle, iowait in /proc/stat's cpu line


def _busy_cpu_seconds() -> float:
    """CPU seconds every process of the host has used since boot (0 where /proc is absent)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0.0
    return sum(int(v) for i, v in enumerate(fields) if i not in _IDLE_FIELDS) / _TICKS


@dataclass(frozen=True)
class MachineShare:
    seconds: float
    generator_cpu: float  # CPU seconds of the drill's own process (the load generator)
    host_cpu: float  # CPU seconds of every process of the host
    cores: int
    load_averages: tuple[float, float]  # 1-minute load average at the start and at the end

    @property
    def generator_percent(self) -> float:
        """Of one core."""
        return 100.0 * self.generator_cpu / self.seconds if self.seconds > 0 else 0.0

    @property
    def host_percent(self) -> float:
        """Of all cores."""
        return 100.0 * self.host_cpu / (self.seconds * self.cores) if self.seconds > 0 else 0.0

    def note(self) -> str:
        start, end = self.load_averages
        return (
            f"the load generator used {self.generator_percent:.0f}% of one core; the host's "
            f"{self.cores} cores were {self.host_percent:.0f}% busy (1-minute load average "
            f"{start:.1f} at the start of the load, {end:.1f} at its end)"
        )


@dataclass(frozen=True)
class MachineWatch:
    started: float
    generator_cpu: float
    host_cpu: float
    load_average: float

    @classmethod
    def start(cls) -> MachineWatch:
        return cls(time.monotonic(), time.process_time(), _busy_cpu_seconds(), os.getloadavg()[0])

    def stop(self) -> MachineShare:
        return MachineShare(
            seconds=time.monotonic() - self.started,
            generator_cpu=time.process_time() - self.generator_cpu,
            host_cpu=_busy_cpu_seconds() - self.host_cpu,
            cores=os.cpu_count() or 1,
            load_averages=(self.load_average, os.getloadavg()[0]),
        )
