"""The pool of child processes that decode pictures, each job under CPU and memory limits.

    pool = DecodePool(size=1, limits=JobLimits(...))
    await pool.start()                  # in the lifespan: starts the fork server
    picture = await pool.decode(upload) # ApiError 400 / 415 when it cannot become a picture
    await pool.close()

Each HTTP worker process has its own pool. A pre-started fork server (multiprocessing's
"forkserver": a single-threaded process that has imported Pillow once) forks one fresh child
per job, so a child starts in a few milliseconds without copying the worker's threads, and
RLIMIT_CPU, which counts a process's whole life, limits exactly one job. A child that exceeds
a limit dies or fails alone: the upload is answered 400 `invalid_image`, the next job gets a
new child, and jobs in other children are unaffected. At most `size` children run at once;
further uploads wait for one to finish.

concurrent.futures.ProcessPoolExecutor does not fit: when one of its children dies, the
executor is broken and fails every job in flight.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
import time
from dataclasses import dataclass
from multiprocessing.context import ForkServerContext, ForkServerProcess
from multiprocessing.forkserver import ensure_running

from services.http.errors import ApiError
from services.http.metrics import PICTURE_DECODE_CPU_SECONDS, PICTURE_DECODES
from services.http.picture_job import JobLimits, JobReply, run_job
from services.http.picture_limits import PictureLimits
from services.http.pictures import Picture, PictureRefused
from services.http.settings import HttpSettings

log = logging.getLogger(__name__)

# What the fork server imports once, so that each child starts with Pillow loaded.
_PRELOAD = ["services.http.picture_job"]
# Killed children are logged at most once per this many seconds per worker.
_LOG_INTERVAL_SECONDS = 60.0


def job_limits(settings: HttpSettings) -> JobLimits:
    return JobLimits(
        cpu_seconds=settings.picture_cpu_seconds,
        memory_bytes=settings.picture_memory_bytes,
        picture=PictureLimits(
            max_side=settings.picture_max_side,
            max_pixels=settings.picture_max_pixels,
            max_aspect_ratio=settings.picture_max_aspect_ratio,
            max_jpeg_scans=settings.picture_max_jpeg_scans,
        ),
    )


def api_error(refused: PictureRefused) -> ApiError:
    return ApiError(refused.status_code, refused.code, refused.message)


def over_limit() -> ApiError:
    return ApiError(
        400,
        "invalid_image",
        "the picture cannot be used: decoding it takes too much CPU time or memory",
    )


@dataclass
class _Job:
    process: ForkServerProcess | None = None


class DecodePool:
    def __init__(self, size: int, limits: JobLimits) -> None:
        self._limits = limits
        self._slots = asyncio.Semaphore(size)
        self._context: ForkServerContext = multiprocessing.get_context("forkserver")
        self._last_kill_logged = -_LOG_INTERVAL_SECONDS
        self._busy: set[ForkServerProcess] = set()

    async def start(self) -> None:
        """Start the fork server now rather than on the first upload."""
        self._context.set_forkserver_preload(_PRELOAD)
        await asyncio.to_thread(ensure_running)

    async def close(self) -> None:
        # The fork server exits by itself when this process's end of its pipe closes.
        return None

    def busy_children(self) -> list[ForkServerProcess]:
        """The children decoding right now."""
        return list(self._busy)

    async def decode(self, upload: bytes) -> Picture:
        async with self._slots:
            job = _Job()
            try:
                reply, exit_code = await asyncio.to_thread(self._run, job, upload)
            finally:
                if job.process is not None and job.process.exitcode is None:
                    job.process.kill()  # the request was cancelled: stop its decode too
        return self._outcome(reply, exit_code)

    def _run(self, job: _Job, upload: bytes) -> tuple[JobReply | None, int | None]:
        """In a thread: one child, its reply (None when it died) and its exit code."""
        receiver, sender = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=run_job, args=(sender, upload, self._limits), daemon=True, name="picture-decode"
        )
        try:
            process.start()
            job.process = process
            self._busy.add(process)
            sender.close()
            try:
                reply: JobReply | None = receiver.recv()
            except EOFError:
                reply = None
            process.join()
            return reply, process.exitcode
        finally:
            self._busy.discard(process)
            sender.close()
            receiver.close()

    def _outcome(self, reply: JobReply | None, exit_code: int | None) -> Picture:
        if reply is None:
            PICTURE_DECODES.labels("killed").inc()
            self._log_kill(exit_code)
            raise over_limit()
        PICTURE_DECODE_CPU_SECONDS.observe(reply.cpu_seconds)
        if reply.picture is not None:
            PICTURE_DECODES.labels("ok").inc()
            return reply.picture
        assert reply.refusal is not None
        PICTURE_DECODES.labels("out_of_memory" if reply.out_of_memory else "refused").inc()
        status_code, code, message = reply.refusal
        raise ApiError(status_code, code, message)

    def _log_kill(self, exit_code: int | None) -> None:
        now = time.monotonic()
        if now - self._last_kill_logged < _LOG_INTERVAL_SECONDS:
            return
        self._last_kill_logged = now
        cause = (
            signal.Signals(-exit_code).name
            if exit_code is not None and exit_code < 0
            else f"exit code {exit_code}"
        )
        log.warning(
            "a picture decode was stopped (%s): over its limit of %d CPU seconds or %d bytes; "
            "repeats are logged once a minute",
            cause,
            self._limits.cpu_seconds,
            self._limits.memory_bytes,
        )
