"""A starting replica retries its first signing key sync while etcd is away: one warning for
the whole wait, naming the failure, not one per retry (services/auth/replica.py
`sync_keys_until_done`; the project's rule: one line per state change)."""

from __future__ import annotations

import logging

import pytest

from services.auth import replica
from services.foundation.logs import describe_error

FAILED_SYNCS = 6


class _EtcdAwayRing:
    """A signing key ring whose sync times out `failures` times, then fails with each of
    `then` in turn, then works."""

    def __init__(self, failures: int, then: tuple[Exception, ...] = ()) -> None:
        self.failures = failures
        self.then = then
        self.syncs = 0
        self.closes = 0

    async def sync(self) -> None:
        self.syncs += 1
        if self.syncs <= self.failures:
            raise TimeoutError  # what an unreachable etcd gives: no text of its own
        if self.syncs <= self.failures + len(self.then):
            raise self.then[self.syncs - self.failures - 1]

    async def close(self) -> None:
        self.closes += 1


class _NoWait:
    async def wait(self) -> None:
        return None


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == replica.log.name and r.levelno >= logging.WARNING
    ]


async def test_etcd_away_at_start_logs_one_warning_naming_the_failure(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(replica, "Backoff", _NoWait)
    caplog.set_level(logging.DEBUG, logger=replica.log.name)
    ring = _EtcdAwayRing(FAILED_SYNCS)

    await replica.sync_keys_until_done(ring)  # type: ignore[arg-type]

    assert ring.syncs == FAILED_SYNCS + 1
    lines = [r for r in caplog.records if r.name == replica.log.name]
    warnings = [r.getMessage() for r in lines if r.levelno >= logging.WARNING]
    # Before: one warning per retry (6 here; one every <= 5 s for as long as etcd is away),
    # each "could not sync the JWT signing keys with etcd yet (); retrying".
    assert warnings == [
        "could not sync the JWT signing keys with etcd yet (TimeoutError); retrying"
    ]
    infos = [r.getMessage() for r in lines if r.levelno == logging.INFO]
    assert infos == [f"synced the JWT signing keys with etcd after {FAILED_SYNCS} failed attempts"]


async def test_a_new_cause_of_failure_is_warned_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """etcd back but refusing the sync (here a permission error, as for a role without the key
    prefix): only the first timeout was warned, so the log said "TimeoutError" while the
    replica stayed unready for another reason, shown at debug level only."""
    monkeypatch.setattr(replica, "Backoff", _NoWait)
    caplog.set_level(logging.DEBUG, logger=replica.log.name)
    refused = PermissionError("etcd: permission denied")
    ring = _EtcdAwayRing(3, then=(refused, refused, refused))

    await replica.sync_keys_until_done(ring)  # type: ignore[arg-type]

    warnings = _warnings(caplog)
    assert warnings == [
        "could not sync the JWT signing keys with etcd yet (TimeoutError); retrying",
        "could not sync the JWT signing keys with etcd yet"
        " (PermissionError: etcd: permission denied); retrying",
    ]


async def test_a_first_sync_that_works_logs_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(replica, "Backoff", _NoWait)
    caplog.set_level(logging.DEBUG, logger=replica.log.name)

    await replica.sync_keys_until_done(_EtcdAwayRing(0))  # type: ignore[arg-type]

    assert [r for r in caplog.records if r.name == replica.log.name] == []


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        (TimeoutError(), "TimeoutError"),
        (
            ConnectionRefusedError(111, "Connection refused"),
            "ConnectionRefusedError: [Errno 111] Connection refused",
        ),
        (RuntimeError("lease expired"), "RuntimeError: lease expired"),
    ],
)
def test_an_error_without_text_is_named_by_its_class(error: BaseException, shown: str) -> None:
    assert describe_error(error) == shown


async def test_one_kind_of_failure_with_changing_texts_is_warned_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A client rotating over etcd endpoints names the one it tried in each error: those are
    one cause, not one per endpoint."""
    monkeypatch.setattr(replica, "Backoff", _NoWait)
    caplog.set_level(logging.DEBUG, logger=replica.log.name)
    refusals = tuple(ConnectionError(f"127.0.0.{n}:2379: connection refused") for n in (1, 2, 1))
    ring = _EtcdAwayRing(0, then=refusals)

    await replica.sync_keys_until_done(ring)  # type: ignore[arg-type]

    warnings = _warnings(caplog)
    assert warnings == [
        "could not sync the JWT signing keys with etcd yet"
        " (ConnectionError: 127.0.0.1:2379: connection refused); retrying"
    ]
