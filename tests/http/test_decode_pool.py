"""The picture decode pool with real child processes: refusals before decoding, the CPU and
memory limits of each job, and a pool that keeps serving after a child was killed."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import resource
import threading
import time
from collections.abc import AsyncIterator
from multiprocessing.context import ForkServerProcess

import pytest
from PIL import Image
from prometheus_client import REGISTRY

from devstack.ports import wait_until_async
from services.http.avatars.decode_pool import (
    MIN_CPU_SECONDS_LEFT,
    DecodePool,
    FastLane,
    job_limits,
    limits_left,
    user_time_spent,
)
from services.http.avatars.picture_job import JobLimits, JobReply
from services.http.avatars.picture_limits import PictureLimits
from services.http.avatars.pictures import PictureRefused, process_picture
from services.http.errors import ApiError
from services.http.settings import MIN_PICTURE_MEMORY_BYTES, HttpSettings
from tests.hostile_pictures import (
    as_mpo,
    busy_picture,
    encoded,
    many_scan_jpeg,
    many_scan_jpeg_behind_stuffed_zeros,
    many_scans_behind_reserved_markers,
    tall_png,
    truncated_progressive_jpeg,
    with_junk_after_app0,
)
from tests.http.gateway import TEST_CSRF_SECRET
from tests.http.thread_starts import THREAD_START_FAILURE, fail_the_next_thread_start

DEFAULTS = job_limits(HttpSettings(csrf_secret=TEST_CSRF_SECRET))
# Limits under which the hostile pictures pass the header checks and reach the decoder.
NO_HEADER_LIMITS = PictureLimits(
    max_side=10**9, max_pixels=10**10, max_aspect_ratio=10**9, max_jpeg_scans=10**9
)
# Without the scan check this takes several CPU seconds to decode (about 0.35 ms per scan).
MANY_SCANS = many_scan_jpeg((4096, 4096), extra_scans=20_000)


def small_png() -> bytes:
    return encoded(busy_picture((400, 300)), "PNG")


def decodes(outcome: str, lanes: tuple[str, ...] = ("fast", "main")) -> float:
    return sum(
        REGISTRY.get_sample_value(
            "gatehouse_http_picture_decodes_total", {"lane": lane, "outcome": outcome}
        )
        or 0.0
        for lane in lanes
    )


async def started(size: int, limits: JobLimits, fast: FastLane | None = None) -> DecodePool:
    pool = DecodePool(size, limits, fast)
    await pool.start()
    return pool


@pytest.fixture
async def default_pool() -> AsyncIterator[DecodePool]:
    pool = await started(2, DEFAULTS)
    yield pool
    await pool.close()


async def refusal(pool: DecodePool, upload: bytes) -> tuple[int, str, str, float]:
    """Status, code, message and seconds taken of a decode that must be refused."""
    began = time.monotonic()
    with pytest.raises(ApiError) as refused:
        await pool.decode(upload)
    error = refused.value
    return error.status_code, error.code, error.message, time.monotonic() - began


async def test_a_small_picture_is_decoded_in_a_child(default_pool: DecodePool) -> None:
    picture = await default_pool.decode(small_png())
    assert picture.content_type == "image/webp" and picture.data.startswith(b"RIFF")


@pytest.mark.parametrize(
    "upload",
    [
        MANY_SCANS,
        with_junk_after_app0(MANY_SCANS),
        as_mpo(MANY_SCANS),
        many_scan_jpeg_behind_stuffed_zeros((4096, 4096), extra_scans=18_000),
        many_scans_behind_reserved_markers(extra_scans=300),
    ],
    ids=[
        "as made",
        "with a junk byte libjpeg skips",
        "opened as an MPO",
        "behind FF00s",
        "behind reserved markers at restart points",
    ],
)
async def test_a_progressive_jpeg_with_many_scans_is_refused_quickly(
    default_pool: DecodePool, upload: bytes
) -> None:
    assert len(upload) < 1024 * 1024
    status, code, message, seconds = await refusal(default_pool, upload)
    assert (status, code) == (400, "invalid_image")
    assert f"more than {DEFAULTS.picture.max_jpeg_scans} scans" in message
    # Decoding it would take seconds of CPU; counting its scans takes milliseconds.
    assert seconds < 1.0, f"refused after {seconds:.2f} s"


async def test_a_1_by_25_million_png_is_refused_without_allocating_its_pixels() -> None:
    # 64 MiB of address space cannot hold its 25 MB of pixels and a copy: had it been
    # decoded, the refusal would be the memory one.
    pool = await started(1, dataclasses.replace(DEFAULTS, memory_bytes=MIN_PICTURE_MEMORY_BYTES))
    upload = tall_png(25_000_000)
    assert len(upload) < 64 * 1024
    status, code, message, seconds = await refusal(pool, upload)
    assert (status, code) == (400, "invalid_image")
    assert "1x25000000 pixels" in message and "memory" not in message
    assert seconds < 1.0, f"refused after {seconds:.2f} s"


@pytest.mark.parametrize(
    ("size", "why"),
    [((8193, 600), "each side may be at most 8192"), ((4000, 150), "times the shorter")],
    ids=["a side over the cap", "an extreme aspect ratio"],
)
async def test_header_limits_refuse_before_decoding(
    default_pool: DecodePool, size: tuple[int, int], why: str
) -> None:
    status, code, message, _ = await refusal(default_pool, encoded(Image.new("L", size, 0), "PNG"))
    assert (status, code) == (400, "invalid_image") and why in message


async def test_a_job_over_its_cpu_limit_is_killed_and_the_pool_keeps_serving() -> None:
    pool = await started(
        2, JobLimits(cpu_seconds=1, memory_bytes=DEFAULTS.memory_bytes, picture=NO_HEADER_LIMITS)
    )
    killed_before = decodes("killed")
    # The hostile job and another user's small one at the same time, in two children.
    hostile = asyncio.create_task(refusal(pool, MANY_SCANS))
    small = await pool.decode(small_png())
    status, code, message, seconds = await hostile
    assert small.data.startswith(b"RIFF")
    assert (status, code) == (400, "invalid_image")
    assert "too much CPU time or memory" in message
    assert decodes("killed") == killed_before + 1
    # Killed at 1 s of user time (SIGVTALRM), not after the several seconds the decode would take.
    assert seconds < 10.0
    again = await pool.decode(small_png())
    assert again.data == small.data


async def test_a_job_over_its_memory_limit_is_refused_and_the_pool_keeps_serving() -> None:
    # A 4096x4096 RGBA picture is 64 MiB of pixels; 96 MiB of address space cannot hold it
    # next to Pillow and the upload.
    pool = await started(1, dataclasses.replace(DEFAULTS, memory_bytes=96 * 1024 * 1024))
    large = encoded(busy_picture((4096, 4096), "RGBA"), "PNG")
    assert len(large) < 5 * 1024 * 1024
    out_of_memory_before = decodes("out_of_memory") + decodes("killed")
    status, code, message, _ = await refusal(pool, large)
    assert (status, code) == (400, "invalid_image")
    assert "memory" in message
    assert decodes("out_of_memory") + decodes("killed") == out_of_memory_before + 1
    assert (await pool.decode(small_png())).data.startswith(b"RIFF")
    # With the default limit, the same picture is decoded.
    default = await started(1, DEFAULTS)
    assert (await default.decode(large)).data.startswith(b"RIFF")


def pid_exists(pid: int | None) -> bool:
    assert pid is not None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_a_cancelled_decode_stops_its_child() -> None:
    pool = await started(
        1, JobLimits(cpu_seconds=30, memory_bytes=DEFAULTS.memory_bytes, picture=NO_HEADER_LIMITS)
    )
    task = asyncio.create_task(pool.decode(MANY_SCANS))
    await wait_until_async(pool.busy_children, 10.0, "a child to take the decode")
    children = pool.busy_children()
    assert len(children) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (child,) = children
    child.join(timeout=5)
    # Killed, not left to decode for 30 s. Its exit code comes from the fork server, which
    # reports 255 when it cannot tell, so the process itself is what is checked.
    assert child.exitcode is not None
    await wait_until_async(lambda: not pid_exists(child.pid), 5.0, "the decoding child to be gone")
    # The slot is free again at once, not after the 30 s the decode could take.
    assert (await asyncio.wait_for(pool.decode(small_png()), 10)).data.startswith(b"RIFF")


async def test_a_decode_cancelled_while_its_child_starts_kills_it_and_keeps_its_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The thread that starts a child cannot be interrupted: a request cancelled meanwhile
    must still have the child killed, and its slot must stay taken until the child is gone,
    or children outnumber the slots (a review saw 11 run at once where 4 were allowed)."""
    pool = await started(
        1, JobLimits(cpu_seconds=30, memory_bytes=DEFAULTS.memory_bytes, picture=NO_HEADER_LIMITS)
    )
    starting, go_on = threading.Event(), threading.Event()
    children: list[ForkServerProcess] = []
    others_alive_at_start: list[bool] = []
    start = ForkServerProcess.start

    cancelled_child: list[ForkServerProcess] = []

    def held_start(process: ForkServerProcess) -> None:
        first = not starting.is_set()
        starting.set()
        if first:
            go_on.wait(10)
        others_alive_at_start.append(any(pid_exists(child.pid) for child in children))
        start(process)
        children.append(process)
        if first:
            cancelled_child.append(process)

    monkeypatch.setattr(ForkServerProcess, "start", held_start)
    task = asyncio.create_task(pool.decode(MANY_SCANS))
    await wait_until_async(starting.is_set, 10.0, "the decode's thread to start its child")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    second = asyncio.create_task(pool.decode(small_png()))  # must wait for the slot
    go_on.set()
    await wait_until_async(lambda: cancelled_child, 10.0, "the cancelled decode's child to start")
    # Killed once started, not left to decode its seconds of scans.
    await wait_until_async(
        lambda: not pid_exists(cancelled_child[0].pid), 3.0, "the cancelled decode's child to die"
    )
    assert (await asyncio.wait_for(second, 10)).data.startswith(b"RIFF")
    assert others_alive_at_start == [False, False]


