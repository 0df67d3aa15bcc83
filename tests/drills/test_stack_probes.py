"""The drills' look at which connections a process holds, on real loopback sockets."""

from __future__ import annotations

import os
import socket

from drills.stack import client_ends_held_by


def test_the_client_ends_of_the_connections_a_process_holds_are_listed() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with (
            socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.3", 0)),
            socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.4", 0)),
        ):
            held_open, held_open_peer = listener.accept()
            closed, closed_peer = listener.accept()
            closed.close()  # accepted, then closed: no longer held
            with held_open:
                # The clients' own sockets (also in this process) have another local port.
                assert client_ends_held_by(os.getpid(), port) == {held_open_peer}
            assert closed_peer != held_open_peer
            assert client_ends_held_by(os.getpid(), port) == set()
