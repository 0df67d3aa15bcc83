"""Admission by waiting time: requests beyond the worker's concurrency wait in line, and are
answered 503 with Retry-After only when they could not start within the queue target."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from devstack.ports import wait_until_async
from services.foundation.heap import CollectionCounts
from services.http.call_budget import begin_request, call_budget_var, end_request
from services.http.client_ip import ClientAddresses
from services.http.errors import EXCEPTION_HANDLERS
from services.http.middleware.admission import HASHING_ROUTES, AdmissionLimit
from services.http.middleware.admission_queue import (
    HOLD_SAMPLE_CAP,
    HOLD_SMOOTHING,
    AdmissionQueue,
)
from services.http.middleware.stack import middleware_stack
from services.http.middleware.unread_body import DRAIN_SECONDS, UnreadBodyDrain
from services.http.openapi.document import documented_routes
from services.http.settings import HttpSettings
from tests.http.gateway import TEST_CSRF_SECRET
from tests.openapi.document_support import unstarted_app

CONCURRENCY = 2
# Targets that a test controls: one so short that a held slot always outlasts it, and one so
# long that no request of the test ever reaches it.
SHORT_TARGET = 0.05
NEVER = 3600.0
CEILING = 1000
# How long a test's client takes to send its body.
BODY_WAIT = 0.2


def held_app(
    release: asyncio.Event, entered: asyncio.Queue[str], target: float, ceiling: int = CEILING
) -> Starlette:
    async def slow(request: Request) -> Response:
        await entered.put(request.url.path)
        await release.wait()
        return PlainTextResponse("done")

    return Starlette(
        routes=[
            Route("/api/v1/me", slow),
            Route("/readyz", slow),
            Route("/api/v1/sessions", slow, methods=["POST"]),
        ],
        middleware=[
            Middleware(
                AdmissionLimit, concurrency=CONCURRENCY, queue_target=target, ceiling=ceiling
            )
        ],
    )


def client_of(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gatehouse")


async def test_a_request_that_cannot_start_within_the_target_is_refused() -> None:
    release, entered = asyncio.Event(), asyncio.Queue[str]()
    async with client_of(held_app(release, entered, SHORT_TARGET)) as client:
        held = [asyncio.create_task(client.get("/api/v1/me")) for _ in range(CONCURRENCY)]
        for _ in range(CONCURRENCY):
            await asyncio.wait_for(entered.get(), 5)

        refused = await asyncio.wait_for(client.get("/api/v1/me"), 5)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "overloaded"
        assert refused.json()["error"]["message"]
        assert entered.empty()  # refused before routing

        probe = asyncio.create_task(client.get("/readyz"))  # probes are never shed
        assert await asyncio.wait_for(entered.get(), 5) == "/readyz"

        release.set()
        statuses = [r.status_code for r in await asyncio.gather(*held, probe)]
        assert statuses == [200] * (CONCURRENCY + 1)
        assert (await client.get("/api/v1/me")).status_code == 200


async def test_requests_beyond_the_concurrency_wait_for_a_slot_instead_of_being_refused() -> None:
    """A closed loop bigger than the concurrency: every request is answered 200, later."""
    release, entered = asyncio.Event(), asyncio.Queue[str]()
    clients, rounds = 5 * CONCURRENCY, 3
    async with client_of(held_app(release, entered, NEVER)) as client:

        async def loop() -> list[int]:
            return [(await client.get("/api/v1/me")).status_code for _ in range(rounds)]

        loops = [asyncio.create_task(loop()) for _ in range(clients)]
        for _ in range(CONCURRENCY):
            await asyncio.wait_for(entered.get(), 5)
        assert not any(task.done() for task in loops)  # the rest wait in line, unanswered
        release.set()
        answers = await asyncio.wait_for(asyncio.gather(*loops), 30)
        assert answers == [[200] * rounds] * clients


async def test_a_line_predicted_to_outlast_the_target_refuses_newcomers_at_once() -> None:
    queue = AdmissionQueue(concurrency=1, target=NEVER, ceiling=CEILING)
    assert await queue.take()
    waiting = await queued_behind(queue)  # never expires: the test decides alone
    queue.target = 1.0
    # Slots held a quarter of the target: a newcomer behind one waiter would start in time.
    queue.hold_seconds = queue.target / 4
    assert queue.try_take() is None
    # Held as long as the target: one waiter ahead plus itself would take twice the target.
    queue.hold_seconds = queue.target
    assert queue.try_take() is False
    assert await asyncio.wait_for(queue.take(), 5) is False  # at once, not after the target

    queue.release()  # the slot passes to the waiter
    assert await asyncio.wait_for(waiting, 5) is True
    queue.release()
    assert (queue.running, queue.queued) == (0, 0)
    assert queue.try_take() is True  # an empty line: admission is back to normal


async def test_a_request_that_waited_too_long_does_not_get_the_next_ones_refused() -> None:
    """A closed loop's client sends again as soon as it is refused: one late request must not
    turn into a spell of refusals for everyone behind it."""
    queue = AdmissionQueue(concurrency=1, target=SHORT_TARGET, ceiling=CEILING)
    assert await queue.take()
    late = await queued_behind(queue)
    assert await asyncio.wait_for(late, 5) is False  # could not start within the target
    again = await queued_behind(queue)  # the same client at once: it waits in line again
    # Behind a line that has just started waiting, a newcomer would start in time: it queues.
    assert queue.try_take() is None
    queue.release()
    assert await asyncio.wait_for(again, 5) is True
    queue.release()
    assert (queue.running, queue.queued) == (0, 0)


async def test_each_slot_held_moves_the_average_by_its_weight_up_to_a_cap() -> None:
    queue = AdmissionQueue(concurrency=4, target=SHORT_TARGET, ceiling=CEILING)
    cap = HOLD_SAMPLE_CAP * SHORT_TARGET * 4
    loop = asyncio.get_running_loop()
    assert queue.try_take() is True
    queue.release(held_since=loop.time() - cap / 2)
    assert queue.hold_seconds == pytest.approx(HOLD_SMOOTHING * cap / 2, rel=0.01)
    before = queue.hold_seconds
    assert queue.try_take() is True
    queue.release(held_since=loop.time() - 100.0)  # stuck until some deadline: counts as the cap
    assert queue.hold_seconds == pytest.approx(before + HOLD_SMOOTHING * (cap - before), rel=0.01)
    before = queue.hold_seconds
    assert queue.try_take() is True
    queue.release()  # a slot given back without its start time leaves the average alone
    assert queue.hold_seconds == before


async def test_a_busy_loop_refuses_newcomers_before_the_expiry_timers_run() -> None:
    """The first in line has waited the target, but the loop was too busy to run its timer."""
    queue = AdmissionQueue(concurrency=1, target=SHORT_TARGET, ceiling=CEILING)
    assert await queue.take()
    first = await queued_behind(queue)
    busy_for(2 * SHORT_TARGET)  # the loop's own work: no callback, no timer runs meanwhile
    assert queue.try_take() is False  # decided without waiting in line, before any timer
    assert await asyncio.wait_for(first, 5) is False
    queue.release()
    assert (queue.running, queue.queued) == (0, 0)


async def test_the_ceiling_refuses_at_once_whatever_the_target() -> None:
    release, entered = asyncio.Event(), asyncio.Queue[str]()
    ceiling = CONCURRENCY + 1
    async with client_of(held_app(release, entered, NEVER, ceiling)) as client:
        held = [asyncio.create_task(client.get("/api/v1/me")) for _ in range(ceiling)]
        for _ in range(CONCURRENCY):
            await asyncio.wait_for(entered.get(), 5)
        refused = await asyncio.wait_for(client.get("/api/v1/me"), 5)  # not after NEVER
        assert refused.status_code == 503
        release.set()
        assert [r.status_code for r in await asyncio.gather(*held)] == [200] * ceiling


async def test_a_request_that_leaves_the_line_takes_no_slot() -> None:
    queue = AdmissionQueue(concurrency=1, target=NEVER, ceiling=CEILING)
    assert await queue.take()
    leaving = await queued_behind(queue)
    assert queue.queued == 1
    leaving.cancel()
    await asyncio.gather(leaving, return_exceptions=True)
    assert queue.queued == 0
    queue.release()
    assert (queue.running, queue.queued) == (0, 0)


async def test_a_slot_freed_in_the_turn_a_waiter_leaves_goes_to_the_next_newcomer() -> None:
    """A cancelled waiter's task resumes a turn later; a release and a newcomer in between
    must see the slot free, not a line that is no longer there."""
    queue = AdmissionQueue(concurrency=1, target=NEVER, ceiling=CEILING)
    assert await queue.take()
    leaving = await queued_behind(queue)
    leaving.cancel()  # its future is cancelled now; its task runs later
    queue.release()
    assert queue.try_take() is True
    await asyncio.gather(leaving, return_exceptions=True)
    assert (queue.running, queue.queued) == (1, 0)
    queue.release()
    assert (queue.running, queue.queued) == (0, 0)


async def test_a_failing_request_frees_its_slot() -> None:
    async def broken(request: Request) -> Response:
        raise RuntimeError("boom")

    app = Starlette(
        routes=[Route("/api/v1/me", broken)],
        middleware=[Middleware(AdmissionLimit, concurrency=1, queue_target=NEVER, ceiling=1)],
    )
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gatehouse") as client:
        for _ in range(3):
            assert (await client.get("/api/v1/me")).status_code == 500


async def test_logins_waiting_on_hashing_do_not_take_the_slots_of_reads() -> None:
    release, entered = asyncio.Event(), asyncio.Queue[str]()
    async with client_of(held_app(release, entered, SHORT_TARGET)) as client:
        logins = [asyncio.create_task(client.post("/api/v1/sessions")) for _ in range(CONCURRENCY)]
        for _ in range(CONCURRENCY):
            await asyncio.wait_for(entered.get(), 5)
        assert (await asyncio.wait_for(client.post("/api/v1/sessions"), 5)).status_code == 503

        read = asyncio.create_task(client.get("/api/v1/me"))
        assert await asyncio.wait_for(entered.get(), 5) == "/api/v1/me"
        release.set()
        statuses = [r.status_code for r in await asyncio.gather(*logins, read)]
        assert statuses == [200] * (CONCURRENCY + 1)


class HeldLogins:
    """An app whose logins hold until released, behind an AdmissionLimit with a share of 2 per
    client address; `entered` gets each login's address as it starts."""

    def __init__(self, client_wait: float, ceiling: int = CEILING) -> None:
        self.release, self.entered = asyncio.Event(), asyncio.Queue[str]()
        self.budget_spent: list[float] = []  # the request's call budget as each one started
        self.reading = 0  # requests that began reading their body

        async def slow(request: Request) -> Response:
            self.reading += 1
            await request.body()
            budget = call_budget_var.get()
            self.budget_spent.append(budget.spent if budget is not None else -1.0)
            await self.entered.put(request.client.host if request.client else "")
            await self.release.wait()
            return PlainTextResponse("done")

        self.app = Starlette(
            routes=[Route("/api/v1/sessions", slow, methods=["POST"])],
            middleware=[
                Middleware(
                    AdmissionLimit,
                    concurrency=4,
                    queue_target=NEVER,
                    ceiling=ceiling,
                    hashing_per_client=2,
                    client_of=lambda scope: scope["client"][0],
                    client_wait=client_wait,
                )
            ],
        )

    def client_at(self, address: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app, client=(address, 1234))
        return httpx.AsyncClient(transport=transport, base_url="http://gatehouse")


