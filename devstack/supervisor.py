"""`Supervisor`: restarts the local stack's processes when they die, as Kubernetes'
`restartPolicy: Always` does, until the stack stops or a process cannot be started again.

Each watched process has a thread that polls it. When it exits without a stop on purpose
(`ManagedProcess.stop`) and the stack is not stopping, the thread kills what is left of its
process group, prints one line, waits out the backoff and starts it with its own start
function: the same command line, settings, ports and data directory, waiting until it is ready.
A restart whose process exits before it is ready counts as a failure; `max_failures` of them in
a row end the stack (`failure` says which process and where its log is). One still running when
its wait for readiness times out (waiting on a store that hangs) is killed and tried again, but
does not count: a dependency's outage does not bring the whole stack down.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

from devstack.process import ManagedProcess, describe_exit

Report = Callable[[str], None]
# How often a watcher looks at its process: a death is noticed within this.
_POLL_SECONDS = 0.1


@dataclass(frozen=True)
class RestartPolicy:
    """Backoff between restarts, doubling from `first_delay` to `max_delay`; back to
    `first_delay` once the process has run `reset_after` seconds. `max_failures` restarts
    in a row whose process exits before it is ready stop the stack."""

    first_delay: float = 0.5
    max_delay: float = 10.0
    reset_after: float = 10.0
    max_failures: int = 5

    def __post_init__(self) -> None:
        if not 0 < self.first_delay <= self.max_delay:
            raise ValueError("first_delay must be positive and at most max_delay")
        if self.max_failures < 1:
            raise ValueError("max_failures must be at least 1")

    def delay(self, quick_deaths: int) -> float:
        """The wait before the restart after `quick_deaths` exits in a row (1 for the first)."""
        doublings = min(max(quick_deaths - 1, 0), 30)
        return min(self.first_delay * float(2**doublings), self.max_delay)


@dataclass(frozen=True)
class Restart:
    """One death and what followed: `ready_at` (time.monotonic()) once it serves again."""

    number: int
    pid: int
    how: str  # "was killed by SIGKILL", "exited with code 1"
    died_at: float
    ready_at: float | None = None


@dataclass(eq=False)
class Supervised:
    """One watched process, and the handle drills use to hurt it and wait for its return."""

    name: str
    process: ManagedProcess
    start: Callable[[], None]  # starts the process and returns once it is ready
    # Waits (a while) until the running process is ready, raising if it is not. With it, a
    # restarted process that runs but is not ready is left running, as Kubernetes leaves a
    # container that fails its readiness probe; without it (the data stores), tried again.
    wait_ready: Callable[[], None] | None = None
    restarts: int = 0  # restarts that got the process ready again
    history: list[Restart] = field(default_factory=list)
    restarting: bool = False
    _changed: threading.Condition = field(default_factory=threading.Condition)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    @property
    def up(self) -> bool:
        """Running, and not in the middle of a restart (so ready as far as we know)."""
        return self.process.alive and not self.restarting

    def kill(self, signum: int = signal.SIGKILL) -> int:
        """Send `signum` to the process group; returns the restart count to wait for."""
        expected = self.restarts + 1
        self.process.send(signum)
        return expected

    def pause(self) -> None:
        """SIGSTOP: alive, holding its sockets, answering nothing. Not a death: no restart."""
        self.process.pause()

    def resume(self) -> None:
        self.process.resume()

    def wait_restarted(self, count: int, timeout: float = 60.0) -> Restart:
        """Wait until restart number `count` has the process ready again; returns it."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.restarts < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"{self.name} was not restarted {count} time(s) within {timeout:g} s "
                        f"({self.restarts} so far); see {self.log_path}"
                    )
                self._changed.wait(remaining)
            return next(r for r in self.history if r.number == count)

    def _set_restarting(self, restarting: bool) -> None:
        with self._changed:
            self.restarting = restarting
            self._changed.notify_all()

    def _count(self, restart: Restart) -> None:
        with self._changed:
            self.history.append(restart)
            self.restarts = restart.number
            self.restarting = False
            self._changed.notify_all()


