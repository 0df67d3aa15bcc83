"""The login throttle's limits and verdicts, shared by its Redis and in-memory counters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

RefusedBy = Literal["attempt", "client_ip"]


@dataclass(frozen=True)
class ThrottleLimits:
    """Password checks: `failures` per `window_seconds` for one (account, client IP) pair or one
    device, each later one delayed first_delay, 2 x first_delay, ... up to max_delay; and
    `ip_failures` per window from one client IP over all accounts. Signups: `signup_conflicts`
    `username_taken` answers per `signup_window_seconds` to one client IP."""

    failures: int = 5
    window_seconds: float = 900.0
    first_delay_seconds: float = 1.0
    max_delay_seconds: float = 900.0
    ip_failures: int = 100
    signup_conflicts: int = 100
    signup_window_seconds: float = 3600.0
    # How long an admitted check, until it is settled, may hold back the attempts it alone
    # would get refused: longer than any check runs unless its replica died (then it stays a
    # failure).
    running_mark_seconds: float = 60.0

    @property
    def window_ms(self) -> int:
        return int(self.window_seconds * 1000)

    @property
    def signup_window_ms(self) -> int:
        return int(self.signup_window_seconds * 1000)

    @property
    def running_mark_ms(self) -> int:
        return int(self.running_mark_seconds * 1000)

    def delay_ms(self, level: int) -> int:
        """The block after the `level`-th failure beyond the limit (0: the first)."""
        return int(
            min(self.first_delay_seconds * 2 ** min(level, 40), self.max_delay_seconds) * 1000
        )


@dataclass(frozen=True)
class AttemptVerdict:
    """What the counters said of one attempt; it counts as a failure until it is settled.
    `ask_again`: not judged yet, as it would be refused only while checks of its keys are still
    running (nothing was counted): ask again when they may have ended."""

    refused_by: RefusedBy | None
    wait_ms: int
    at_ms: int  # the attempt's time in the counters' clock: names it when settling
    # The attempt key's block before and after this attempt, so that voiding it can undo it.
    undo: BlockUndo
    ask_again: bool = False


@dataclass(frozen=True)
class BlockUndo:
    prior_level: int
    prior_until: int
    set_until: int
