"""The pool of child processes that decode pictures, each job under CPU and memory limits.

    pool = DecodePool(size=1, limits=JobLimits(...), fast=FastLane(...), queue_timeout=10.0)
    await pool.start()                  # in the lifespan: starts the fork server
    picture = await pool.decode(upload) # ApiError 400 / 415 when it cannot become a picture
    await pool.close()

Each HTTP worker process has its own pool. A pre-started fork server (multiprocessing's
"forkserver": a single-threaded process that has imported Pillow once) forks one fresh child
per job, so a child starts in a few milliseconds without copying the worker's threads, and its
CPU limits, set as it starts, limit exactly one job. A child that exceeds a limit dies or fails
alone: the upload is answered 400 `invalid_image`, the next job gets a new child, and jobs in
other children are unaffected.

Two lanes: pictures whose header promises few decoded pixels (a phone's JPEG decodes at 1/8
of its size) take the fast lane, whose children get a smaller memory limit; the others wait
for the main lane's `size` children. So four large uploads at once delay nobody's small one.
A header can lie, and a decoder can fail for lack of memory without saying so (libjpeg reports
it as broken data): a fast-lane job whose decoder failed, or that died of anything but its CPU
limit, is run again in the main lane, with the user time the first run left of the limit (a
child that died reports none: its lifetime, from start to end, is counted instead); with less
than MIN_CPU_SECONDS_LEFT left it is not run, and counted as `no_cpu_left`. An upload crafted
to fail in the fast lane after spending CPU (a large progressive JPEG, decoded at 1/8 yet every
scan of it, then cut short) would otherwise cost twice the limit.

An upload waits at most `queue_timeout` seconds (GATEHOUSE_CALL_TIMEOUT) for a child, in
both lanes together; past it, 503 with Retry-After. How many wait is bounded upstream
(services.http.middleware.upload_limit), and a cancelled request (its client left:
services.http.middleware.disconnect) leaves the queue or kills its child, also one still being
started; its slot is free once that child is gone, so children never outnumber the slots.

Each child is started and waited for by a thread of the pool's own, one per slot: on the event
loop's default pool a job could wait behind other blocking work (name lookups, /metrics) after
taking its slot, where the queue timeout no longer applies.

concurrent.futures.ProcessPoolExecutor does not fit: when one of its children dies, the
executor is broken and fails every job in flight.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import multiprocessing
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.context import ForkServerContext, ForkServerProcess
from multiprocessing.forkserver import ensure_running

from services.foundation.log_throttle import RepeatedWarnings
from services.http.avatars.picture_header import declared_size, decoded_pixels
from services.http.avatars.picture_job import CPU_LIMIT_SIGNALS, JobLimits, JobReply, run_job
from services.http.avatars.picture_limits import PictureLimits
from services.http.avatars.pictures import PICTURE_SIZE, Picture, PictureRefused
from services.http.errors import RETRY_AFTER_SECONDS, ApiError
from services.http.metrics import (
    PICTURE_DECODE_CPU_SECONDS,
    PICTURE_DECODE_PEAK_BYTES,
    PICTURE_DECODES,
)
from services.http.settings import HttpSettings

log = logging.getLogger(__name__)

# What the fork server imports once, so that each child starts with Pillow loaded.
_PRELOAD = ["services.http.avatars.picture_job"]
# Stopped children are logged at most once per this many seconds per worker.
_LOG_INTERVAL_SECONDS = 60.0
DEFAULT_QUEUE_TIMEOUT_SECONDS = 10.0
# A main-lane retry with less CPU time than this left would be stopped at once.
MIN_CPU_SECONDS_LEFT = 0.05


@dataclass(frozen=True)
class FastLane:
    decoders: int
    max_decoded_pixels: int
    memory_bytes: int


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


def fast_lane(settings: HttpSettings) -> FastLane:
    return FastLane(
        decoders=settings.picture_fast_decoders,
        max_decoded_pixels=settings.picture_fast_max_pixels,
        memory_bytes=settings.picture_fast_memory_bytes,
    )


def api_error(refused: PictureRefused) -> ApiError:
    return ApiError(refused.status_code, refused.code, refused.message)


def decoders_busy() -> ApiError:
    return ApiError(
        503,
        "overloaded",
        f"every picture decoder is busy; retry in {RETRY_AFTER_SECONDS} s",
        {"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def over_limit() -> ApiError:
    return ApiError(
        400,
        "invalid_image",
        "the picture cannot be used: decoding it takes too much CPU time or memory",
    )


def user_time_spent(reply: JobReply | None, lifetime: float) -> float:
    """What a run counts against its upload's CPU limit: the user time its child reported or,
    when it died without a reply, its lifetime (at least its CPU time: it has one thread)."""
    return reply.user_seconds if reply is not None else lifetime


def limits_left(limits: JobLimits, spent: float) -> JobLimits | None:
    """`limits` less `spent` seconds of user time; None when too little is left to run."""
    left = limits.cpu_seconds - spent
    if left < MIN_CPU_SECONDS_LEFT:
        return None
    return dataclasses.replace(limits, cpu_seconds=left)


@dataclass
class _Job:
    process: ForkServerProcess | None = None
    cancelled: bool = False

    def started(self, process: ForkServerProcess) -> None:
        """In the job's thread, once its child runs: kill it if the request was cancelled while
        it was starting."""
        self.process = process
        if self.cancelled:
            process.kill()

    def cancel(self) -> None:
        """On the event loop: the request was cancelled; stop its child, now or once started.
        (Each side sets its attribute before reading the other's, so one of them kills.)"""
        self.cancelled = True
        if self.process is not None and self.process.exitcode is None:
            self.process.kill()


@dataclass(frozen=True)
class _Lane:
    name: str
    slots: asyncio.Semaphore
    limits: JobLimits


@dataclass(frozen=True)
class _Result:
    lane: _Lane
    limits: JobLimits  # the job's: its lane's, or what a retry had left
    reply: JobReply | None  # None: the child died
    exit_code: int | None
    seconds: float  # from the child's start to its end: at least its CPU time (one thread)

    @property
    def may_need_more_memory(self) -> bool:
        if self.reply is not None:
            return self.reply.decoder_failed
        # A CPU limit's signal says so; another may be a failed allocation gone badly.
        return self.exit_code is None or -self.exit_code not in CPU_LIMIT_SIGNALS


def _free_slot(lane: _Lane, work: asyncio.Future[_Result]) -> None:
    lane.slots.release()
    if not work.cancelled():
        work.exception()  # retrieved: a cancelled request no longer awaits it


class DecodePool:
    def __init__(
        self,
        size: int,
        limits: JobLimits,
        fast: FastLane | None = None,
        queue_timeout: float = DEFAULT_QUEUE_TIMEOUT_SECONDS,
    ) -> None:
        self._queue_timeout = queue_timeout
        self._main = _Lane("main", asyncio.Semaphore(size), limits)
        self._fast: _Lane | None = None
        self._fast_max_pixels = 0
        slots = size
        if fast is not None and fast.decoders > 0:
            fast_limits = dataclasses.replace(limits, memory_bytes=fast.memory_bytes)
            self._fast = _Lane("fast", asyncio.Semaphore(fast.decoders), fast_limits)
            self._fast_max_pixels = fast.max_decoded_pixels
            slots += fast.decoders
        self._threads = ThreadPoolExecutor(slots, thread_name_prefix="picture-decode")
        self._context: ForkServerContext = multiprocessing.get_context("forkserver")
        self._stops = RepeatedWarnings(log, _LOG_INTERVAL_SECONDS)
        self._busy: set[ForkServerProcess] = set()

    async def start(self) -> None:
        """Start the fork server now rather than on the first upload."""
        self._context.set_forkserver_preload(_PRELOAD)
        await asyncio.to_thread(ensure_running)

    async def close(self) -> None:
        # The fork server exits by itself when this process's end of its pipe closes.
        self._threads.shutdown(wait=False)

    def busy_children(self) -> list[ForkServerProcess]:
        """The children decoding right now."""
        return list(self._busy)

    async def decode(self, upload: bytes) -> Picture:
        queue_deadline = asyncio.get_running_loop().time() + self._queue_timeout
        if self._fast is not None and self._fits_fast_lane(upload):
            result = await self._run_in(self._fast, upload, queue_deadline)
            if not result.may_need_more_memory:
                return self._outcome(result)
            self._count(result)
            retry = limits_left(self._main.limits, user_time_spent(result.reply, result.seconds))
            if retry is None:
                PICTURE_DECODES.labels(self._main.name, "no_cpu_left").inc()
                raise over_limit()
            return self._outcome(await self._run_in(self._main, upload, queue_deadline, retry))
        return self._outcome(await self._run_in(self._main, upload, queue_deadline))

    def _fits_fast_lane(self, upload: bytes) -> bool:
        size = declared_size(upload)
        return (
            size is not None and decoded_pixels(upload, size, PICTURE_SIZE) <= self._fast_max_pixels
        )

    async def _run_in(
        self,
        lane: _Lane,
        upload: bytes,
        queue_deadline: float,
        limits: JobLimits | None = None,
    ) -> _Result:
        """Run one job in `lane`, under its limits or `limits`."""
        try:
            async with asyncio.timeout_at(queue_deadline):
                await lane.slots.acquire()
        except TimeoutError:
            PICTURE_DECODES.labels(lane.name, "queue_timeout").inc()
            raise decoders_busy() from None
        job = _Job()
        # The slot is the child's: it is freed when the thread that runs the child returns. A
        # cancelled request cannot stop that thread (it may be starting the child), only have
        # the child killed: freeing the slot at once would let children outnumber the slots.
        job_limits = lane.limits if limits is None else limits
        run = functools.partial(self._run, job, upload, lane, job_limits)
        try:
            work = asyncio.get_running_loop().run_in_executor(self._threads, run)
        except BaseException:  # no thread to be had (a pod's PID limit, or the pool closed)
            job.cancel()  # the job stays queued for another thread: it must not start a child
            lane.slots.release()
            raise
        work.add_done_callback(lambda done: _free_slot(lane, done))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            job.cancel()  # the request was cancelled: stop its decode too
            raise

    def _run(self, job: _Job, upload: bytes, lane: _Lane, limits: JobLimits) -> _Result:
        """In a thread: one child, its reply (None when it died) and how it ended."""
        if job.cancelled:  # its request ended before a thread took it: no child for nobody
            raise RuntimeError("the picture decode was given up before it started")
        receiver, sender = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=run_job, args=(sender, upload, limits), daemon=True, name="picture-decode"
        )
        started = time.monotonic()
        try:
            process.start()
            job.started(process)
            self._busy.add(process)
            sender.close()
            try:
                reply: JobReply | None = receiver.recv()
            except EOFError:
                reply = None
            process.join()
            return _Result(lane, limits, reply, process.exitcode, time.monotonic() - started)
        finally:
            self._busy.discard(process)
            sender.close()
            receiver.close()

    def _count(self, result: _Result) -> str:
        reply = result.reply
        if reply is None:
            outcome = "killed"
            self._log_stop(result)
        else:
            PICTURE_DECODE_CPU_SECONDS.observe(reply.cpu_seconds)
            PICTURE_DECODE_PEAK_BYTES.observe(reply.peak_rss_bytes)
            if reply.picture is not None:
                outcome = "ok"
            elif reply.out_of_memory:
                outcome = "out_of_memory"
            elif reply.decoder_failed:
                outcome = "failed"
            else:
                outcome = "refused"
        PICTURE_DECODES.labels(result.lane.name, outcome).inc()
        return outcome

    def _outcome(self, result: _Result) -> Picture:
        outcome = self._count(result)
        reply = result.reply
        if reply is None:
            raise over_limit()
        if reply.picture is not None:
            return reply.picture
        assert reply.refusal is not None, outcome
        status_code, code, message = reply.refusal
        raise ApiError(status_code, code, message)

    def _log_stop(self, result: _Result) -> None:
        exit_code = result.exit_code
        cause = (
            signal.Signals(-exit_code).name
            if exit_code is not None and exit_code < 0
            else f"exit code {exit_code}"
        )
        self._stops.warn(
            "stopped",
            "a picture decode in the %s lane was stopped (%s): over its limit of %g CPU "
            "seconds (user time; %d with system time) or %d bytes; repeats are logged once "
            "a minute",
            result.lane.name,
            cause,
            result.limits.cpu_seconds,
            result.limits.total_cpu_seconds,
            result.limits.memory_bytes,
        )
