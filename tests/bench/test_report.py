"""The summary table's ratio column never reads as the bound it missed."""

from __future__ import annotations

import pytest

from bench.report import shown_ratio


@pytest.mark.parametrize(
    ("ratio", "lower_is_better", "shown"),
    [
        (0.8499, False, "0.84"),  # a signup share just under its 0.85 bound
        (0.85, False, "0.85"),
        (0.29, False, "0.29"),  # 0.29 * 100 is not exactly 29
        (1.004, True, "1.01"),  # a p99 just over its limit
        (1.0, True, "1.00"),
        (0.781, True, "0.79"),
    ],
)
def test_ratios_round_towards_missing_the_target(
    ratio: float, lower_is_better: bool, shown: str
) -> None:
    assert shown_ratio(ratio, lower_is_better) == shown