async def test_one_client_cannot_take_the_whole_hashing_budget() -> None:
    """Logins with the right password are never refused by the login throttle: past its share
    of the hashing budget, one address waits for its own (here not at all: refused at once),
    and another's login still starts at once (before, it waited in line behind the first
    address's, or was refused)."""
    held_logins = HeldLogins(client_wait=0.0)
    release, entered, client_at = held_logins.release, held_logins.entered, held_logins.client_at

    async with client_at("198.51.100.1") as flood, client_at("198.51.100.2") as other:
        held = [asyncio.create_task(flood.post("/api/v1/sessions")) for _ in range(2)]
        for _ in range(2):
            assert await asyncio.wait_for(entered.get(), 5) == "198.51.100.1"
        refused = await asyncio.wait_for(flood.post("/api/v1/sessions"), 5)  # not after NEVER
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "overloaded"
        assert "one client" in refused.json()["error"]["message"]

        mine = asyncio.create_task(other.post("/api/v1/sessions"))
        assert await asyncio.wait_for(entered.get(), 5) == "198.51.100.2"
        release.set()
        statuses = [r.status_code for r in await asyncio.gather(*held, mine)]
        assert statuses == [200] * 3
        # Its requests done, the first address has its share again.
        assert (await flood.post("/api/v1/sessions")).status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/api/v1/me/password"),
        ("DELETE", "/api/v1/me"),
        ("POST", "/profile/password"),
        ("POST", "/profile/delete"),
    ],
)
async def test_password_changes_and_deletions_do_not_take_the_slots_of_reads(
    method: str, path: str
) -> None:
    """They wait on password hashing like logins: a storm of them must leave reads their slots."""
    release, entered = asyncio.Event(), asyncio.Queue[str]()

    async def slow(request: Request) -> Response:
        await entered.put(f"{request.method} {request.url.path}")
        await release.wait()
        return PlainTextResponse("done")

    app = Starlette(
        routes=[Route("/api/v1/me", slow), Route(path, slow, methods=[method])],
        middleware=[
            Middleware(AdmissionLimit, concurrency=1, queue_target=SHORT_TARGET, ceiling=CEILING)
        ],
    )
    async with client_of(app) as client:
        hashing = asyncio.create_task(client.request(method, path))
        assert await asyncio.wait_for(entered.get(), 5) == f"{method} {path}"
        read = asyncio.create_task(client.get("/api/v1/me"))
        try:
            assert await asyncio.wait_for(entered.get(), 5) == "GET /api/v1/me"
        finally:
            release.set()
        assert [r.status_code for r in await asyncio.gather(hashing, read)] == [200, 200]


