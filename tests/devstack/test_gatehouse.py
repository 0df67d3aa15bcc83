"""How the local stack configures the Gatehouse processes it starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devstack import gatehouse
from devstack.gatehouse import Secrets, hash_threads_per_replica


@pytest.mark.parametrize(
    ("cpus", "replicas", "threads"),
    [(4, 2, "2"), (2, 2, "1"), (3, 2, "1"), (1, 2, "1"), (8, 1, "8")],
)
def test_replicas_on_one_machine_split_its_cpus_for_hashing(
    monkeypatch: pytest.MonkeyPatch, cpus: int, replicas: int, threads: str
) -> None:
    monkeypatch.setattr(gatehouse.os, "sched_getaffinity", lambda pid: set(range(cpus)))
    assert hash_threads_per_replica(replicas) == threads


def test_secrets_are_kept_and_a_missing_one_is_added(tmp_path: Path) -> None:
    path = tmp_path / "state" / "secrets.json"
    created = Secrets.load_or_create(path)
    assert len(created.csrf_secret) >= 32 and created.peppers.startswith("1:")
    assert Secrets.load_or_create(path) == created
    # A state folder from before the CSRF secret existed keeps its key and pepper.
    path.write_text(json.dumps({"jwt_private_key": created.jwt_private_key, "peppers": "1:old"}))
    upgraded = Secrets.load_or_create(path)
    assert (upgraded.jwt_private_key, upgraded.peppers) == (created.jwt_private_key, "1:old")
    assert len(upgraded.csrf_secret) >= 32
    assert json.loads(path.read_text())["csrf_secret"] == upgraded.csrf_secret
    assert path.stat().st_mode & 0o777 == 0o600
