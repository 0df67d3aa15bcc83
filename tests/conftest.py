"""Fixtures shared by all test packages."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from types import FrameType

import pytest

from devstack import DataStores


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    # Turns SIGTERM (CI cancelling the run) into what Ctrl-C does: pytest runs the
    # finalizers, so the stores are stopped. A SIGKILL is covered by PR_SET_PDEATHSIG.
    raise KeyboardInterrupt(f"{signal.Signals(signum).name} received")


@pytest.fixture(scope="session")
def data_stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataStores]:
    """MariaDB primary + replica, Redis and etcd for the whole session, as `make run` starts them.

    Tests that stop or pause a store must bring it back before they end (use try/finally).
    """
    previous = None
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        stores = DataStores.start(tmp_path_factory.mktemp("data-stores"))
        try:
            yield stores
        finally:
            stores.stop()
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
