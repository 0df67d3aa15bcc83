"""Bounded mixed load for the drills: profile reads, signups, nickname changes, logins.

Open loop: operation i is due at `i / rate` seconds, whatever the stack does, and its latency
counts from then, so a stall is charged for every request it held up. At most `max_in_flight`
operations of each kind run at once (the rest wait, their latency running; one that waits a
whole request timeout counts as timed out, unsent), and the schedule ends after
`rate * seconds` operations: the load is bounded in rate, count and time. Clients come from
distinct loopback addresses (127.0.0.2, 127.0.0.3, ...), as distinct users would.

Each acknowledged write goes into the `Ledger`. A nickname change that was acknowledged is read
back at once through another client: a read that misses it counts as stale (read-your-writes).

The load's requests go through drills.http1 (a light keep-alive client: the generator shares
the machine's cores with the stack it measures); each sample notes the connection it went on.
`open_clients` gives httpx clients for the rest of a drill (seeding checks, verification,
probes), where convenience beats cost.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from drills.http1 import Answer, Http1Pool, RequestFailed, Via
from drills.ledger import Account, Ledger
from drills.measure import CONNECTION_ERROR, TIMEOUT, Kind, Sample

PASSWORD = "drill-password-1"
REQUEST_TIMEOUT = 15.0  # above the HTTP tier's 10 s call deadline: its answer is what counts
CLIENT_ADDRESSES = tuple(f"127.0.0.{n}" for n in range(2, 10))
DEFAULT_MIX: dict[Kind, float] = {
    Kind.READ: 0.80,
    Kind.SIGNUP: 0.07,
    Kind.NICKNAME: 0.08,
    Kind.LOGIN: 0.05,  # half of the logins are followed by a logout of that session
}


@dataclass(frozen=True)
class LoadShape:
    rate: float  # operations per second
    seconds: float
    mix: dict[Kind, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    # Per kind, so that slow signups (say) cannot starve the reads of slots: the client's own
    # queue must not turn one slow path into failures of another.
    max_in_flight: int = 128

    @property
    def total(self) -> int:
        return int(self.rate * self.seconds)


def open_clients(base_url: str, connections_each: int = 64) -> list[httpx.AsyncClient]:
    """One client per source address, no retries: a failed request is recorded, not hidden."""
    limits = httpx.Limits(
        max_connections=connections_each, max_keepalive_connections=connections_each
    )
    return [
        httpx.AsyncClient(
            base_url=base_url,
            transport=httpx.AsyncHTTPTransport(local_address=address, limits=limits, retries=0),
            timeout=REQUEST_TIMEOUT,
            trust_env=False,
        )
        for address in CLIENT_ADDRESSES
    ]


def open_pools(base_url: str, connections_each: int = 64) -> list[Http1Pool]:
    """The load's connection pools: one per source address, no retries."""
    url = urlsplit(base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    return [
        Http1Pool(host, port, local_address=address, max_connections=connections_each)
        for address in CLIENT_ADDRESSES
    ]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class MixedLoad:
    def __init__(
        self, pools: list[Http1Pool], ledger: Ledger, *, seed: int, name_prefix: str
    ) -> None:
        self._pools = pools
        self._ledger = ledger
        self._random = random.Random(seed)
        self._prefix = name_prefix
        self._names = 0
        self._started = time.monotonic()
        self._busy_accounts: set[str] = set()
        # Accounts whose last nickname change got no definite answer: it may still land, so
        # they change no more (a read-back would race it) and are only read.
        self._ambiguous_accounts: set[str] = set()
        self.samples: list[Sample] = []
        self.stale_reads: list[str] = []  # what each read that missed the user's write saw
        self.in_flight = 0
        self.due = 0  # operations whose time has come
        self._stopped = False
        self.lateness_max = 0.0  # worst delay of the schedule itself (the client's own CPU)

    def start_clock(self) -> None:
        """Time zero of the schedule and of every sample; call it right before `run`."""
        self._started = time.monotonic()

    def now(self) -> float:
        """Seconds since the load started (the time base of every sample)."""
        return time.monotonic() - self._started

    def new_username(self) -> str:
        self._names += 1
        return f"{self._prefix}{self._names}x{self._random.randrange(16**6):06x}"

    def _send(
        self, method: str, path: str, *, token: str | None = None, body: Any = None
    ) -> Callable[[], Awaitable[Answer]]:
        """The request, ready to send from a client chosen at random."""
        pool = self._random.choice(self._pools)
        headers = bearer(token) if token is not None else None
        return lambda: pool.request(
            method, path, headers=headers, json_body=body, timeout=REQUEST_TIMEOUT
        )

    async def seed_accounts(self, count: int) -> None:
        """Accounts with a session each, for the reads and nickname changes; before the clock."""

        async def one() -> None:
            username = self.new_username()
            body = {"username": username, "password": PASSWORD}
            created = await self._send("POST", "/api/v1/users", body=body)()
            if created.status_code != 201:
                raise RuntimeError(f"seeding: signup answered {created.status_code} {created.text}")
            login = await self._send("POST", "/api/v1/sessions", body=body)()
            if login.status_code != 200:
                raise RuntimeError(f"seeding: login answered {login.status_code} {login.text}")
            self._ledger.signups[username] = PASSWORD
            self._ledger.accounts[username] = Account(username, PASSWORD, login.json()["token"])

        await asyncio.gather(*(one() for _ in range(count)))

    def stop(self) -> None:
        """End the schedule early; operations already sent still finish."""
        self._stopped = True

    async def run(self, shape: LoadShape) -> None:
        """The schedule from `start_clock()` until `stop()` or its end; returns once every
        operation sent has been answered or timed out."""
        kinds = list(shape.mix)
        weights = [shape.mix[k] for k in kinds]
        limits = {kind: asyncio.Semaphore(shape.max_in_flight) for kind in kinds}
        tasks: list[asyncio.Task[None]] = []
        prune_floor = prune_at = 4 * shape.max_in_flight * len(kinds)
        for index in range(shape.total):
            due = index / shape.rate
            pause = due - self.now()
            # The schedule itself (an open-loop clock); running late, it still lets answers in
            # between two sends, so that their times are taken when they arrive.
            await asyncio.sleep(max(0.0, pause))
            if self._stopped:
                break
            self.lateness_max = max(self.lateness_max, self.now() - due)
            self.due = index + 1
            kind = self._random.choices(kinds, weights)[0]
            tasks.append(asyncio.create_task(self._operation(kind, due, limits[kind])))
            if len(tasks) >= prune_at:
                # Amortised: with thousands of operations queued for a slot (a stalled stack),
                # pruning on every new one cost the client quadratic CPU just when the stack
                # needed it.
                tasks = [task for task in tasks if not task.done()]
                prune_at = max(prune_floor, 2 * len(tasks))
        await asyncio.gather(*tasks)

    async def _operation(self, kind: Kind, due: float, limit: asyncio.Semaphore) -> None:
        async with limit:
            if self.now() - due > REQUEST_TIMEOUT:
                # Waited a whole timeout for a free slot: it counts as timed out, unsent, so
                # that a stall leaves no backlog that would run on long after it.
                self.samples.append(Sample(kind, due, self.now() - due, TIMEOUT))
                return
            self.in_flight += 1
            try:
                if kind is Kind.READ:
                    await self._read(due)
                elif kind is Kind.SIGNUP:
                    await self._signup(due)
                elif kind is Kind.NICKNAME:
                    await self._nickname(due)
                else:
                    await self._login(due)
            finally:
                self.in_flight -= 1

    async def _timed(
        self, kind: Kind, due: float, call: Callable[[], Awaitable[Answer]]
    ) -> Answer | None:
        try:
            answer = await call()
        except RequestFailed as failure:
            status = TIMEOUT if failure.timed_out else CONNECTION_ERROR
            self.samples.append(
                Sample(
                    kind,
                    due,
                    self.now() - due,
                    status,
                    via=failure.via,
                    error=str(failure),
                    waited=self._waited(failure.via, due),
                )
            )
            return None
        retry_after = "retry-after" in answer.headers
        self.samples.append(
            Sample(
                kind,
                due,
                self.now() - due,
                answer.status_code,
                retry_after,
                answer.via,
                waited=self._waited(answer.via, due),
            )
        )
        return answer

    def _waited(self, via: Via | None, due: float) -> float | None:
        return None if via is None else via.written_at - self._started - due

    def _any_account(self) -> Account:
        return self._random.choice(list(self._ledger.accounts.values()))

    async def _read(self, due: float) -> None:
        account = self._any_account()
        await self._timed(Kind.READ, due, self._send("GET", "/api/v1/me", token=account.token))

    async def _signup(self, due: float) -> None:
        username = self.new_username()
        body = {"username": username, "password": PASSWORD}
        answer = await self._timed(Kind.SIGNUP, due, self._send("POST", "/api/v1/users", body=body))
        if answer is not None and answer.status_code == 201:
            self._ledger.signups[username] = PASSWORD

    async def _nickname(self, due: float) -> None:
        unavailable = self._busy_accounts | self._ambiguous_accounts
        idle = [a for a in self._ledger.accounts.values() if a.username not in unavailable]
        if not idle:
            await self._read(due)
            return
        account = self._random.choice(idle)
        self._busy_accounts.add(account.username)
        try:
            nickname = f"n{self._random.randrange(16**8):08x}"
            answer = await self._timed(
                Kind.NICKNAME,
                due,
                self._send("PATCH", "/api/v1/me", token=account.token, body={"nickname": nickname}),
            )
            if answer is None or answer.status_code >= 500:
                self._ledger.nickname_unanswered(account, nickname)
                self._ambiguous_accounts.add(account.username)
                return
            if answer.status_code != 200:
                return  # refused: nothing was written
            self._ledger.nickname_acknowledged(account, nickname)
            read_due = self.now()
            seen = await self._timed(
                Kind.READ, read_due, self._send("GET", "/api/v1/me", token=account.token)
            )
            if seen is None or seen.status_code != 200:
                return
            if (read := seen.json().get("nickname")) != nickname:
                self.stale_reads.append(
                    f"{account.username} set {nickname!r} (acknowledged at "
                    f"{read_due:.2f} s) and read {read!r} right after"
                )
        finally:
            self._busy_accounts.discard(account.username)

    async def _login(self, due: float) -> None:
        account = self._any_account()
        body = {"username": account.username, "password": account.password}
        answer = await self._timed(
            Kind.LOGIN, due, self._send("POST", "/api/v1/sessions", body=body)
        )
        if answer is None or answer.status_code != 200 or self._random.random() < 0.5:
            return
        token = answer.json()["token"]
        logout_due = self.now()
        gone = await self._timed(
            Kind.LOGOUT, logout_due, self._send("DELETE", "/api/v1/sessions/current", token=token)
        )
        if gone is not None and gone.status_code == 204:
            self._ledger.logged_out.append(token)
