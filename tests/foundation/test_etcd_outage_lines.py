"""An etcd outage is one warning per watched prefix or leased key, not one per retry: the
retries (every few seconds, for as long as etcd is away) are debug lines, and the end of the
outage is one line."""

from __future__ import annotations

import logging
import uuid

import aetcd
import pytest

from devstack import DataStores
from devstack.ports import free_port, wait_until_async
from services.foundation import etcd
from services.foundation.etcd import LeasedKey, PrefixWatcher, parse_endpoint
from tests.auth.tcp_proxy import TcpProxy


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries every few milliseconds: a second of outage is dozens of them."""
    monkeypatch.setattr(etcd.Backoff.__init__, "__defaults__", (0.01, 0.02))


RETRIES = 10


def lines_about(caplog: pytest.LogCaptureFixture, text: str, level: int | None = None) -> list[str]:
    """The messages holding `text`, at `level` (None: at any)."""
    return [
        record.getMessage()
        for record in caplog.records
        if level in (None, record.levelno) and text in record.getMessage()
    ]


async def test_an_unreachable_etcd_is_one_warning_per_loop_however_many_retries(
    fast_retries: None, caplog: pytest.LogCaptureFixture
) -> None:
    target = (f"127.0.0.1:{free_port()}",)  # nothing listens: each attempt fails at once
    watcher = PrefixWatcher(target, "/outage/prefix/", lambda _values: None)
    key = LeasedKey(target, "/outage/key", b"v", ttl=10)
    with caplog.at_level(logging.DEBUG, logger="services.foundation.etcd"):
        await watcher.start()
        await key.start()
        try:
            for what in ("watch of /outage/prefix/ interrupted", "etcd key /outage/key not held"):
                await wait_until_async(
                    lambda what=what: len(lines_about(caplog, what)) >= RETRIES,
                    20.0,
                    f"{RETRIES} failed attempts: {what}",
                )
        finally:
            await watcher.stop()
            await key.stop()
    assert len(lines_about(caplog, "watch of /outage/prefix/", logging.WARNING)) == 1
    assert len(lines_about(caplog, "etcd key /outage/key not held", logging.WARNING)) == 1


async def test_the_end_of_an_outage_is_one_line(
    data_stores: DataStores, fast_retries: None, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await TcpProxy.start(*parse_endpoint(data_stores.etcd_endpoint))
    access = data_stores.etcd_access()
    access = type(access)(**{**access.__dict__, "endpoints": (f"127.0.0.1:{proxy.port}",)})
    prefix = f"/test-{uuid.uuid4().hex}/outage/"
    watcher = PrefixWatcher(access, prefix, lambda _values: None)
    with caplog.at_level(logging.DEBUG, logger="services.foundation.etcd"):
        try:
            await watcher.start()
            await wait_until_async(watcher.synced.is_set, 10.0, "the watch to sync")
            proxy.cut()
            await wait_until_async(
                lambda: lines_about(caplog, f"watch of {prefix}", logging.DEBUG),
                20.0,
                "a retry of the watch while etcd is cut off",
            )
            proxy.restore()
            await wait_until_async(
                lambda: lines_about(caplog, "works again", logging.INFO),
                20.0,
                "the watch to work again",
            )
        finally:
            await watcher.stop()
            await proxy.close()
    assert len(lines_about(caplog, f"watch of {prefix} interrupted", logging.WARNING)) == 1
    assert len(lines_about(caplog, f"watch of {prefix} works again", logging.INFO)) == 1


class FailingClient:
    """An etcd client whose every read fails with `cause`."""

    def __init__(self, cause: Exception) -> None:
        self._cause = cause

    async def get_prefix(self, *_args: object, **_kwargs: object) -> None:
        raise self._cause

    async def close(self) -> None:
        return None


async def test_an_outage_that_fails_anew_says_so(
    fast_retries: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """etcd away, then back but refusing this identity (a rotated password, a revoked role): a
    lasting problem of its own, which was only ever a debug line."""
    attempts: list[int] = []

    def connect(_target: object, attempt: int) -> FailingClient:
        attempts.append(attempt)
        if len(attempts) <= 3:
            return FailingClient(aetcd.exceptions.ConnectionFailedError("connection refused"))
        return FailingClient(aetcd.exceptions.UnauthenticatedError("authentication failed"))

    monkeypatch.setattr(etcd, "connect", connect)
    watcher = PrefixWatcher(("127.0.0.1:1",), "/outage/causes/", lambda _values: None)
    with caplog.at_level(logging.DEBUG, logger="services.foundation.etcd"):
        await watcher.start()
        try:
            await wait_until_async(lambda: len(attempts) >= RETRIES * 2, 20.0, "the retries")
        finally:
            await watcher.stop()
    warnings = lines_about(caplog, "watch of /outage/causes/", logging.WARNING)
    assert [("ConnectionFailedError" in w, "UnauthenticatedError" in w) for w in warnings] == [
        (True, False),
        (False, True),
    ], warnings
