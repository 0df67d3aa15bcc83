"""The short version of every drill of `make drill`, with the issue's targets as assertions.

Each drill starts its own Gatehouse processes (two auth replicas, one HTTP process with two
workers) on the session's data stores, injects its fault for 3-5 s under mixed load, verifies
every acknowledged write and checks each target of drills/targets.py. A failure prints the
drill's whole table.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack.stack import DataStores
from drills.faults import BY_NAME
from drills.report import drill_table
from drills.runner import run_drill
from tests.conftest import TEST_SETTINGS


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BY_NAME))
def test_short_drill_meets_the_issue_targets(
    name: str, data_stores: DataStores, tmp_path: Path
) -> None:
    result = run_drill(
        BY_NAME[name],
        tmp_path,
        short=True,
        report=lambda line: print(f"{name}: {line}"),
        settings=dict(TEST_SETTINGS),
        stores=data_stores,
    )
    table = "\n".join(drill_table(result))
    assert result.checks, f"{name} checked no target"
    assert sum(result.requests.values()) > 100, f"{name} ran too little load:\n{table}"
    missed = [check.target.describe() for check in result.checks if not check.passed]
    assert not missed, f"{name} missed {missed}:\n{table}"
