"""One listening socket per HTTP worker slot, held by the main process, and the kernel's choice
among them for each new connection.

Workers sharing one socket take new connections unevenly: every worker's runtime is woken for
the same queue, and the first one awake accepts everything queued, so a burst of connections
lands mostly on one worker (measured under Granian: 387 of a closed loop's 512 connections,
115 of 128), which then queues and refuses what the other worker could serve. With a socket
per worker in one SO_REUSEPORT group, the kernel spreads new connections evenly.

The sockets belong to the main process for its whole life, not to the workers: the port stays
open while it lives, and a replacement worker takes over its slot's socket with whatever waits
in that socket's queue. So that a new connection never waits for a worker that is dead or not
yet serving, the main process attaches a classic BPF program to the group
(SO_ATTACH_REUSEPORT_CBPF) that picks, at random, one of the slots whose worker serves
(`steer`; services.http.workers.respawn says which do). Only connections already queued on a
slot when its worker died wait for the replacement. A kernel that cannot run the program
(EINVAL) leaves its own choice (a hash of the addresses over every slot); a refusal that may
pass (ENOMEM) leaves the program attached before, or the kernel's own choice if there was
none, and is tried again at the next look. One line says so either way; the main process's
metrics hear of each look and each refusal (`SteeringReport`).

    listeners = SlotListeners("0.0.0.0", 8000, backlog=1024, slots=2, stalled_send_timeout=30)
    sock = listeners.for_slot(0)           # what worker 0 is given
    listeners.steer({1})                   # worker 0 died: new connections go to worker 1
    listeners.close()
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import socket
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from granian._granian import ListenerSpec

from services.foundation.ports import something_listens_on
from services.http.workers.stalled_sends import drop_stalled_sends

log = logging.getLogger(__name__)

# linux/filter.h and asm-generic/socket.h.
_BPF_LD_W_ABS = 0x00 | 0x00 | 0x20
_BPF_ALU_MOD_K = 0x04 | 0x90 | 0x00
_BPF_JMP_JEQ_K = 0x05 | 0x10 | 0x00
_BPF_RET_K = 0x06 | 0x00
_SKF_AD_RANDOM = (-0x1000 + 56) & 0xFFFFFFFF  # SKF_AD_OFF + SKF_AD_RANDOM
_SO_ATTACH_REUSEPORT_CBPF = 51
_SO_DETACH_REUSEPORT_BPF = 68
# How long a port something listens on is waited for before refusing to start, and how often
# it is looked at meanwhile.
PORT_WAIT_SECONDS = 5.0
_PORT_POLL_SECONDS = 0.2


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def _steering_program(slots: list[int]) -> list[tuple[int, int, int, int]]:
    """Classic BPF: a random number modulo len(slots), mapped to that slot's index in the group
    (the order the sockets started listening in)."""
    program = [(_BPF_LD_W_ABS, 0, 0, _SKF_AD_RANDOM), (_BPF_ALU_MOD_K, 0, 0, len(slots))]
    for position, slot in enumerate(slots):
        program += [(_BPF_JMP_JEQ_K, 0, 1, position), (_BPF_RET_K, 0, 0, slot)]
    return [*program, (_BPF_RET_K, 0, 0, slots[0])]


def _ignore(_value: object) -> None:
    return None


@dataclass(frozen=True)
class SteeringReport:
    """What the steering tells the main process's metrics. Callables, because
    prometheus_client may be imported only once its multiprocess folder is set."""

    serving: Callable[[int], None] = _ignore  # at each look: how many workers serve
    steered: Callable[[bool], None] = _ignore  # at each look: new connections go where it says
    refused: Callable[[str], None] = _ignore  # at each refusal: its errno's name


class SlotListeners:
    def __init__(
        self,
        host: str,
        port: int,
        backlog: int,
        slots: int,
        stalled_send_timeout: float,
        port_wait: float = PORT_WAIT_SECONDS,
        report: SteeringReport = SteeringReport(),
    ) -> None:
        _refuse_a_port_in_use(host, port, port_wait)
        self._report = report
        self._sockets: list[socket.socket] = []
        for _ in range(slots):
            # Bound as Granian binds (SO_REUSEADDR, SO_REUSEPORT); the socket object owns the
            # descriptor (Granian's holder does not close it).
            sock = socket.socket(fileno=ListenerSpec(host, port, backlog).build().get_fd())
            drop_stalled_sends(sock, stalled_send_timeout)
            # Listening here, in slot order, fixes each socket's index in the group, which the
            # steering program returns (a worker listening again later changes nothing).
            sock.listen(backlog)
            self._sockets.append(sock)
        self._steered_to: tuple[int, ...] = ()  # nothing attached: the kernel's own choice
        self._said = ""
        self._served = False  # some worker has served: "no worker serves" is news, not start-up
        self._refused = False  # the last attach failed (said once until one works)
        self._unsupported = False  # the kernel cannot run the program: its own choice for good
        # Nothing attached yet: the kernel's own spread over every slot, what steering to no
        # serving worker attaches.
        report.serving(0)
        report.steered(True)

    def for_slot(self, slot: int) -> socket.socket:
        return self._sockets[slot]

    def steer(self, taking: Collection[int]) -> None:
        """New connections go to the slots in `taking`; to every slot when it is empty (no
        worker serves: the connections wait in the queues for whichever starts first). One
        line for each change, which comes with a worker's death, stall or first beat."""
        self._report.serving(len(taking))
        slots = tuple(sorted(taking)) or tuple(range(len(self._sockets)))
        if slots != self._steered_to and not self._unsupported:
            if not self._attach(slots):
                self._report.steered(False)
                return
            self._steered_to = slots
        elif self._refused:
            # Back to the slots the program still attached serves: nothing to retry, and the
            # next refusal is news again.
            self._refused = False
        self._report.steered(not self._unsupported)
        if not taking:
            yet = "" if self._served else " yet"
            line = f"no HTTP worker serves{yet}; new connections wait on every worker's socket"
        else:
            self._served = True
            numbers = ", ".join(str(slot + 1) for slot in slots)
            line = f"new connections go to HTTP worker{'s' if len(slots) > 1 else ''} {numbers}"
        if line != self._said and not self._unsupported:
            log.info(line)
        self._said = line

    def _attach(self, slots: tuple[int, ...]) -> bool:
        instructions = _steering_program(list(slots))
        array = (_SockFilter * len(instructions))(*(_SockFilter(*i) for i in instructions))
        program = _SockFprog(len(instructions), array)
        try:
            self._sockets[0].setsockopt(
                socket.SOL_SOCKET, _SO_ATTACH_REUSEPORT_CBPF, bytes(program)
            )
        except OSError as error:
            self._report.refused(errno.errorcode.get(error.errno or 0, "unknown"))
            # EINVAL, ENOPROTOOPT: this kernel (or a seccomp profile) will not run it. Anything
            # else (ENOMEM at the pod's memory limit) is tried again at the next look.
            self._unsupported = error.errno in (errno.EINVAL, errno.ENOPROTOOPT)
            if self._unsupported:
                with contextlib.suppress(OSError):
                    self._sockets[0].setsockopt(socket.SOL_SOCKET, _SO_DETACH_REUSEPORT_BPF, 0)
            if not self._refused:
                log.warning(
                    "the kernel refused the program that sends new connections only to serving"
                    " HTTP workers (%s); %s",
                    error,
                    "it spreads them over every worker, a dead or stuck one's included"
                    if self._unsupported
                    else "new connections go where they went before; trying again every second",
                )
            self._refused = True
            return False
        if self._refused:
            log.info("the kernel accepted the program that steers new connections again")
        self._refused = False
        return True

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()


def _refuse_a_port_in_use(host: str, port: int, wait: float) -> None:
    """Another process listening on the port (a second server of the same user, which
    SO_REUSEPORT would let in silently) would join the group and shift the indices the
    steering program returns: refuse to start instead. The workers of a process that has just
    died may hold the port for a moment longer, so a listener is waited for a few seconds."""
    deadline = time.monotonic() + wait
    said = False
    while True:
        try:
            if not something_listens_on(host, port):
                return
        except OSError as error:
            raise OSError(error.errno, f"cannot bind {host}:{port}: {error.strerror}") from error
        if time.monotonic() >= deadline:
            raise OSError(
                errno.EADDRINUSE,
                f"{host}:{port} is already in use: another process listens on it; stop it, or"
                " give this one another GATEHOUSE_HTTP_PORT",
            )
        if not said:
            said = True
            log.warning("%s:%d is in use; waiting up to %g s for it to be free", host, port, wait)
        time.sleep(_PORT_POLL_SECONDS)