def test_every_operation_that_hashes_a_password_has_the_hashing_budget() -> None:
    declared = {
        (method, route.path)
        for route in documented_routes(unstarted_app().routes)
        for method, operation in route.operations.items()
        if operation.hashes_password
    }
    assert ("POST", "/api/v1/sessions") in declared
    assert declared - HASHING_ROUTES == set()


async def test_each_request_feeds_the_holding_time_of_its_budget() -> None:
    async def busy(scope: Scope, receive: Receive, send: Send) -> None:
        busy_for(0.01)
        await PlainTextResponse("done")(scope, receive, send)

    limit = AdmissionLimit(busy, concurrency=CONCURRENCY, queue_target=NEVER, ceiling=CEILING)
    transport = httpx.ASGITransport(app=limit)
    async with httpx.AsyncClient(transport=transport, base_url="http://gatehouse") as client:
        assert (await client.get("/api/v1/me")).status_code == 200
    assert limit.budgets[False].hold_seconds > 0.01 * HOLD_SMOOTHING
    assert limit.budgets[True].hold_seconds == 0  # the logins' budget has its own


def busy_for(seconds: float) -> None:
    """Work that holds the event loop, as a saturated worker's requests do."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        pass


async def queued_behind(queue: AdmissionQueue, rank: int = 0) -> asyncio.Task[bool]:
    """A task waiting in `queue`'s line: once started, `take` suspends only on its place."""
    in_line = queue.queued
    task = asyncio.create_task(queue.take(rank))
    # Polled at every turn of the loop (interval 0), so no timer of the line gets to run first.
    await wait_until_async(
        lambda: queue.queued > in_line, 5.0, "the task to join the line", interval=0, max_interval=0
    )
    return task


