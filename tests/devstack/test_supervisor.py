"""The supervisor on small real processes: restarts, backoff, stops on purpose, giving up."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.ports import wait_until
from devstack.process import ManagedProcess
from devstack.supervisor import RestartPolicy, Supervisor

QUICK = RestartPolicy(first_delay=0.05, max_delay=0.2, reset_after=60.0, max_failures=3)


class Lines(list[str]):
    """What the supervisor reported, in order."""

    def __call__(self, line: str) -> None:
        self.append(line)


@pytest.fixture
def lines() -> Lines:
    return Lines()


@pytest.fixture
def supervisor(lines: Lines) -> Iterator[Supervisor]:
    watching = Supervisor(QUICK, report=lines)
    yield watching
    watching.close()
    for unit in watching.units:
        unit.process.stop()


def sleeper(tmp_path: Path) -> ManagedProcess:
    return ManagedProcess("sleeper", ["sleep", "300"], tmp_path / "sleeper.log")


def test_backoff_doubles_up_to_its_ceiling() -> None:
    policy = RestartPolicy(first_delay=0.5, max_delay=10.0)
    assert [policy.delay(n) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_a_killed_process_is_restarted_with_its_command_and_one_line_says_so(
    tmp_path: Path, supervisor: Supervisor, lines: Lines
) -> None:
    process = sleeper(tmp_path)
    process.start()
    unit = supervisor.watch("sleeper", process, process.start)
    first_pid = unit.pid

    restart = unit.wait_restarted(unit.kill(signal.SIGKILL), timeout=10)

    assert restart.pid == first_pid and restart.how == "was killed by SIGKILL"
    assert restart.ready_at is not None and restart.ready_at >= restart.died_at
    assert unit.pid != first_pid and process.alive and unit.up
    assert process.argv == ["sleep", "300"]
    said = [line for line in lines if "restarting" in line]
    assert said == [
        f"sleeper (pid {first_pid}) was killed by SIGKILL; restarting it "
        f"(restart 1, log {process.log_path})"
    ]
    # Killed again at once: the second death waits twice as long, and is counted on.
    second = unit.wait_restarted(unit.kill(signal.SIGTERM), timeout=10)
    assert second.number == 2 and second.how == "was killed by SIGTERM"
    assert any("restarting it in 0.05 s (restart 2" in line for line in lines)


def test_a_stop_on_purpose_is_no_crash_until_it_is_started_again(
    tmp_path: Path, supervisor: Supervisor
) -> None:
    process = sleeper(tmp_path)
    process.start()
    unit = supervisor.watch("sleeper", process, process.start)

    process.stop()
    # A crash would be answered within 0.2 s (QUICK): a stop on purpose never is.
    with pytest.raises(TimeoutError):
        unit.wait_restarted(1, timeout=1.0)
    assert not process.alive and process.starts == 1

    process.start()  # as Redis.restart() does: the supervisor watches the new process
    restarted = unit.wait_restarted(unit.kill(), timeout=10)
    assert restarted.number == 1 and process.starts == 3


def test_a_paused_process_is_not_a_dead_one(tmp_path: Path, supervisor: Supervisor) -> None:
    process = sleeper(tmp_path)
    process.start()
    unit = supervisor.watch("sleeper", process, process.start)
    pid = unit.pid
    unit.pause()
    try:
        with pytest.raises(TimeoutError):
            unit.wait_restarted(1, timeout=0.5)
    finally:
        unit.resume()
    assert unit.pid == pid and unit.restarts == 0


def test_an_exit_just_before_the_shutdown_signal_is_not_restarted(
    tmp_path: Path, lines: Lines
) -> None:
    """A SIGTERM to the whole group reaches a child a moment before the supervisor."""
    supervisor = Supervisor(RestartPolicy(), report=lines)  # `make run`'s grace of 0.5 s
    process = sleeper(tmp_path)
    process.start()
    unit = supervisor.watch("sleeper", process, process.start)
    try:
        unit.kill(signal.SIGTERM)
        wait_until(lambda: unit.restarting, 10, "the supervisor noticed the exit")
        supervisor.request_shutdown()  # what the signal handler does
    finally:
        supervisor.close()
        process.stop()

    assert not process.alive and unit.restarts == 0 and process.starts == 1
    assert not [line for line in lines if "restarting" in line]


def flaky_until_given_up(tmp_path: Path, supervisor: Supervisor, on_restart: str) -> ManagedProcess:
    """A process that runs the first time and whose every later start runs the shell commands
    `on_restart`, which must exit; watched, killed, and restarted until the supervisor gives up.
    """
    marker = tmp_path / "started-once"
    flaky = ManagedProcess(
        "flaky",
        ["sh", "-c", f"test -e {marker} && {{ {on_restart}; }}; touch {marker}; exec sleep 300"],
        tmp_path / "flaky.log",
    )

    def start() -> None:
        flaky.start()
        wait_until(lambda: False, 10, "flaky is ready", abort=flaky.exit_reason)

    flaky.start()
    wait_until(marker.exists, 10, "flaky started once")
    supervisor.watch("flaky", flaky, start).kill()
    wait_until(lambda: supervisor.failure is not None, 20, "the supervisor gives up")
    return flaky


def test_a_process_that_cannot_start_again_ends_supervision_naming_it_and_its_log(
    tmp_path: Path, supervisor: Supervisor, lines: Lines
) -> None:
    # Every later start exits at once, as a process with a taken port.
    flaky = flaky_until_given_up(tmp_path, supervisor, "exit 3")
    assert supervisor.stopping
    failure = supervisor.failure or ""
    assert failure.startswith("flaky failed to start again 3 times in a row")
    assert "exited with code 3" in failure and str(flaky.log_path) in failure
    assert flaky.starts == 4  # the first start and three restarts
    assert sum("did not start again" in line for line in lines) == 2
    assert lines[-1] == f"{failure}; stopping the stack"


def test_a_restart_that_runs_but_waits_on_something_else_does_not_stop_the_stack(
    tmp_path: Path, supervisor: Supervisor, lines: Lines
) -> None:
    """An auth replica restarted while the MySQL primary hangs runs, but is not ready until the
    primary answers: more such tries than `max_failures` must not end the stack."""
    process = sleeper(tmp_path)
    process.start()
    dependency_back = tmp_path / "dependency-back"
    tries: list[int] = []

    def start() -> None:
        tries.append(1)
        if len(tries) > QUICK.max_failures + 1:
            dependency_back.touch()
        process.start()
        wait_until(dependency_back.exists, 0.3, "sleeper is ready", abort=process.exit_reason)

    unit = supervisor.watch("sleeper", process, start)
    restart = unit.wait_restarted(unit.kill(), timeout=20)

    assert supervisor.failure is None and not supervisor.stopping
    assert restart.number == 1 and process.alive
    assert len(tries) == QUICK.max_failures + 2
    not_ready = [line for line in lines if "did not start again" in line]
    assert len(not_ready) == QUICK.max_failures + 1
    assert all("it was running, not counted as a failure" in line for line in not_ready)


def test_a_restart_that_runs_but_is_not_ready_is_left_running_until_it_is(
    tmp_path: Path, supervisor: Supervisor, lines: Lines
) -> None:
    """An auth replica restarted while etcd is away serves reads but is not ready: it was
    killed and started again every 30 s, cutting its calls in flight each time. Kubernetes
    never restarts a container for failing its readiness probe; nor does `make run` now."""
    process = sleeper(tmp_path)
    process.start()
    dependency_back = tmp_path / "dependency-back"
    waits: list[int] = []

    def wait_ready() -> None:
        waits.append(1)
        if len(waits) > QUICK.max_failures + 1:
            dependency_back.touch()
        wait_until(dependency_back.exists, 0.3, "sleeper is ready", abort=process.exit_reason)

    def start() -> None:
        process.start()
        wait_ready()

    unit = supervisor.watch("sleeper", process, start, wait_ready)
    restart = unit.wait_restarted(unit.kill(), timeout=20)

    assert supervisor.failure is None and restart.number == 1 and process.alive
    assert process.starts == 2  # the first start and one restart, never killed since
    assert len(waits) == QUICK.max_failures + 2
    assert sum("left running" in line for line in lines) == 1
    assert not [line for line in lines if "did not start again" in line]


def test_the_line_about_a_start_that_failed_says_why_in_the_process_own_words(
    tmp_path: Path, supervisor: Supervisor, lines: Lines
) -> None:
    why = "configuration error: /state/rpc-ca/ca.crt is not a readable file"
    flaky_until_given_up(tmp_path, supervisor, f"echo '{why}' >&2; exit 2")
    said = [line for line in lines if "did not start again" in line]
    assert said and all(f"exited with code 2, last log line: {why}" in line for line in said)
    assert f"last log line: {why}" in (supervisor.failure or "")


def test_a_report_that_cannot_be_written_does_not_end_supervision(tmp_path: Path) -> None:
    """`make run | head`: once the reader is gone, every print raises BrokenPipeError."""

    def closed_pipe(line: str) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    supervisor = Supervisor(QUICK, report=closed_pipe)
    process = sleeper(tmp_path)
    process.start()
    try:
        unit = supervisor.watch("sleeper", process, process.start)
        first = unit.wait_restarted(unit.kill(), timeout=10)
        second = unit.wait_restarted(unit.kill(), timeout=10)
        assert (first.number, second.number) == (1, 2) and process.alive
    finally:
        supervisor.close()
        process.stop()
