"""The OpenAPI 3.1 document, built from the app's routes and the operations their handlers
declare (services.http.openapi.declare), plus what the edge can answer (edge.py)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from starlette.routing import BaseRoute, Route

from services.http.openapi.declare import (
    COMPONENTS,
    JsonSchema,
    Operation,
    component,
    operations_of,
)
from services.http.openapi.edge import header_of, refusals
from services.http.sessions import UNSAFE_METHODS

OPENAPI_VERSION = "3.1.0"
# The JSON API: every route under these prefixes must be documented.
API_PREFIXES = ("/api/", "/open_api/")
BEARER = "bearerToken"
SESSION_COOKIE = "sessionCookie"
CSRF_HEADER = "csrfHeader"
_CONVERTOR = re.compile(r"{(\w+):\w+}")  # Starlette's "{id:int}" is OpenAPI's "{id}"

# The body of every error answer (services.http.errors.error_response), as the OpenAPI document names it.
ERROR_BODY = component(
    "Error",
    {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "code": {"type": "string", "description": "snake_case, for programs"},
                    "message": {"type": "string", "description": "for people"},
                },
                "required": ["code", "message"],
            }
        },
        "required": ["error"],
    },
)


DESCRIPTION = """\
Gatehouse's JSON API. Bodies are JSON (`Content-Type: application/json`), UTF-8; unknown
fields are ignored. Every error, 404 and 405 included, is
`{"error": {"code": "<snake_case>", "message": "<text>"}}`: each response below lists the codes
it can carry. 503 and 429 answers carry `Retry-After` (seconds). Every response carries
`X-Request-ID`. A request HTTP/1.1 itself forbids (a header value with a control character, a
`Content-Length` that is not a number) is refused by the HTTP server before the API sees it:
a bare 400, without either. Calls on the caller's own account take `Authorization: Bearer <token>` (the
token of `POST /api/v1/sessions`) or, from a browser, the session cookie, with the CSRF token
(the `csrf` cookie's value) in `X-CSRF-Token` on POST, PUT, PATCH and DELETE.
"""


@dataclass(frozen=True)
class DocumentedRoute:
    path: str  # as OpenAPI writes it
    route: Route

    @property
    def operations(self) -> dict[str, Operation]:
        return operations_of(self.route.endpoint)

    @property
    def methods(self) -> list[str]:
        return sorted((self.route.methods or set()) - {"HEAD"})


def documented_routes(routes: Iterable[BaseRoute]) -> Iterator[DocumentedRoute]:
    for route in routes:
        if isinstance(route, Route):
            yield DocumentedRoute(_CONVERTOR.sub(r"{\1}", route.path), route)


def is_api_path(path: str) -> bool:
    return path.startswith(API_PREFIXES)


def undocumented(routes: Iterable[BaseRoute]) -> list[str]:
    """ "METHOD /path" of each JSON API operation that no handler declares."""
    return [
        f"{method} {documented.path}"
        for documented in documented_routes(routes)
        if is_api_path(documented.path)
        for method in documented.methods
        if method not in documented.operations
    ]


def build_document(routes: Sequence[BaseRoute], *, session_cookie: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for documented in documented_routes(routes):
        for method, operation in sorted(documented.operations.items()):
            if method not in documented.methods:
                raise ValueError(f"{method} {documented.path} is declared but not routed")
            paths.setdefault(documented.path, {})[method.lower()] = _operation(
                documented, operation
            )
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Gatehouse",
            "version": metadata.version("gatehouse"),
            "description": DESCRIPTION,
        },
        "paths": paths,
        "components": {
            "schemas": dict(sorted(COMPONENTS.items())),
            "securitySchemes": {
                BEARER: {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                SESSION_COOKIE: {"type": "apiKey", "in": "cookie", "name": session_cookie},
                CSRF_HEADER: {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-CSRF-Token",
                    "description": "with the session cookie on unsafe methods: the CSRF "
                    "cookie's value",
                },
            },
        },
    }


def _operation(documented: DocumentedRoute, operation: Operation) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "operationId": operation.operation_id,
        "summary": operation.summary,
        "tags": [operation.tag],
    }
    if operation.description:
        entry["description"] = operation.description
    parameters = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": operation.path_parameters.get(name, {"type": "string"}),
        }
        for name in documented.route.param_convertors
    ]
    if parameters:
        entry["parameters"] = parameters
    body = _request_body(operation)
    if body is not None:
        entry["requestBody"] = body
    if operation.needs_session:
        cookie: dict[str, list[str]] = (
            {SESSION_COOKIE: [], CSRF_HEADER: []}
            if operation.method in UNSAFE_METHODS
            else {SESSION_COOKIE: []}
        )
        entry["security"] = [{BEARER: []}, cookie]
    entry["responses"] = {
        str(operation.success.status): _success(operation),
        **_errors(documented.path, operation),
    }
    return entry


def _request_body(operation: Operation) -> dict[str, Any] | None:
    if operation.json_body is not None:
        return {"required": True, "content": {"application/json": {"schema": operation.json_body}}}
    upload = operation.upload
    if upload is None:
        return None
    multipart = {
        "type": "object",
        "properties": {upload.field: {"type": "string", "format": "binary"}},
        "required": [upload.field],
    }
    return {
        "required": True,
        "description": upload.description,
        "content": {
            "multipart/form-data": {
                "schema": multipart,
                "encoding": {upload.field: {"contentType": ", ".join(upload.media_types)}},
            },
            **{
                media_type: {"schema": {"type": "string", "contentMediaType": media_type}}
                for media_type in upload.media_types
            },
        },
    }


def _success(operation: Operation) -> dict[str, Any]:
    success = operation.success
    answer: dict[str, Any] = {"description": success.description}
    if success.schema is not None:
        answer["content"] = {"application/json": {"schema": success.schema}}
    if success.headers:
        answer["headers"] = {
            name: {"description": description, "schema": {"type": "string"}}
            for name, description in success.headers.items()
        }
    return answer


def _errors(path: str, operation: Operation) -> dict[str, Any]:
    codes: dict[int, set[str]] = {}
    for status, declared in operation.errors.items():
        codes.setdefault(status, set()).update(declared)
    for status, code in refusals(path, operation):
        codes.setdefault(status, set()).add(code)
    return {str(status): _error(status, sorted(codes[status])) for status in sorted(codes)}


def _error(status: int, codes: list[str]) -> dict[str, Any]:
    schema: JsonSchema = {
        "allOf": [ERROR_BODY],
        "properties": {"error": {"properties": {"code": {"enum": codes}}}},
    }
    answer: dict[str, Any] = {
        "description": "`error.code`: " + ", ".join(codes),
        "content": {"application/json": {"schema": schema}},
    }
    headers = {
        header.name: header.entry(required=all(header in header_of(status, code) for code in codes))
        for code in codes
        for header in header_of(status, code)
    }
    if headers:
        answer["headers"] = headers
    return answer
