"""A listening Unix socket that only this process's user can open, and its removal.

Who can open the file is who may call over it (RpcServer.start_unix), so the file must be this
user's own from the moment it exists, in a folder nobody else can write to (else another user
could put a socket of their own at the path first, or replace ours), and must not be taken
from a live server or removed from under one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat

log = logging.getLogger(__name__)

BACKLOG = 64
PROBE_TIMEOUT = 1.0
# sun_path holds 108 bytes on Linux, with the terminating NUL.
MAX_UNIX_SOCKET_PATH = 107


class UnixSocketError(Exception):
    """The socket cannot be made safely at its path; the message says what to change."""


class SocketFile:
    """The socket file as bound. Its inode is held open (O_PATH), so its number cannot be
    reused by another file while this lives: `remove` tells ours from one bound since."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._held = os.open(path, os.O_PATH | os.O_NOFOLLOW)

    def remove(self) -> None:
        """Remove the file at the path unless another process has bound its own there; once.
        A file that cannot be removed stays (the next start replaces it once nobody listens)."""
        if self._held < 0:
            return
        held, self._held = self._held, -1
        try:
            ours = os.fstat(held)
            found = os.lstat(self.path)
            if (found.st_dev, found.st_ino) == (ours.st_dev, ours.st_ino):
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not remove the socket %s: %s", self.path, exc)
        finally:
            os.close(held)


def listen_privately(path: str) -> tuple[socket.socket, SocketFile]:
    """A socket listening at `path`, mode 0600, in a folder of this user's only (made with
    mode 0700 when missing); a stale socket left by a process that died is replaced."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        _make_private_folder(folder)
        _remove_stale(path)
    except OSError as exc:  # a read-only parent, a path too long, ...
        raise UnixSocketError(f"cannot make {path}: {exc}") from exc
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # Set around the bind alone, which does not yield: no other file made meanwhile.
        previous_mask = os.umask(0o177)
        try:
            listener.bind(path)
        finally:
            os.umask(previous_mask)
        listener.listen(BACKLOG)
        listener.setblocking(False)
        bound = SocketFile(path)
    except OSError as exc:
        listener.close()
        raise UnixSocketError(f"cannot listen on {path}: {exc}") from exc
    return listener, bound


def _make_private_folder(folder: str) -> None:
    with contextlib.suppress(FileExistsError):
        os.mkdir(folder, 0o700)
    found = os.lstat(folder)
    if not stat.S_ISDIR(found.st_mode):
        raise UnixSocketError(f"{folder} is not a folder")
    if found.st_uid != os.geteuid() or found.st_mode & 0o022:
        raise UnixSocketError(
            f"{folder} must belong to this process's user (uid {os.geteuid()}) and be writable"
            f" by it alone (it is uid {found.st_uid}, mode {stat.S_IMODE(found.st_mode):o}):"
            " anyone else who can write there could put a socket of their own at the path;"
            " choose a path in a folder of the service's own, such as /tmp/gatehouse/"
        )


def _remove_stale(path: str) -> None:
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(found.st_mode):
        raise UnixSocketError(
            f"{path} exists and is not a socket; remove it or choose another path"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # A listener whose backlog is full (a frozen server) does not take the connect, which
    # would block for ever; with a timeout Linux answers EAGAIN at once. Not stale either way.
    probe.settimeout(PROBE_TIMEOUT)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # nobody listens: left by a process that died
        return
    except (TimeoutError, BlockingIOError):
        pass
    finally:
        probe.close()
    raise UnixSocketError(
        f"another process takes calls on {path}; stop it first or choose another path"
    )
