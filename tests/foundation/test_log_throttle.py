"""RepeatedWarnings: one line per kind and interval, with the count held back."""

from __future__ import annotations

import logging

import pytest

from services.foundation.log_throttle import RepeatedWarnings


def test_repeats_of_a_kind_are_held_back_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    warnings = RepeatedWarnings(logging.getLogger("test.repeats"), 10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.repeats"):
        for attempt in range(50):
            warnings.warn("down", "database down: %s", attempt)
        warnings.warn("other", "something else")
        now[0] += 10.0
        warnings.warn("down", "database down: %s", "again")
    assert [record.getMessage() for record in caplog.records] == [
        "database down: 0",
        "something else",
        "database down: again (49 more like it held back)",
    ]


def test_lines_take_the_level_asked_for(caplog: pytest.LogCaptureFixture) -> None:
    """A client's misbehaviour (a cross-site form) is logged at info, with the same bound."""
    now = [100.0]
    notices = RepeatedWarnings(logging.getLogger("test.levels"), 60.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="test.levels"):
        for _ in range(3):
            notices.warn("refused", "refused a cross-site POST", level=logging.INFO)
        now[0] += 60.0
        notices.warn("refused", "refused a cross-site POST", level=logging.INFO)
        notices.warn("down", "database down")
    assert [(record.levelno, record.getMessage()) for record in caplog.records] == [
        (logging.INFO, "refused a cross-site POST"),
        (logging.INFO, "refused a cross-site POST (2 more like it held back)"),
        (logging.WARNING, "database down"),
    ]
