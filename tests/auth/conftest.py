"""Fixtures of the auth data layer tests: a migrated database per test module, a started
AccountStore with its parts, and ways to break the stack (each puts it back afterwards)."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from devstack import DataStores
from devstack.ports import free_port, wait_until_async
from services.auth.accounts import AccountStore
from services.auth.devices import DeviceCookies
from services.auth.handlers import AccountHandlers
from services.auth.passwords import PasswordHasher
from services.auth.snowflake import WorkerIdClaim
from services.auth.store.cache import RedisCache
from services.auth.store.database import Database, parse_dsn
from services.auth.store.freshness import HeartbeatWriter, ReplicaFreshness
from services.auth.store.id_blocks import IdBlocks
from services.auth.store.migrate import apply_migrations
from services.auth.store.revocations import PendingTombstones
from services.auth.throttle import LoginThrottle
from services.auth.throttle_rules import ThrottleLimits
from services.auth.tokens import TokenIssuer, generate_private_key_pem, load_private_key
from services.auth.user_ids import UserIds

HEARTBEAT_INTERVAL = 0.05
MYSQL_TIMEOUT = 2.0
REDIS_TIMEOUT = 0.2
THROTTLE_REDIS_TIMEOUT = 1.0  # GATEHOUSE_THROTTLE_REDIS_TIMEOUT's default
LOCAL_CACHE_INTERVAL = 0.5  # GATEHOUSE_LOCAL_CACHE_HEARTBEAT_INTERVAL's default

Eventually = Callable[[Callable[[], Awaitable[bool]], str], Awaitable[None]]


def redis_errors() -> float:
    """Redis commands of this process's caches that failed, so far."""
    return REGISTRY.get_sample_value("gatehouse_auth_redis_errors_total") or 0.0


@pytest.fixture(scope="session")
def new_database(data_stores: DataStores) -> Iterator[Callable[[], str]]:
    """Creates an empty database (replicated, usable by the application and migration users
    with their privileges only) and answers its primary DSN as the application user (see
    `migration_dsn` for the other); every database made is dropped at the end."""
    created: list[str] = []

    def create() -> str:
        name = f"gh_test_{secrets.token_hex(4)}"
        data_stores.create_database(name)
        created.append(name)
        return data_stores.app_dsn(name)

    yield create
    for name in created:
        data_stores.primary.execute(f"DROP DATABASE IF EXISTS `{name}`")


def migration_dsn(data_stores: DataStores, app_dsn: str) -> str:
    """The migration user's DSN of the database of `app_dsn` (one `new_database` made)."""
    return data_stores.migration_dsn_of(parse_dsn(app_dsn).database)


@pytest.fixture(scope="module")
async def primary_dsn(data_stores: DataStores, new_database: Callable[[], str]) -> str:
    """The module's own database, migrated (by the migration user) and replicated."""
    dsn = new_database()
    await apply_migrations(migration_dsn(data_stores, dsn), timeout=30.0)
    await asyncio.to_thread(data_stores.replication.wait_caught_up)
    return dsn


@pytest.fixture(scope="module")
def database_name(primary_dsn: str) -> str:
    return parse_dsn(primary_dsn).database


@pytest.fixture(scope="module")
def replica_dsn(data_stores: DataStores, database_name: str) -> str:
    return data_stores.app_dsn(database_name, replica=True)


@pytest.fixture
async def primary(primary_dsn: str) -> AsyncIterator[Database]:
    database = await Database.open(primary_dsn, role="primary", pool_size=4, timeout=MYSQL_TIMEOUT)
    yield database
    await database.close()


@pytest.fixture
async def unreachable_primary() -> AsyncIterator[Database]:
    """A primary pool whose server never answers (nothing listens on its port): every
    statement fails within half a second."""
    database = await Database.open(
        f"mysql://app:pw@127.0.0.1:{free_port()}/gatehouse",
        role="primary",
        pool_size=1,
        timeout=0.5,
    )
    yield database
    await database.close()


@pytest.fixture
async def replica(replica_dsn: str) -> AsyncIterator[Database]:
    database = await Database.open(replica_dsn, role="replica", pool_size=4, timeout=MYSQL_TIMEOUT)
    yield database
    await database.close()


def new_cache(
    data_stores: DataStores,
    primary: Database,
    *,
    clock: Callable[[], float] = time.monotonic,
    timeout: float = REDIS_TIMEOUT,
    local_interval: float = LOCAL_CACHE_INTERVAL,
    url: str | None = None,
) -> RedisCache:
    """A RedisCache with the replicas' default timeouts (unless given), not started; of the
    test Redis unless `url` is given."""
    return RedisCache(
        url or data_stores.redis_url,
        timeout=timeout,
        profile_ttl=3600,
        primary=primary,
        script_timeout=THROTTLE_REDIS_TIMEOUT,
        local_interval=local_interval,
        clock=clock,
    )


@pytest.fixture
async def cache(data_stores: DataStores, primary: Database) -> AsyncIterator[RedisCache]:
    redis_cache = new_cache(data_stores, primary)
    await redis_cache.start()
    # On a loaded machine the start's script load can overrun the 0.2 s timeout and open the
    # breaker: the tests using this fixture are about a healthy Redis, so they begin once the
    # breaker has closed again (the idle probe's work, within a few seconds).
    await wait_until_async(
        lambda: not redis_cache.breaker_open, 10.0, "the cache's Redis breaker is closed"
    )
    yield redis_cache
    await redis_cache.close()


@pytest.fixture
def freshness(primary: Database, replica: Database) -> ReplicaFreshness:
    return ReplicaFreshness(primary, [replica], HEARTBEAT_INTERVAL)


