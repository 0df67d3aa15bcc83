"""Request body reading: size cap (declared and streamed), JSON object, field types."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.http.bodies import is_encodable, optional_string, read_json_object, required_string
from services.http.errors import EXCEPTION_HANDLERS

LIMIT = 16 * 1024
JSON = {"content-type": "application/json"}


async def echo(request: Request) -> Response:
    body = await read_json_object(request, LIMIT)
    return JSONResponse(
        {"name": required_string(body, "name"), "note": optional_string(body, "note")}
    )


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = Starlette(
        routes=[Route("/echo", echo, methods=["POST"])], exception_handlers=EXCEPTION_HANDLERS
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as client:
        yield client


def error_code(response: httpx.Response) -> str:
    return response.json()["error"]["code"]


async def test_a_valid_body_is_read_and_unknown_fields_ignored(client: httpx.AsyncClient) -> None:
    response = await client.post("/echo", json={"name": "ann", "extra": [1, 2], "note": None})
    assert response.status_code == 200
    assert response.json() == {"name": "ann", "note": None}


async def test_a_declared_length_over_the_limit_is_refused_before_reading(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/echo", content=b"x" * (LIMIT + 1), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert error_code(response) == "payload_too_large"


async def test_a_chunked_body_is_cut_off_at_the_limit(client: httpx.AsyncClient) -> None:
    chunks_sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal chunks_sent
        yield b'{"name": "'
        for _ in range(1000):
            chunks_sent += 1
            yield b"a" * 1000

    response = await client.post("/echo", content=endless(), headers=JSON)
    assert response.status_code == 413
    assert error_code(response) == "payload_too_large"
    assert "content-length" not in response.request.headers
    assert chunks_sent < 1000


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"not json",
        b"\xff\xfe{}",
        '{"name": "ann"}'.encode("utf-16"),
        b"[" * 5000 + b"]" * 5000,  # nesting deeper than the parser's recursion limit
        b'{"name": "ann", "n": ' + b"1" * 5000 + b"}",  # more digits than int() converts
    ],
    ids=["empty", "truncated", "text", "bad-utf8", "utf16", "deep", "huge-number"],
)
async def test_a_body_that_is_not_utf8_json_is_invalid_json(
    client: httpx.AsyncClient, body: bytes
) -> None:
    response = await client.post("/echo", content=body, headers=JSON)
    assert response.status_code == 400
    assert error_code(response) == "invalid_json"


@pytest.mark.parametrize("body", [b"[]", b'"text"', b"42", b"null"])
async def test_json_that_is_not_an_object_is_invalid_request(
    client: httpx.AsyncClient, body: bytes
) -> None:
    response = await client.post("/echo", content=body, headers=JSON)
    assert response.status_code == 400
    assert error_code(response) == "invalid_request"


@pytest.mark.parametrize(
    "body", [{}, {"name": None}, {"name": 5}, {"name": ["a"]}, {"name": "a", "note": 1}]
)
async def test_missing_or_mistyped_fields_are_invalid_request(
    client: httpx.AsyncClient, body: dict
) -> None:
    response = await client.post("/echo", json=body)
    assert response.status_code == 400
    assert error_code(response) == "invalid_request"
    assert "`" in response.json()["error"]["message"]  # names the field


async def test_a_malformed_content_length_is_invalid_request(client: httpx.AsyncClient) -> None:
    response = await client.post("/echo", content=b"{}", headers={**JSON, "content-length": "abc"})
    assert response.status_code == 400


def test_lone_surrogates_are_not_encodable() -> None:
    assert is_encodable("ünïcödé 🙂")
    assert not is_encodable("a\ud800b")


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "Application/JSON;charset=UTF-8"],
)
async def test_a_json_body_is_read_as_application_json_with_any_parameters(
    client: httpx.AsyncClient, content_type: str
) -> None:
    response = await client.post(
        "/echo", content=b'{"name": "ann"}', headers={"content-type": content_type}
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonp",
        "application/json-patch+json",
    ],
)
async def test_a_body_of_another_media_type_is_refused_unread(
    client: httpx.AsyncClient, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    response = await client.post("/echo", content=b'{"name": "ann"}', headers=headers)
    assert response.status_code == 415, response.text
    assert error_code(response) == "unsupported_media_type"


async def test_a_chunked_body_of_another_media_type_is_refused(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"name": "ann"}'

    response = await client.post("/echo", content=chunks(), headers={"content-type": "text/plain"})
    assert response.status_code == 415
    assert error_code(response) == "unsupported_media_type"


async def test_a_request_without_a_body_needs_no_content_type(client: httpx.AsyncClient) -> None:
    response = await client.post("/echo")
    assert response.status_code == 400
    assert error_code(response) == "invalid_json"  # judged by the JSON rules alone
