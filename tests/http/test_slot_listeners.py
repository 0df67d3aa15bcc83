"""The main process's listening sockets, one per worker slot, and where the kernel sends new
connections among them; real sockets on loopback, no workers (each slot's queue is read here)."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator

import pytest

from devstack.ports import HOST, free_port
from services.http.workers.slot_listeners import SlotListeners, SteeringReport

SLOTS = 3
CONNECTIONS = 60


@pytest.fixture
def listeners() -> Iterator[SlotListeners]:
    held = SlotListeners(HOST, free_port(), backlog=128, slots=SLOTS, stalled_send_timeout=30.0)
    yield held
    held.close()


def queued_per_slot(listeners: SlotListeners, connections: int = CONNECTIONS) -> list[int]:
    """Open `connections` to the port, then count what each slot's queue holds."""
    port = listeners.for_slot(0).getsockname()[1]
    clients = [socket.create_connection((HOST, port), timeout=5.0) for _ in range(connections)]
    counts = []
    try:
        for slot in range(SLOTS):
            sock = listeners.for_slot(slot)
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
    sockets = [listeners.for_slot(slot) for slot in range(SLOTS)]
    assert len({sock.fileno() for sock in sockets}) == SLOTS
    assert len({sock.getsockname() for sock in sockets}) == 1
    assert all(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) for sock in sockets)
    # The same socket every time: a replacement worker takes over its slot's queue.
    assert listeners.for_slot(1) is sockets[1]


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
        listeners.steer(set())
        listeners.steer(set())
    assert [record.getMessage() for record in caplog.records] == [
        "new connections go to HTTP workers 1, 2",
        "new connections go to HTTP worker 2",
        "no HTTP worker serves; new connections wait on every worker's socket",
    ]


def test_a_program_the_kernel_will_not_run_leaves_its_own_choice_and_says_so_once(
    listeners: SlotListeners, caplog: pytest.LogCaptureFixture
) -> None:
    listeners.steer({1})
    with caplog.at_level(logging.INFO, logger="services.http.workers.slot_listeners"):
        # Past classic BPF's 4,096 instructions: the kernel answers EINVAL, as one that cannot
        # run the program at all would. What was attached before is taken off.
        listeners.steer(set(range(2100)))
        listeners.steer({2})
    assert [record.levelno for record in caplog.records] == [logging.WARNING]
    assert "spreads them over every worker" in caplog.records[0].getMessage()
    counts = queued_per_slot(listeners)
    assert all(count > 0 for count in counts), counts


def test_a_refusal_that_may_pass_is_tried_again_and_said_once(
    listeners: SlotListeners, caplog: pytest.LogCaptureFixture
) -> None:
    listeners.steer({1})
    steering_socket = listeners.for_slot(0)
    replacement = socket.socket(steering_socket.family, steering_socket.type)
    original = listeners._sockets[0]
    # A socket the kernel refuses any option on (closed: EBADF), in the place of slot 0's.
    replacement.close()
    listeners._sockets[0] = replacement
    with caplog.at_level(logging.INFO, logger="services.http.workers.slot_listeners"):
        listeners.steer({2})
        listeners.steer({2})
        listeners._sockets[0] = original
        listeners.steer({2})
    assert [record.levelno for record in caplog.records] == [
        logging.WARNING,
        logging.INFO,
        logging.INFO,
    ], [record.getMessage() for record in caplog.records]
    assert "trying again" in caplog.records[0].getMessage()
    assert caplog.records[2].getMessage() == "new connections go to HTTP worker 3"
    assert queued_per_slot(listeners) == [0, 0, CONNECTIONS]


def test_the_metrics_hear_of_every_look_and_every_refusal() -> None:
    serving: list[int] = []
    steered: list[bool] = []
    refusals: list[str] = []
    held = SlotListeners(
        HOST,
        free_port(),
        backlog=128,
        slots=SLOTS,
        stalled_send_timeout=30.0,
        report=SteeringReport(serving.append, steered.append, refusals.append),
    )
    try:
        held.steer({0, 1})
        held.steer({1})
        held.steer(set())
        held.steer(set(range(2100)))  # refused: EINVAL, as in the test above
        held.steer({0})  # not tried again: the kernel's own choice for good
    finally:
        held.close()
    # The first pair is the start's: nothing attached, the kernel's own spread, as for none.
    assert serving == [0, 2, 1, 0, 2100, 1]
    assert steered == [True, True, True, True, False, False]
    assert refusals == ["EINVAL"]


