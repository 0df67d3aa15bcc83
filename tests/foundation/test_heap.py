"""The collector's settings for a server process, and the counts behind its metric."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from services.foundation.heap import YOUNG_THRESHOLD, CollectionCounts

# In a process of its own: the settings are the process's, and pytest's must stay as they are.
SETTLED_PROCESS = """
import gc, json
from services.foundation.heap import settle_after_startup
startup_objects = [{"built": i} for i in range(1000)]
settle_after_startup()
print(json.dumps({
    "threshold": gc.get_threshold(),
    "frozen": gc.get_freeze_count(),
    "young_objects_left": gc.get_count()[0],
}))
"""


def test_settling_freezes_what_start_up_built_and_raises_the_young_threshold() -> None:
    default_middle, default_oldest = gc.get_threshold()[1:]
    run = subprocess.run(
        [sys.executable, "-c", SETTLED_PROCESS], capture_output=True, text=True, check=True
    )
    settled = json.loads(run.stdout)
    assert settled["threshold"] == [YOUNG_THRESHOLD, default_middle, default_oldest]
    # Start-up's objects, the 1,000 dictionaries above among them, are out of the collector's sight.
    assert settled["frozen"] > 1000
    assert settled["young_objects_left"] < 10


@pytest.fixture
def counts() -> Iterator[CollectionCounts]:
    counting = CollectionCounts()
    counting.start()
    yield counting
    counting.stop()


def test_each_collection_is_counted_once_by_generation(counts: CollectionCounts) -> None:
    gc.collect(0)
    gc.collect(2)
    gc.collect(2)
    assert counts.any_new
    new = dict(counts.take_new())
    assert new[0] >= 1  # pytest's own allocations may add young collections
    assert new[2] == 2
    assert not counts.any_new
    assert list(counts.take_new()) == []


def test_a_stopped_count_sees_no_more_collections() -> None:
    counting = CollectionCounts()
    counting.start()
    counting.stop()
    gc.collect(2)
    assert not counting.any_new
