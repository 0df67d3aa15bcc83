"""What the schemathesis run did, printed in the run's terminal summary (tests/conftest.py).

The test records its report's lines as a user property of its own test report
(`FUZZ_PROPERTY`): pytest-xdist carries those from a worker process to the controller, which
writes the summary.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

FUZZ_PROPERTY = "schemathesis"


@dataclass
class FuzzReport:
    operations: list[str] = field(default_factory=list)
    cases: Counter[str] = field(default_factory=Counter)  # by "METHOD /path"
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    unsent: int = 0  # generated past an operation's share of the time budget
    seconds: float = 0.0

    def lines(self) -> list[str]:
        statuses = ", ".join(
            f"{status}: {count}" for status, count in sorted(self.statuses.items())
        )
        return [
            f"schemathesis: {len(self.operations)} operations, {self.cases.total()} cases, "
            f"{len(self.failures)} failures, {self.seconds:.1f} s "
            f"({self.unsent} generated cases not sent: past their share of the time budget)",
            f"statuses: {statuses}",
            *(f"  {name}: {self.cases[name]} cases" for name in self.operations),
            *(f"FAILURE {failure}" for failure in self.failures),
        ]