async def test_a_small_picture_takes_the_fast_lane_while_the_main_lane_is_busy() -> None:
    # MANY_SCANS decodes to 512x512 pixels: over this fast lane's cap, so it takes the main
    # lane, where it would run for seconds; the 400x300 PNG is under the cap.
    limits = JobLimits(cpu_seconds=30, memory_bytes=DEFAULTS.memory_bytes, picture=NO_HEADER_LIMITS)
    fast = FastLane(decoders=1, max_decoded_pixels=200_000, memory_bytes=96 * 1024 * 1024)
    pool = await started(1, limits, fast)
    slow = asyncio.create_task(pool.decode(MANY_SCANS))
    try:
        await wait_until_async(pool.busy_children, 10.0, "a child to take the slow decode")
        assert len(pool.busy_children()) == 1
        began = time.monotonic()
        picture = await asyncio.wait_for(pool.decode(small_png()), 5)
        assert picture.data.startswith(b"RIFF")
        assert not slow.done(), "the slow decode ended before the test could overlap it"
        assert time.monotonic() - began < 2.0
    finally:
        slow.cancel()


async def test_a_fast_lane_decode_out_of_memory_is_run_again_in_the_main_lane() -> None:
    # Every picture fits this fast lane's pixel cap, but not its 64 MiB: the main lane's
    # default limit decodes it.
    fast = FastLane(decoders=1, max_decoded_pixels=10**9, memory_bytes=MIN_PICTURE_MEMORY_BYTES)
    pool = await started(1, DEFAULTS, fast)
    fast_out_of_memory = decodes("out_of_memory", ("fast",)) + decodes("killed", ("fast",))
    main_ok = decodes("ok", ("main",))
    large = encoded(busy_picture((4096, 4096), "RGBA"), "PNG")
    assert (await pool.decode(large)).data.startswith(b"RIFF")
    assert (
        decodes("out_of_memory", ("fast",)) + decodes("killed", ("fast",)) == fast_out_of_memory + 1
    )
    assert decodes("ok", ("main",)) == main_ok + 1


