"""How the local stack configures the Gatehouse processes it starts."""

from __future__ import annotations

import pytest

from devstack import gatehouse
from devstack.gatehouse import hash_threads_per_replica


@pytest.mark.parametrize(("cpus", "replicas", "threads"), [(4, 2, "2"), (2, 2, "1"), (3, 2, "1"), (1, 2, "1"), (8, 1, "8")])
def test_replicas_on_one_machine_split_its_cpus_for_hashing(
    monkeypatch: pytest.MonkeyPatch, cpus: int, replicas: int, threads: str
) -> None:
    monkeypatch.setattr(gatehouse.os, "sched_getaffinity", lambda pid: set(range(cpus)))
    assert hash_threads_per_replica(replicas) == threads
