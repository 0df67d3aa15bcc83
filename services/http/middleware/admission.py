"""Load shedding: a bound on the requests one worker process handles at once.

Past GATEHOUSE_MAX_IN_FLIGHT requests in progress, a new request is answered 503 with
Retry-After at once, before any routing or auth call: when the worker is already as busy as
it can usefully be, queueing more only makes every answer late. The ops endpoints are never
shed, so a saturated pod still answers its probes and scrapes.

Logins and signups wait on password hashing in the auth service for up to the call deadline
(which sheds them itself once its hash queue is full), so they get a budget of their own: a
login storm cannot take the slots that profile reads need.

A request waiting for its body gives its slot back for as long as it waits: a client
trickling a body (slowly, or not at all until services.http.middleware.body_deadline answers 408) must
not take the slots that requests with complete bodies need. When the body has arrived the
request takes a slot again, or is answered 503 at once if there is none; a body that arrives
after the handler has answered without it (401, 413...) is only dropped, and never shed.

Granian's own `backpressure` setting does not replace this: it bounds connections, not
requests, and past it Granian stops accepting connections, which then wait in the kernel's
queue instead of being refused (services.http.__main__ sets it well above any real load).
"""

from __future__ import annotations

from prometheus_client import Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.http.errors import RETRY_AFTER_SECONDS, ApiError, error_response
from services.http.middleware.unread_body import (
    answer_decided,
    answer_without_draining,
    declares_body,
)

UNSHED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
HASHING_PATHS = frozenset(
    {
        "/api/v1/sessions",
        "/api/v1/users",
        "/open_api/v1/register",
        "/open_api/v1/authenticate",
        "/login",  # the page forms wait on hashing just the same
        "/signup",
    }
)

SHED_REQUESTS = Counter(
    "gatehouse_http_shed_requests",
    "Requests answered 503 at once because the worker had GATEHOUSE_MAX_IN_FLIGHT in progress",
)


def overloaded() -> ApiError:
    return ApiError(
        503,
        "overloaded",
        f"this server is at its limit of requests in progress; retry in {RETRY_AFTER_SECONDS} s",
        {"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


class AdmissionLimit:
    """ASGI middleware: at most `limit` requests in progress in this process, plus at most
    `limit` logins and signups."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.in_flight = {False: 0, True: 0}  # by "waits on password hashing"
        # One response object serves every refusal: it holds no per-request state.
        self._refusal = error_response(overloaded())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNSHED_PATHS:
            await self.app(scope, receive, send)
            return
        hashing = scope["method"] == "POST" and scope["path"] in HASHING_PATHS
        if self.in_flight[hashing] >= self.limit:
            SHED_REQUESTS.inc()
            await self._refusal(scope, receive, send)
            return
        self.in_flight[hashing] += 1
        try:
            if declares_body(scope):
                await self.app(scope, self._slot_free_while_waiting(scope, receive, hashing), send)
            else:
                await self.app(scope, receive, send)
        finally:
            self.in_flight[hashing] -= 1

    def _slot_free_while_waiting(self, scope: Scope, receive: Receive, hashing: bool) -> Receive:
        """`receive` that gives the request's slot back while it waits for the body."""
        body_pending = True

        async def receive_without_slot() -> Message:
            nonlocal body_pending
            if not body_pending:
                return await receive()
            self.in_flight[hashing] -= 1
            try:
                message = await receive()
            finally:
                self.in_flight[hashing] += 1
            if message["type"] == "http.request" and message.get("more_body", False):
                return message
            body_pending = False
            if (
                message["type"] == "http.request"
                and self.in_flight[hashing] > self.limit
                and not answer_decided(scope)
            ):
                SHED_REQUESTS.inc()
                answer_without_draining(scope)  # the body has all arrived: answer at once
                raise overloaded()  # a fresh one: a raised error keeps its frames
            return message

        return receive_without_slot
