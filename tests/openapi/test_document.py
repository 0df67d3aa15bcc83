"""The OpenAPI document against the route table: every JSON API operation is in it, it is
valid OpenAPI 3.1, and it says what the issue asks of each operation."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from starlette.responses import Response
from starlette.routing import Route

from services.auth import validation
from services.http.openapi import fields
from services.http.openapi.declare import Operation, Success, documented
from services.http.openapi.document import build_document, undocumented
from tests.openapi.conformance import inlined
from tests.openapi.document_support import document_of, unstarted_app

METHODS = ("get", "put", "post", "patch", "delete")


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, entry)
        for path, item in document["paths"].items()
        for method, entry in item.items()
        if method in METHODS
    ]


def test_every_api_route_of_the_app_is_documented() -> None:
    app = unstarted_app()
    assert undocumented(app.routes) == []
    routed = {
        (method, route.path)
        for route in app.routes
        if isinstance(route, Route) and route.path.startswith(("/api/", "/open_api/"))
        for method in (route.methods or set()) - {"HEAD"}
    }
    documented_operations = {(method, path) for method, path, _ in operations(document_of(app))}
    assert routed <= documented_operations
    assert len(routed) >= 14


async def _handler(request: object) -> Response:
    return Response()


@documented(Operation("GET", "getThing", "A thing", Success(204, "none")))
async def _documented_handler(request: object) -> Response:
    return Response()


def test_an_api_route_without_a_declaration_is_reported() -> None:
    routes = [
        Route("/api/v1/things", _documented_handler, methods=["GET", "DELETE"]),
        Route("/api/v1/things/{thing_id:int}", _handler, methods=["PUT"]),
        Route("/pages/unchecked", _handler, methods=["GET"]),
    ]
    assert undocumented(routes) == ["DELETE /api/v1/things", "PUT /api/v1/things/{thing_id}"]


def test_a_declared_method_that_is_not_routed_fails_the_build() -> None:
    with pytest.raises(ValueError, match="GET /api/v1/things is declared but not routed"):
        build_document(
            [Route("/api/v1/things", _documented_handler, methods=["POST"])],
            session_cookie="session",
        )


def test_the_document_is_valid_openapi_3_1() -> None:
    document = document_of(unstarted_app())
    assert document["openapi"].startswith("3.1.")
    validate(document)


def test_each_operation_lists_a_4xx_and_the_edge_answers_that_apply() -> None:
    for method, path, entry in operations(document_of(unstarted_app())):
        responses = entry["responses"]
        name = f"{method} {path}"
        assert any(status.startswith("4") for status in responses), name
        assert "431" in responses, name
        assert responses["503"]["headers"]["Retry-After"]["required"] is True, name
        if "requestBody" in entry:
            assert {"408", "413"} <= set(responses), name
        if "application/json" in entry.get("requestBody", {}).get("content", {}):
            assert "415" in responses, name
        for status, answer in responses.items():
            if status.startswith(("4", "5")):
                codes = answer["content"]["application/json"]["schema"]["properties"]["error"]
                assert codes["properties"]["code"]["enum"], (name, status)


def error_codes(entry: dict[str, Any], status: int) -> list[str]:
    schema = entry["responses"][str(status)]["content"]["application/json"]["schema"]
    codes: list[str] = schema["properties"]["error"]["properties"]["code"]["enum"]
    return codes


def test_operations_that_call_the_auth_service_document_its_failure_as_500() -> None:
    """The auth service's INTERNAL, or a status this tier does not map, is a 500
    (tests/http/test_api.py); an operation that calls no replica never answers it."""
    entries = {
        (method, path): entry for method, path, entry in operations(document_of(unstarted_app()))
    }
    for name in (
        ("POST", "/open_api/v1/register"),
        ("POST", "/open_api/v1/authenticate"),
        ("POST", "/api/v1/users"),
        ("GET", "/api/v1/me"),
    ):
        assert error_codes(entries[name], 500) == ["internal_error"], name
    assert "500" not in entries[("GET", "/openapi.json")]["responses"]


def test_the_operations_the_issue_names() -> None:
    paths = document_of(unstarted_app())["paths"]
    assert set(paths["/api/v1/sessions"]) >= {"get", "post", "delete"}
    assert "delete" in paths["/api/v1/sessions/current"]
    end_one = paths["/api/v1/sessions/{id}"]["delete"]
    assert [parameter["name"] for parameter in end_one["parameters"]] == ["id"]
    assert error_codes(end_one, 404) == ["session_not_found"]
    log_in = paths["/api/v1/sessions"]["post"]
    assert "account_locked" in error_codes(log_in, 403)
    assert log_in["responses"]["429"]["headers"]["Retry-After"]["required"] is True
    assert error_codes(paths["/open_api/v1/authenticate"]["post"], 404) == ["invalid_credentials"]
    assert "security" not in log_in
    assert paths["/api/v1/me"]["patch"]["security"] == [
        {"bearerToken": []},
        {"sessionCookie": [], "csrfHeader": []},
    ]


def test_the_field_rules_are_the_auth_services() -> None:
    assert (fields.USERNAME_MIN_LENGTH, fields.USERNAME_MAX_LENGTH) == (
        validation.USERNAME_MIN_LENGTH,
        validation.USERNAME_MAX_LENGTH,
    )
    assert (
        fields.PASSWORD_MIN_LENGTH,
        fields.PASSWORD_MAX_LENGTH,
        fields.PASSWORD_MAX_CODE_POINTS,
    ) == (
        validation.PASSWORD_MIN_LENGTH,
        validation.PASSWORD_MAX_LENGTH,
        validation.PASSWORD_MAX_CODE_POINTS,
    )
    assert fields.NICKNAME_MAX_LENGTH == validation.NICKNAME_MAX_LENGTH


def test_the_session_cookie_is_named_as_the_app_names_it() -> None:
    document = build_document(unstarted_app().routes, session_cookie="__Host-session")
    cookie = document["components"]["securitySchemes"]["sessionCookie"]
    assert cookie == {"type": "apiKey", "in": "cookie", "name": "__Host-session"}


def request_schema(document: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    body = document["paths"][path][method]["requestBody"]["content"]["application/json"]
    return inlined(body["schema"], document)


def test_a_signup_nickname_may_be_null_as_the_handler_takes_it() -> None:
    """The fuzzer found it: `"nickname": null` signs up (the nickname is then the username), but
    the document said a string; a PATCH of the nickname refuses null, and says so."""
    document = document_of(unstarted_app())
    signup = {"username": "ada", "password": "password1", "nickname": None}
    for path in ("/api/v1/users", "/open_api/v1/register"):
        Draft202012Validator(request_schema(document, "post", path)).validate(signup)
    patch = Draft202012Validator(request_schema(document, "patch", "/api/v1/me"))
    assert not patch.is_valid({"nickname": None})


async def test_the_document_is_built_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    builds: list[int] = []

    def counted(*args: Any, **kwargs: Any) -> dict[str, Any]:
        builds.append(1)
        return build_document(*args, **kwargs)

    monkeypatch.setattr("services.http.openapi.route.build_document", counted)
    transport = httpx.ASGITransport(app=unstarted_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://gatehouse") as client:
        first = await client.get("/openapi.json")
        second = await client.get("/openapi.json")
    assert first.status_code == second.status_code == 200
    assert first.content == second.content
    assert first.json()["paths"]["/api/v1/me"]["get"]["operationId"] == "getProfile"
    assert len(builds) == 1