class HeldBody:
    """An ASGI request whose 20-byte body arrives only when `arrive` is set; after it, the
    client neither sends nor leaves (the next `receive` waits forever)."""

    def __init__(self) -> None:
        self.arrive = asyncio.Event()
        self.sent: list[Message] = []
        self._delivered = False

    async def receive(self) -> Message:
        if self._delivered:
            await asyncio.Event().wait()
        await self.arrive.wait()
        self._delivered = True
        return {"type": "http.request", "body": b'{"nickname": "abcd"}', "more_body": False}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    def status(self) -> int:
        return next(m["status"] for m in self.sent if m["type"] == "http.response.start")


def body_scope(path: str) -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "PATCH",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"gatehouse"), (b"content-length", b"20")],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8080),
    }


def full_stack(release: asyncio.Event, entered: asyncio.Queue[str]) -> Starlette:
    """Admission and the unread-body drain in the app's order, one slot."""

    async def refuse_unread(request: Request) -> Response:
        return JSONResponse({"error": {"code": "unauthenticated"}}, status_code=401)

    async def read_then_answer(request: Request) -> Response:
        await request.body()
        return PlainTextResponse("read")

    async def held(request: Request) -> Response:
        await entered.put(request.url.path)
        await release.wait()
        return PlainTextResponse("done")

    return Starlette(
        routes=[
            Route("/unread", refuse_unread, methods=["PATCH"]),
            Route("/read", read_then_answer, methods=["PATCH"]),
            Route("/held", held),
        ],
        middleware=[
            Middleware(AdmissionLimit, concurrency=1, queue_target=SHORT_TARGET, ceiling=CEILING),
            Middleware(UnreadBodyDrain, max_bytes=1024),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
    )


async def fill_the_slot(app: Starlette, entered: asyncio.Queue[str]) -> asyncio.Task[None]:
    holder = HeldBody()
    scope = {**body_scope("/held"), "method": "GET", "headers": [(b"host", b"gatehouse")]}
    task = asyncio.create_task(app(scope, holder.receive, holder.send))
    assert await asyncio.wait_for(entered.get(), 5) == "/held"
    return task


async def test_the_time_a_request_waits_for_its_body_is_left_out_of_the_holding_average() -> None:
    """A slow uploader holds no slot while its body trickles in, so that wait must not make the
    line look slower than it is (the average predicts waits, and refuses by them)."""

    async def read_then_answer(scope: Scope, receive: Receive, send: Send) -> None:
        assert (await receive())["type"] == "http.request"
        await PlainTextResponse("read")(scope, receive, send)

    limit = AdmissionLimit(
        read_then_answer, concurrency=CONCURRENCY, queue_target=NEVER, ceiling=CEILING
    )
    holder = HeldBody()
    request = asyncio.create_task(limit(body_scope("/api/v1/me"), holder.receive, holder.send))
    await asyncio.sleep(BODY_WAIT)  # the client's slow body: the behaviour under test
    holder.arrive.set()
    await request
    assert holder.status() == 200
    # The wait alone would put HOLD_SMOOTHING * BODY_WAIT into the average.
    assert limit.budgets[False].hold_seconds < HOLD_SMOOTHING * BODY_WAIT / 4


async def test_a_body_arriving_at_a_full_worker_after_the_answer_keeps_that_answer() -> None:
    """The handler answered 401 without the body; the body arrives while every slot is taken:
    the client gets its 401, not a 500 from a 503 raised in the middle of the answer."""
    release, entered = asyncio.Event(), asyncio.Queue[str]()
    app = full_stack(release, entered)
    request = HeldBody()
    answering = asyncio.create_task(app(body_scope("/unread"), request.receive, request.send))
    holder = await fill_the_slot(app, entered)  # the waiting body holds no slot

    request.arrive.set()
    await asyncio.wait_for(answering, 5)
    assert request.status() == 401
    release.set()
    await holder


async def test_a_body_arriving_at_a_full_worker_is_answered_503_at_once() -> None:
    """The handler reads the body; it arrives while every slot is taken: 503 once it could not
    start within the target, without waiting to drain a body that has all arrived."""
    release, entered = asyncio.Event(), asyncio.Queue[str]()
    app = full_stack(release, entered)
    request = HeldBody()
    answering = asyncio.create_task(app(body_scope("/read"), request.receive, request.send))
    holder = await fill_the_slot(app, entered)

    request.arrive.set()
    await asyncio.wait_for(answering, DRAIN_SECONDS / 2)
    assert request.status() == 503
    release.set()
    await holder


async def test_past_its_share_a_client_waits_for_its_own_not_for_others() -> None:
    """A closed loop wider than its share gets latency, not refusals sent again at once: its
    third login starts when one of its first two ends, while another address's starts at once;
    one that found no place within the wait is refused."""
    held_logins = HeldLogins(client_wait=NEVER)
    async with (
        held_logins.client_at("198.51.100.1") as flood,
        held_logins.client_at("198.51.100.2") as other,
    ):
        first = [asyncio.create_task(flood.post("/api/v1/sessions")) for _ in range(2)]
        for _ in range(2):
            assert await asyncio.wait_for(held_logins.entered.get(), 5) == "198.51.100.1"
        third = asyncio.create_task(flood.post("/api/v1/sessions"))
        mine = asyncio.create_task(other.post("/api/v1/sessions"))
        assert await asyncio.wait_for(held_logins.entered.get(), 5) == "198.51.100.2"
        assert held_logins.entered.empty() and not third.done()  # waiting for its own
        held_logins.release.set()
        assert await asyncio.wait_for(held_logins.entered.get(), 5) == "198.51.100.1"
        statuses = [r.status_code for r in await asyncio.gather(*first, third, mine)]
        assert statuses == [200] * 4

    impatient = HeldLogins(client_wait=0.2)
    async with impatient.client_at("198.51.100.1") as flood:
        held = [asyncio.create_task(flood.post("/api/v1/sessions")) for _ in range(2)]
        for _ in range(2):
            await asyncio.wait_for(impatient.entered.get(), 5)
        refused = await asyncio.wait_for(flood.post("/api/v1/sessions"), 5)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        impatient.release.set()
        assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]


