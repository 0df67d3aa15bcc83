"""The shared /metrics copy (rendered at most once per interval, whoever asks), the kept
children of labelled metrics, and the buffered observations of multiprocess histograms."""

from __future__ import annotations

import prometheus_client.values
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from devstack.ports import wait_until_async
from services.foundation import metrics
from services.foundation.metrics import (
    BufferedHistograms,
    LabelledChildren,
    RenderedMetrics,
    flush_histograms,
    histograms_flushed,
)

BOUNDS = (0.001, 0.01, 0.1, 1.0)
# At a bound (which counts in that bucket), between two, below the first, past the last.
AMOUNTS = (0.001, 0.0011, 0.0, 0.01, 0.05, 0.1, 1.0, 2.5, 0.0005, 30.0)


def test_metrics_are_rendered_at_most_once_per_interval_and_shared() -> None:
    now = 100.0
    renders = 0

    def render() -> tuple[bytes, str]:
        nonlocal renders
        renders += 1
        return f"render {renders}".encode(), "text/plain"

    rendered = RenderedMetrics(render, interval=1.0, clock=lambda: now)
    first = rendered.current()
    for step in range(99):  # a flood within one second
        now = 100.0 + step * 0.01
        assert rendered.current() is first
    assert renders == 1
    now = 101.0
    assert rendered.current() == (b"render 2", "text/plain")
    assert renders == 2


def test_labelled_children_are_the_metrics_own_and_count_in_it() -> None:
    registry = CollectorRegistry()
    lookups = Counter(
        "lookups", "Lookups by cache and result", ["cache", "result"], registry=registry
    )
    children = LabelledChildren(lookups)
    hit = children("session", "hit")
    assert hit is lookups.labels("session", "hit")
    assert children("session", "hit") is hit
    assert children("session", "miss") is not hit
    children("session", "hit").inc()
    children("session", "hit").inc()
    children("session", "miss").inc()
    sample = registry.get_sample_value
    assert sample("lookups_total", {"cache": "session", "result": "hit"}) == 2
    assert sample("lookups_total", {"cache": "session", "result": "miss"}) == 1


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in registry.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def in_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """Values that say they live in multiprocess files, as prometheus-client's do where
    PROMETHEUS_MULTIPROC_DIR was set when it was imported (it decides then, once)."""
    monkeypatch.setattr(prometheus_client.values.MutexValue, "_multiprocess", True)


def latency_histograms() -> tuple[CollectorRegistry, Histogram]:
    registry = CollectorRegistry()
    return registry, Histogram("latency_seconds", "d", ["route"], buckets=BOUNDS, registry=registry)


def test_buffered_observations_reach_the_metric_when_flushed_as_if_observed_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    in_files(monkeypatch)  # as in an HTTP worker: observations are buffered
    buffered_registry, buffered_metric = latency_histograms()
    direct_registry, direct_metric = latency_histograms()
    buffered = BufferedHistograms(buffered_metric)
    for route in ("/a", "/b"):
        for amount in AMOUNTS:
            buffered(route).observe(amount)
            direct_metric.labels(route).observe(amount)
    before = samples(buffered_registry)
    assert before[("latency_seconds_count", (("route", "/a"),))] == 0
    flush_histograms()
    assert samples(buffered_registry) == samples(direct_registry)
    flush_histograms()  # nothing new: nothing added twice
    buffered("/a").observe(0.02)
    direct_metric.labels("/a").observe(0.02)
    flush_histograms()
    assert samples(buffered_registry) == samples(direct_registry)


def test_without_multiprocess_mode_the_children_are_the_metrics_own() -> None:
    registry, metric = latency_histograms()
    children = BufferedHistograms(metric)
    assert children("/a") is metric.labels("/a")
    children("/a").observe(0.5)
    assert registry.get_sample_value("latency_seconds_count", {"route": "/a"}) == 1


async def test_a_running_worker_flushes_every_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    in_files(monkeypatch)
    monkeypatch.setattr(metrics, "FLUSH_SECONDS", 0.01)
    registry, metric = latency_histograms()
    buffered = BufferedHistograms(metric)
    async with histograms_flushed():
        buffered("/a").observe(0.5)
        await wait_until_async(
            lambda: registry.get_sample_value("latency_seconds_count", {"route": "/a"}) == 1,
            5.0,
            "the observation flushed",
        )


async def test_a_stopping_worker_flushes_what_it_buffered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    in_files(monkeypatch)
    monkeypatch.setattr(metrics, "FLUSH_SECONDS", 3600.0)  # no periodic flush after the first
    registry, metric = latency_histograms()
    buffered = BufferedHistograms(metric)
    async with histograms_flushed():
        buffered("/a").observe(0.5)
        assert registry.get_sample_value("latency_seconds_count", {"route": "/a"}) == 0
    assert registry.get_sample_value("latency_seconds_count", {"route": "/a"}) == 1


def test_a_flush_that_fails_midway_counts_nothing_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    in_files(monkeypatch)
    buffered_registry, buffered_metric = latency_histograms()
    direct_registry, direct_metric = latency_histograms()
    buffered = BufferedHistograms(buffered_metric)
    for amount in AMOUNTS:
        buffered("/a").observe(amount)
        direct_metric.labels("/a").observe(amount)
    failing = buffered_metric.labels("/a")._buckets[2]  # after the sum and two buckets
    add = failing.inc
    failures = iter([OSError("No space left on device")])

    def inc_failing_once(amount: float) -> None:
        if (failure := next(failures, None)) is not None:
            raise failure
        add(amount)

    monkeypatch.setattr(failing, "inc", inc_failing_once)
    with pytest.raises(OSError):
        flush_histograms()
    flush_histograms()
    assert samples(buffered_registry) == samples(direct_registry)
