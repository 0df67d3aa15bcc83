"""Fixtures of the command's tests."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest


@pytest.fixture
def children_take_ctrl_c() -> Iterator[None]:
    """Commands the test starts take SIGINT as a Ctrl-C at a terminal reaches them, even where
    the tests run with SIGINT ignored (a shell script's background job ignores it, and children
    inherit that; the command, as asyncio.run, then ignores Ctrl-C too)."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)  # a child starts with the default
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
