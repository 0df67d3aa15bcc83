"""Failed logins and throttled attempts, logged one line each, without ever becoming a storm.

Each line names the account id and the client IP, never a password. A name with no account is
never logged either, since people type passwords into the username field: it appears as a short
tag, an HMAC of the case-folded name under a key derived from a server secret, so repeated
attempts at one name can be told apart from a spray without the tag being reversible by trying
a dictionary of names (or passwords) as a plain hash would be.

Beyond LINES_PER_SECOND lines of one kind in a second, lines are held back and the next line
logged says how many were; every event is counted in the metrics anyway.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Callable

log = logging.getLogger("gatehouse.security")

LINES_PER_SECOND = 20


class SecurityLog:
    def __init__(
        self,
        name_key: bytes,
        lines_per_second: int = LINES_PER_SECOND,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`name_key`: the secret key of the tags of names with no account."""
        self._name_key = name_key
        self._budget = lines_per_second
        self._clock = clock
        self._second: dict[str, int] = {}
        self._logged: dict[str, int] = {}
        self._held_back: dict[str, int] = {}

    def account(self, account_id: int | None, username: str) -> str:
        """How a line names the account an attempt was for."""
        if account_id is not None:
            return f"account {account_id}"
        name = username.casefold().encode("utf-8", "replace")
        tag = hmac.new(self._name_key, name, hashlib.sha256).hexdigest()[:12]
        return f"no account (name tag {tag})"

    def failed_login(self, account: str, client_ip: str, outcome: str) -> None:
        self._line(
            logging.INFO,
            "failed_login",
            "failed login: %s from %s (%s)",
            account,
            client_ip,
            outcome,
        )

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
