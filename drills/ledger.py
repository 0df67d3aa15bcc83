"""Every write the stack acknowledged during a drill, and the check that each one held.

A signup answered 201 must be able to log in afterwards. A nickname change answered 200 must
be what the user reads afterwards, unless a later change of the same user went unanswered
(it may or may not have landed, so either value is right). A logout answered 204 must leave
its token refused with 401. Anything else counts as a lost acknowledged write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

# Verification runs after the stack has recovered; a few retries absorb a lone 503.
VERIFY_ATTEMPTS = 4
VERIFY_CONCURRENCY = 8
VERIFY_RETRY_PAUSE = 0.25


@dataclass
class Account:
    username: str
    password: str
    token: str
    # Values the user's nickname may have now: the last acknowledged one, plus any later
    # change that got no answer. None: never changed.
    nicknames: list[str] | None = None


@dataclass
class Ledger:
    signups: dict[str, str] = field(default_factory=dict)  # username -> password
    accounts: dict[str, Account] = field(default_factory=dict)  # with tokens, for reads
    logged_out: list[str] = field(default_factory=list)  # tokens answered 204 on logout

    def nickname_acknowledged(self, account: Account, nickname: str) -> None:
        account.nicknames = [nickname]

    def nickname_unanswered(self, account: Account, nickname: str) -> None:
        if account.nicknames is None:
            account.nicknames = [account.username]  # still unchanged, or changed now
        account.nicknames.append(nickname)


@dataclass
class Verdict:
    checked: int = 0
    lost: list[str] = field(default_factory=list)  # one line per lost write
    revived_logouts: int = 0  # logged-out tokens accepted again (counted in `lost` too)

    @property
    def lost_count(self) -> int:
        return len(self.lost)


async def _answer(call: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response | None:
    """The first answer that is not a 5xx, after a few tries (None: the stack never answered)."""
    for attempt in range(VERIFY_ATTEMPTS):
        try:
            response = await call()
        except httpx.HTTPError:
            response = None
        if response is not None and response.status_code < 500:
            return response
        if attempt + 1 < VERIFY_ATTEMPTS:
            await asyncio.sleep(VERIFY_RETRY_PAUSE)  # a backoff between retries, not a wait
    return None


async def verify(client: httpx.AsyncClient, ledger: Ledger) -> Verdict:
    verdict = Verdict()
    limit = asyncio.Semaphore(VERIFY_CONCURRENCY)

    async def signup_holds(username: str, password: str) -> None:
        async with limit:
            answer = await _answer(
                lambda: client.post(
                    "/api/v1/sessions", json={"username": username, "password": password}
                )
            )
        if answer is None or answer.status_code != 200:
            status = "no answer" if answer is None else answer.status_code
            verdict.lost.append(f"signup of {username} acknowledged, login now: {status}")

    async def nickname_holds(account: Account) -> None:
        assert account.nicknames is not None
        async with limit:
            answer = await _answer(
                lambda: client.get(
                    "/api/v1/me", headers={"Authorization": f"Bearer {account.token}"}
                )
            )
        if answer is None or answer.status_code != 200:
            status = "no answer" if answer is None else answer.status_code
            verdict.lost.append(f"profile of {account.username} unreadable: {status}")
            return
        nickname = answer.json().get("nickname")
        if nickname not in account.nicknames:
            verdict.lost.append(
                f"nickname of {account.username} is {nickname!r}, "
                f"acknowledged {account.nicknames[0]!r}"
            )

    async def logout_holds(token: str) -> None:
        async with limit:
            answer = await _answer(
                lambda: client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
            )
        if answer is not None and answer.status_code == 200:
            verdict.revived_logouts += 1
        if answer is None or answer.status_code != 401:
            status = "no answer" if answer is None else answer.status_code
            verdict.lost.append(f"a logged-out token answered {status}, not 401")

    checks = [signup_holds(name, password) for name, password in ledger.signups.items()]
    checks += [nickname_holds(a) for a in ledger.accounts.values() if a.nicknames is not None]
    checks += [logout_holds(token) for token in ledger.logged_out]
    verdict.checked = len(checks)
    await asyncio.gather(*checks)
    return verdict
