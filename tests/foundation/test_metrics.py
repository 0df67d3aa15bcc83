"""The shared /metrics copy (rendered at most once per interval, whoever asks), and the kept
children of labelled metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from services.foundation.metrics import LabelledChildren, RenderedMetrics


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
