"""Failed logins and throttled attempts, logged one line each, without ever becoming a storm.

Each line names the account id (or, for a name with no account, a short hash of the name:
people type passwords into the username field, so a name is never logged) and the client IP,
never a password. Beyond LINES_PER_SECOND lines of one kind in a second, lines are held back
and the next line logged says how many were; every event is counted in the metrics anyway.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable

log = logging.getLogger("gatehouse.security")

LINES_PER_SECOND = 20


def account_label(account_id: int | None, username: str) -> str:
    if account_id is not None:
        return f"account {account_id}"
    digest = hashlib.sha256(username.casefold().encode("utf-8", "replace")).hexdigest()[:12]
    return f"no account (name hash {digest})"


class SecurityLog:
    def __init__(
        self, lines_per_second: int = LINES_PER_SECOND, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._budget = lines_per_second
        self._clock = clock
        self._second: dict[str, int] = {}
        self._logged: dict[str, int] = {}
        self._held_back: dict[str, int] = {}

    def failed_login(self, account: str, client_ip: str, outcome: str) -> None:
        self._line(logging.INFO, "failed_login", "failed login: %s from %s (%s)", account, client_ip, outcome)

    def throttled(self, account: str, client_ip: str, limit: str, retry_after: int) -> None:
        self._line(
            logging.WARNING,
            "throttled",
            "throttled attempt: %s from %s refused by the %s limit; retry after %d s",
            account,
            client_ip,
            limit,
            retry_after,
        )

    def _line(self, level: int, kind: str, message: str, *args: object) -> None:
        second = int(self._clock())
        if self._second.get(kind) != second:
            self._second[kind] = second
            self._logged[kind] = 0
        if self._logged[kind] >= self._budget:
            self._held_back[kind] = self._held_back.get(kind, 0) + 1
            return
        self._logged[kind] += 1
        held_back = self._held_back.pop(kind, 0)
        if held_back:
            message += f" ({held_back} more like it held back)"
        log.log(level, message, *args)
