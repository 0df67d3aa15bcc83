"""How the security log names an attempt's account and keeps from becoming a storm."""

from __future__ import annotations

import hashlib

import pytest

from services.auth.security_log import SecurityLog


def test_a_name_with_no_account_is_tagged_under_the_server_key_only() -> None:
    ours, theirs = SecurityLog(b"our key"), SecurityLog(b"another key")
    tag = ours.account(None, "Hunter2Password")
    assert tag == ours.account(None, "hunter2password")  # case-folded, as the throttle keys it
    assert tag != theirs.account(None, "Hunter2Password")  # no dictionary without the key
    assert "hunter2" not in tag.casefold()
    assert hashlib.sha256(b"hunter2password").hexdigest()[:12] not in tag
    assert ours.account(42, "anything") == "account 42"


def test_lines_beyond_the_budget_are_summed_up_in_the_next_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    security_log = SecurityLog(b"key", lines_per_second=2, clock=lambda: now[0])
    caplog.set_level("INFO", logger="gatehouse.security")
    for _ in range(5):
        security_log.failed_login("account 1", "198.51.100.7", "wrong_password")
    now[0] += 1.0
    security_log.failed_login("account 1", "198.51.100.7", "wrong_password")
    lines = [r.getMessage() for r in caplog.records if r.name == "gatehouse.security"]
    assert len(lines) == 3
    assert lines[-1].endswith("(3 more like it held back)")
