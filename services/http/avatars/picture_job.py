"""One picture decode in a child process of the decode pool (services.http.avatars.decode_pool).

The child limits itself first: RLIMIT_AS bounds its address space (an allocation beyond it
fails, and Pillow raises MemoryError), RLIMIT_CPU its CPU time (the kernel sends SIGXCPU at the
soft limit, which ends the process even inside C code, and SIGKILL one second later). Each
child decodes exactly one picture, so the CPU limit is the limit of that one job. It sends one
reply on `connection`; a child that dies sends none.
"""

from __future__ import annotations

import resource
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


@dataclass(frozen=True)
class JobLimits:
    cpu_seconds: int
    memory_bytes: int
    picture: PictureLimits


@dataclass(frozen=True)
class JobReply:
    """What the child answers: a picture, or a refusal, and what the job cost."""

    picture: Picture | None
    refusal: tuple[int, str, str] | None  # status code, error code, message
    out_of_memory: bool
    decoder_failed: bool  # the decoder raised: damaged data, or memory it could not get
    cpu_seconds: float
    peak_rss_bytes: int


def run_job(connection: Connection, upload: bytes, limits: JobLimits) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
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
            peak_rss_bytes=usage.ru_maxrss * 1024,
        )
    )
    connection.close()
