"""How auth service errors become API errors."""

from __future__ import annotations

import pytest

from services.contract import auth_pb2 as pb
from services.foundation.rpc.client import CallFailed
from services.foundation.rpc.protocol import RpcError
from services.http.errors import ApiError, api_error_from_rpc


@pytest.mark.parametrize(
    ("error", "status_code", "code"),
    [
        (
            RpcError(pb.STATUS_INVALID, "3-30 characters", "invalid_username"),
            400,
            "invalid_username",
        ),
        (RpcError(pb.STATUS_INVALID, "bad", "invalid_password"), 400, "invalid_password"),
        (RpcError(pb.STATUS_INVALID, "bad", ""), 400, "invalid_request"),
        (RpcError(pb.STATUS_CONFLICT, "taken", "username_taken"), 409, "username_taken"),
        (RpcError(pb.STATUS_UNAUTHENTICATED, "revoked", "session_revoked"), 401, "unauthenticated"),
        (RpcError(pb.STATUS_OVERLOADED, "queue full"), 503, "overloaded"),
        (RpcError(pb.STATUS_UNAVAILABLE, "no worker id"), 503, "unavailable"),
        (RpcError(pb.STATUS_DRAINING, "bye"), 503, "unavailable"),
        (CallFailed("deadline_exceeded", "slow", sent=True), 503, "unavailable"),
        (RpcError(pb.STATUS_INTERNAL, "traceback details"), 500, "internal_error"),
        (RpcError(pb.STATUS_UNIMPLEMENTED, "unknown method"), 500, "internal_error"),
    ],
)
def test_rpc_errors_map_to_api_errors(error: RpcError, status_code: int, code: str) -> None:
    mapped = api_error_from_rpc(error)
    assert isinstance(mapped, ApiError)
    assert (mapped.status_code, mapped.code) == (status_code, code)
    if status_code == 503:
        assert mapped.headers is not None and mapped.headers["Retry-After"] == "1"
    if status_code == 500:
        assert "traceback" not in mapped.message  # internals stay in the logs


def test_invalid_answers_keep_the_rule_text() -> None:
    mapped = api_error_from_rpc(
        RpcError(pb.STATUS_INVALID, "username must be 3-30 characters", "invalid_username")
    )
    assert mapped.message == "username must be 3-30 characters"
