"""The collector's settings for a server process, and the counts behind its metric."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from services.foundation.heap import CollectionCounts
from tests.collector import collections_paused

# In a process of its own: the settings are the process's, and pytest's must stay as they are.
SETTLED_PROCESS = """
import gc, json, sys, weakref
from services.foundation.heap import settle_after_startup

class Node:
    pass

garbage = Node()
garbage.myself = garbage  # a cycle: only the collector frees it
garbage_alive = weakref.ref(garbage)
del garbage
gc.disable()  # nothing but the settling collects
frozen_before = gc.get_freeze_count()
startup_objects = [[i] for i in range(1000)]  # tracked by the collector
settle_after_startup(int(sys.argv[1]))
print(json.dumps({
    "threshold": gc.get_threshold(),
    "newly_frozen": gc.get_freeze_count() - frozen_before,
    "garbage_collected": garbage_alive() is None,
}))
"""


def settled(young_threshold: int) -> dict[str, object]:
    run = subprocess.run(
        [sys.executable, "-c", SETTLED_PROCESS, str(young_threshold)],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, object] = json.loads(run.stdout)
    return result


def test_settling_collects_then_freezes_start_up_and_raises_the_young_threshold() -> None:
    default_middle, default_oldest = gc.get_threshold()[1:]
    process = settled(7_000)
    assert process["threshold"] == [7_000, default_middle, default_oldest]
    assert process["garbage_collected"] is True  # start-up's garbage is not frozen for good
    newly_frozen = process["newly_frozen"]
    assert isinstance(newly_frozen, int) and newly_frozen >= 1000  # the lists among them


def test_a_young_threshold_of_0_leaves_the_collector_as_it_is() -> None:
    process = settled(0)
    assert process["threshold"] == list(gc.get_threshold())
    assert process["newly_frozen"] == 0
    assert process["garbage_collected"] is False


@pytest.fixture
def counts() -> Iterator[CollectionCounts]:
    """Counting, with automatic collections off so that only the test's own are seen."""
    counting = CollectionCounts()
    counting.start()
    try:
        with collections_paused():
            yield counting
    finally:
        counting.stop()


def test_each_collection_is_counted_once_by_generation(counts: CollectionCounts) -> None:
    gc.collect(0)
    gc.collect(2)
    gc.collect(2)
    assert counts.any_new
    assert dict(counts.take_new()) == {0: 1, 2: 2}
    assert not counts.any_new
    assert list(counts.take_new()) == []


def test_a_stopped_count_sees_no_more_collections() -> None:
    counting = CollectionCounts()
    counting.start()
    counting.stop()
    gc.collect(2)
    assert not counting.any_new
