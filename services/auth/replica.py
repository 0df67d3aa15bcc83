"""An auth replica's life: start its parts, serve, and drain on SIGTERM.

Each part is started on one `AsyncExitStack`, which stops it when the replica ends: shutdown
runs the start in reverse, by construction, also when a later part fails to start.

The replica registers in discovery only once it can serve every method: its RPC server
listens, it holds a Snowflake worker id (signups) and its JWT public key is in etcd (the HTTP
tier verifies the tokens it issues by that key: services/auth/signing/ring.py). Until then /readyz says which is missing; while
etcd is unreachable at start, that wait lasts, and SIGTERM still ends it.

Drain order (the HTTP tier must stop sending before calls are refused), which is that reverse:
1. not ready, and the discovery lease is revoked, so watchers drop this replica at once;
2. calls keep being served for GATEHOUSE_DRAIN_DELAY while every HTTP process notices;
3. new calls are answered DRAINING (not executed: the client retries them elsewhere);
4. calls in flight get GATEHOUSE_DRAIN_GRACE to finish; then everything closes and the
   process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from services.auth import metrics
from services.auth.accounts import AccountStore
from services.auth.admin_handlers import AdminHandlers
from services.auth.blob_handlers import BlobHandlers
from services.auth.devices import DeviceCookies
from services.auth.handlers import AccountHandlers
from services.auth.passwords import PasswordHasher
from services.auth.pepper_usage_handler import PepperUsageHandler
from services.auth.roles import OPERATOR, Roles
from services.auth.schema_check import DRAINING, recheck_schema, wait_for_schema
from services.auth.session_handlers import SessionHandlers
from services.auth.settings import AuthSettings
from services.auth.signing.records import key_records
from services.auth.signing.ring import SigningKeyRing
from services.auth.signing.sources import FixedKey, KeyFolder, KeySource
from services.auth.snowflake import WorkerIdClaim
from services.auth.store.blobs import BlobTable
from services.auth.store.database import Database
from services.auth.store.id_blocks import IdBlocks
from services.auth.store.migrate import migrate_database
from services.auth.store.rotation_copy import RotationStateCopies
from services.auth.store.session_purge import PurgeLimits, SessionPurge
from services.auth.throttle import LoginThrottle
from services.auth.user_ids import UserIds
from services.foundation.discovery import ServiceRecord, registration
from services.foundation.etcd import Backoff, LeasedKey, describe_etcd_error
from services.foundation.ops import serving_ops
from services.foundation.rpc.protocol import PROTOCOL_MAX, PROTOCOL_MIN
from services.foundation.rpc.server import RpcServer, ServerLimits
from services.foundation.rpc.tls import ReloadingTls
from services.foundation.rpc.unix_socket import UnixSocketError
from services.foundation.tasks import every, running, stop_task

log = logging.getLogger(__name__)


def advertised_host(settings: AuthSettings) -> str:
    if settings.advertise_host:
        return settings.advertise_host
    if settings.host not in ("0.0.0.0", "::", ""):
        return settings.host
    return socket.gethostbyname(socket.gethostname())


async def sync_keys_until_done(keys: SigningKeyRing) -> None:
    """Publish the JWT public keys and choose the signing key, retrying while etcd is
    unreachable."""
    backoff = Backoff()
    failures = 0
    warned: type[BaseException] | None = None  # the kind of error last warned
    while True:
        try:
            await keys.sync()
        except Exception as exc:  # noqa: BLE001 - etcd may be down at start; keep trying
            # One warning per cause, not one per retry (every few seconds for as long as etcd
            # is away): the retries are debug lines, counted in the line of the sync that works.
            # A new kind of error is warned again: etcd back but refusing (a role without the
            # key prefix) must not hide behind the timeout warned while it was away. Kinds, not
            # texts: a text naming the endpoint tried would change with every retry.
            failures += 1
            log.log(
                logging.WARNING if type(exc) is not warned else logging.DEBUG,
                "could not sync the JWT signing keys with etcd yet (%s); retrying",
                describe_etcd_error(exc),
            )
            warned = type(exc)
            await keys.close()
        else:
            if failures:
                log.info("synced the JWT signing keys with etcd after %d failed attempts", failures)
            return
        await backoff.wait()


def key_source(settings: AuthSettings) -> KeySource:
    if settings.jwt_private_key is not None:
        return FixedKey(settings.jwt_private_key)
    return KeyFolder(Path(settings.jwt_keys_dir))


def signing_key_ring(settings: AuthSettings, primary: Database) -> SigningKeyRing:
    return SigningKeyRing(
        key_source(settings),
        endpoints=settings.etcd_access,
        keys_prefix=settings.jwt_keys_prefix,
        rotation_prefix=settings.jwt_rotation_prefix,
        token_ttl=settings.token_ttl,
        poll_interval=settings.jwt_keys_poll_interval,
        issuer=settings.token_issuer,
        audience=settings.token_audience,
        records=key_records(settings),
        copies=RotationStateCopies(primary),
    )


STARTING = "starting"
WAITING_FOR_WORKER_ID = "waiting for a Snowflake worker id from etcd"
# How long a starting replica waits for an etcd worker id before it registers without one: new
# user ids then come from the primary's id blocks (user_ids.py) until a claim succeeds. Long
# enough for a healthy etcd, so that ids normally sort by time from the first signup.
WORKER_ID_GRACE_SECONDS = 3.0
PUBLISHING_KEY = "publishing the JWT public keys to etcd"


class Readiness:
    """What /readyz answers: not ready until every part is serving, and again once draining."""

    def __init__(self) -> None:
        self.not_ready_because: str | None = STARTING
        self.store: AccountStore | None = None

    def __call__(self) -> str | None:
        if self.not_ready_because is not None:
            return self.not_ready_because
        if self.store is not None and not self.store.ready:
            return "the MySQL primary is unreachable"
        return None


def stop_requested(stack: AsyncExitStack) -> asyncio.Event:
    """An event set by SIGTERM or SIGINT, until `stack` closes."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
        stack.callback(loop.remove_signal_handler, signum)
    return stop