async def test_a_wait_for_a_place_counts_against_the_ceiling_and_the_deadline() -> None:
    """Requests waiting for their client's share are held like any other: with a ceiling of 3,
    two running and one waiting leave no room for another; and the wait is taken from the
    request's deadline, as its calls' time is (GATEHOUSE_CALL_TIMEOUT bounds both)."""
    held_logins = HeldLogins(client_wait=NEVER, ceiling=3)
    token = begin_request()  # as RequestContextMiddleware does; the tasks below copy it
    try:
        async with held_logins.client_at("198.51.100.1") as flood:
            first = [asyncio.create_task(flood.post("/api/v1/sessions")) for _ in range(2)]
            for _ in range(2):
                await asyncio.wait_for(held_logins.entered.get(), 5)
            waiting = asyncio.create_task(flood.post("/api/v1/sessions"))
            await wait_until_async(
                lambda: _share_waiters(held_logins) == 1, 5.0, "the third to wait for a place"
            )
            refused = await asyncio.wait_for(flood.post("/api/v1/sessions"), 5)
            assert refused.status_code == 503
            held_logins.release.set()
            statuses = [r.status_code for r in await asyncio.gather(*first, waiting)]
            assert statuses == [200] * 3
    finally:
        end_request(token)
    assert held_logins.budget_spent[:2] == [0.0, 0.0]
    assert held_logins.budget_spent[2] > 0  # the third's wait, though it made no call


