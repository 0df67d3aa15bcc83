"""The time the server gives a call: the caller's deadline by both clocks, bounded."""

from __future__ import annotations

from services.contract import auth_pb2 as pb
from services.foundation.rpc.deadlines import DEFAULT_DEADLINE, MAX_DEADLINE, call_budget

NOW = 1_800_000_000.0  # Unix seconds


def budget(deadline_ms: int, sent_at: float | None = None, skew: float = 0.0) -> float:
    sent_at_unix_ms = int(sent_at * 1000) if sent_at is not None else 0
    envelope = pb.Envelope(deadline_ms=deadline_ms, sent_at_unix_ms=sent_at_unix_ms)
    return call_budget(envelope, wall_now=NOW, skew_allowance=skew)


def test_a_call_without_a_deadline_gets_the_default() -> None:
    assert budget(0) == DEFAULT_DEADLINE


def test_the_budget_counts_from_when_the_caller_sent_it() -> None:
    assert budget(5_000, sent_at=NOW - 2) == 3.0
    assert budget(5_000, sent_at=NOW - 2, skew=0.5) == 2.5
    assert budget(5_000, sent_at=NOW - 6) < 0  # its caller has given up


def test_a_deadline_of_days_is_bounded() -> None:
    """A peer that sends the largest deadline and hangs up must not keep its call's place
    (and what the call holds) for 49 days."""
    largest = 2**32 - 1
    assert budget(largest) == MAX_DEADLINE
    assert budget(largest, sent_at=NOW) == MAX_DEADLINE