@pytest.fixture
async def store(
    primary: Database, replica: Database, cache: RedisCache, freshness: ReplicaFreshness
) -> AsyncIterator[AccountStore]:
    """An AccountStore over the module's database and its one replica, started."""
    account_store = new_store(primary, replica, cache, freshness)
    await account_store.start()
    yield account_store
    await account_store.close()


def new_store(
    primary: Database, replica: Database, cache: RedisCache, freshness: ReplicaFreshness
) -> AccountStore:
    """An AccountStore over `primary` and its one `replica`, with the replicas' heartbeat and
    tombstone intervals, not started."""
    return AccountStore(
        primary,
        [replica],
        cache,
        HeartbeatWriter(primary, HEARTBEAT_INTERVAL),
        freshness,
        PendingTombstones(primary, cache, HEARTBEAT_INTERVAL),
    )


@pytest.fixture
async def redis(data_stores: DataStores) -> AsyncIterator[Redis]:
    """A plain client, to look at and tamper with what the service stored."""
    client = Redis.from_url(data_stores.redis_url, socket_timeout=5.0)
    yield client
    await client.aclose()


@pytest.fixture
async def claimed_worker_ids(data_stores: DataStores) -> AsyncIterator[WorkerIdClaim]:
    """A Snowflake worker id claimed in etcd under a prefix of the test's own."""
    claim = WorkerIdClaim(
        data_stores.etcd_access(), f"/test-{uuid.uuid4().hex}/worker-ids/", "auth-test"
    )
    await claim.start()
    await wait_until_async(lambda: claim.generator is not None, 10.0, "a worker id is claimed")
    yield claim
    await claim.stop()


@pytest.fixture
def eventually() -> Eventually:
    """Waits until an async condition holds, failing the test after 10 s."""

    async def wait(condition: Callable[[], Awaitable[bool]], what: str) -> None:
        try:
            await wait_until_async(condition, 10.0, what)
        except TimeoutError as exc:
            pytest.fail(str(exc))

    return wait


@pytest.fixture
async def stop_sql_thread(data_stores: DataStores) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """Stops the replica's SQL thread: it keeps receiving the binlog but applies nothing, so
    its data goes stale. Restarted (and caught up) after the test."""
    stopped = False

    async def stop() -> None:
        nonlocal stopped
        stopped = True
        await asyncio.to_thread(data_stores.replication.stop_sql_thread)

    yield stop
    if stopped:
        await asyncio.to_thread(data_stores.replication.start_sql_thread)
        await asyncio.to_thread(data_stores.replication.wait_caught_up)


@pytest.fixture
async def stop_redis(data_stores: DataStores) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """Stops Redis (it loses every key); running again after the test."""

    async def stop() -> None:
        await asyncio.to_thread(data_stores.redis.stop)

    yield stop
    if not data_stores.redis.process.alive:
        await asyncio.to_thread(data_stores.redis.start)


@pytest.fixture
async def evicting_redis(redis: Redis) -> AsyncIterator[None]:
    """The test Redis as ElastiCache's default parameter group runs it: a maxmemory (far above
    what the tests use) with maxmemory-policy volatile-lru. Back to no eviction afterwards."""
    await redis.config_set("maxmemory-policy", "volatile-lru")
    await redis.config_set("maxmemory", "1gb")
    yield
    await redis.config_set("maxmemory", "0")
    await redis.config_set("maxmemory-policy", "noeviction")


@pytest.fixture
def pause_redis(data_stores: DataStores) -> Iterator[Callable[[], None]]:
    """SIGSTOPs Redis: it keeps its sockets open but answers nothing, so commands time out.
    Resumed after the test."""
    yield data_stores.redis.process.pause
    data_stores.redis.process.resume()


# Two wrong passwords per (account, IP) and the next attempt waits a minute: long enough that
# no test outlasts it, so a refusal cannot turn into an admission under load.
TWO_FAILURES = ThrottleLimits(
    failures=2, first_delay_seconds=60.0, ip_failures=10**9, signup_conflicts=10**9
)

HandlersFactory = Callable[..., AccountHandlers]


@pytest.fixture
async def make_handlers(
    store: AccountStore, claimed_worker_ids: WorkerIdClaim
) -> AsyncIterator[HandlersFactory]:
    """AccountHandlers on the test's store: `reuse_deleted_usernames` as asked."""
    hasher = PasswordHasher({1: b"old pepper", 2: b"pepper"}, cost=4, threads=2, queue_limit=8)

    def make(*, reuse_deleted_usernames: bool = False) -> AccountHandlers:
        return AccountHandlers(
            store,
            hasher,
            TokenIssuer(load_private_key(generate_private_key_pem()), ttl_seconds=600),
            UserIds(claimed_worker_ids, IdBlocks(store.primary, 16)),
            "test-instance",
            "test",
            throttle=LoginThrottle(store.cache, TWO_FAILURES),
            devices=DeviceCookies("device-cookie-secret-for-these-tests", 3600),
            reuse_deleted_usernames=reuse_deleted_usernames,
        )

    yield make
    hasher.close()


@pytest.fixture
def handlers(make_handlers: HandlersFactory) -> AccountHandlers:
    return make_handlers()


async def a_transaction_waits_for_a_lock(data_stores: DataStores, database_name: str) -> bool:
    """Whether a transaction on `database_name` is waiting for a row lock now (InnoDB)."""
    rows = await asyncio.to_thread(
        data_stores.primary.execute,
        "SELECT t.trx_id FROM information_schema.INNODB_TRX t"
        " JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id"
        " WHERE p.DB = %s AND t.trx_state = 'LOCK WAIT'",
        (database_name,),
    )
    return bool(rows)