def _limit(held_logins: HeldLogins) -> AdmissionLimit:
    stack = held_logins.app.middleware_stack
    limit = stack.app if stack is not None else None  # ServerErrorMiddleware wraps it
    assert isinstance(limit, AdmissionLimit)
    return limit


def _share_waiters(held_logins: HeldLogins) -> int:
    return _limit(held_logins)._share_waiting


async def test_a_login_waiting_for_its_body_holds_no_place_in_its_clients_share() -> None:
    """As a request waiting for its body gives its slot back, it gives its place in its
    client's share back: a client trickling bodies does not keep its other logins out."""
    held_logins = HeldLogins(client_wait=0.0)
    arrive = asyncio.Event()

    async def late_body() -> AsyncIterator[bytes]:
        await arrive.wait()
        yield b"{}"

    async with held_logins.client_at("198.51.100.1") as flood:
        trickling = [
            asyncio.create_task(
                flood.post(
                    "/api/v1/sessions",
                    content=late_body(),
                    headers={"content-type": "application/json"},
                )
            )
            for _ in range(2)
        ]
        await wait_until_async(
            lambda: held_logins.reading == 2 and "198.51.100.1" not in _limit(held_logins)._shares,
            5.0,
            "both logins to wait for their bodies without a place",
        )
        complete = asyncio.create_task(flood.post("/api/v1/sessions", json={}))
        assert await asyncio.wait_for(held_logins.entered.get(), 5) == "198.51.100.1"
        held_logins.release.set()
        assert (await complete).status_code == 200
        arrive.set()
        assert [r.status_code for r in await asyncio.gather(*trickling)] == [200, 200]