async def run(settings: AuthSettings) -> int:
    async with AsyncExitStack() as stack:
        stop = stop_requested(stack)
        if await unless_stopped(start(stack, settings), stop):
            await stop.wait()
        else:
            log.info("stop requested while starting: stopping the parts started so far")
    log.info("auth replica %s stopped", settings.instance_id)
    return 0


async def start(stack: AsyncExitStack, settings: AuthSettings) -> None:
    """Apply migrations if asked, then start every part of the replica on `stack`."""
    if settings.migrate_on_start:
        applied = await migrate_database(settings)
        if applied:
            log.info("applied migrations %s", ", ".join(applied))
    await start_replica(stack, settings)


async def unless_stopped(starting: Coroutine[Any, Any, None], stop: asyncio.Event) -> bool:
    """Run `starting` to its end, raising what it raises; False when `stop` is set first.

    A start can wait long on a store that does not answer (the migrations wait up to 30 s for
    an unreachable primary): a SIGTERM meanwhile must end the process at once, not after that
    wait, or Kubernetes kills it mid-start at the end of terminationGracePeriodSeconds. The
    start is then cancelled; the parts it had started are on the stack, which stops them."""
    task = asyncio.create_task(_exit_held(starting), name="start replica")
    stopped = asyncio.create_task(stop.wait(), name="stop requested")
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        await stop_task(task)
        raise
    finally:
        stopped.cancel()
    if task.done():
        try:
            task.result()
        except _StartExited as exited:
            raise SystemExit(exited.code) from None
        return True
    await stop_task(task)  # logs a failure it ends with instead of its cancellation
    return False


class _StartExited(Exception):
    """A SystemExit the start raised (a GATEHOUSE_OPERATOR_SOCKET it cannot make), held by its
    task: a SystemExit leaves its task and stops the event loop, so the parts started so far
    were cancelled by asyncio.run, not stopped by the stack, each failing with a traceback."""

    def __init__(self, code: str | int | None) -> None:
        super().__init__(code)
        self.code = code


async def _exit_held(starting: Coroutine[Any, Any, None]) -> None:
    try:
        await starting
    except SystemExit as exc:
        raise _StartExited(exc.code) from None


