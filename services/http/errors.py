"""The HTTP boundary's one error type and the JSON error body every failure is sent as.

Every error, routing 404/405 included, is `{"error": {"code": "<snake_case>", "message": "..."}}`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route
from starlette.types import ExceptionHandler

from services.contract import auth_pb2 as pb
from services.foundation.log_throttle import RepeatedWarnings
from services.foundation.rpc.protocol import STATUS_NAMES, RpcError

log = logging.getLogger(__name__)
# A failing auth service or blob store fails every request meanwhile (picture requests need
# no session): one line per kind and 10 s; the blob store's failures are counted in
# gatehouse_http_blob_store_failures.
_auth_failures = RepeatedWarnings(log, 10.0)
_blob_store_failures = RepeatedWarnings(log, 10.0)

RETRY_AFTER_SECONDS = 1
_RETRY_AFTER = {"Retry-After": str(RETRY_AFTER_SECONDS)}
_BEARER_CHALLENGE = {"WWW-Authenticate": "Bearer"}


class BlobStoreError(Exception):
    """The blob store failed or could not be reached; the message says which and why."""


def blob_store_cause(exc: BlobStoreError) -> str:
    """What made the store fail, in a few words from a closed set: the error class of its
    client (botocore's), and the S3 error code a server sent (AccessDenied, NoSuchBucket)."""
    cause = exc.__cause__
    if cause is None:
        return ""
    response = getattr(cause, "response", None)
    code = response.get("Error", {}).get("Code", "") if isinstance(response, dict) else ""
    return f"{type(cause).__name__}:{str(code)[:64]}"


class ApiError(Exception):
    """A request that fails with `status_code` and a machine-readable snake_case `code`."""

    def __init__(
        self, status_code: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(f"{status_code} {code}: {message}")
        self.status_code = status_code
        self.code = code
        self.message = message
        self.headers = headers


def unauthenticated(message: str) -> ApiError:
    return ApiError(401, "unauthenticated", message, _BEARER_CHALLENGE)


def account_locked() -> ApiError:
    """A login with the right password of an account an operator has locked."""
    return ApiError(
        403,
        "account_locked",
        "this account is locked: an operator must unlock it before it can log in",
    )


# One body for every refusal of the login throttle, whichever limit refused and wherever.
TOO_MANY_ATTEMPTS_MESSAGE = "too many attempts; try again after the Retry-After delay (seconds)"


def too_many_attempts(retry_after_seconds: int) -> ApiError:
    return ApiError(
        429,
        "too_many_attempts",
        TOO_MANY_ATTEMPTS_MESSAGE,
        {"Retry-After": str(max(1, retry_after_seconds))},
    )


def internal_error() -> ApiError:
    return ApiError(
        500, "internal_error", "the service failed to handle this request; report its X-Request-ID"
    )


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": error.code, "message": error.message}},
        status_code=error.status_code,
        headers=error.headers,
    )


def api_error_from_rpc(error: RpcError) -> ApiError:
    """What the client is told when an auth service call failed with `error`."""
    status = error.status
    if status == pb.STATUS_INVALID:
        return ApiError(400, error.reason or "invalid_request", error.message)
    if status == pb.STATUS_CONFLICT:
        return ApiError(409, "username_taken", "this username is already taken; choose another one")
    if status == pb.STATUS_UNAUTHENTICATED:
        return unauthenticated("the session is not valid (revoked or expired); log in again")
    if status == pb.STATUS_NOT_FOUND and error.reason == "session_not_found":
        return ApiError(404, "session_not_found", error.message)
    if status == pb.STATUS_NOT_FOUND:
        return ApiError(404, "not_found", error.message or "not found")
    if status == pb.STATUS_OVERLOADED and error.reason == "too_many_attempts":
        return too_many_attempts(error.retry_after_seconds or RETRY_AFTER_SECONDS)
    if status == pb.STATUS_OVERLOADED:
        return ApiError(
            503,
            "overloaded",
            f"the service is busy; retry in {RETRY_AFTER_SECONDS} s",
            _RETRY_AFTER,
        )
    if status in (pb.STATUS_UNAVAILABLE, pb.STATUS_DRAINING):
        return ApiError(
            503,
            "unavailable",
            f"the auth service cannot be reached right now; retry in {RETRY_AFTER_SECONDS} s",
            _RETRY_AFTER,
        )
    return internal_error()


def storage_unavailable() -> ApiError:
    return ApiError(
        503,
        "storage_unavailable",
        f"the picture store cannot be reached right now; retry in {RETRY_AFTER_SECONDS} s",
        _RETRY_AFTER,
    )


# What a handler may catch to tell the client about it (as_api_error).
Failure = ApiError | RpcError | BlobStoreError
FAILURES = (ApiError, RpcError, BlobStoreError)


def as_api_error(request: Request, exc: Failure) -> ApiError:
    """What the client is told about `exc`; failures of the service's own parts are logged."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, BlobStoreError):
        # One line per 10 s for each method and cause: anonymous GETs failing by the hundred
        # must not hold back an upload's different failure (a put refused, say).
        _blob_store_failures.warn(
            ("blob_store", request.method, blob_store_cause(exc)),
            "%s %s: %s",
            request.method,
            request.url.path,
            exc,
        )
        return storage_unavailable()
    error = api_error_from_rpc(exc)
    if error.status_code >= 500:
        _auth_failures.warn(
            (exc.status, exc.reason),
            "%s %s: auth call failed with %s (%s): %s",
            request.method,
            request.url.path,
            STATUS_NAMES.get(exc.status, exc.status),
            exc.reason or "no reason",
            exc.message,
        )
    return error


async def _handle_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def _handle_failure(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, (RpcError, BlobStoreError))
    return error_response(as_api_error(request, exc))


async def _handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    status = HTTPStatus(exc.status_code)
    code = status.phrase.lower().replace(" ", "_").replace("-", "_")
    if exc.status_code == 404:
        message = f"there is no {request.url.path}; see the API reference for the routes"
    elif exc.status_code == 405:
        allowed = _allowed_methods(request, (exc.headers or {}).get("Allow", ""))
        message = f"{request.method} is not allowed on {request.url.path}; use {allowed}"
        return error_response(ApiError(405, code, message, {"Allow": allowed}))
    else:
        message = exc.detail
    return error_response(ApiError(exc.status_code, code, message, exc.headers))


def _allowed_methods(request: Request, raised: str) -> str:
    """Every method a route on this path takes, with those of the 405 as raised (`raised`, its
    Allow: a mount's, as StaticFiles'): Starlette's 405 names the first route's only, and a path
    may have several (/api/v1/sessions: logging in, listing and ending)."""
    methods = {method.strip() for method in raised.split(",") if method.strip()}
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.methods:
            match, _ = route.matches(request.scope)
            if match is not Match.NONE:
                methods |= route.methods
    return ", ".join(sorted(methods))


EXCEPTION_HANDLERS: dict[type[Exception], ExceptionHandler] = {
    ApiError: _handle_api_error,
    RpcError: _handle_failure,
    BlobStoreError: _handle_failure,
    HTTPException: _handle_http_exception,
}
