"""The throttle as REGISTER and AUTHENTICATE use it: on a real store, hasher and Redis."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator

import pytest

from devstack.ports import wait_until_async
from devstack.stack import DataStores
from services.auth.accounts import AccountStore
from services.auth.devices import DeviceCookies
from services.auth.handlers import AccountHandlers
from services.auth.passwords import PasswordHasher
from services.auth.snowflake import WorkerIdClaim
from services.auth.store.id_blocks import IdBlocks
from services.auth.throttle import LoginThrottle
from services.auth.throttle_rules import ThrottleLimits
from services.auth.tokens import TokenIssuer, generate_private_key_pem, load_private_key
from services.auth.user_ids import UserIds
from services.contract import auth_methods as methods
from services.contract import auth_pb2 as pb
from services.contract.method import Method, ReplyT, RequestT
from services.foundation.rpc.protocol import RpcError
from services.foundation.rpc.routes import by_number

SIGNUP_CONFLICTS = 3


@pytest.fixture
async def handlers(store: AccountStore, data_stores: DataStores) -> AsyncIterator[AccountHandlers]:
    claim = WorkerIdClaim(
        data_stores.etcd_access(), f"/test-{uuid.uuid4().hex}/worker-ids/", "throttle-answers"
    )
    await claim.start()
    await wait_until_async(lambda: claim.generator is not None, 10.0, "a worker id is claimed")
    hasher = PasswordHasher({1: b"pepper"}, cost=4, threads=2, queue_limit=8)
    yield AccountHandlers(
        store,
        hasher,
        TokenIssuer(load_private_key(generate_private_key_pem()), ttl_seconds=600),
        UserIds(claim, IdBlocks(store.primary, 16)),
        "test-instance",
        "test",
        throttle=LoginThrottle(
            store.cache, ThrottleLimits(signup_conflicts=SIGNUP_CONFLICTS), redis_timeout=10.0
        ),
        devices=DeviceCookies("device-cookie-secret-for-these-tests", 3600),
    )
    hasher.close()
    await claim.stop()


async def call(
    handlers: AccountHandlers, method: Method[RequestT, ReplyT], request: RequestT
) -> ReplyT:
    """The call as the server makes it: through the method's route, payloads both ways."""
    deadline = asyncio.get_running_loop().time() + 10.0
    route = by_number(handlers.routes())[method.number]
    return method.reply_type.FromString(await route.serve(request.SerializeToString(), deadline))


async def test_concurrent_signups_of_a_taken_name_get_no_more_conflicts_than_the_limit(
    handlers: AccountHandlers,
) -> None:
    taken = f"h{uuid.uuid4().hex[:10]}"
    first = pb.RegisterRequest(username=taken, password="password1")
    await call(handlers, methods.REGISTER, first)
    ip = f"198.51.100.{uuid.uuid4().int % 250 + 1}"
    probe = pb.RegisterRequest(username=taken, password="password1", client_ip=ip)
    results = await asyncio.gather(
        *(call(handlers, methods.REGISTER, probe) for _ in range(50)), return_exceptions=True
    )
    reasons = sorted(r.reason for r in results if isinstance(r, RpcError))
    assert len(reasons) == 50
    assert reasons.count("username_taken") == SIGNUP_CONFLICTS
    assert reasons.count("too_many_attempts") == 50 - SIGNUP_CONFLICTS


async def test_a_failed_login_is_logged_with_the_address_and_no_derivative_of_the_name(
    handlers: AccountHandlers, caplog: pytest.LogCaptureFixture
) -> None:
    name = f"h{uuid.uuid4().hex[:10]}"
    address = f"2001:db8:{uuid.uuid4().int % 65536:x}:2:3:4:5:6"
    caplog.set_level(logging.INFO, logger="gatehouse.security")
    with pytest.raises(RpcError):
        await call(
            handlers,
            methods.AUTHENTICATE,
            pb.AuthenticateRequest(username=name, password="password1", client_ip=address),
        )
    [line] = [r.getMessage() for r in caplog.records if r.name == "gatehouse.security"]
    assert f"from {address} (IP key " in line, line
    plain_hash = hashlib.sha256(name.casefold().encode()).hexdigest()
    assert name not in line and plain_hash[:12] not in line and "name tag " in line, line
