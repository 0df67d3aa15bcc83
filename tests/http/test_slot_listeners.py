"""The main process's listening sockets, one per worker slot, and where the kernel sends new
connections among them; real sockets on loopback, no workers (each slot's queue is read here)."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator

import pytest

from devstack.ports import HOST, free_port
from services.http.workers.slot_listeners import SlotListeners

SLOTS = 3
CONNECTIONS = 60


@pytest.fixture
def listeners() -> Iterator[SlotListeners]:
    held = SlotListeners(HOST, free_port(), backlog=128, slots=SLOTS, stalled_send_timeout=30.0)
    yield held
    held.close()


def queued_per_slot(listeners: SlotListeners, connections: int = CONNECTIONS) -> list[int]:
    """Open `connections` to the port, then count what each slot's queue holds."""
    port = listeners.for_slot(0)[1].getsockname()[1]
    clients = [socket.create_connection((HOST, port), timeout=5.0) for _ in range(connections)]
    counts = []
    try:
        for slot in range(SLOTS):
            sock = listeners.for_slot(slot)[1]
            sock.setblocking(False)
            count = 0
            while True:
                try:
                    accepted, _ = sock.accept()
                except BlockingIOError:
                    break
                accepted.close()
                count += 1
            counts.append(count)
    finally:
        for client in clients:
            client.close()
    return counts


def test_each_slot_has_a_listening_socket_of_its_own_on_one_port(
    listeners: SlotListeners,
) -> None:
    sockets = [listeners.for_slot(slot)[1] for slot in range(SLOTS)]
    assert len({sock.fileno() for sock in sockets}) == SLOTS
    assert len({sock.getsockname() for sock in sockets}) == 1
    assert all(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) for sock in sockets)
    # The same socket every time: a replacement worker takes over its slot's queue.
    assert listeners.for_slot(1)[1] is sockets[1]


def test_new_connections_go_only_to_the_slots_steered_to(listeners: SlotListeners) -> None:
    listeners.steer({1})
    assert queued_per_slot(listeners) == [0, CONNECTIONS, 0]
    listeners.steer({0, 2})
    counts = queued_per_slot(listeners)
    assert counts[1] == 0 and counts[0] > 0 and counts[2] > 0, counts
    assert sum(counts) == CONNECTIONS


def test_with_no_slot_serving_every_slot_gets_connections(listeners: SlotListeners) -> None:
    listeners.steer({2})
    listeners.steer(set())
    counts = queued_per_slot(listeners)
    assert all(count > 0 for count in counts), counts
    assert sum(counts) == CONNECTIONS


def test_one_line_per_change(listeners: SlotListeners, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="services.http.workers.slot_listeners"):
        listeners.steer({0, 1})
        listeners.steer({1, 0})
        listeners.steer({1})
    assert [record.getMessage() for record in caplog.records] == [
        "new connections go to HTTP workers 1, 2",
        "new connections go to HTTP worker 2",
    ]


def test_a_program_the_kernel_refuses_leaves_its_own_choice_and_says_so_once(
    listeners: SlotListeners, caplog: pytest.LogCaptureFixture
) -> None:
    listeners.for_slot(0)[1].close()  # setsockopt on it now fails (EBADF)
    with caplog.at_level(logging.INFO, logger="services.http.workers.slot_listeners"):
        listeners.steer({1})
        listeners.steer({2})
    assert len(caplog.records) == 1, [record.getMessage() for record in caplog.records]
    assert caplog.records[0].levelno == logging.WARNING
    assert "spreads them over every worker" in caplog.records[0].getMessage()
