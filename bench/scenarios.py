"""Running one load against one system and recording what it did to the processes.

Closed-loop loads go through wrk, open-loop ones through bench.loadgen; both are pinned to the
last core (taskset) and bracketed by a ProcessWatch window, which also tells whether any
watched process restarted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench import loadgen
from bench.latency import Summary, from_samples, merge
from bench.procstats import ProcessWatch, WindowUsage, machine_cpu
from bench.systems import Endpoint
from bench.wrk import WrkRun, write_requests
from devstack.ports import wait_until

Progress = Callable[[str], None]


def load_cpu() -> int | None:
    """The core the load generators are pinned to: the last one this process may use."""
    cpus = sorted(os.sched_getaffinity(0))
    return cpus[-1] if len(cpus) > 1 else None


@dataclass
class ScenarioResult:
    system: str  # gatehouse, fastapi-users or starlette
    server: str  # granian, hypercorn or remote
    scenario: str
    tool: str  # wrk or loadgen
    connections: int
    offered_rate: float | None  # open loop only
    summary: Summary
    usage: WindowUsage | None
    restarts: int = 0  # watched processes that were replaced during the load
    started_at: float = 0.0  # time.time() when the measured load began
    notes: dict[str, float] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.system}/{self.server}/{self.scenario}"

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["rate"] = self.summary.rate
        data["goodput"] = self.summary.goodput
        return data


# Below this many busy cores (databases, heartbeats) the machine counts as idle.
QUIET_CORES = 0.3
QUIET_WINDOW_SECONDS = 0.5


class Runner:
    def __init__(self, work_dir: Path, watch: ProcessWatch, progress: Progress) -> None:
        self.work_dir = work_dir
        self.watch = watch
        self.progress = progress
        self.cpu = load_cpu()
        self._files = 0

    def _file(self, stem: str) -> Path:
        self._files += 1
        return self.work_dir / f"{self._files:03d}-{stem}"

    def settle(self, before: str, timeout: float) -> None:
        """Wait until the machine is nearly idle before a hashing scenario.

        A wrk that exits abandons its requests in flight; the system still hashes them, so a
        login or signup run started right after another one would begin a second behind.
        """

        def quiet() -> bool:
            busy = machine_cpu().busy
            time.sleep(QUIET_WINDOW_SECONDS)  # the measurement window, not a wait for an event
            return (machine_cpu().busy - busy) / QUIET_WINDOW_SECONDS < QUIET_CORES

        try:
            wait_until(quiet, timeout, f"the machine is idle before {before}")
        except TimeoutError:
            self.progress(
                f"the machine did not go idle within {timeout:g} s before {before}; going on"
            )

    def closed(
        self, system: str, server: str, scenario: str, endpoint: Endpoint, requests: list[str], *,
        connections: int, seconds: int, warmup_seconds: int = 0, whole: bool = False,
    ) -> tuple[ScenarioResult, WrkRun]:  # fmt: skip
        """wrk for `seconds` (after an unrecorded warm-up that continues the same requests).

        The run is cut into 1 s wrk processes for the time series, unless `whole`: a wrk that
        exits abandons the requests it has in flight, and for logins and signups (about a
        second each at saturation) the server still hashes every abandoned one, so the next
        segment's requests queue behind work nobody waits for and the figure collapses.
        """
        run = WrkRun(endpoint.url + "/", write_requests(self._file(f"{scenario}.requests"), requests),
                     connections, cpu=self.cpu)  # fmt: skip
        if warmup_seconds:
            self.progress(f"{system}/{server}: warming up for {scenario} ({warmup_seconds} s)")
            run.run(warmup_seconds)
            run.segments.clear()
        self.progress(
            f"{system}/{server}: {scenario}, wrk closed loop, {connections} connections, {seconds} s"
        )
        pids_before = self.watch.tree()
        started_at = time.time()
        with self.watch.window() as usage:
            run.run(seconds, segment_seconds=seconds if whole else 1)
        result = ScenarioResult(
            system, server, scenario, "wrk", connections, None, merge(run.segments),
            usage[0], restarts=_restarts(pids_before, self.watch.tree()), started_at=started_at,
        )  # fmt: skip
        self.progress(_headline(result))
        return result, run

    def open(
        self, system: str, server: str, scenario: str, endpoint: Endpoint, requests: list[str], *,
        rate: float, connections: int, seconds: float, closed: bool = False,
    ) -> ScenarioResult:  # fmt: skip
        """bench.loadgen at a fixed `rate` (or `closed`: each connection as fast as it can)."""
        spec = loadgen.LoadSpec(
            host=endpoint.host, port=endpoint.port, rate=rate, duration=seconds,
            connections=connections, requests=requests, tls=endpoint.tls, closed=closed,
        )  # fmt: skip
        spec_path = self._file(f"{scenario}.spec.json")
        spec_path.write_text(json.dumps(asdict(spec)))
        out = spec_path.with_suffix(".result.json")
        argv = [sys.executable, "-m", "bench.loadgen", "--spec", str(spec_path), "--out", str(out)]
        if self.cpu is not None:
            argv = ["taskset", "-c", str(self.cpu), *argv]
        shape = "closed loop" if closed else f"open loop at {rate:,.0f} req/s"
        self.progress(
            f"{system}/{server}: {scenario}, {shape} over {connections} connections, {seconds:g} s"
        )
        pids_before = self.watch.tree()
        with self.watch.window() as usage:
            completed = subprocess.run(
                argv, check=False, capture_output=True, text=True, timeout=seconds + 120,
                env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
            )  # fmt: skip
        if completed.returncode != 0:
            raise RuntimeError(f"the load generator failed: {completed.stderr.strip()[-2000:]}")
        raw = json.loads(out.read_text())
        out.unlink()  # per-request samples: large, and summarised below
        summary = from_samples(
            raw["latency"], raw["status"], raw["due"], seconds,
            timeout_status=loadgen.TIMEOUT_STATUS,
            connection_error_status=loadgen.CONNECTION_ERROR_STATUS,
        )  # fmt: skip
        result = ScenarioResult(
            system, server, scenario, "loadgen", connections, None if closed else rate, summary, usage[0],
            restarts=_restarts(pids_before, self.watch.tree()), started_at=raw["started_at"],
            notes={"generator_lag_max_s": raw["lag_max"]},
        )  # fmt: skip
        shed = [
            latency
            for latency, status in zip(raw["latency"], raw["status"], strict=True)
            if status == 503
        ]
        if shed:
            shed.sort()
            result.notes["shed_p99_s"] = shed[min(len(shed) - 1, int(0.99 * len(shed)))]
        self.progress(_headline(result))
        return result


def _restarts(before: dict[int, str], after: dict[int, str]) -> int:
    """Watched processes present before the load and gone after it."""
    return len(set(before) - set(after))


def _headline(result: ScenarioResult) -> str:
    s = result.summary
    errors = ", ".join(f"{k}: {v}" for k, v in s.errors.items()) or "no errors"
    return (
        f"  -> {s.rate:,.0f} req/s ({s.goodput:,.0f} 2xx/s), p50 {s.p50 * 1000:.1f} ms, "
        f"p99 {s.p99 * 1000:.1f} ms, max {s.max * 1000:.0f} ms; {errors}"
    )
