"""The auth service's Python heap stays flat under repeated failures (issue 11 §5).

A failure raised as one shared exception object kept every traceback it passed through, and
with it the frames and their locals (plaintext passwords included): about 0.8 KB per read with
a logged-out token. Here 2,000 such reads and 200 failed logins run in this process, and the
memory tracemalloc sees still allocated afterwards must stay within HEAP_GROWTH_BOUND.
"""

from __future__ import annotations

import gc
import tracemalloc
import uuid

import jwt
import pytest

from services.auth.handlers import AccountHandlers
from services.contract import auth_methods as methods
from services.contract import auth_pb2 as pb
from services.contract.method import Method, ReplyT, RequestT
from services.foundation.rpc.protocol import RpcError
from tests.auth.test_handlers import call, handlers, issuer, register_and_login

__all__ = ["handlers", "issuer"]  # fixtures (claimed_worker_ids: conftest.py)

REVOKED_READS = 2_000
FAILED_LOGINS = 200
WARM_UP_CALLS = 200
# Caches that fill once (prometheus label children, pymysql/redis buffers) stay well below
# this (49 KB measured); the leak it guards against held 4.5 MB for these calls.
HEAP_GROWTH_BOUND = 1024 * 1024


async def _expect_refusal(
    handlers: AccountHandlers, method: Method[RequestT, ReplyT], request: RequestT
) -> None:
    with pytest.raises(RpcError) as refused:
        await call(handlers, method, request)
    assert refused.value.status == pb.STATUS_UNAUTHENTICATED


async def test_revoked_reads_and_failed_logins_leave_the_heap_flat(
    handlers: AccountHandlers,
) -> None:
    username = f"m{uuid.uuid4().hex[:10]}"
    login = await register_and_login(handlers, username)
    session_id = jwt.decode(login.token, options={"verify_signature": False})["sid"]
    session = pb.SessionRef(user_id=login.user.id, session_id=session_id)
    await call(handlers, methods.LOGOUT, pb.LogoutRequest(session=session))
    read = pb.GetProfileRequest(session=session)
    wrong = pb.AuthenticateRequest(username=username, password="not-the-password")

    for _ in range(WARM_UP_CALLS):
        await _expect_refusal(handlers, methods.GET_PROFILE, read)
        await _expect_refusal(handlers, methods.AUTHENTICATE, wrong)
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for _ in range(REVOKED_READS):
            await _expect_refusal(handlers, methods.GET_PROFILE, read)
        for _ in range(FAILED_LOGINS):
            await _expect_refusal(handlers, methods.AUTHENTICATE, wrong)
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    growth = after - before
    assert growth < HEAP_GROWTH_BOUND, (
        f"{REVOKED_READS} revoked reads and {FAILED_LOGINS} failed logins left {growth:,} bytes "
        f"allocated (bound {HEAP_GROWTH_BOUND:,})"
    )
