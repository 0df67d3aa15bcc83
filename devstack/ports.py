"""Free loopback ports, and `wait_until` (with its asyncio twin): the only way to wait."""

from __future__ import annotations

import asyncio
import inspect
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

HOST = "127.0.0.1"

_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now.

    The kernel may hand the same ephemeral port out twice once it is closed again, so ports
    already given to this process are skipped: stores started in parallel never collide.
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
        with _handed_out_lock:
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise RuntimeError(
        "no free TCP port on 127.0.0.1 after 100 tries; is the ephemeral port range exhausted?"
    )


def port_is_free(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:`port`.

    The probe binds with SO_REUSEADDR, so the TIME_WAIT sockets of a stopped server's closed
    connections do not count, while any listener still does: one bound with SO_REUSEPORT, as
    Granian's are, refuses a socket without that option.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


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
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    delay = interval
    while True:
        try:
            if predicate():
                return
            last_error = None
        except Exception as exc:  # noqa: BLE001 - "not ready yet", quoted if we give up
            last_error = exc
        if abort is not None:
            reason = abort()
            if reason:
                head = f"gave up waiting until {what}: {reason}"
                raise RuntimeError(_message(head, where, last_error))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(
                _message(f"timed out after {timeout:g} s waiting until {what}", where, last_error)
            )
        time.sleep(min(delay, remaining))
        delay = min(delay * 1.5, max_interval)


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
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    delay = interval
    while True:
        try:
            result = predicate()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            last_error = None
        except Exception as exc:  # noqa: BLE001 - "not ready yet", quoted if we give up
            last_error = exc
        if abort is not None:
            reason = abort()
            if reason:
                head = f"gave up waiting until {what}: {reason}"
                raise RuntimeError(_message(head, where, last_error))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(
                _message(f"timed out after {timeout:g} s waiting until {what}", where, last_error)
            )
        await asyncio.sleep(min(delay, remaining))
        delay = min(delay * 1.5, max_interval)


def _message(head: str, where: str | Path | None, last_error: BaseException | None) -> str:
    parts = [head]
    if last_error is not None:
        parts.append(f"last error: {type(last_error).__name__}: {last_error}")
    if where is not None:
        parts.append(f"see {where}")
    return "; ".join(parts)
