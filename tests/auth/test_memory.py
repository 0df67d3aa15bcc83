"""The auth service's Python heap stays flat under repeated failures (issue 11 §5).

A failure raised as one shared exception object kept every traceback it passed through, and
with it the frames and their locals (plaintext passwords included): about 0.8 KB per read with
a logged-out token, about 4.3 KB per failed login. Here 2,000 such reads and then 500 failed
logins run in this process, and the memory tracemalloc sees still allocated after each must
stay within HEAP_GROWTH_BOUND.
"""

from __future__ import annotations

import gc
import tracemalloc
import uuid
from collections.abc import Awaitable, Callable

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
FAILED_LOGINS = 500
WARM_UP_CALLS = 200
# Caches that fill once (prometheus label children, pymysql/redis buffers) stay well below
# this (35 KB after the reads, 83 KB after 1,000 logins); with one shared instance, the reads
# left 4.5 MB and 1,000 failed logins 4.3 MB.
HEAP_GROWTH_BOUND = 1024 * 1024


async def _expect_refusal(
    handlers: AccountHandlers, method: Method[RequestT, ReplyT], request: RequestT
) -> None:
    with pytest.raises(RpcError) as refused:
        await call(handlers, method, request)
    assert refused.value.status == pb.STATUS_UNAUTHENTICATED


async def _heap_growth(call_refused: Callable[[], Awaitable[None]], count: int) -> int:
    """Bytes tracemalloc sees still allocated after `count` calls (collected garbage aside)."""
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for _ in range(count):
            await call_refused()
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return after - before


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

    async def revoked_read() -> None:
        await _expect_refusal(handlers, methods.GET_PROFILE, read)

    async def failed_login() -> None:
        await _expect_refusal(handlers, methods.AUTHENTICATE, wrong)

    for _ in range(WARM_UP_CALLS):
        await revoked_read()
        await failed_login()
    # Each kind on its own: a leak in one must not hide under the other's share of the bound.
    growths = {
        f"{REVOKED_READS} revoked reads": await _heap_growth(revoked_read, REVOKED_READS),
        f"{FAILED_LOGINS} failed logins": await _heap_growth(failed_login, FAILED_LOGINS),
    }
    grown = {calls: growth for calls, growth in growths.items() if growth >= HEAP_GROWTH_BOUND}
    assert not grown, f"left allocated (bound {HEAP_GROWTH_BOUND:,} bytes each): {grown}"
