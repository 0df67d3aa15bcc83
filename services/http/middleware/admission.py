"""Load shedding by waiting time: a request is refused only when it could not start soon.

Each worker process runs at most GATEHOUSE_ADMISSION_CONCURRENCY requests at once; further ones
wait in line for a slot (services.http.middleware.admission_queue), and a request that could
not start within GATEHOUSE_ADMISSION_QUEUE_TARGET is answered 503 with Retry-After, before any
routing or auth call. A closed loop of clients slows itself down and so gets latency, not
refusals, while its line starts within the target; an open-loop overload makes the line grow
until a newcomer would wait past the target, and from then on such newcomers are refused at
once, which costs nearly nothing.
GATEHOUSE_MAX_IN_FLIGHT stays a hard ceiling on the requests a worker holds, running or in
line; its default is high enough never to refuse a closed loop. The ops endpoints are never
shed, so a saturated pod still answers its probes and scrapes.

Logins, signups, password changes and account deletions wait on password hashing in the auth
service for up to the call deadline (which sheds them itself once its hash queue is full), so
they get a budget of their own: a storm of them cannot take the slots that profile reads need.
A hash takes far longer than a read, so they may wait longer in line to start
(GATEHOUSE_HASHING_QUEUE_TARGET), and a freed slot goes to the client holding the fewest, and
among those to the one that has used the budget least lately (admission_queue's ranks,
services.foundation.recent_use): three addresses logging in with the right password in closed
loops of 48 connections each, and none of them past its share, once had every other person's
login answered 503 at once (20 of 20), refused for a line that only they filled.
One client (an IPv4 address, an IPv6 /64) may hold at most GATEHOUSE_MAX_HASHING_PER_CLIENT of
that budget, running or in line; its next ones wait, outside the budget, for one of its own to
end, for up to GATEHOUSE_CALL_TIMEOUT (then 503). Logins with the right password are never
refused by the login throttle, so without it one account logging in 100 at a time from one
address took the budget and its line, and other people's logins were answered 503 (28 of 43 in
one run on the devstack). They wait rather than being refused at once: a closed loop refused at
once sends again at once, and its refusals took the CPU the reads needed (a login storm from one
address in `make bench`: the reads' p99 5.3x its value without the storm).

A request waiting for its body gives its slot back for as long as it waits, and its place in
its client's hashing share with it: a client trickling a body (slowly, or not at all until services.http.middleware.body_deadline answers
408) must not take the slots that requests with complete bodies need. When the body has
arrived the request takes a slot again, waiting in line like a new one, or is answered 503
when it could not start within the target; a body that arrives after the handler has
answered without it (401, 413...) is only dropped, and never shed.

Granian's own `backpressure` setting does not replace this: it bounds connections, not
requests, and past it Granian stops accepting connections, which then wait in the kernel's
queue instead of being refused (services.http.__main__ sets it well above any real load).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable

from prometheus_client import Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.foundation.recent_use import RecentUse, rank_of
from services.http.call_budget import call_budget_var
from services.http.errors import RETRY_AFTER_SECONDS, ApiError, error_response
from services.http.middleware.admission_queue import AdmissionQueue
from services.http.middleware.unread_body import (
    answer_decided,
    answer_without_draining,
    declares_body,
)

UNSHED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# Logins and signups, API and page forms; services.http.middleware.disconnect also stops them
# when their client leaves.
LOGIN_ROUTES = frozenset(
    ("POST", path)
    for path in (
        "/api/v1/sessions",
        "/api/v1/users",
        "/open_api/v1/register",
        "/open_api/v1/authenticate",
        "/login",
        "/signup",
    )
)
# Every request that waits on password hashing: each API operation declared with
# `hashes_password` (a test holds this set to them), and the page forms posting to the same calls.
HASHING_ROUTES = LOGIN_ROUTES | {
    ("PUT", "/api/v1/me/password"),
    ("DELETE", "/api/v1/me"),
    ("POST", "/profile/password"),
    ("POST", "/profile/delete"),
}

SHED_REQUESTS = Counter(
    "gatehouse_http_shed_requests",
    "Requests answered 503 because they could not start within "
    "GATEHOUSE_ADMISSION_QUEUE_TARGET, the worker held GATEHOUSE_MAX_IN_FLIGHT, or their "
    "client's share of the hashing budget (GATEHOUSE_MAX_HASHING_PER_CLIENT) had no place "
    "within GATEHOUSE_CALL_TIMEOUT",
)


def overloaded() -> ApiError:
    return ApiError(
        503,
        "overloaded",
        f"this server is at its limit of requests in progress; retry in {RETRY_AFTER_SECONDS} s",
        {"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def too_many_of_one_client(limit: int) -> ApiError:
    return ApiError(
        503,
        "overloaded",
        f"at most {limit} logins, signups and password checks are taken at once from one "
        f"client, and none of this client's ended in time; retry in {RETRY_AFTER_SECONDS} s",
        {"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


class _ClientShare:
    """One client's part of the hashing budget: how many of its requests hold it, and those
    waiting for one of them to end (first come, first served)."""

    __slots__ = ("held", "waiting")

    def __init__(self) -> None:
        self.held = 0
        self.waiting: collections.deque[asyncio.Future[None]] = collections.deque()


def _no_client(scope: Scope) -> str:
    return ""


class _Held:
    """Whether one request holds a slot of its budget right now, and since when; and the
    client whose share of the hashing budget it holds a place in with the slot (None: none)."""

    __slots__ = ("client", "since", "slot")

    def __init__(self, since: float, client: str | None) -> None:
        self.slot = True
        self.since = since
        self.client = client


class AdmissionLimit:
    """ASGI middleware: at most `concurrency` requests running in this process, plus as many
    logins and signups, each request waiting at most `queue_target` seconds to start, and at
    most `ceiling` of each kind held, running or waiting; of the logins and signups at most
    `hashing_per_client` from one client (`client_of`: its key), running or waiting; its next
    ones wait for one of those to end, at most `client_wait` seconds. Logins and signups wait
    at most `hashing_target` seconds in line (default: `queue_target`), the clients holding the
    fewest served first."""

    def __init__(
        self,
        app: ASGIApp,
        concurrency: int,
        queue_target: float,
        ceiling: int,
        hashing_per_client: int | None = None,
        client_of: Callable[[Scope], str] = _no_client,
        client_wait: float = 0.0,
        hashing_target: float | None = None,
    ) -> None:
        self.app = app
        self._hashing_per_client = hashing_per_client or ceiling
        self._client_of = client_of
        self._client_wait = client_wait
        self._shares: dict[str, _ClientShare] = {}  # only clients with one in progress
        self._share_waiting = 0  # requests of all clients waiting for a place in their share
        self._recent = RecentUse()
        self._client_refusal = error_response(too_many_of_one_client(self._hashing_per_client))
        # By "waits on password hashing".
        self.budgets = {
            False: AdmissionQueue(concurrency, queue_target, ceiling),
            True: AdmissionQueue(concurrency, hashing_target or queue_target, ceiling),
        }
        # One response object serves every refusal: it holds no per-request state.
        self._refusal = error_response(overloaded())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNSHED_PATHS:
            await self.app(scope, receive, send)
            return
        hashing = (scope["method"], scope["path"]) in HASHING_ROUTES
        client = self._client_of(scope) if hashing else None
        if client is not None and not await self._enter_share(client):
            SHED_REQUESTS.inc()
            await self._client_refusal(scope, receive, send)
            return
        await self._admitted(self.budgets[hashing], scope, receive, send, client)

    async def _enter_share(self, client: str) -> bool:
        """Take a place in `client`'s share, waiting for one of its own requests to end if
        it has none free; False after `client_wait` seconds without one."""
        share = self._shares.get(client)
        if share is None:
            share = self._shares[client] = _ClientShare()
        if share.held < self._hashing_per_client:
            share.held += 1
            return True
        budget = self.budgets[True]
        if budget.running + budget.queued + self._share_waiting >= budget.ceiling:
            return False  # GATEHOUSE_MAX_IN_FLIGHT counts those waiting here too
        loop = asyncio.get_running_loop()
        started = loop.time()
        place = loop.create_future()
        share.waiting.append(place)
        self._share_waiting += 1
        try:
            async with asyncio.timeout(self._client_wait):
                await place
        except TimeoutError:
            # Handed a place in the turn the wait ran out: it is this request's all the same.
            return place.done() and not place.cancelled()
        except asyncio.CancelledError:
            if place.done() and not place.cancelled():
                self._leave_share(client)  # handed a place in the turn the client left
            raise
        finally:
            self._share_waiting -= 1
            # The wait counts against the request's deadline, as its calls do: a login that
            # waited for its client's others may not then take a whole GATEHOUSE_CALL_TIMEOUT.
            call_budget = call_budget_var.get()
            if call_budget is not None:
                call_budget.spend(loop.time() - started)
        return True

    def _leave_share(self, client: str) -> None:
        """Give a place back: to the client's first request still waiting, or free."""
        share = self._shares[client]
        while share.waiting:
            place = share.waiting.popleft()
            if not place.done():
                place.set_result(None)  # the place passes over: `held` stays
                return
        share.held -= 1
        if not share.held:
            del self._shares[client]

    async def _admitted(
        self,
        budget: AdmissionQueue,
        scope: Scope,
        receive: Receive,
        send: Send,
        client: str | None,
    ) -> None:
        """Run the request once `budget` gives it a slot; `client`: the share it has entered
        (given back with the slot)."""
        if not await self._take_slot(budget, client):
            SHED_REQUESTS.inc()
            await self._refusal(scope, receive, send)
            return
        held = _Held(asyncio.get_running_loop().time(), client)
        try:
            if declares_body(scope):
                await self.app(
                    scope, self._slot_free_while_waiting(scope, receive, budget, held), send
                )
            else:
                self._started_hashing(client, held.since)
                await self.app(scope, receive, send)
        finally:
            if held.slot:
                budget.release(held.since)
                if held.client is not None:
                    self._leave_share(held.client)

    def _started_hashing(self, client: str | None, now: float) -> None:
        """Count a use of the hashing budget once the request holds the slot it hashes in
        (after its body): counted earlier, its own start weighed in its second rank, and less
        the longer its body took."""
        if client is not None:
            self._recent.started(client, now)

    async def _take_slot(self, budget: AdmissionQueue, client: str | None) -> bool:
        """A slot of `budget`; without one (refused, or the caller cancelled), `client`'s place
        in its share is given back."""
        taken = False
        rank = 0
        if client is not None:
            # The less of the budget the client holds, and has used lately, the sooner it is
            # served: in quarters of a request, so that use long past weighs little.
            now = asyncio.get_running_loop().time()
            used = self._shares[client].held + self._recent.count(client, now)
            rank = rank_of(used)
        try:
            taken = await budget.take(rank)
        finally:
            if not taken and client is not None:
                self._leave_share(client)
        return taken

    def _slot_free_while_waiting(
        self, scope: Scope, receive: Receive, budget: AdmissionQueue, held: _Held
    ) -> Receive:
        """`receive` that gives the request's slot back while it waits for the body, and its
        place in its client's share with it: a client trickling bodies holds neither."""
        body_pending = True

        async def receive_without_slot() -> Message:
            nonlocal body_pending
            if not body_pending:
                return await receive()
            if held.slot:
                held.slot = False
                budget.release()
                if held.client is not None:
                    self._leave_share(held.client)
            message = await receive()
            if message["type"] == "http.request" and message.get("more_body", False):
                return message
            body_pending = False
            if message["type"] != "http.request" or answer_decided(scope):
                return message  # nothing left to run: the answer is decided or the client left
            if held.client is not None and not await self._enter_share(held.client):
                SHED_REQUESTS.inc()
                answer_without_draining(scope)
                raise too_many_of_one_client(self._hashing_per_client)
            held.slot = await self._take_slot(budget, held.client)
            if not held.slot:
                SHED_REQUESTS.inc()
                answer_without_draining(scope)  # the body has all arrived: answer at once
                raise overloaded()  # a fresh one: a raised error keeps its frames
            held.since = asyncio.get_running_loop().time()
            self._started_hashing(held.client, held.since)
            return message

        return receive_without_slot
