"""The shared /metrics copy: rendered at most once per interval, whoever asks."""

from __future__ import annotations

from services.foundation.metrics import RenderedMetrics


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
