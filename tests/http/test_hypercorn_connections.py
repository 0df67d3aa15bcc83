"""The Hypercorn worker's connection task: a connection that broke ends quietly, while an error
that its closing would hide is still logged."""

from __future__ import annotations

import asyncio
import errno
import logging

import h11
import hypercorn.asyncio.run as hypercorn_run
import pytest
from hypercorn.asyncio.tcp_server import TCPServer

from services.http.workers.hypercorn_connections import install_connection_cap

TIMED_OUT = TimeoutError(110, "Connection timed out")


def run_capped(
    monkeypatch: pytest.MonkeyPatch, inner: BaseException, closing: OSError = TIMED_OUT
) -> None:
    """One connection task whose work fails with `inner` and whose close then fails with
    `closing`, as Hypercorn's does on a connection the kernel dropped."""

    async def run(self: TCPServer) -> None:
        try:
            raise inner
        finally:
            raise closing

    monkeypatch.setattr(TCPServer, "run", run)
    monkeypatch.setattr(hypercorn_run, "TCPServer", TCPServer)  # restored after the test
    install_connection_cap(10)
    capped = hypercorn_run.TCPServer
    asyncio.run(capped.__new__(capped).run())


@pytest.mark.parametrize(
    "closing",
    [TIMED_OUT, OSError(errno.EHOSTUNREACH, "No route to host")],
)
def test_a_connection_that_broke_ends_without_an_error_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, closing: OSError
) -> None:
    run_capped(monkeypatch, ExceptionGroup("connection", [closing]), closing)
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


def test_hypercorns_500_after_a_head_lost_mid_write_is_part_of_the_loss(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Seen under a stalled reader: the head's write failed after h11 took it, and Hypercorn's
    500 for an app that ended early is refused by h11 mid-body."""
    refused = h11.LocalProtocolError(
        "can't handle event type Response when role=SERVER and state=SEND_BODY"
    )
    caplog.set_level(logging.INFO)
    run_capped(monkeypatch, ExceptionGroup("connection", [refused]))
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert [record for record in caplog.records if "head was being written" in record.message]


def test_an_error_that_the_close_would_hide_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    run_capped(monkeypatch, ExceptionGroup("connection", [RuntimeError("h11 state bug")]))
    (failed,) = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert failed.exc_info is not None and "h11 state bug" in str(failed.exc_info[1].exceptions)
