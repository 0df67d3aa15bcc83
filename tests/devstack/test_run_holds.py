"""What a `make run` holds against a second one: nothing on disk, and a port picked for it is
one no other run holds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from devstack import __main__ as make_run
from devstack.ports import free_port
from devstack.run_holds import hold_port, hold_state_dir


def test_a_state_folder_is_held_without_a_file_and_by_any_name_of_it(tmp_path: Path) -> None:
    """A lock file beside the folder needed a writable parent, and `make clean` (or a /tmp
    cleaner) could remove it under a running stack, letting a second run wipe the first's."""
    state_dir = tmp_path / "state"
    first = hold_state_dir(state_dir)
    try:
        assert not isinstance(first, str)
        assert list(tmp_path.iterdir()) == []
        (tmp_path / "link").symlink_to(tmp_path, target_is_directory=True)
        assert hold_state_dir(tmp_path / "link" / "state") == str(os.getpid())
    finally:
        if not isinstance(first, str):
            first.close()
    again = hold_state_dir(state_dir)
    assert not isinstance(again, str), "released when its holder closes (or exits)"
    again.close()


def test_a_port_picked_for_a_run_is_never_one_another_run_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another run holds its port before its HTTP tier binds it: a free port to TCP."""
    taken, free = free_port(), free_port()
    other_run = hold_port(taken)
    assert not isinstance(other_run, str)
    picks = iter([taken, free])
    monkeypatch.setattr(make_run, "free_port", lambda: next(picks))
    try:
        port, held = make_run._held_port(0)
        assert port == free and not isinstance(held, str)
        held.close()
    finally:
        other_run.close()
