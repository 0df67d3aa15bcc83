"""Free loopback ports, and `wait_until` (with its asyncio twin): the only way to wait."""

from __future__ import annotations

import asyncio
import inspect
import os
import random
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from services.foundation.ports import something_listens_on

HOST = "127.0.0.1"

_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()
_random = random.Random()
# Below the kernel's ephemeral range: the ports it gives outgoing connections their source
# port from. A port picked there (bind to port 0) can become some client's source port before
# the server that was to listen on it binds; parallel tests open thousands of connections.
_LOWEST_PICKED = 10_000
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_DEFAULT_EPHEMERAL_LOW = 32_768


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, picked where no outgoing
    connection takes its source port, for a server started later to listen on.

    Test workers running in parallel (pytest-xdist sets PYTEST_XDIST_WORKER, which the stacks
    they start inherit) each pick from their own share of that range, and ports already given
    to this process are skipped, so parallel stores never collide. Where the kernel leaves no
    such range, the kernel picks.
    """
    low, high = _pickable_range()
    for _ in range(200):
        if high - low < 100:
            port = _kernel_picked_port()
        else:
            port = _random.randrange(low, high)
            if not _bindable(port):
                continue
        with _handed_out_lock:
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise RuntimeError(
        "no free TCP port on 127.0.0.1 after 200 tries; are the ports below the ephemeral "
        f"range ({_LOWEST_PICKED}-{_ephemeral_low() - 1}) all in use?"
    )


def _pickable_range() -> tuple[int, int]:
    """[low, high) of the ports this process picks from: its worker's share of the ports
    between _LOWEST_PICKED and the ephemeral range. A worker that replaces a crashed one has a
    number past the count, and which share is free is not known: it picks from them all."""
    low, high = _LOWEST_PICKED, _ephemeral_low()
    worker = os.environ.get("PYTEST_XDIST_WORKER", "").removeprefix("gw")
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if worker.isdigit() and workers.isdigit() and int(worker) < int(workers):
        share = (high - low) // int(workers)
        low += share * int(worker)
        high = low + share
    return low, high


def _ephemeral_low() -> int:
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _DEFAULT_EPHEMERAL_LOW


def _kernel_picked_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _bindable(port: int) -> bool:
    """Whether nothing holds 127.0.0.1:`port` now: no listener, no client's source port, and
    (stricter than a listener's own bind) no connection in TIME_WAIT."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def port_is_free(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:`port` (the TIME_WAIT sockets of a stopped
    server's closed connections do not count; see services.foundation.ports)."""
    try:
        return not something_listens_on(HOST, port)
    except OSError:
        return False


@dataclass
class _Polling:
    """What `wait_until` and `wait_until_async` share: the deadline, the growing pause between
    rounds, the last error, and the decision to go on, give up or time out."""

    timeout: float
    what: str
    where: str | Path | None
    abort: Callable[[], str | None] | None
    delay: float
    max_interval: float
    last_error: BaseException | None = None
    deadline: float = field(init=False)

    def __post_init__(self) -> None:
        self.deadline = time.monotonic() + self.timeout

    def check(self, predicate: Callable[[], object]) -> bool:
        """One round: whether `predicate` holds; an exception counts as "not yet"."""
        try:
            return self._held(predicate())
        except Exception as exc:  # noqa: BLE001 - "not ready yet", quoted if we give up
            return self._failed(exc)

    async def check_async(self, predicate: Callable[[], object | Awaitable[object]]) -> bool:
        """`check` of a predicate that may return an awaitable."""
        try:
            result = predicate()
            return self._held(await result if inspect.isawaitable(result) else result)
        except Exception as exc:  # noqa: BLE001 - "not ready yet", quoted if we give up
            return self._failed(exc)

    def _held(self, result: object) -> bool:
        self.last_error = None
        return bool(result)

    def _failed(self, error: Exception) -> bool:
        self.last_error = error
        return False

    def next_pause(self) -> float:
        """Seconds to wait before the next round; raises when waiting is over."""
        if self.abort is not None:
            reason = self.abort()
            if reason:
                head = f"gave up waiting until {self.what}: {reason}"
                raise RuntimeError(_message(head, self.where, self.last_error))
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            head = f"timed out after {self.timeout:g} s waiting until {self.what}"
            raise TimeoutError(_message(head, self.where, self.last_error))
        pause = min(self.delay, remaining)
        self.delay = min(self.delay * 1.5, self.max_interval)
        return pause


def wait_until(
    predicate: Callable[[], object],
    timeout: float,
    what: str,
    *,
    where: str | Path | None = None,
    abort: Callable[[], str | None] | None = None,
    interval: float = 0.02,
    max_interval: float = 0.2,
) -> None:
    """Poll `predicate` until it returns a truthy value, for at most `timeout` seconds.

    `what` names the awaited condition ("mariadb primary accepts connections"), `where` the
    log to read when it does not happen. An exception from `predicate` counts as "not yet";
    the last one is quoted in the TimeoutError. `abort` is checked on every round: when it
    returns a reason (the process died, say), waiting stops at once with that reason.
    """
    polling = _Polling(timeout, what, where, abort, interval, max_interval)
    while not polling.check(predicate):
        time.sleep(polling.next_pause())


async def wait_until_async(
    predicate: Callable[[], object | Awaitable[object]],
    timeout: float,
    what: str,
    *,
    where: str | Path | None = None,
    abort: Callable[[], str | None] | None = None,
    interval: float = 0.02,
    max_interval: float = 0.2,
) -> None:
    """`wait_until` for coroutines: polls without blocking the event loop.

    `predicate` may be a plain callable or return an awaitable (an `async def` function).
    """
    polling = _Polling(timeout, what, where, abort, interval, max_interval)
    while not await polling.check_async(predicate):  # noqa: ASYNC110 - conditions without an event
        await asyncio.sleep(polling.next_pause())


def _message(head: str, where: str | Path | None, last_error: BaseException | None) -> str:
    parts = [head]
    if last_error is not None:
        parts.append(f"last error: {type(last_error).__name__}: {last_error}")
    if where is not None:
        parts.append(f"see {where}")
    return "; ".join(parts)
