"""`port_is_free`, the check `make run` makes before it starts: listeners count, the TIME_WAIT
sockets a stopped server leaves behind do not."""

from __future__ import annotations

import socket
from pathlib import Path

from devstack.ports import port_is_free, wait_until

TCP_TIME_WAIT = "06"  # the state column of /proc/net/tcp


def time_wait_sockets_on(port: int) -> int:
    """How many IPv4 sockets with local port `port` are in TIME_WAIT."""
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    count = 0
    for row in rows:
        fields = row.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        if local_port == port and fields[3] == TCP_TIME_WAIT:
            count += 1
    return count


def test_a_listener_sharing_its_port_is_seen() -> None:
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert not port_is_free(port)
    assert port_is_free(port)


def test_a_listener_on_all_addresses_is_seen() -> None:
    with socket.socket() as listener:
        listener.bind(("0.0.0.0", 0))
        listener.listen()
        assert not port_is_free(listener.getsockname()[1])


def test_time_wait_sockets_of_a_stopped_server_do_not_hold_the_port() -> None:
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
                served, _ = listener.accept()
                served.close()  # the server closes first: its side ends in TIME_WAIT
                assert client.recv(1) == b""
    wait_until(lambda: time_wait_sockets_on(port) == 3, 5.0, f"3 TIME_WAIT sockets on {port}")
    assert port_is_free(port)
