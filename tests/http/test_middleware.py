"""Request ids, the latency metric's route label, the last-resort JSON 500, and the garbage
collections published at the end of a request."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message

from services.foundation.heap import CollectionCounts
from services.foundation.logs import trace_id_var
from services.http.client_ip import ClientAddresses
from services.http.errors import EXCEPTION_HANDLERS
from services.http.middleware.request_context import RequestContextMiddleware, request_id_from
from services.http.middleware.stack import middleware_stack
from services.http.settings import HttpSettings
from tests.collector import collections_paused
from tests.http.gateway import TEST_CSRF_SECRET
from tests.metric_samples import sample


async def item(request: Request) -> Response:
    return JSONResponse({"trace_id": trace_id_var.get()})


async def broken(request: Request) -> Response:
    raise RuntimeError("a bug")


async def collected(request: Request) -> Response:
    gc.collect(1)
    return Response()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    gc_collections = CollectionCounts()
    gc_collections.start()
    app = Starlette(
        routes=[
            Route("/items/{item_id}", item),
            Route("/broken", broken),
            Route("/collected", collected),
        ],
        middleware=[Middleware(RequestContextMiddleware, gc_collections=gc_collections)],
        exception_handlers=EXCEPTION_HANDLERS,
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as client:
        yield client
    gc_collections.stop()


def gc_collections_metric(generation: str) -> float:
    return sample("gatehouse_http_gc_collections_total", generation=generation)


async def test_collections_are_published_by_the_end_of_the_request(
    client: httpx.AsyncClient,
) -> None:
    with collections_paused():  # only the route's own collection from here
        await client.get("/items/1")  # publishes what came before
        before = gc_collections_metric("1")
        assert (await client.get("/collected")).status_code == 200
        assert gc_collections_metric("1") == before + 1


@pytest.mark.parametrize("sane", ["abc-123", "0f8e9d.ab:cd_EF", "x" * 64])
def test_a_sane_request_id_is_kept(sane: str) -> None:
    assert request_id_from([(b"x-request-id", sane.encode())]) == sane


@pytest.mark.parametrize(
    "insane", [b"", b"x" * 65, b"has space", b"new\nline", b"\xff\xfe", b"a/b"]
)
def test_other_request_ids_are_replaced(insane: bytes) -> None:
    generated = request_id_from([(b"x-request-id", insane)])
    assert generated.encode() != insane
    assert len(generated) == 16


def test_generated_request_ids_differ() -> None:
    assert request_id_from([]) != request_id_from([])


async def test_the_request_id_is_the_trace_id_and_is_echoed(client: httpx.AsyncClient) -> None:
    response = await client.get("/items/1", headers={"X-Request-ID": "req-42"})
    assert response.headers["x-request-id"] == "req-42"
    assert response.json() == {"trace_id": "req-42"}
    generated = await client.get("/items/1")
    assert generated.json()["trace_id"] == generated.headers["x-request-id"]
    assert trace_id_var.get() == ""  # reset after the request


async def test_latency_is_labelled_by_route_template_not_path(client: httpx.AsyncClient) -> None:
    def count(route: str, status: str) -> float:
        return (
            REGISTRY.get_sample_value(
                "gatehouse_http_request_seconds_count", {"route": route, "status": status}
            )
            or 0.0
        )

    before = count("/items/{item_id}", "200")
    await client.get("/items/1")
    await client.get("/items/2")
    assert count("/items/{item_id}", "200") == before + 2
    assert count("/items/1", "200") == 0
    unmatched = count("unmatched", "404")
    await client.get("/nowhere")
    assert count("unmatched", "404") == unmatched + 1


async def test_an_unhandled_error_is_a_json_500_with_the_request_id(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    response = await client.get("/broken", headers={"X-Request-ID": "req-500"})
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert response.headers["x-request-id"] == "req-500"
    assert any("GET /broken failed" in r.getMessage() and r.exc_info for r in caplog.records)


async def test_the_last_resort_500_of_an_https_deployment_carries_hsts() -> None:
    """The middlewares as the app stacks them: a browser told to keep to HTTPS by every other
    answer is told so by a failure's too."""
    settings = HttpSettings(csrf_secret=TEST_CSRF_SECRET, cookie_secure=True)
    app = Starlette(
        routes=[Route("/broken", broken)],
        middleware=middleware_stack(settings, ClientAddresses(()), CollectionCounts()),
        exception_handlers=EXCEPTION_HANDLERS,
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="https://gatehouse.test"
    ) as client:
        response = await client.get("/broken", headers={"X-Request-ID": "req-500"})
    assert (response.status_code, response.headers["x-request-id"]) == (500, "req-500")
    assert response.json()["error"]["code"] == "internal_error"
    hsts = f"max-age={settings.hsts_max_age}"
    assert response.headers.get("strict-transport-security") == hsts, response.headers


async def test_a_connection_lost_while_answering_is_logged_as_such_not_as_a_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = RequestContextMiddleware(JSONResponse({"ok": True}))
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"] == "http.response.body":
            raise TimeoutError(110, "Connection timed out")  # as Hypercorn raises it

    scope = {"type": "http", "method": "GET", "path": "/gone", "headers": []}
    with caplog.at_level(logging.INFO):
        await app(scope, receive, send)
    assert [message["type"] for message in sent] == ["http.response.start", "http.response.body"]
    assert [record.levelno for record in caplog.records] == [logging.INFO]
    assert "connection was lost while answering" in caplog.records[0].getMessage()
    assert not caplog.records[0].exc_info
