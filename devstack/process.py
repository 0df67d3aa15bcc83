"""`ManagedProcess`: one server process, its log file, and a guarantee it dies with us."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def children_of(pid: int) -> list[int]:
    """The pids of process `pid`'s direct children (none once it is gone)."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            children += [int(child) for child in task.read_text().split()]
    return children


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    def preexec() -> None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # The parent may have died between fork() and prctl(): then nobody would kill us.
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


class _Spawner:
    """Runs every fork on one thread that lives as long as the Python process.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the process.
    A child started from a worker thread (a ThreadPoolExecutor, asyncio.to_thread) would be
    SIGKILLed as soon as that worker ends, so all forks go through this daemon thread.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], object], Future[object]]] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run(self, job: Callable[[], T]) -> T:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="devstack-spawner", daemon=True
                )
                self._thread.start()
            thread = self._thread
        if threading.current_thread() is thread:
            return job()
        future: Future[T] = Future()
        self._jobs.put((job, future))  # type: ignore[arg-type]  # one queue carries jobs of every T
        return future.result()

    def _loop(self) -> None:
        while True:
            job, future = self._jobs.get()
            try:
                future.set_result(job())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                future.set_exception(exc)


_spawner = _Spawner()


class ManagedProcess:
    """A child in its own process group, logging to `log_path` (appended across restarts)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self._popen: subprocess.Popen[bytes] | None = None
        # How often start() and stop() were called: a supervisor tells a stop on purpose from
        # a crash by the second, and a start by someone else by the first.
        self.starts = 0
        self.stops = 0
        self._stops_at_start = 0
        self.started_at = 0.0  # time.monotonic() of the last start

    def __repr__(self) -> str:
        state = "alive" if self.alive else "not running"
        pid = self._popen.pid if self._popen else None
        return f"<ManagedProcess {self.name} pid={pid} {state} log={self.log_path}>"

    def start(self) -> None:
        if self.alive:
            raise RuntimeError(f"{self.name} is already running as pid {self.pid}")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            header = f"---- {stamp} devstack starts {self.name}: {shlex.join(self.argv)}\n"
            log.write(header.encode())
            log.flush()
            parent_pid = os.getpid()
            try:
                self._popen = _spawner.run(
                    lambda: subprocess.Popen(
                        self.argv,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=self.env,
                        cwd=self.cwd,
                        process_group=0,
                        # Only prctl and getppid run between fork and exec.
                        preexec_fn=_die_with_parent(parent_pid),  # noqa: PLW1509
                    )
                )
            except OSError as exc:
                raise RuntimeError(
                    f"could not start {self.name} ({shlex.join(self.argv)}): {exc}; "
                    "is it installed? run `make system-deps`"
                ) from exc
            self.starts += 1
            self._stops_at_start = self.stops
            self.started_at = time.monotonic()

    @property
    def pid(self) -> int:
        if self._popen is None:
            raise RuntimeError(f"{self.name} was never started")
        return self._popen.pid

    @property
    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    @property
    def stopped_on_purpose(self) -> bool:
        """Whether `stop()` was called since the last start (its exit is no crash)."""
        return self.stops != self._stops_at_start

    @property
    def returncode(self) -> int | None:
        return None if self._popen is None else self._popen.poll()

    def exit_reason(self) -> str | None:
        """Why the process is not running (for `wait_until(abort=...)`), or None while it runs."""
        if self._popen is None:
            return f"{self.name} was never started"
        code = self._popen.poll()
        if code is None:
            return None
        # The first line is all a one-line report keeps: the process's last word goes there.
        last = self.last_line()
        said = f", last log line: {last}" if last else ""
        return (
            f"{self.name} (pid {self._popen.pid}) {describe_exit(code)}{said}; "
            f"last log lines:\n{self.tail(15)}"
        )

    def last_line(self, limit: int = 300) -> str:
        """The last line the process wrote to its log (not devstack's own header), cut at
        `limit` characters; empty when it wrote nothing since its last start."""
        for line in reversed(self.tail(50).splitlines()):
            text = line.strip()
            if text.startswith("---- ") and " devstack starts " in text:
                return ""
            if text and not text.startswith("(no log yet"):
                return text if len(text) <= limit else text[: limit - 3] + "..."
        return ""

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout` s; reaps. Returns the exit code.

        A stop on purpose: a supervisor does not restart the process until it is started again.
        """
        self.stops += 1
        if self._popen is None:
            return None
        if self._popen.poll() is None:
            self._signal(signal.SIGTERM)
            self._signal(signal.SIGCONT)  # a paused process would never see the SIGTERM
            try:
                return self._popen.wait(timeout)
            except subprocess.TimeoutExpired:
                print(
                    f"devstack: {self.name} (pid {self.pid}) ignored SIGTERM for {timeout:g} s; "
                    f"sending SIGKILL (see {self.log_path})",
                    file=sys.stderr,
                )
        return self.kill()

    def terminate(self) -> None:
        """SIGTERM to the main process only, without waiting: it shuts its own children down."""
        if self._popen is not None and self._popen.poll() is None:
            os.kill(self._popen.pid, signal.SIGTERM)

    def kill(self) -> int | None:
        """SIGKILL the process group and reap it."""
        if self._popen is None:
            return None
        if self._popen.poll() is None:
            self._signal(signal.SIGKILL)
        return self._popen.wait(30)

    def send(self, signum: int) -> None:
        """`signum` to the process group, without waiting (a fault a supervisor answers)."""
        self._signal(signum)

    def kill_leftovers(self) -> None:
        """SIGKILL what is left of the group of a process that has exited (workers it forked).

        The kernel hands out no pid while a process group of that number has members, so the
        group id still names them; once none is left, the call finds nobody (ESRCH), unless
        the pid came round again as a new group leader in between: called right after the
        exit is noticed, that takes a wrap-around of the pid space.
        """
        if self._popen is None or self._popen.poll() is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._popen.pid, signal.SIGKILL)

    def child_pids(self) -> list[int]:
        """The pids of the process's direct children (e.g. HTTP workers); empty when dead."""
        return children_of(self.pid) if self.alive else []

    def pause(self) -> None:
        """SIGSTOP: the process keeps its sockets open but answers nothing (a hung server)."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def tail(self, n: int = 20) -> str:
        """The last `n` lines of the log, for error messages."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(0, os.SEEK_END)
                size = log.tell()
                log.seek(max(0, size - 64 * 1024))
                data = log.read()
        except FileNotFoundError:
            return f"(no log yet at {self.log_path})"
        lines = data.decode(errors="replace").splitlines()[-n:]
        return "\n".join(f"    {line}" for line in lines)

    def _signal(self, signum: int) -> None:
        if self._popen is None or self._popen.poll() is not None:
            return  # reaped: its pid (= group id) may already belong to someone else
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._popen.pid, signum)


def describe_exit(returncode: int) -> str:
    """ "exited with code 1" or "was killed by SIGKILL" for a Popen return code."""
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"was killed by {name}"
