"""What a handler declares about its operations, beside it, for the OpenAPI document.

    @documented(Operation("GET", "getProfile", "The caller's profile", Success(200, "...", USER)))
    async def me(self, request: Request) -> Response: ...

A declaration lists only what the handler itself decides: its request body, its success
response and the error codes of its own refusals. What every call of a kind can be answered
(authentication, JSON bodies, the edge's refusals) the builder adds (services.http.openapi.edge).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

JsonSchema = dict[str, Any]
OPERATIONS_ATTRIBUTE = "__openapi_operations__"

HandlerT = TypeVar("HandlerT", bound=Callable[..., Any])


@dataclass(frozen=True)
class Success:
    """The success answer: `schema` None means no body (204)."""

    status: int
    description: str
    schema: JsonSchema | None = None
    headers: Mapping[str, str] = field(default_factory=dict)  # name -> description


@dataclass(frozen=True)
class RawUpload:
    """A body sent as is (a picture), or as the multipart field `field`."""

    media_types: tuple[str, ...]
    field: str
    description: str


@dataclass(frozen=True)
class Operation:
    method: str
    operation_id: str
    summary: str
    success: Success
    # Status -> the error codes this handler itself may answer with it.
    errors: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    json_body: JsonSchema | None = None
    path_parameters: Mapping[str, JsonSchema] = field(default_factory=dict)
    upload: RawUpload | None = None
    # A call on the caller's own session: Bearer token, or the session cookie (+ CSRF header).
    needs_session: bool = False
    # Waits on password hashing (a login, a signup, a password check): the login throttle.
    hashes_password: bool = False
    description: str = ""
    tag: str = "account"
    # Answered without the auth service (so never 503 `unavailable`).
    local: bool = False


def documented(*operations: Operation) -> Callable[[HandlerT], HandlerT]:
    """Attach `operations` (one per HTTP method the handler serves) to the handler."""

    def attach(handler: HandlerT) -> HandlerT:
        setattr(
            handler,
            OPERATIONS_ATTRIBUTE,
            (*getattr(handler, OPERATIONS_ATTRIBUTE, ()), *operations),
        )
        return handler

    return attach


def operations_of(endpoint: object) -> dict[str, Operation]:
    """The operations declared on a route's endpoint (a function or a bound method), by method."""
    declared: tuple[Operation, ...] = getattr(endpoint, OPERATIONS_ATTRIBUTE, ())
    return {operation.method: operation for operation in declared}


def json_object(
    required: Mapping[str, JsonSchema], optional: Mapping[str, JsonSchema] | None = None
) -> JsonSchema:
    """A JSON object schema; unknown fields are ignored by every handler, so they are allowed."""
    return {
        "type": "object",
        "properties": {**required, **(optional or {})},
        "required": list(required),
    }


# Named schemas, registered by the modules that define them; the document's components.
COMPONENTS: dict[str, JsonSchema] = {}


def component(name: str, schema: JsonSchema) -> JsonSchema:
    """Register `schema` as `#/components/schemas/<name>`; a reference to it."""
    if COMPONENTS.setdefault(name, schema) is not schema:
        raise ValueError(f"two schemas are named {name}")
    return {"$ref": f"#/components/schemas/{name}"}
