"""Connections whose client stopped reading are dropped by the kernel, not kept for ever.

Neither server times out a response that cannot be written: a client that sends requests and
never reads the answers fills its receive window, the worker's write waits, no idle or header
timer runs, and the connection (a place under GATEHOUSE_HTTP_MAX_CONNECTIONS, and the kernel's
memory of the unsent answers, megabytes a connection) is held until the client goes. With
TCP_USER_TIMEOUT set on the listening socket, every connection accepted from it (the option is
inherited on accept) is aborted by the kernel once data sent on it has gone unacknowledged, a
zero window included, for that long; the server's next write fails and it closes the connection.
"""

from __future__ import annotations

import socket


def drop_stalled_sends(listener: socket.socket, seconds: float) -> None:
    """Connections accepted on `listener` are aborted after `seconds` of sending without the
    client acknowledging anything."""
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, round(seconds * 1000))
