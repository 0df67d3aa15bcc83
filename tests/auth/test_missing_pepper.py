"""An account whose hash needs a pepper GATEHOUSE_PEPPERS no longer holds (README, "Rotating
peppers") answers a login as an unknown name does: as slowly, and throttled alike, so that
neither timing nor the throttle tells that the name is an account left on a dropped pepper."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from prometheus_client import REGISTRY

from services.auth.accounts import AccountStore
from services.auth.handlers import AccountHandlers
from services.auth.passwords import PasswordHasher, parse_peppers
from services.auth.snowflake import WorkerIdClaim
from services.auth.throttle_rules import ThrottleLimits
from services.auth.tokens import TokenIssuer, generate_private_key_pem, load_private_key
from services.contract import auth_methods as methods
from services.contract import auth_pb2 as pb
from services.foundation.rpc.protocol import RpcError
from tests.auth.test_handlers import UNTHROTTLED, account_handlers, call

Replica = Callable[..., AccountHandlers]


@pytest.fixture
async def replica_with(
    store: AccountStore, claimed_worker_ids: WorkerIdClaim
) -> AsyncIterator[Replica]:
    """AccountHandlers as one replica with its own GATEHOUSE_PEPPERS, on the shared store."""
    hashers: list[PasswordHasher] = []
    issuer = TokenIssuer(load_private_key(generate_private_key_pem()), ttl_seconds=600)

    def make(peppers: str, cost: int = 4, limits: ThrottleLimits = UNTHROTTLED) -> AccountHandlers:
        hasher = PasswordHasher(parse_peppers(peppers), cost=cost, threads=1, queue_limit=8)
        hashers.append(hasher)
        return account_handlers(store, hasher, issuer, claimed_worker_ids, limits)

    yield make
    for hasher in hashers:
        hasher.close()


async def login(replica: AccountHandlers, username: str, password: str = "password1") -> str:
    try:
        await call(
            replica,
            methods.AUTHENTICATE,
            pb.AuthenticateRequest(username=username, password=password),
        )
    except RpcError as exc:
        return exc.reason
    return "ok"


async def test_a_login_under_a_missing_pepper_costs_a_hash_as_any_other(
    replica_with: Replica,
) -> None:
    """Unknown names spend a dummy hash so that timing does not tell which names exist; an
    account whose pepper was dropped answered at once (2 ms against 70 ms at cost 10)."""
    before = replica_with("1:dropped-pepper-0123456789abcdef")
    dormant = f"dm{uuid.uuid4().hex[:10]}"
    await call(before, methods.REGISTER, pb.RegisterRequest(username=dormant, password="password1"))
    after = replica_with("2:kept-pepper-0123456789abcdefgh")

    def computed() -> float:
        value = REGISTRY.get_sample_value(
            "gatehouse_auth_password_hashes_total", {"outcome": "computed"}
        )
        return value or 0.0

    spent = computed()
    assert await login(after, f"no{uuid.uuid4().hex[:10]}", "guess") == "invalid_credentials"
    for_unknown = computed() - spent
    spent = computed()
    assert await login(after, dormant, "guess") == "invalid_credentials"
    assert computed() - spent == for_unknown == 1


async def test_the_throttle_treats_a_missing_pepper_account_as_any_other(
    replica_with: Replica,
) -> None:
    """After `failures` wrong passwords a name is delayed, known or not; an account whose
    pepper was dropped must not be the one name that never is."""
    limits = ThrottleLimits(failures=3, ip_failures=10**9, signup_conflicts=10**9)
    before = replica_with("1:dropped-pepper-0123456789abcdef", limits=limits)
    dormant = f"dm{uuid.uuid4().hex[:10]}"
    await call(before, methods.REGISTER, pb.RegisterRequest(username=dormant, password="password1"))
    after = replica_with("2:kept-pepper-0123456789abcdefgh", limits=limits)
    name = f"no{uuid.uuid4().hex[:10]}"
    unknown = [await login(after, name, "guess") for _ in range(5)]
    missing = [await login(after, dormant, "guess") for _ in range(5)]
    print("\nunknown name:", unknown, "\nmissing-pepper account:", missing)
    assert missing == unknown