async def test_a_fast_lane_decode_over_its_cpu_limit_is_not_run_again() -> None:
    # More memory would not help a decode that ran out of time: the main lane must not spend
    # the same CPU on it again.
    limits = JobLimits(cpu_seconds=1, memory_bytes=DEFAULTS.memory_bytes, picture=NO_HEADER_LIMITS)
    fast = FastLane(decoders=1, max_decoded_pixels=10**9, memory_bytes=DEFAULTS.memory_bytes)
    pool = await started(1, limits, fast)
    fast_killed, main_decodes = decodes("killed", ("fast",)), _all_decodes("main")
    status, code, _, _ = await refusal(pool, MANY_SCANS)
    assert (status, code) == (400, "invalid_image")
    assert decodes("killed", ("fast",)) == fast_killed + 1
    assert _all_decodes("main") == main_decodes


async def test_a_fast_lane_failure_leaves_the_main_lane_only_what_is_left_of_the_cpu_limit() -> (
    None
):
    # Decoded at 1/8, so the fast lane, but every scan of 15 MP decoded before the missing end
    # fails the decoder: CPU spent, then a failure the main lane retries.
    upload = truncated_progressive_jpeg((4800, 3200))
    # The limit counts user time only: calibrated on user and system time together, it let a
    # retry finish where system time (page faults) was a quarter of the run's CPU.
    costs = [user_seconds_to_refuse(upload) for _ in range(2)]  # one may have been slowed
    # A limit the fast lane's run stays under, leaving less than another run needs.
    limits = dataclasses.replace(DEFAULTS, cpu_seconds=1.5 * min(costs))
    fast = FastLane(decoders=1, max_decoded_pixels=10**6, memory_bytes=DEFAULTS.memory_bytes)
    pool = await started(1, limits, fast)
    fast_failed = decodes("failed", ("fast",))
    main_failed = decodes("failed", ("main",))
    stopped = decodes("killed", ("main",)) + decodes("no_cpu_left", ("main",))
    assert (await refusal(pool, upload))[:2] == (400, "invalid_image")
    assert decodes("failed", ("fast",)) == fast_failed + 1
    # With the whole limit again, the retry would have failed as the decoder's failure.
    assert decodes("failed", ("main",)) == main_failed
    assert decodes("killed", ("main",)) + decodes("no_cpu_left", ("main",)) == stopped + 1


