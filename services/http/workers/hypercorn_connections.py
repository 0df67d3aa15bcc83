"""A per-worker connection cap for Hypercorn, which has none of its own.

Granian bounds the connections a worker holds with `backpressure`; Hypercorn accepts every
connection. In a Hypercorn worker, `install_connection_cap` makes each accepted connection
past GATEHOUSE_HTTP_MAX_CONNECTIONS close at once, before a byte is read. Hypercorn 0.18 builds
one `TCPServer` per accepted connection, looked up in `hypercorn.asyncio.run` at accept time,
so the cap is a subclass put in its place (pinned by the version in pyproject.toml; the tests
of the cap fail if a new version moves it).
"""

from __future__ import annotations

import errno
import logging

import h11
import hypercorn.asyncio.run as hypercorn_run
from hypercorn.asyncio.tcp_server import TCPServer

from services.http import metrics

log = logging.getLogger(__name__)


# What a socket reports when its peer or the path to it went away: with TCP_USER_TIMEOUT the
# kernel gives the last ICMP error it saw (an unreachable host, a prohibited route: EACCES
# from ICMPv6) rather than ETIMEDOUT.
_NETWORK_ERRNOS = frozenset(
    {
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.EHOSTDOWN,
        errno.ENONET,
        errno.EPROTO,
        errno.ENOPROTOOPT,
        errno.EOPNOTSUPP,
        errno.EACCES,
    }
)


def _connection_lost(error: BaseException) -> bool:
    """Whether `error` says only that the connection broke (as a group, every one of it)."""
    if isinstance(error, BaseExceptionGroup):
        return all(_connection_lost(inner) for inner in error.exceptions)
    return isinstance(error, (TimeoutError, ConnectionError)) or (
        isinstance(error, OSError) and error.errno in _NETWORK_ERRNOS
    )


def _hypercorn_cleanup_after_loss(error: BaseException) -> bool:
    """Whether `error` is Hypercorn's own cleanup tripping over a connection that broke while
    the response head was being written: h11 had taken the head, Hypercorn's stream had not,
    so when the app ends it sends a 500 head that h11 refuses mid-body. Only a loss causes it
    (the app never ends a response early), so it is part of the loss, not a failure."""
    if isinstance(error, BaseExceptionGroup):
        return all(
            _connection_lost(inner) or _hypercorn_cleanup_after_loss(inner)
            for inner in error.exceptions
        )
    return isinstance(error, h11.LocalProtocolError) and "event type Response" in str(error)


def install_connection_cap(limit: int) -> None:
    open_connections = 0

    class CappedTCPServer(TCPServer):
        async def run(self) -> None:
            nonlocal open_connections
            if open_connections >= limit:
                metrics.REFUSED_CONNECTIONS.inc()
                self.writer.close()
                return
            open_connections += 1
            try:
                await super().run()
            except OSError as lost:
                # The connection broke (a reset, a stalled send timed out): its requests have
                # logged that already, and there is nothing left to close. The close that
                # raised this may have replaced another error, which must not go unseen.
                if not _connection_lost(lost):
                    raise
                hidden = lost.__context__
                if hidden is None or _connection_lost(hidden):
                    return
                if _hypercorn_cleanup_after_loss(hidden):
                    log.info("HTTP connection lost while an answer's head was being written")
                else:
                    log.error("HTTP connection failed", exc_info=hidden)
            finally:
                open_connections -= 1

    # hypercorn.asyncio.run imports TCPServer without re-exporting it; replacing that very name
    # is the point (see the module's docstring).
    hypercorn_run.TCPServer = CappedTCPServer  # type: ignore[attr-defined]
