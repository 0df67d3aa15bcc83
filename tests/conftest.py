"""Fixtures shared by all test packages: the data stores, the whole system as processes
(tests/system and tests/web), and an S3 API server; and the schemathesis summary at the end of
the run (here, not in tests/openapi: with pytest-xdist only this conftest is loaded by the
process that writes the summary)."""

from __future__ import annotations

import signal
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import httpx
import pytest

from devstack import DataStores
from devstack.gatehouse import Gatehouse
from tests.openapi.fuzz_report import FUZZ_PROPERTY

if TYPE_CHECKING:
    from tests.s3_server import S3Server

# Short leases and drains keep the fault scenarios fast; bcrypt at its minimum cost keeps
# signups cheap (one test elsewhere runs the default cost).
TEST_SETTINGS = {
    "GATEHOUSE_BCRYPT_COST": "4",
    "GATEHOUSE_LEASE_TTL": "3",
    "GATEHOUSE_DRAIN_DELAY": "1",
    "GATEHOUSE_DRAIN_GRACE": "10",
    "GATEHOUSE_HTTP_WORKERS": "2",
    "GATEHOUSE_EJECT_SECONDS": "1",
    "GATEHOUSE_HANDSHAKE_TIMEOUT": "1",
    "GATEHOUSE_LOG_LEVEL": "INFO",
    "GATEHOUSE_LAST_SEEN_INTERVAL": "0.5",
}


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    # Turns SIGTERM (CI cancelling the run) into what Ctrl-C does: pytest runs the
    # finalizers, so the stores are stopped. A SIGKILL is covered by PR_SET_PDEATHSIG.
    raise KeyboardInterrupt(f"{signal.Signals(signum).name} received")


@pytest.fixture(scope="session")
def data_stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataStores]:
    """MariaDB primary + replica, Redis and etcd for the whole session, as `make run` starts
    them but with etcd as the chart runs it: TLS only, auth on, a user per tier (root for the
    tests' own set-up: `data_stores.etcd_client()`).

    Tests that stop or pause a store must bring it back before they end (use try/finally).
    """
    previous = None
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        stores = DataStores.start(tmp_path_factory.mktemp("data-stores"), etcd_auth=True)
        try:
            yield stores
        finally:
            stores.stop()
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="session")
def gatehouse(
    data_stores: DataStores, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gatehouse]:
    """Two auth replicas and two HTTP processes (as two pods), for the whole session, calling
    each other over mutual TLS (`gatehouse.client_tls()` for a test's own RPC client)."""
    system = Gatehouse(
        data_stores, tmp_path_factory.mktemp("gatehouse"), settings=dict(TEST_SETTINGS)
    )
    try:
        system.start(2, 2)
        yield system
    finally:
        system.stop()


@pytest.fixture
async def clients(gatehouse: Gatehouse) -> AsyncIterator[list[httpx.AsyncClient]]:
    """One HTTP client per HTTP process; no cookie jar, so every call says how it authenticates."""
    opened = [
        httpx.AsyncClient(base_url=gatehouse.url(i), timeout=15.0, cookies=None, trust_env=False)
        for i in range(len(gatehouse.http))
    ]
    yield opened
    for client in opened:
        await client.aclose()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 API server on a free loopback port, for the whole session."""
    from tests.s3_server import running_s3_server  # moto takes a second to import

    with running_s3_server() as server:
        yield server


TESTS = Path(__file__).parent
# Test folders in the order their files are handed out. pytest-xdist (`--dist loadfile
# --no-loadscope-reorder`, see the Makefile) gives a worker its next file once it is nearly
# done with its own: the end-to-end folders go first and the run ends on short unit-test files,
# so neither worker sits idle long at the end. (By default xdist hands out the files with the
# most tests first, which left one-test files of 60-100 s for the end.) The drills and the
# bench smoke, both measuring latency, stay far apart.
FOLDER_ORDER = (
    "drills", "system", "devstack", "bench", "openapi", "delivery", "web",
    "auth", "foundation", "http", "cli",
)  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        parts = item.path.relative_to(TESTS).parts if item.path.is_relative_to(TESTS) else ()
        folder = parts[0] if len(parts) > 1 else ""
        return FOLDER_ORDER.index(folder) if folder in FOLDER_ORDER else len(FOLDER_ORDER)

    items.sort(key=rank)  # stable: each file's tests keep their order


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for outcome in ("passed", "failed"):
        for report in terminalreporter.stats.get(outcome, []):
            for name, lines in getattr(report, "user_properties", ()):
                if name == FUZZ_PROPERTY:
                    terminalreporter.write_sep("-", "schemathesis")
                    for line in lines:
                        terminalreporter.write_line(line)
