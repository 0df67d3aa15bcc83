"""One picture decode in a child process of the decode pool (services.http.avatars.decode_pool).

The child limits itself first (`limit_self`): RLIMIT_AS bounds its address space (an
allocation beyond it fails, and Pillow raises MemoryError), and two timers its CPU time; each
ends the process even inside C code. Each child decodes exactly one picture, so its CPU limits
are the limits of that one job. It sends one reply on `connection`; a child that dies sends
none.

The decoding work is what the CPU limit is for, and it runs in user mode: ITIMER_VIRTUAL, which
counts user time only, sends SIGVTALRM (whose default action ends the process) at
`cpu_seconds`. Kernel time is mostly the page faults of the memory the decode fills, which
RLIMIT_AS already bounds, and their cost depends on the host, not on the picture: on a virtual
machine a first-touched page cost 9.8 us of system time where a recycled one cost 1.7 us. The
largest picture the limits allow fills 284 MiB (72,700 pages) and takes about 0.07 s of user
time and 0.15 s of system time alone here, yet in two full test runs two of four decoded at
once were stopped by a 2 s limit on both together. RLIMIT_CPU still bounds user and system time
together, at `TOTAL_CPU_FACTOR` times `cpu_seconds` (SIGXCPU, then SIGKILL a second later).
"""

from __future__ import annotations

import math
import resource
import signal
from dataclasses import dataclass
from multiprocessing.connection import Connection

from PIL import Image

from services.http.avatars.picture_limits import PictureLimits
from services.http.avatars.pictures import (
    DecodeOutOfMemory,
    Picture,
    PictureRefused,
    process_picture,
)

# Imported by the fork server, which every child is forked from: load Pillow's format plugins
# there once (Image.open would in each child, ~40 ms of CPU per upload).
Image.init()

# RLIMIT_CPU, on user and system time together, as a multiple of the user-time limit.
TOTAL_CPU_FACTOR = 3
# The signals by which the kernel ends a child over a CPU limit.
CPU_LIMIT_SIGNALS = frozenset({signal.SIGVTALRM, signal.SIGXCPU})


@dataclass(frozen=True)
class JobLimits:
    cpu_seconds: float  # of user time
    memory_bytes: int
    picture: PictureLimits

    def __post_init__(self) -> None:
        # setitimer(0) would switch the user-time limit off.
        if self.cpu_seconds <= 0:
            raise ValueError(f"a job needs CPU time to run, not {self.cpu_seconds} s")

    @property
    def total_cpu_seconds(self) -> int:
        """RLIMIT_CPU's soft limit: user and system time together."""
        return math.ceil(self.cpu_seconds * TOTAL_CPU_FACTOR)


@dataclass(frozen=True)
class JobReply:
    """What the child answers: a picture, or a refusal, and what the job cost."""

    picture: Picture | None
    refusal: tuple[int, str, str] | None  # status code, error code, message
    out_of_memory: bool
    decoder_failed: bool  # the decoder raised: damaged data, or memory it could not get
    cpu_seconds: float  # user and system time
    user_seconds: float  # what the user-time limit counted
    peak_rss_bytes: int


def limit_self(limits: JobLimits) -> None:
    """First thing in the child: everything after it runs under the job's limits."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    # Default actions, and delivered: a mask or disposition inherited from the fork server
    # would turn either limit into the hard limit's SIGKILL, or into none.
    for limit_signal in CPU_LIMIT_SIGNALS:
        signal.signal(limit_signal, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, CPU_LIMIT_SIGNALS)
    signal.setitimer(signal.ITIMER_VIRTUAL, limits.cpu_seconds)
    total = limits.total_cpu_seconds
    resource.setrlimit(resource.RLIMIT_CPU, (total, total + 1))


def run_job(connection: Connection, upload: bytes, limits: JobLimits) -> None:
    limit_self(limits)
    picture: Picture | None = None
    refusal: tuple[int, str, str] | None = None
    out_of_memory = decoder_failed = False
    try:
        picture = process_picture(upload, limits.picture)
    except PictureRefused as refused:
        refusal = (refused.status_code, refused.code, refused.message)
        out_of_memory = isinstance(refused, DecodeOutOfMemory)
        decoder_failed = refused.while_decoding
    usage = resource.getrusage(resource.RUSAGE_SELF)
    connection.send(
        JobReply(
            picture=picture,
            refusal=refusal,
            out_of_memory=out_of_memory,
            decoder_failed=decoder_failed,
            cpu_seconds=usage.ru_utime + usage.ru_stime,
            user_seconds=usage.ru_utime,
            peak_rss_bytes=usage.ru_maxrss * 1024,
        )
    )
    connection.close()
