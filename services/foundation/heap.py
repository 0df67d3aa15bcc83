"""The cyclic garbage collector of a long-running server process, set for a server's heap.

Measured in an HTTP worker under warm reads (docs/performance.md, "The garbage collector"):
with CPython's default thresholds (700, 10, 10), 12-20% of the worker's CPU went to the
collector, and every ~1,000 reads it paused 28-40 ms for a full collection. A young
collection runs whenever 700 more container objects are alive than at the last one, which the
objects of a few dozen requests in flight reach on their own; each one promotes those requests'
objects towards the oldest generation, where they die, and the full collections that follow
walk every object the process holds: some 60,000 built at start-up (modules, routes,
templates) that live as long as the process. A successful request leaves no cycles: reference
counting frees its objects.

So, once the app is built, `settle_after_startup` collects, moves what is left out of the
collector's sight (`gc.freeze`: a full collection walks only what came later) and raises the
young threshold, so that requests in flight no longer trigger collections on their own. Cyclic
garbage made later (a failed RPC's exception and frames, for one) is still collected, at the
next collection of its generation; frozen objects never are, so start-up's garbage is collected
first. A young threshold of 0 leaves CPython's collector as it is.

`CollectionCounts` counts collections per generation for a metric. Its gc callback only adds
to a list: a callback runs in whichever thread allocated, possibly inside prometheus-client's
non-reentrant value lock, so it must not touch a metric itself. CPython never runs two
collections at once, so the callback has no concurrent writer.

To look for leaks in a settled process (objgraph, `gc.get_referrers`), call `gc.unfreeze()`
first: frozen objects are invisible to them.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

GENERATIONS = 3


def settle_after_startup(young_threshold: int) -> None:
    """Collect start-up's garbage, freeze the rest, run young collections every
    `young_threshold` live container objects; with 0, do nothing."""
    if young_threshold == 0:
        return
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(young_threshold, middle, oldest)


class CollectionCounts:
    """Collections per generation since the last `take_new`, counted by a gc callback."""

    def __init__(self) -> None:
        self._counted = [0] * GENERATIONS
        self._taken = [0] * GENERATIONS

    def start(self) -> None:
        gc.callbacks.append(self._on_collection)

    def stop(self) -> None:
        gc.callbacks.remove(self._on_collection)

    def _on_collection(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "stop":
            self._counted[info["generation"]] += 1

    @property
    def any_new(self) -> bool:
        return self._counted != self._taken

    def take_new(self) -> Iterator[tuple[int, int]]:
        """(generation, collections) for each generation collected since the last call."""
        for generation in range(GENERATIONS):
            counted = self._counted[generation]
            new = counted - self._taken[generation]
            if new:
                self._taken[generation] = counted
                yield generation, new