def test_a_retry_gets_the_limit_less_the_user_time_the_first_run_spent() -> None:
    limits = dataclasses.replace(DEFAULTS, cpu_seconds=2.0)
    reply = JobReply(
        picture=None,
        refusal=(400, "invalid_image", "damaged"),
        out_of_memory=False,
        decoder_failed=True,
        cpu_seconds=1.9,  # of which system time (page faults) does not count
        user_seconds=1.5,
        peak_rss_bytes=0,
    )
    assert user_time_spent(reply, lifetime=3.0) == 1.5
    # A child that died reports nothing: its lifetime bounds its CPU time.
    assert user_time_spent(None, lifetime=1.25) == 1.25
    left = limits_left(limits, 1.5)
    assert left is not None
    assert left.cpu_seconds == 0.5
    assert (left.memory_bytes, left.picture) == (limits.memory_bytes, limits.picture)
    assert limits_left(limits, 2.0 - MIN_CPU_SECONDS_LEFT / 2) is None
    assert limits_left(limits, 2.5) is None


def user_seconds_to_refuse(upload: bytes) -> float:
    """The user time a decode of `upload` takes until it is refused, decoded in this thread."""
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_utime
    with pytest.raises(PictureRefused):
        process_picture(upload, DEFAULTS.picture)
    return resource.getrusage(resource.RUSAGE_THREAD).ru_utime - before


def _all_decodes(lane: str) -> float:
    outcomes = ("ok", "refused", "failed", "out_of_memory", "killed")
    return sum(decodes(outcome, (lane,)) for outcome in outcomes)