@pytest.mark.parametrize(("concurrency", "share"), [(64, 32), (16, 8), (1, 1)])
def test_a_clients_share_is_at_most_half_the_hashing_budget(concurrency: int, share: int) -> None:
    """GATEHOUSE_MAX_HASHING_PER_CLIENT (32) with a smaller GATEHOUSE_ADMISSION_CONCURRENCY: a
    share as large as the budget would keep no client from taking all of it."""
    settings = HttpSettings(csrf_secret=TEST_CSRF_SECRET, admission_concurrency=concurrency)
    (limit,) = [
        middleware
        for middleware in middleware_stack(settings, ClientAddresses(()), CollectionCounts())
        if middleware.cls is AdmissionLimit
    ]
    assert limit.kwargs["hashing_per_client"] == share


async def test_a_freed_slot_goes_to_the_lowest_rank_in_line_and_only_lower_ranks_count_ahead() -> (
    None
):
    """The hashing budget ranks a request by how much of it its client holds: a client holding
    little is served first, and not refused for a line that heavier clients fill."""
    queue = AdmissionQueue(concurrency=2, target=1.0, ceiling=CEILING)
    assert await queue.take() and await queue.take()  # full
    heavy = [await queued_behind(queue, rank=3) for _ in range(3)]
    # Three ahead would be predicted past the target; none ahead of rank 1 is not.
    queue.hold_seconds = 0.9
    assert queue.try_take(rank=3) is False
    light = await queued_behind(queue, rank=1)
    queue.release()
    await asyncio.wait_for(asyncio.shield(light), 5)
    assert light.result() is True and not any(task.done() for task in heavy)
    queue.release()
    assert await asyncio.wait_for(heavy[0], 5) is True  # then first in, first out
    for task in heavy[1:]:
        task.cancel()
    await asyncio.gather(*heavy[1:], return_exceptions=True)


async def test_a_client_holding_little_is_served_before_heavier_ones() -> None:
    """Three addresses within their share filled the hashing budget and its line, and another
    person's login was refused, or served after all of theirs: it now gets the first slot its
    rank allows, ahead of the third address's second login."""
    held_logins = HeldLogins(client_wait=NEVER)
    clients = {
        name: held_logins.client_at(f"198.51.100.{number}")
        for number, name in enumerate(("a", "b", "c", "d"), start=1)
    }
    try:
        running = [asyncio.create_task(clients[name].post("/api/v1/sessions")) for name in "aabb"]
        for _ in range(4):
            await asyncio.wait_for(held_logins.entered.get(), 5)
        budget = _limit(held_logins).budgets[True]
        third = []
        for _ in range(2):
            third.append(asyncio.create_task(clients["c"].post("/api/v1/sessions")))
            await wait_until_async(
                lambda: budget.queued == len(third), 5.0, "c's login to queue", interval=0.001
            )
        mine = asyncio.create_task(clients["d"].post("/api/v1/sessions"))
        await wait_until_async(lambda: budget.queued == 3, 5.0, "d's login to queue")
        held_logins.release.set()
        order = [await asyncio.wait_for(held_logins.entered.get(), 5) for _ in range(3)]
        assert order == ["198.51.100.3", "198.51.100.4", "198.51.100.3"]
        statuses = [r.status_code for r in await asyncio.gather(*running, *third, mine)]
        assert statuses == [200] * 7
    finally:
        for client in clients.values():
            await client.aclose()