def refusing_every_option(listeners: SlotListeners) -> socket.socket:
    """Slot 0's socket, replaced by one the kernel refuses any option on (closed: EBADF, a
    refusal that may pass); returned to be put back."""
    original = listeners._sockets[0]
    closed = socket.socket(original.family, original.type)
    closed.close()
    listeners._sockets[0] = closed
    return original


def test_a_refusal_that_may_pass_reports_no_steering_until_it_passes(
    listeners: SlotListeners,
) -> None:
    steered: list[bool] = []
    refusals: list[str] = []
    listeners._report = SteeringReport(steered=steered.append, refused=refusals.append)
    original = refusing_every_option(listeners)
    listeners.steer({2})
    listeners.steer({2})
    listeners._sockets[0] = original
    listeners.steer({2})
    assert steered == [False, False, True]
    assert refusals == ["EBADF", "EBADF"]


def test_back_to_the_slots_still_attached_after_a_refusal_is_steered_and_the_next_is_news(
    listeners: SlotListeners, caplog: pytest.LogCaptureFixture
) -> None:
    listeners.steer({1})
    steered: list[bool] = []
    listeners._report = SteeringReport(steered=steered.append)
    original = refusing_every_option(listeners)
    try:
        with caplog.at_level(logging.WARNING, logger="services.http.workers.slot_listeners"):
            listeners.steer({2})  # refused: the program for {1} stays
            listeners.steer({1})  # what it steers to: nothing to attach
            listeners.steer({2})  # refused again, and said again
    finally:
        listeners._sockets[0] = original
    assert steered == [False, True, False]
    assert len(caplog.records) == 2, [record.getMessage() for record in caplog.records]
    assert queued_per_slot(listeners) == [0, CONNECTIONS, 0]


def test_a_port_another_process_listens_on_is_refused_after_a_wait(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    first = SlotListeners(HOST, port, backlog=16, slots=1, stalled_send_timeout=30.0)
    try:
        with pytest.raises(OSError, match="is already in use: another process listens on it"):
            SlotListeners(HOST, port, 16, 1, stalled_send_timeout=30.0, port_wait=0.5)
    finally:
        first.close()
    assert "is in use; waiting up to 0.5 s" in caplog.text
    SlotListeners(HOST, port, backlog=16, slots=1, stalled_send_timeout=30.0).close()


def test_a_port_freed_while_waiting_is_taken() -> None:
    port = free_port()
    first = SlotListeners(HOST, port, backlog=16, slots=1, stalled_send_timeout=30.0)
    closing = threading.Timer(0.3, first.close)
    closing.start()
    try:
        SlotListeners(HOST, port, 16, 1, stalled_send_timeout=30.0, port_wait=30.0).close()
    finally:
        closing.join()


def test_connections_of_a_closed_listener_still_closing_are_no_obstacle() -> None:
    """The connections an earlier process accepted linger after it (FIN_WAIT, TIME_WAIT)."""
    port = free_port()
    first = SlotListeners(HOST, port, backlog=16, slots=1, stalled_send_timeout=30.0)
    client = socket.create_connection((HOST, port), timeout=5.0)
    accepted, _ = first.for_slot(0).accept()
    first.close()
    accepted.close()  # the server's side closes first: FIN_WAIT, then TIME_WAIT
    try:
        SlotListeners(HOST, port, 16, 1, stalled_send_timeout=30.0, port_wait=0.0).close()
    finally:
        client.close()


def test_an_address_that_cannot_be_bound_is_not_called_in_use() -> None:
    with pytest.raises(OSError, match=r"cannot bind 192\.0\.2\.1:"):
        SlotListeners("192.0.2.1", free_port(), 16, 1, stalled_send_timeout=30.0)