class Supervisor:
    """Watches processes (`watch`) and restarts them; `close` ends it all."""

    def __init__(self, policy: RestartPolicy | None = None, *, report: Report) -> None:
        self.policy = policy or RestartPolicy()
        self._reporter = report
        self._units: dict[str, Supervised] = {}
        self._threads: list[threading.Thread] = []
        self._shutdown_requested = False  # set from signal handlers: no lock may be taken there
        self._stopping = threading.Event()
        self._failure: str | None = None

    @property
    def stopping(self) -> bool:
        """Whether the stack is stopping: from now on every exit is expected."""
        return self._shutdown_requested or self._stopping.is_set()

    @property
    def failure(self) -> str | None:
        """Why the supervisor gave up (a process that would not start again), or None."""
        return self._failure

    def request_shutdown(self) -> None:
        """Safe in a signal handler: takes no lock; `wait` notices it within 0.1 s."""
        self._shutdown_requested = True

    def begin_shutdown(self) -> None:
        self._shutdown_requested = True
        self._stopping.set()

    def wait(self) -> None:
        """Return once shutdown is requested or the supervisor gave up.

        Polls, so that a signal handler needs nothing but `request_shutdown`.
        """
        while not self.stopping:
            time.sleep(_POLL_SECONDS)
        self.begin_shutdown()

    def watch(
        self,
        name: str,
        process: ManagedProcess,
        start: Callable[[], None],
        wait_ready: Callable[[], None] | None = None,
    ) -> Supervised:
        """Watch `process` (already started); `start()` brings it back and waits until ready;
        `wait_ready()`, if given, waits again for one left running (Supervised.wait_ready)."""
        if name in self._units:
            raise ValueError(f"{name} is watched already")
        unit = Supervised(name, process, start, wait_ready)
        self._units[name] = unit
        thread = threading.Thread(
            target=self._watch, args=(unit,), name=f"devstack-supervise-{name}", daemon=True
        )
        self._threads.append(thread)
        thread.start()
        return unit

    def get(self, name: str) -> Supervised:
        try:
            return self._units[name]
        except KeyError:
            known = ", ".join(self._units) or "none"
            raise KeyError(f"no process named {name!r} is supervised (known: {known})") from None

    @property
    def units(self) -> list[Supervised]:
        return list(self._units.values())

    def close(self) -> None:
        """Stop supervising: no restart begins after this; a restart under way is undone.

        Call it after stopping the processes; it stops any that a restart started meanwhile.
        """
        self.begin_shutdown()
        for thread, unit in zip(self._threads, self._units.values(), strict=True):
            while thread.is_alive():
                thread.join(_POLL_SECONDS)
                if thread.is_alive() and unit.process.alive:
                    unit.process.stop()

    # The watcher thread of one process.

    def _watch(self, unit: Supervised) -> None:
        process = unit.process
        quick_deaths = 0
        while self._wait_for(lambda: not process.alive):
            if process.stopped_on_purpose:
                # Not a crash: watch it again once someone starts it again.
                if not self._wait_for(partial(_started_since, process, process.starts)):
                    return
                continue
            process.kill_leftovers()
            died_at = time.monotonic()
            ran_long = died_at - process.started_at >= self.policy.reset_after
            quick_deaths = 1 if ran_long else quick_deaths + 1
            if not self._restart(unit, quick_deaths, died_at):
                return

    def _restart(self, unit: Supervised, quick_deaths: int, died_at: float) -> bool:
        """Restart until the process is ready; False once the stack stops."""
        process = unit.process
        returncode = process.returncode
        if returncode is None:  # started again by someone else since _watch looked
            return True
        death = Restart(unit.restarts + 1, process.pid, describe_exit(returncode), died_at)
        unit._set_restarting(True)
        try:
            delay = self.policy.delay(quick_deaths)
            # The first delay is also a grace for a SIGTERM sent to the whole group, which
            # killed this process too, to reach the supervisor: then this exit is expected.
            settle = min(delay, self.policy.first_delay)
            if not self._pause(settle) or self._taken_over(process):
                return not self.stopping
            later = f" in {delay - settle:g} s" if delay > settle else ""
            self._report(
                f"{unit.name} (pid {death.pid}) {death.how}; restarting it{later} "
                f"(restart {death.number}, log {unit.log_path})"
            )
            return self._start_again(unit, death, quick_deaths, delay - settle)
        finally:
            unit._set_restarting(False)

    def _start_again(
        self, unit: Supervised, death: Restart, quick_deaths: int, delay: float
    ) -> bool:
        process = unit.process
        failures = 0  # starts in a row that ended with the process exiting
        tries = 0
        while True:
            if not self._pause(delay):
                return False
            if self._taken_over(process):
                return True
            try:
                unit.start()
            except Exception as exc:  # noqa: BLE001 - counted, reported, tried again
                if self.stopping:
                    return False
                if process.stopped_on_purpose:
                    return True
                # Still running when the wait for readiness ended: it waits on something
                # else (a hung MySQL primary, etcd), as a pod that fails its readiness probe
                # does. Left running when it can be waited for (it may serve part of its
                # calls meanwhile), else tried again; either way only exits count.
                running = process.alive
                if running and unit.wait_ready is not None:
                    return self._left_running(unit, death, exc)
                process.kill()  # a start that timed out may have left it running
                tries += 1
                if not running:
                    failures += 1
                if failures >= self.policy.max_failures:
                    self._give_up(unit, failures, exc)
                    return False
                delay = self.policy.delay(quick_deaths + tries)
                counted = "; it was running, not counted as a failure" if running else ""
                self._report(
                    f"{unit.name} did not start again ({_first_line(exc)}{counted}); "
                    f"try {tries + 1} in {delay:g} s (log {unit.log_path})"
                )
                continue
            if self.stopping:
                process.stop()
                return False
            unit._count(replace(death, ready_at=time.monotonic()))
            self._report(
                f"{unit.name} is back (pid {process.pid}), "
                f"ready {time.monotonic() - death.died_at:.1f} s after it died"
            )
            return True

    def _left_running(self, unit: Supervised, death: Restart, why: Exception) -> bool:
        """Wait for a restarted process that runs but is not ready, without killing it; True
        once it is ready or has died again (the watcher then sees the death)."""
        assert unit.wait_ready is not None
        process = unit.process
        self._report(
            f"{unit.name} runs again (pid {process.pid}) but is not ready"
            f" ({_first_line(why)}); left running, as Kubernetes leaves a container that fails"
            " its readiness probe, until it is ready"
        )
        while True:
            try:
                unit.wait_ready()
            except Exception:  # noqa: BLE001 - not ready yet, or dead: looked at below
                if self.stopping:
                    return False
                if not process.alive:
                    return True
                continue
            unit._count(replace(death, ready_at=time.monotonic()))
            self._report(
                f"{unit.name} is ready (pid {process.pid}),"
                f" {time.monotonic() - death.died_at:.1f} s after it died"
            )
            return True

    def _report(self, line: str) -> None:
        """One line to the operator. Saying it cannot fail the watcher: with stdout a pipe
        whose reader is gone (`make run | head`) or a file on a full disk, an exception here
        ended the thread, and its process was never restarted again."""
        with contextlib.suppress(Exception):  # nobody to tell; supervising matters more
            self._reporter(line)

    @staticmethod
    def _taken_over(process: ManagedProcess) -> bool:
        """Whether someone else started or stopped the process while a restart waited."""
        return process.alive or process.stopped_on_purpose

    def _give_up(self, unit: Supervised, failures: int, error: BaseException) -> None:
        self._failure = (
            f"{unit.name} failed to start again {failures} times in a row "
            f"(last: {_first_line(error)}); see its log {unit.log_path}"
        )
        self._report(f"{self._failure}; stopping the stack")
        self.begin_shutdown()

    def _wait_for(self, condition: Callable[[], bool]) -> bool:
        """Wait until `condition()`: True, or until the stack stops: False."""
        while not self.stopping:
            if condition():
                return not self.stopping
            self._stopping.wait(_POLL_SECONDS)
        return False

    def _pause(self, seconds: float) -> bool:
        """Wait `seconds`: True, or until the stack stops: False."""
        deadline = time.monotonic() + seconds
        while not self.stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            self._stopping.wait(min(_POLL_SECONDS, remaining))
        return False


def _started_since(process: ManagedProcess, starts: int) -> bool:
    return process.starts != starts


def _first_line(error: BaseException) -> str:
    return (str(error) or type(error).__name__).splitlines()[0]
