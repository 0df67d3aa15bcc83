"""The operator's Unix socket: its user's only, never taken from a live server or removed
from under one, never made where another user could have put theirs first."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from services.foundation.rpc.unix_socket import UnixSocketError, listen_privately


def test_the_folder_is_made_the_user_s_only_and_the_socket_too(tmp_path: Path) -> None:
    path = tmp_path / "operator" / "auth.sock"
    listener, bound = listen_privately(str(path))
    try:
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_ISSOCK(path.stat().st_mode)
    finally:
        listener.close()
        bound.remove()
    assert not path.exists()


def test_a_live_server_s_socket_is_not_taken(tmp_path: Path) -> None:
    path = str(tmp_path / "auth.sock")
    first, bound = listen_privately(path)
    try:
        with pytest.raises(UnixSocketError, match="another process takes calls"):
            listen_privately(path)
        probe = socket.socket(socket.AF_UNIX)
        probe.connect(path)  # still the first one's
        probe.close()
    finally:
        first.close()
        bound.remove()


def test_a_socket_left_by_a_dead_process_is_replaced(tmp_path: Path) -> None:
    path = str(tmp_path / "auth.sock")
    dead, dead_file = listen_privately(path)
    dead.close()  # the file stays, nobody listens
    listener, bound = listen_privately(path)
    dead_file.remove()  # the dead one's is gone already: the new one stays
    assert os.path.exists(path)
    listener.close()
    bound.remove()


def test_a_file_that_is_no_socket_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "auth.sock"
    path.write_text("keep me")
    with pytest.raises(UnixSocketError, match="not a socket"):
        listen_privately(str(path))
    assert path.read_text() == "keep me"


def test_a_folder_others_may_write_to_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp: anyone may put a socket of their own at the path first
    with pytest.raises(UnixSocketError, match="writable"):
        listen_privately(str(shared / "auth.sock"))


def test_close_removes_only_its_own_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "auth.sock")
    old, old_file = listen_privately(path)
    old.close()
    os.unlink(path)  # by hand, or by a second replica's start
    new, new_file = listen_privately(path)  # another replica, started meanwhile
    try:
        old_file.remove()
        assert os.path.exists(path)
    finally:
        new.close()
        new_file.remove()
    assert not os.path.exists(path)


def test_a_path_that_cannot_be_made_is_a_clear_error(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("")
    with pytest.raises(UnixSocketError, match="cannot make"):
        listen_privately(str(not_a_folder / "operator" / "auth.sock"))


def test_a_frozen_server_s_socket_is_not_taken_and_does_not_hang_the_start(
    tmp_path: Path,
) -> None:
    """Its backlog full (it accepts nothing), a connect neither succeeds nor is refused."""
    path = str(tmp_path / "auth.sock")
    frozen, bound = listen_privately(path)
    frozen.listen(0)
    waiting = []
    try:
        for _ in range(8):  # fill the backlog
            client = socket.socket(socket.AF_UNIX)
            client.setblocking(False)
            try:
                client.connect(path)
            except BlockingIOError:
                client.close()
                break
            waiting.append(client)
        with pytest.raises(UnixSocketError, match="another process takes calls"):
            listen_privately(path)
    finally:
        for client in waiting:
            client.close()
        frozen.close()
        bound.remove()


def test_removing_twice_is_harmless(tmp_path: Path) -> None:
    path = str(tmp_path / "auth.sock")
    listener, bound = listen_privately(path)
    listener.close()
    bound.remove()
    bound.remove()  # a second close of the server
    assert not os.path.exists(path)
