"""The cyclic garbage collector of a long-running server process, set for a server's heap.

With CPython's default thresholds (700, 10, 10) an HTTP worker under warm reads spent about a
quarter of its CPU in the collector, and paused for 30 ms at a time (docs/performance.md,
"The garbage collector"). A young collection runs whenever 700 more container objects are alive
than at the last one, which the objects of a few dozen requests in flight reach on their own;
each one promotes those requests' objects towards the oldest generation, where they die, and
about every thousand requests a full collection walks every object the process holds: some
60,000 built at start-up (modules, routes, templates, clients) that live as long as the
process. The requests themselves leave no cycles: reference counting frees their objects.

So, once the app is built, `settle_after_startup` moves what start-up built out of the
collector's sight (`gc.freeze`: a full collection walks only what came later) and raises the
young threshold, so that requests in flight no longer trigger collections on their own. Cyclic
garbage is still collected, after at most YOUNG_THRESHOLD more live container objects. The
auth replicas are left at the defaults: under the same reads they ran about 1.5 young
collections per thousand calls and no full one.

`CollectionCounts` counts collections per generation for a metric. Its gc callback only adds
to a list: a callback runs in whichever thread allocated, possibly inside prometheus-client's
non-reentrant value lock, so it must not touch a metric itself.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

# Live container objects that trigger a young collection (CPython's default: 700). A
# request in flight holds a few dozen (scope, coroutines, frames, futures); this leaves room
# for a few hundred at once, at a few megabytes of memory at most.
YOUNG_THRESHOLD = 7_000
GENERATIONS = 3


def settle_after_startup() -> None:
    """Collect start-up's garbage, freeze the rest, collect the young generation less often."""
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, oldest)


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
