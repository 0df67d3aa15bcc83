"""Prometheus exposition shared by both tiers.

A server with several worker processes (the HTTP tier) runs prometheus-client in
multiprocess mode: every worker writes its samples under PROMETHEUS_MULTIPROC_DIR and
`/metrics` merges them, so a scrape covers every worker rather than whichever one answered.
The variable must be set before prometheus_client is first imported (it picks its storage
then), so this module imports prometheus_client only inside the functions that render.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from bisect import bisect_left
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from starlette.responses import Response

from services.foundation.tasks import every, running

if TYPE_CHECKING:
    from prometheus_client.metrics import Histogram, MetricWrapperBase

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# A scrape gets a copy at most this old: rendering takes tens of milliseconds (every worker's
# files are merged), and a flood of /metrics must not cost the API that each time.
RENDER_INTERVAL_SECONDS = 1.0

MetricT = TypeVar("MetricT", bound="MetricWrapperBase")
# How often a worker adds the observations it buffered (BufferedHistograms) to its metrics.
FLUSH_SECONDS = 1.0


def prepare_multiprocess_dir(path: Path) -> None:
    """Empty `path` (stale files from an earlier run would be merged) and point workers at it."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(path)


def mark_worker_dead(pid: int) -> None:
    """Drop a dead worker's live gauges (multiprocess_mode='live*')."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


class LabelledChildren(Generic[MetricT]):
    """A labelled metric's children, kept by their label values after the first lookup.

    prometheus-client's labels() checks and converts its arguments and takes a lock on every
    call: about a microsecond, paid by every read several times in each tier. The values must
    be strings from small fixed sets (routes, statuses, method names), as any label's are. A
    metric kept this way must never have a child removed (remove(), clear()): the kept one
    would go on counting where no scrape sees it.
    """

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: MetricT) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], MetricT] = {}

    def __call__(self, *values: str) -> MetricT:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class Observer(Protocol):
    def observe(self, amount: float) -> None: ...


class BufferedHistograms:
    """A labelled histogram's children, like LabelledChildren, whose observations a process in
    multiprocess mode counts in memory until `flush_histograms()` adds them to the metric.

    In multiprocess mode one observe() writes two values to the worker's mmapped file, each
    under a lock with a pid check: 3.4 us, against 0.2 us to count it in memory, and an HTTP
    worker observes two a request. The worker flushes whenever it has no request in progress
    (so at low load a request's latencies reach the metric as the request ends, as before) and
    every FLUSH_SECONDS while `histograms_flushed()` runs. A worker killed outright loses what
    it observed since its last flush. Without multiprocess mode (one process: the auth replica,
    tests) the children observe at once.
    """

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: Histogram) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Observer] = {}

    def __call__(self, *values: str) -> Observer:
        child = self._children.get(values)
        if child is None:
            labelled = self._metric.labels(*values)
            # As prometheus-client chose when it was imported: values in files, or in memory.
            buffered = getattr(labelled._sum, "_multiprocess", False)
            child = _Observations(labelled) if buffered else labelled
            self._children[values] = child
        return child


class _Observations:
    """One child's observations not yet added to it, by bucket (prometheus-client's own
    buckets and sum: the same samples as observing each at once)."""

    __slots__ = ("_bounds", "_child", "_counts", "_sum", "_unflushed")

    def __init__(self, child: Histogram) -> None:
        self._child = child
        self._bounds: list[float] = child._upper_bounds
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._unflushed = False

    def observe(self, amount: float) -> None:
        # The first bucket whose upper bound is >= amount, as Histogram.observe picks.
        self._counts[bisect_left(self._bounds, amount)] += 1
        self._sum += amount
        if not self._unflushed:
            self._unflushed = True
            _UNFLUSHED.append(self)

    def flush(self) -> None:
        # Each part forgotten as soon as it is added: a write that fails (the file of a fork
        # reopened on a full disk) leaves the rest for the next flush, nothing counted twice.
        self._child._sum.inc(self._sum)
        self._sum = 0.0
        counts = self._counts
        for index, bucket in enumerate(self._child._buckets):
            if counts[index]:
                bucket.inc(counts[index])
                counts[index] = 0
        self._unflushed = False


_UNFLUSHED: list[_Observations] = []


def flush_histograms() -> None:
    """Add every buffered observation to its metric."""
    while _UNFLUSHED:
        _UNFLUSHED[-1].flush()  # taken off the list only once added
        _UNFLUSHED.pop()


async def _flush_step() -> None:
    flush_histograms()


@asynccontextmanager
async def histograms_flushed() -> AsyncIterator[None]:
    """Flush the buffered observations every FLUSH_SECONDS while the `async with` runs, and
    once more at its end (a worker stopping: after its last request)."""
    try:
        async with running(every(FLUSH_SECONDS, _flush_step, "metrics flush"), "metrics flush"):
            yield
    finally:
        flush_histograms()


def render_metrics() -> tuple[bytes, str]:
    """The exposition text and its content type."""
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        REGISTRY,
        CollectorRegistry,
        generate_latest,
        multiprocess,
    )

    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


class RenderedMetrics:
    """The exposition text, rendered at most once per `interval` and shared by every caller."""

    def __init__(
        self,
        render: Callable[[], tuple[bytes, str]] = render_metrics,
        interval: float = RENDER_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._render = render
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._copy: tuple[bytes, str] | None = None
        self._rendered_at = 0.0

    def current(self) -> tuple[bytes, str]:
        with self._lock:
            now = self._clock()
            if self._copy is None or now - self._rendered_at >= self._interval:
                self._copy = self._render()
                self._rendered_at = now
            return self._copy


_rendered = RenderedMetrics()


def metrics_response() -> Response:
    body, content_type = _rendered.current()
    return Response(body, media_type=content_type)