def test_the_settings_defaults_are_the_picture_limits_defaults() -> None:
    assert DEFAULTS.picture == PictureLimits()


async def test_a_fast_lane_jpeg_whose_decoder_fails_for_memory_is_run_again() -> None:
    # libjpeg reports the memory it cannot get as broken data (OSError), not MemoryError: a
    # progressive 4096x4096 JPEG needs its whole coefficient buffer, more than 64 MiB holds.
    fast = FastLane(decoders=1, max_decoded_pixels=10**9, memory_bytes=MIN_PICTURE_MEMORY_BYTES)
    pool = await started(1, DEFAULTS, fast)
    progressive = encoded(busy_picture((4096, 4096)), "JPEG", progressive=True, quality=90)
    failed_before = sum(decodes(outcome, ("fast",)) for outcome in ("failed", "out_of_memory"))
    assert (await pool.decode(progressive)).data.startswith(b"RIFF")
    assert (
        sum(decodes(outcome, ("fast",)) for outcome in ("failed", "out_of_memory"))
        == failed_before + 1
    )


async def test_an_upload_waits_for_a_decoder_at_most_the_queue_timeout() -> None:
    limits = JobLimits(cpu_seconds=30, memory_bytes=DEFAULTS.memory_bytes, picture=NO_HEADER_LIMITS)
    pool = DecodePool(1, limits, queue_timeout=0.5)
    await pool.start()
    slow = asyncio.create_task(pool.decode(MANY_SCANS))
    try:
        await wait_until_async(lambda: bool(pool.busy_children()), 10.0, "the slow decode to start")
        waited_before = decodes("queue_timeout", ("main",))
        status, code, _, seconds = await asyncio.wait_for(refusal(pool, small_png()), 10)
        assert (status, code) == (503, "overloaded")
        assert 0.4 < seconds < 3.0
        assert decodes("queue_timeout", ("main",)) == waited_before + 1
        assert not slow.done(), "the slow decode ended before the test could overlap it"
    finally:
        slow.cancel()


async def test_a_decode_does_not_wait_behind_the_event_loops_default_thread_pool(
    default_pool: DecodePool,
) -> None:
    """Blocking work elsewhere in the worker (name lookups, /metrics, a client library stuck
    on its server) fills the loop's default pool; a decode that has its slot runs anyway."""
    loop = asyncio.get_running_loop()
    release = threading.Event()
    # More than the default pool's threads (at most 32).
    blockers = [loop.run_in_executor(None, release.wait, 60.0) for _ in range(40)]
    try:
        picture = await asyncio.wait_for(default_pool.decode(small_png()), 20.0)
        assert picture.content_type == "image/webp"
    finally:
        release.set()
        await asyncio.gather(*blockers)


async def test_a_decode_that_gets_no_thread_gives_its_slot_back() -> None:
    """A decode arriving after close (or when no thread can start) fails, and leaves the slot
    to the next: with a one-slot pool the second would otherwise wait and be refused 503."""
    pool = DecodePool(1, DEFAULTS, queue_timeout=0.5)
    await pool.start()
    await pool.close()
    for _ in range(2):
        with pytest.raises(RuntimeError, match="after shutdown"):
            await pool.decode(small_png())


async def test_a_decode_that_got_no_thread_starts_no_child_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A thread that cannot start (a pod's PID limit) leaves the job queued for the next
    thread: its request was answered, so it must not start a child then, one beyond the slots."""
    pool = DecodePool(1, DEFAULTS)
    await pool.start()
    started: list[object] = []
    make_process = pool._context.Process

    def counted(*args: object, **kwargs: object) -> object:
        started.append(kwargs.get("args"))
        return make_process(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pool._context, "Process", counted)
    fail_the_next_thread_start(pool._threads, monkeypatch)
    try:
        with pytest.raises(RuntimeError, match=THREAD_START_FAILURE):
            await pool.decode(small_png())
        picture = await pool.decode(small_png())
        assert picture.content_type == "image/webp"
        assert len(started) == 1
    finally:
        await pool.close()
