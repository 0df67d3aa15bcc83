"""What one `make run` holds for its whole life, so that a second one cannot take it too: its
state folder (which a second run would wipe under the first one's processes) and its HTTP
ports (Granian listens with SO_REUSEPORT: a second stack would share them, and the kernel would
split connections between two stacks with two databases).

Each hold is a listening Unix socket in the abstract namespace: gone when the process exits,
killed or not, and not inherited by its children; nothing on disk, so no folder must be
writable and nothing (`make clean`, a /tmp cleaner) can remove it under a running stack. Like
the ports themselves, it is per network namespace.
"""

from __future__ import annotations

import hashlib
import socket
import struct
from pathlib import Path

# Room for the connections of refused runs' probes, which nobody accepts.
_BACKLOG = 128
_CREDENTIALS = struct.Struct("3i")  # SO_PEERCRED: pid, uid, gid


def hold(name: str) -> socket.socket | str:
    """Hold `name` for this process: the socket, or the pid of the process that holds it
    ("unknown" when it cannot be told)."""
    address = f"\0gatehouse-devstack-{name}"
    held = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        held.bind(address)
    except OSError:
        held.close()
        return _holder_of(address)
    held.listen(_BACKLOG)
    return held


def hold_state_dir(state_dir: Path) -> socket.socket | str:
    """`hold` for the resolved `state_dir`, by a digest of its path (an abstract socket's name
    is at most 107 bytes)."""
    digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:40]
    return hold(f"state-{digest}")


def hold_port(port: int) -> socket.socket | str:
    return hold(f"port-{port}")


def _holder_of(address: str) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(address)
            raw = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size)
        except OSError:
            return "unknown"
    return str(_CREDENTIALS.unpack(raw)[0])
