"""What the main process does when a worker dies: the backoff, the log line, the cleanup."""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from pathlib import Path

import pytest

from services.foundation.metrics import MULTIPROC_ENV
from services.http.workers.heartbeat import worker_beats
from services.http.workers.respawn import RespawnBackoff, WorkerSupervision, exit_cause


def test_the_first_replacement_starts_at_once_and_quick_deaths_back_off() -> None:
    backoff = RespawnBackoff(max_delay=4.0, first_delay=0.5, stable_after=10.0)
    delays = [backoff.next_delay(0, lived_seconds=0.2) for _ in range(6)]
    assert delays == [0.0, 0.5, 1.0, 2.0, 4.0, 4.0]
    # Another slot has a streak of its own.
    assert backoff.next_delay(1, lived_seconds=0.2) == 0.0
    # A replacement that served for a while was healthy: the next one starts at once again.
    assert backoff.next_delay(0, lived_seconds=60.0) == 0.0
    assert backoff.next_delay(0, lived_seconds=0.2) == 0.5


@pytest.mark.parametrize(
    ("exitcode", "cause"),
    [
        (-signal.SIGKILL, "SIGKILL"),
        (-signal.SIGSEGV, "SIGSEGV"),
        (1, "exit 1"),
        (0, "exit 0"),
        (None, "unknown"),
        (-200, "signal 200"),
    ],
)
def test_exit_causes(exitcode: int | None, cause: str) -> None:
    assert exit_cause(exitcode) == cause


