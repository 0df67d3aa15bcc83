"""What a `make run` holds against a second one: nothing on disk, and a port picked for it is
one no other run holds."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from devstack import __main__ as make_run
from devstack.ports import free_port, wait_until
from devstack.process import ManagedProcess
from devstack.run_holds import hold_port, hold_state_dir

REPO_ROOT = Path(__file__).resolve().parents[2]


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


@pytest.mark.parametrize(
    "layout",
    [
        "a folder of notes",
        "the parent of a run's state folder",
        "notes beside the marker",
        "a run's state folder beneath a marked one",
    ],
)
def test_a_folder_that_is_no_state_folder_is_refused_not_wiped(tmp_path: Path, layout: str) -> None:
    """`--state-dir` is wiped at start: `--state-dir .` wiped the checkout, and `--state-dir
    .state` the state folder of a `make run` still running beneath it (measured: a notes file
    in the folder given was gone after a 3 s run, the stores' folders in its place). The marker
    a run leaves does not make a folder wipeable whatever else it holds: `.state` given once as
    --state-dir, then the default .state/run beneath it, had the second wiped under its running
    processes by a run given `.state` again."""
    folder = tmp_path / "folder"
    if "mark" in layout:
        folder.mkdir()
        (folder / make_run.STATE_MARKER).write_text("made by an earlier run")
        (folder / "redis").mkdir()
    if "notes" in layout:
        kept = folder / "notes.txt"
    else:
        kept = folder / "run" / "gatehouse" / "secrets.json"
        (folder / "run" / "redis").mkdir(parents=True)
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_text("keep me")
    argv = [sys.executable, "-m", "devstack", "--state-dir", str(folder)]
    run = ManagedProcess(
        "make run",
        [*argv, "--http-port", "0", "--http-ops-port", "0"],
        tmp_path / "make-run.log",
        cwd=REPO_ROOT,
    )
    run.start()
    try:
        wait_until(
            lambda: not run.alive or not kept.exists(),
            30,
            "make run refuses and exits, or wipes the folder",
            where=run.log_path,
        )
        assert kept.exists(), f"{folder} wiped"
    finally:
        run.stop(timeout=60)
    assert run.returncode == 1, run.tail(20)
    assert kept.read_text() == "keep me"
    said = run.log_path.read_text()
    assert "not the state folder of a `make run`" in said, said


def test_a_state_folder_of_an_earlier_run_is_one_to_wipe(tmp_path: Path) -> None:
    assert make_run._not_a_state_dir(tmp_path / "missing") is None
    assert make_run._not_a_state_dir(tmp_path) is None  # empty
    for name in ("mariadb-primary", "redis", "etcd", "gatehouse"):  # made before the marker
        (tmp_path / name).mkdir()
    assert make_run._not_a_state_dir(tmp_path) is None
    (tmp_path / make_run.STATE_MARKER).write_text("")  # a run's since the marker
    assert make_run._not_a_state_dir(tmp_path) is None
    (tmp_path / "notes.txt").write_text("")
    # The marker vouches for nothing else in the folder: notes put there, or a run's state
    # folder beneath (`.state` once given as --state-dir, then .state/run running).
    assert make_run._not_a_state_dir(tmp_path) is not None
    (tmp_path / "notes.txt").unlink()
    (tmp_path / "run" / "redis").mkdir(parents=True)
    assert make_run._not_a_state_dir(tmp_path) is not None