async def start_replica(stack: AsyncExitStack, settings: AuthSettings) -> None:
    """Start every part of the replica on `stack`, in the order the drain undoes."""
    readiness = Readiness()
    await stack.enter_async_context(serving_ops(settings.host, settings.ops_port, readiness))
    hasher = PasswordHasher(
        settings.peppers,
        current_version=settings.current_pepper_version,
        cost=settings.bcrypt_cost,
        threads=settings.hash_threads,
        queue_limit=settings.hash_queue_limit,
    )
    stack.callback(hasher.close)
    metrics.HASH_QUEUE_DEPTH.set_function(lambda: hasher.queue_depth)
    store = await AccountStore.open(settings)
    stack.push_async_callback(store.close)
    issuer = signing_key_ring(settings, store.primary)
    stack.push_async_callback(issuer.close)
    readiness.store = store
    blobs = await BlobTable.open(settings, primary_health=store.primary_health)
    stack.push_async_callback(blobs.close)
    worker_ids = WorkerIdClaim(
        settings.etcd_access,
        settings.worker_id_prefix,
        settings.instance_id,
        lease_ttl=settings.lease_ttl,
    )
    await worker_ids.start()
    stack.push_async_callback(worker_ids.stop)
    metrics.WORKER_ID_HELD.set_function(lambda: worker_ids.generator is not None)
    user_ids = UserIds(worker_ids, IdBlocks(store.primary, settings.user_id_block_size))
    user_ids.export_metrics()
    purge = SessionPurge(store.primary, purge_limits(settings))
    await stack.enter_async_context(
        running(
            every(settings.session_purge_interval, purge.step, "session purge"), "session purge"
        )
    )

    tls = await start_tls_reload(stack, settings)
    roles = Roles(settings.rpc_trust_domain)
    server = rpc_server(settings, store, blobs, hasher, issuer, user_ids, roles, tls)
    port = await server.start(settings.host, settings.port)
    stack.push_async_callback(drain_and_close, server, settings)  # even if the socket fails
    if tls is None and settings.operator_socket:
        try:
            await server.start_unix(settings.operator_socket, roles.identity(OPERATOR))
        except UnixSocketError as exc:
            log.error("GATEHOUSE_OPERATOR_SOCKET: %s", exc)
            raise SystemExit(2) from None
    record = service_record(settings, port)
    announcement = registration(
        settings.etcd_access,
        settings.discovery_prefix,
        record,
        settings.lease_ttl,
        on_change=lambda held: metrics.DISCOVERY_REGISTERED.set(int(held)),
    )
    # Stopped after the task below, so that the task cannot register once this has left.
    stack.push_async_callback(announcement.stop)
    await stack.enter_async_context(
        running(
            announce_when_able(
                readiness, worker_ids, settings, issuer, announcement, store.primary
            ),
            "announce in discovery",
        )
    )
    await stack.enter_async_context(
        running(
            every(settings.jwt_keys_poll_interval, issuer.step, "signing key sync"),
            "signing key sync",
        )
    )
    stack.callback(begin_draining, readiness, settings)
    log.info(
        "auth replica %s listening for RPC on %s:%d (advertised %s), ops on %s:%d",
        settings.instance_id,
        settings.host,
        port,
        record.host,
        settings.host,
        settings.ops_port,
    )


async def announce_when_able(
    readiness: Readiness,
    worker_ids: WorkerIdClaim,
    settings: AuthSettings,
    issuer: SigningKeyRing,
    announcement: LeasedKey,
    primary: Database,
) -> None:
    """Register in discovery once every method can be served: the schema holds this release's
    migrations, and the JWT public key is in etcd. A schema that could not be checked (the
    primary out of reach) is checked again once registered (schema_check.py).

    A worker id is waited for only briefly: signups do not need one (user_ids.py), so a
    replica that cannot claim one (all taken, or etcd refusing claims) still serves."""
    schema_checked = await wait_for_schema(readiness, primary)
    readiness.not_ready_because = WAITING_FOR_WORKER_ID
    try:
        await asyncio.wait_for(worker_ids.wait_until_held(), WORKER_ID_GRACE_SECONDS)
    except TimeoutError:
        log.warning(
            "no etcd worker id after %.0f s: registering anyway; new user ids come from the "
            "primary's id blocks until a claim succeeds",
            WORKER_ID_GRACE_SECONDS,
        )
    readiness.not_ready_because = PUBLISHING_KEY
    await sync_keys_until_done(issuer)
    await announcement.start()
    readiness.not_ready_because = None
    log.info("auth replica %s registered in discovery", settings.instance_id)
    if not schema_checked:
        await recheck_schema(readiness, primary, announcement)


