"""The CPU limits a picture decode's child sets on itself (services.http.avatars.picture_job),
in real child processes: its user time is the decode's budget, and system time (page faults,
whose cost the host decides) counts only against the looser limit on both together."""

from __future__ import annotations

import multiprocessing
import resource
import signal
import time
from collections.abc import Callable

import pytest

from services.http.avatars.decode_pool import job_limits
from services.http.avatars.picture_job import (
    CPU_LIMIT_SIGNALS,
    TOTAL_CPU_FACTOR,
    JobLimits,
    limit_self,
)
from services.http.settings import HttpSettings

# Each child imports this module before it limits itself, and RLIMIT_CPU counts that CPU time
# too: importing tests.http.test_decode_pool here (1.5 s of CPU, its hostile pictures made at
# import) once let the 3 s total limit (SIGXCPU) come before 1 s of user time (SIGVTALRM).
DEFAULTS = job_limits(HttpSettings(csrf_secret="csrf-secret-of-the-cpu-limit-tests-0123456789"))
ONE_SECOND = JobLimits(cpu_seconds=1, memory_bytes=DEFAULTS.memory_bytes, picture=DEFAULTS.picture)
# Every loop below also ends after this long, whatever the limits do.
WALL_SECONDS = 60.0


def burn_system_time(limits: JobLimits, seconds: float) -> None:
    """Reading /dev/zero is almost all kernel time: the kernel fills the buffer."""
    limit_self(limits)
    buffer = bytearray(16 * 1024 * 1024)
    deadline = time.monotonic() + WALL_SECONDS
    with open("/dev/zero", "rb", buffering=0) as zeros:
        while resource.getrusage(resource.RUSAGE_SELF).ru_stime < seconds:
            zeros.readinto(buffer)
            assert time.monotonic() < deadline, "the system time never came"


def burn_user_time(limits: JobLimits, seconds: float) -> None:
    limit_self(limits)
    deadline = time.monotonic() + WALL_SECONDS
    while resource.getrusage(resource.RUSAGE_SELF).ru_utime < seconds:
        sum(range(10_000))
        assert time.monotonic() < deadline, "the user time never came"


def burn_user_time_with_the_limits_blocked(limits: JobLimits, seconds: float) -> None:
    """As a child of a process that blocked the limits' signals (the mask is inherited)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, CPU_LIMIT_SIGNALS)
    burn_user_time(limits, seconds)


def exit_code_of(target: Callable[[JobLimits, float], None], seconds: float) -> int:
    process = multiprocessing.get_context("forkserver").Process(
        target=target, args=(ONE_SECOND, seconds), daemon=True
    )
    process.start()
    process.join(WALL_SECONDS + 10)
    if process.exitcode is None:
        process.kill()
        process.join()
        raise AssertionError(f"the child ran for {WALL_SECONDS + 10} s")
    exit_code: int = process.exitcode
    return exit_code


def test_system_time_past_the_limit_does_not_stop_a_job() -> None:
    # 1.2 s of page faults or zero-filling is not decoding work. Past the user-time limit (1 s),
    # and well under the limit on both together (3 s): the kernel splits a process's CPU time
    # into user and system time by its ticks, and with 1.5 s one full run on a loaded host saw
    # the total reach 3 s first (SIGXCPU).
    assert exit_code_of(burn_system_time, 1.2) == 0


def test_user_time_past_the_limit_ends_the_job() -> None:
    assert exit_code_of(burn_user_time, 5.0) == -signal.SIGVTALRM


def test_a_blocked_signal_mask_does_not_lift_the_limit() -> None:
    assert exit_code_of(burn_user_time_with_the_limits_blocked, 5.0) == -signal.SIGVTALRM


def test_a_job_cannot_be_given_no_cpu_time() -> None:
    # setitimer(0) would switch the user-time limit off.
    with pytest.raises(ValueError, match="needs CPU time"):
        JobLimits(cpu_seconds=0, memory_bytes=ONE_SECOND.memory_bytes, picture=ONE_SECOND.picture)


def test_user_and_system_time_together_have_their_own_limit() -> None:
    assert TOTAL_CPU_FACTOR * ONE_SECOND.cpu_seconds < 10
    assert exit_code_of(burn_system_time, 10.0) == -signal.SIGXCPU