async def test_among_clients_holding_as_much_the_one_that_hashed_least_lately_goes_first() -> None:
    """An attacker spread over many addresses, each holding one login at a time, tied with
    every bystander on what it holds: 144 addresses got 3 of 4 bystander logins refused after
    about 1 s in line. What a client has used of the budget lately now ranks it too."""
    held_logins = HeldLogins(client_wait=NEVER)
    addresses = [f"198.51.100.{number}" for number in range(1, 5)]
    busy, newcomer, *fillers = (held_logins.client_at(address) for address in addresses)
    try:
        held_logins.release.set()
        for _ in range(3):  # the busy address has just had logins served
            assert (await busy.post("/api/v1/sessions")).status_code == 200
            await asyncio.wait_for(held_logins.entered.get(), 5)
        held_logins.release.clear()
        running = [asyncio.create_task(filler.post("/api/v1/sessions")) for filler in fillers * 2]
        for _ in range(4):
            await asyncio.wait_for(held_logins.entered.get(), 5)
        budget = _limit(held_logins).budgets[True]
        waiting = []
        for client in (busy, newcomer):  # the busy address first in line
            waiting.append(asyncio.create_task(client.post("/api/v1/sessions")))
            await wait_until_async(
                lambda: budget.queued == len(waiting), 5.0, "the login to queue", interval=0.001
            )
        held_logins.release.set()
        order = [await asyncio.wait_for(held_logins.entered.get(), 5) for _ in range(2)]
        assert order == [addresses[1], addresses[0]]
        statuses = [r.status_code for r in await asyncio.gather(*running, *waiting)]
        assert statuses == [200] * 6
    finally:
        for client in (busy, newcomer, *fillers):
            await client.aclose()


async def test_a_login_counts_as_a_use_of_the_budget_once_its_body_has_arrived() -> None:
    """Counted at its first slot, before its body, a login's own start weighed in the rank of
    the slot it hashes in, and weighed less the longer its body took: a client holding its
    bodies back ranked ahead of every prompt one."""
    held_logins = HeldLogins(client_wait=NEVER)
    client = held_logins.client_at("198.51.100.7")
    body_may_end = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield b'{"username": "someone", '
        await body_may_end.wait()
        yield b'"password": "password1"}'

    def uses() -> float:
        return _limit(held_logins)._recent.count("198.51.100.7", time.monotonic())

    try:
        held_logins.release.set()
        login = asyncio.create_task(
            client.post(
                "/api/v1/sessions",
                content=slow_body(),
                headers={"Content-Type": "application/json"},
            )
        )
        await wait_until_async(lambda: held_logins.reading == 1, 5.0, "the body to be read")
        assert uses() == 0.0
        body_may_end.set()
        assert (await asyncio.wait_for(login, 5)).status_code == 200
        assert uses() == pytest.approx(1.0, abs=0.01)
    finally:
        await client.aclose()


async def test_a_rank_no_request_waits_at_any_more_is_forgotten() -> None:
    """Ranks are counts of recent use and so unbounded in number: each one left behind would
    stay for the worker's lifetime, and every ranked newcomer's wait would sum over them."""
    queue = AdmissionQueue(concurrency=1, target=NEVER, ceiling=CEILING)
    assert await queue.take()
    waiting = [await queued_behind(queue, rank=rank) for rank in range(1, 200)]
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    assert queue.queued == 0
    assert len(queue._queued_at) == 0
    queue.release()