def server_limits(settings: AuthSettings) -> ServerLimits:
    return ServerLimits(
        max_connections=settings.max_connections,
        max_frame_bytes=settings.max_frame_bytes,
        handshake_timeout=settings.handshake_timeout,
        idle_timeout=settings.idle_timeout,
        max_connections_per_peer=settings.max_connections_per_peer,
        max_tls_handshakes_per_peer=settings.max_tls_handshakes_per_peer,
        max_calls_per_connection=settings.max_calls_per_connection,
        max_calls_per_peer=settings.max_calls_per_peer,
        write_high_water_bytes=settings.write_high_water_bytes,
        write_stall_timeout=settings.write_stall_timeout,
        max_write_buffer_bytes=settings.max_write_buffer_bytes,
        max_write_buffer_total_bytes=settings.max_write_buffer_total_bytes,
        clock_skew_allowance=settings.clock_skew_allowance,
        max_large_frame_bytes_per_peer=settings.max_large_frame_bytes_per_peer,
        max_large_frame_bytes_total=settings.max_large_frame_bytes_total,
    )


def rpc_server(
    settings: AuthSettings,
    store: AccountStore,
    blobs: BlobTable,
    hasher: PasswordHasher,
    issuer: SigningKeyRing,
    user_ids: UserIds,
    roles: Roles,
    tls: ReloadingTls | None = None,
) -> RpcServer:
    """The RPC server with every method's handler (not listening yet); each method callable
    only by the identities of its role (roles.py): with `tls` over mutual TLS, else callers
    over TCP hold the HTTP role."""
    throttle = LoginThrottle(
        store.cache,
        settings.throttle_limits(),
        memory_keys=settings.throttle_memory_keys,
        redis_timeout=settings.throttle_redis_timeout,
    )
    devices = DeviceCookies(settings.device_cookie_secret, settings.device_cookie_lifetime)
    handlers = AccountHandlers(
        store,
        hasher,
        issuer,
        user_ids,
        settings.instance_id,
        settings.release,
        throttle=throttle,
        devices=devices,
        reuse_deleted_usernames=settings.reuse_deleted_usernames,
    )
    return RpcServer(
        [
            *handlers.routes(),
            *SessionHandlers(store).routes(),
            *BlobHandlers(blobs, store, roles).routes(),
            *AdminHandlers(
                store, reuse_deleted_usernames=settings.reuse_deleted_usernames
            ).routes(),
            *PepperUsageHandler(store.primary).routes(),
        ],
        server_limits(settings),
        f"gatehouse-auth/{settings.release}",
        tls=tls.context if tls else None,
        authorization=roles.permits if tls else roles.permits_without_tls,
    )


async def start_tls_reload(stack: AsyncExitStack, settings: AuthSettings) -> ReloadingTls | None:
    """With GATEHOUSE_RPC_TLS=mtls, the server's TLS context, kept in step with its files."""
    if not settings.rpc_tls_on:
        log.warning(
            "the auth RPC runs in plaintext: callers over TCP may make the HTTP tier's calls,"
            " whoever they are; operator calls only on GATEHOUSE_OPERATOR_SOCKET (%s)",
            settings.operator_socket or "not set: none",
        )
        return None
    tls = ReloadingTls(settings.rpc_tls_files(), server=True)
    await stack.enter_async_context(
        running(
            every(settings.rpc_tls_reload_interval, tls.step, "RPC TLS reload"), "RPC TLS reload"
        )
    )
    return tls


def purge_limits(settings: AuthSettings) -> PurgeLimits:
    return PurgeLimits(
        purge_after=timedelta(seconds=settings.session_purge_after),
        batch_size=settings.session_purge_batch_size,
        rows_per_second=settings.session_purge_rows_per_second,
    )


def service_record(settings: AuthSettings, port: int) -> ServiceRecord:
    return ServiceRecord(
        instance_id=settings.instance_id,
        host=advertised_host(settings),
        port=port,
        protocol_min=PROTOCOL_MIN,
        protocol_max=PROTOCOL_MAX,
        release=settings.release,
        started_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    )


def begin_draining(readiness: Readiness, settings: AuthSettings) -> None:
    """Drain step 1, before the discovery lease is revoked: not ready from now on."""
    readiness.not_ready_because = DRAINING
    log.info(
        "draining: leaving discovery, serving %.1fs more, then refusing new calls",
        settings.drain_delay,
    )


async def drain_and_close(server: RpcServer, settings: AuthSettings) -> None:
    """Drain steps 2-4, once the replica has left discovery."""
    await asyncio.sleep(settings.drain_delay)
    server.begin_drain()
    if not await server.wait_idle(settings.drain_grace):
        log.warning(
            "%d calls still in flight after %.1fs; closing anyway",
            server.in_flight,
            settings.drain_grace,
        )
    await server.close()