def test_a_dead_worker_is_logged_counted_and_forgotten(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    heartbeats, metrics = tmp_path / "heartbeats", tmp_path / "metrics"
    heartbeats.mkdir()
    metrics.mkdir()
    (heartbeats / "4242.heartbeat").write_text(f'{{"at": {time.monotonic()}, "not_ready": null}}')
    # The dead worker's files: its live gauges go, its counters stay (they count what it did).
    for name in ("gauge_livesum_4242.db", "gauge_liveall_4242.db", "counter_4242.db"):
        (metrics / name).write_bytes(b"")
    monkeypatch.setenv(MULTIPROC_ENV, str(metrics))
    counted: list[str] = []
    supervision = WorkerSupervision(heartbeats, max_delay=30.0, count_restart=counted.append)
    with caplog.at_level(logging.WARNING, logger="services.http.workers.respawn"):
        first = supervision.worker_died(1, pid=4242, exitcode=-9, lived_seconds=300.0)
        again = supervision.worker_died(1, pid=4243, exitcode=1, lived_seconds=0.5)
    assert (first, again) == (0.0, 0.5)
    assert counted == ["SIGKILL", "exit 1"]
    assert worker_beats(heartbeats) == []
    assert sorted(path.name for path in metrics.iterdir()) == ["counter_4242.db"]
    assert [record.getMessage() for record in caplog.records] == [
        "HTTP worker 2 (pid 4242) died (SIGKILL) after 300.0 s; replacing it now",
        "HTTP worker 2 (pid 4243) died (exit 1) after 0.5 s; replacing it in 0.5 s",
    ]


def beat_file(heartbeats: Path, pid: int, seconds_ago: float) -> None:
    at = time.monotonic() - seconds_ago
    (heartbeats / f"{pid}.heartbeat").write_text(f'{{"at": {at}, "not_ready": null}}')


def test_a_worker_that_stopped_beating_is_killed_once_and_counted_as_stuck(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    counted: list[str] = []
    supervision = WorkerSupervision(
        tmp_path, max_delay=30.0, count_restart=counted.append, stuck_after=5.0
    )
    stuck = subprocess.Popen(["sleep", "60"])
    beating = subprocess.Popen(["sleep", "60"])
    try:
        beat_file(tmp_path, stuck.pid, seconds_ago=6.0)
        beat_file(tmp_path, beating.pid, seconds_ago=1.0)
        with caplog.at_level(logging.WARNING, logger="services.http.workers.respawn"):
            supervision.kill_stuck({0: stuck.pid, 1: beating.pid})
            supervision.kill_stuck({0: stuck.pid, 1: beating.pid})  # one line, one kill
            assert stuck.wait(timeout=10.0) == -signal.SIGKILL
            assert beating.poll() is None
            supervision.worker_died(0, pid=stuck.pid, exitcode=-9, lived_seconds=60.0)
        assert counted == ["stuck"]
        lines = [r.getMessage() for r in caplog.records]
        assert lines[0].startswith(f"HTTP worker 1 (pid {stuck.pid}) has not beaten for 6.")
        assert lines[0].endswith(
            "s (its event loop is stuck or the process is stopped); killing it to replace it"
        )
        assert lines[1].startswith(f"HTTP worker 1 (pid {stuck.pid}) died (stuck)")
        assert len(lines) == 2
    finally:
        for process in (stuck, beating):
            process.kill()
            process.wait()


def test_a_pause_of_the_whole_pod_kills_no_worker(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Frozen together (a cgroup freeze, a checkpoint, SIGSTOP to the process group, Ctrl-Z),
    the main process and its workers resume at once, and the main process's first look found
    every beat as old as the pause, before any worker beat again: every worker was killed."""
    clock = [1000.0]
    supervision = WorkerSupervision(
        tmp_path,
        max_delay=30.0,
        count_restart=lambda _: None,
        stuck_after=5.0,
        clock=lambda: clock[0],
    )
    worker = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / f"{worker.pid}.heartbeat").write_text('{"at": 1000.0, "not_ready": null}')
        supervision.kill_stuck({0: worker.pid})
        clock[0] = 1020.0  # 20 s frozen, the main process with the worker
        supervision.kill_stuck({0: worker.pid})
        assert "has not beaten" not in caplog.text  # a kill is logged as it is sent
        clock[0] = 1021.0  # a look later, still no beat: stuck indeed
        supervision.kill_stuck({0: worker.pid})
        assert worker.wait(timeout=10.0) == -signal.SIGKILL
    finally:
        worker.kill()
        worker.wait()


def test_a_worker_still_starting_is_not_stuck(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    supervision = WorkerSupervision(
        tmp_path, max_delay=30.0, count_restart=lambda _: None, stuck_after=1.0
    )
    starting = subprocess.Popen(["sleep", "60"])
    try:
        supervision.kill_stuck({0: starting.pid})  # no heartbeat yet
        assert "has not beaten" not in caplog.text  # a kill is logged as it is sent
    finally:
        starting.kill()
        starting.wait()


class _UnstartableWorker:
    def start(self) -> None:
        # What multiprocessing raises when the fork server died just before (its socket gone).
        raise ConnectionRefusedError(111, "Connection refused")


def test_granian_keeps_serving_when_a_replacement_cannot_be_started(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from services.http.workers.granian_server import RespawningGranian

    server = RespawningGranian.__new__(RespawningGranian)  # the supervisor's loop state only
    server._supervision = WorkerSupervision(tmp_path, max_delay=30.0, count_restart=lambda _: None)
    dead_worker = object()
    server.wrks = [dead_worker]  # type: ignore[list-item]
    server._replacements_due = {0: time.monotonic()}
    server._spawn_worker = lambda **_: _UnstartableWorker()  # type: ignore[assignment,method-assign]

    with caplog.at_level(logging.WARNING):
        server._replace_due_workers(spawn_target=print, target_loader=print)

    # Tried again after a delay, rather than the error ending the server's main loop.
    assert server._replacements_due[0] > time.monotonic()
    assert server.wrks == [dead_worker]
    (line,) = [r.getMessage() for r in caplog.records if "could not be started" in r.getMessage()]
    assert "ConnectionRefusedError" in line


def test_new_connections_go_to_the_ready_workers_while_any_is(tmp_path: Path) -> None:
    """A worker replaced while etcd was away cannot read the signing keys: it beat "not ready"
    and took its share of the new connections, answering them 503, beside a ready worker."""
    clock = [1000.0]
    supervision = WorkerSupervision(
        tmp_path, max_delay=30.0, count_restart=lambda _: None, clock=lambda: clock[0]
    )
    (tmp_path / "201.heartbeat").write_text('{"at": 999.9, "not_ready": null}')
    (tmp_path / "202.heartbeat").write_text('{"at": 999.9, "not_ready": "no signing keys"}')
    assert supervision.serving({0: 201, 1: 202}) == {0}
    (tmp_path / "201.heartbeat").write_text('{"at": 999.9, "not_ready": "no auth replica"}')
    assert supervision.serving({0: 201, 1: 202}) == {0, 1}  # none ready: all that beat


def test_serving_slots_are_those_whose_worker_beat_lately(tmp_path: Path) -> None:
    """The slots the main process steers new connections to (services.http.workers.slot_listeners):
    not one still starting (no beat yet), nor one whose beat is older than STALLED_AFTER_SECONDS
    (its event loop stuck or the process stopped; it is killed later, at the stuck bound)."""
    clock = [1000.0]
    supervision = WorkerSupervision(
        tmp_path, max_delay=30.0, count_restart=lambda _: None, clock=lambda: clock[0]
    )
    for pid, at in ((101, 999.8), (102, 997.0), (103, 995.5)):
        (tmp_path / f"{pid}.heartbeat").write_text(f'{{"at": {at}, "not_ready": null}}')
    supervision.kill_stuck({})  # a look, as the supervisor's loop makes once a second
    clock[0] = 1001.0
    assert supervision.serving({0: 101, 1: 102, 2: 103, 3: 104}) == {0, 1}
    supervision.kill_stuck({})
    # The main process paused 20 s with its workers: their beats are as old, and still count.
    clock[0] = 1021.0
    assert supervision.serving({0: 101, 1: 102, 2: 103, 3: 104}) == {0, 1, 2}
