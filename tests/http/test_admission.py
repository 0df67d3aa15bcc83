"""The in-flight bound: requests past it are answered 503 with Retry-After at once."""

from __future__ import annotations

import asyncio

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from services.http.admission import AdmissionLimit

LIMIT = 2


def held_app(release: asyncio.Event, entered: asyncio.Queue[str]) -> Starlette:
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
        middleware=[Middleware(AdmissionLimit, limit=LIMIT)],
    )


async def test_requests_beyond_the_limit_are_refused_at_once_and_later_admitted() -> None:
    release, entered = asyncio.Event(), asyncio.Queue[str]()
    transport = httpx.ASGITransport(app=held_app(release, entered))
    async with httpx.AsyncClient(transport=transport, base_url="http://gatehouse") as client:
        held = [asyncio.create_task(client.get("/api/v1/me")) for _ in range(LIMIT)]
        for _ in range(LIMIT):
            await asyncio.wait_for(entered.get(), 5)

        refused = await asyncio.wait_for(client.get("/api/v1/me"), 1)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "overloaded"

        probe = asyncio.create_task(client.get("/readyz"))  # probes are never shed
        assert await asyncio.wait_for(entered.get(), 5) == "/readyz"

        release.set()
        assert [r.status_code for r in await asyncio.gather(*held, probe)] == [200] * (LIMIT + 1)
        assert (await client.get("/api/v1/me")).status_code == 200


async def test_a_failing_request_frees_its_slot() -> None:
    async def broken(request: Request) -> Response:
        raise RuntimeError("boom")

    app = Starlette(routes=[Route("/api/v1/me", broken)], middleware=[Middleware(AdmissionLimit, limit=1)])
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gatehouse") as client:
        for _ in range(3):
            assert (await client.get("/api/v1/me")).status_code == 500


async def test_logins_waiting_on_hashing_do_not_take_the_slots_of_reads() -> None:
    release, entered = asyncio.Event(), asyncio.Queue[str]()
    transport = httpx.ASGITransport(app=held_app(release, entered))
    async with httpx.AsyncClient(transport=transport, base_url="http://gatehouse") as client:
        logins = [asyncio.create_task(client.post("/api/v1/sessions")) for _ in range(LIMIT)]
        for _ in range(LIMIT):
            await asyncio.wait_for(entered.get(), 5)
        assert (await asyncio.wait_for(client.post("/api/v1/sessions"), 1)).status_code == 503

        read = asyncio.create_task(client.get("/api/v1/me"))
        assert await asyncio.wait_for(entered.get(), 5) == "/api/v1/me"
        release.set()
        assert [r.status_code for r in await asyncio.gather(*logins, read)] == [200] * (LIMIT + 1)
