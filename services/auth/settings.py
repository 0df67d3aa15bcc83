"""Settings of the auth service (see the README's configuration table)."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.auth.passwords import parse_peppers
from services.auth.signing.folder import checked_key_folder
from services.auth.store.dsn import checked_dsn, checked_dsns, checked_optional_dsn
from services.auth.store.redis_url import checked_redis_url
from services.auth.throttle_rules import ThrottleLimits
from services.auth.tokens import load_private_key
from services.foundation.config import bounds_problems, parse_prefix, report_problems, setting
from services.foundation.discovery import DiscoverySettings, is_host, is_instance_id
from services.foundation.etcd_access import access_problems
from services.foundation.rpc.framing import DEFAULT_MAX_FRAME_BYTES, SMALLEST_MAX_FRAME_BYTES
from services.foundation.rpc.server import LARGE_FRAME_BYTES, ServerLimits
from services.foundation.rpc.tls_settings import RpcTlsSettings
from services.foundation.rpc.unix_socket import MAX_UNIX_SOCKET_PATH

# Longest pause between two purge batches (batch size / rows per second): the purge holds its
# MySQL lock on an idle connection meanwhile.
MAX_PURGE_PAUSE = 60


def _default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, kw_only=True)
class DatabaseSettings:
    """What `python -m services.auth migrate` needs: the database and nothing secret besides it."""

    mysql_primary_dsn: str = setting(
        "GATEHOUSE_MYSQL_PRIMARY_DSN",
        help="mysql://user:password@host:port/database of the primary",
        secret=True,
        parse=checked_dsn,
    )
    mysql_replica_dsns: tuple[str, ...] = setting(
        "GATEHOUSE_MYSQL_REPLICA_DSNS",
        (),
        "Read replica DSNs, comma-separated; empty reads the primary",
        secret=True,
        parse=checked_dsns,
    )
    mysql_migration_dsn: str = setting(
        "GATEHOUSE_MYSQL_MIGRATION_DSN",
        "",
        "DSN of the primary as the migration (DDL) user, used by `migrate` and the migrations "
        "on start; empty: GATEHOUSE_MYSQL_PRIMARY_DSN. Give it to the migration job only",
        secret=True,
        parse=checked_optional_dsn,
    )
    mysql_pool_size: int = setting(
        "GATEHOUSE_MYSQL_POOL_SIZE",
        16,
        "Connections per MySQL pool; the primary's heartbeat holds one more of its own",
        at_least=1,
        at_most=1000,
    )
    mysql_timeout: float = setting(
        "GATEHOUSE_MYSQL_TIMEOUT",
        2.0,
        "Seconds allowed for one query or pool acquire",
        above=0,
        # A day: `migrate` runs within max(30 s, this), and docs/design.md has the operator
        # raise it to cover an index build on a large table, which can take far past minutes.
        at_most=86400,
    )
    migrate_on_start: bool = setting(
        "GATEHOUSE_MIGRATE_ON_START", True, "Apply migrations when the service starts"
    )
    heartbeat_interval: float = setting(
        "GATEHOUSE_HEARTBEAT_INTERVAL",
        0.25,
        "Seconds between replication heartbeats (read-your-writes)",
        at_least=0.01,
        # A degraded logout waits for a beat past its flag and a poll that reads it (up to two
        # intervals, within GATEHOUSE_LOGOUT_CONFIRM_TIMEOUT, 3 s), then a lease of three: at 1 s
        # that is 5 s at most, within the HTTP tier's 10 s call; at 5 s no such logout succeeds.
        at_most=1,
    )

    log_level: str = setting("GATEHOUSE_LOG_LEVEL", "INFO", "Log level")

    @property
    def migration_dsn(self) -> str:
        """The DSN migrations run with: the migration user's, else the primary's."""
        return self.mysql_migration_dsn or self.mysql_primary_dsn


@dataclass(frozen=True, kw_only=True)
class BootstrapSettings(DatabaseSettings):
    """What `python -m services.auth bootstrap` needs: the master user's DSN besides the two
    accounts' DSNs it creates (services/auth/store/bootstrap.py)."""

    mysql_admin_dsn: str = setting(
        "GATEHOUSE_MYSQL_ADMIN_DSN",
        help="mysql://user:password@host:port/database as the master user, for `bootstrap` only;"
        " the database is the one it creates",
        secret=True,
        parse=checked_dsn,
    )
    mysql_account_host: str = setting(
        "GATEHOUSE_MYSQL_ACCOUNT_HOST",
        "%",
        "Host part of the MySQL accounts `bootstrap` creates ('%': connections from anywhere)",
    )
    bootstrap_wait: float = setting(
        "GATEHOUSE_BOOTSTRAP_WAIT",
        300.0,
        "Seconds `bootstrap` retries a MySQL server that is not reachable yet (0-3600)",
        at_least=0,
        at_most=3600,
    )

    def __post_init__(self) -> None:
        problems = bounds_problems(self)
        if not self.mysql_migration_dsn:
            problems.append(
                "GATEHOUSE_MYSQL_MIGRATION_DSN is required by `bootstrap`: the migration user's DSN"
            )
        if not self.mysql_account_host or len(self.mysql_account_host) > 255:
            problems.append("GATEHOUSE_MYSQL_ACCOUNT_HOST must be 1-255 characters, e.g. %")
        report_problems(problems)


@dataclass(frozen=True, kw_only=True)
class RpcListenSettings(RpcTlsSettings):
    """Where the RPC server listens, and how it is protected: also where the `gatehouse`
    command finds the replica of its own pod (services/cli/settings.py)."""

    host: str = setting("GATEHOUSE_AUTH_HOST", "127.0.0.1", "Address the RPC server binds")
    port: int = setting("GATEHOUSE_AUTH_PORT", 7000, "RPC port", at_least=1, at_most=65535)
    operator_socket: str = setting(
        "GATEHOUSE_OPERATOR_SOCKET",
        "",
        "With GATEHOUSE_RPC_TLS=plaintext: path of a Unix socket (mode 0600, in a folder of the"
        " replica's user only, made 0700 if missing) where the auth replica takes the operator's"
        " calls, and where the gatehouse command beside it calls; callers over TCP hold the HTTP"
        " tier's calls only. Empty: no operator calls without mtls",
    )

    def operator_socket_problems(self) -> list[str]:
        if len(os.fsencode(self.operator_socket)) > MAX_UNIX_SOCKET_PATH:
            return [
                f"GATEHOUSE_OPERATOR_SOCKET must be at most {MAX_UNIX_SOCKET_PATH} bytes (the"
                " kernel's limit for a Unix socket's path)"
            ]
        return []


@dataclass(frozen=True, kw_only=True)
class AuthEtcdSettings(DiscoverySettings):
    """The etcd prefixes the auth service writes besides those both tiers share."""

    worker_id_prefix: str = setting(
        "GATEHOUSE_WORKER_ID_PREFIX",
        "/gatehouse/worker-ids/",
        "etcd prefix of claimed Snowflake worker ids",
        parse=parse_prefix,
    )
    jwt_rotation_prefix: str = setting(
        "GATEHOUSE_JWT_ROTATION_PREFIX",
        "/gatehouse/keys/rotation/",
        "etcd prefix of the signing-key rotation state (which kid signs, which retire when); only the auth identity may write it",
        parse=parse_prefix,
    )


@dataclass(frozen=True, kw_only=True)
class EtcdBootstrapSettings(AuthEtcdSettings):
    """What `python -m services.auth etcd-bootstrap` needs: etcd's root password and the
    passwords of the two users it creates (services/auth/etcd_bootstrap.py). It connects with
    GATEHOUSE_ETCD_ENDPOINTS and GATEHOUSE_ETCD_CA_FILE/CERT_FILE/KEY_FILE, as root."""

    log_level: str = setting("GATEHOUSE_LOG_LEVEL", "INFO", "Log level")
    etcd_root_password_file: str = setting(
        "GATEHOUSE_ETCD_ROOT_PASSWORD_FILE",
        help="File holding the password of etcd's root user (created if auth is still off)",
    )
    etcd_auth_user: str = setting(
        "GATEHOUSE_ETCD_AUTH_USER", "gatehouse-auth", "etcd user (and role) of the auth replicas"
    )
    etcd_auth_password_file: str = setting(
        "GATEHOUSE_ETCD_AUTH_PASSWORD_FILE", help="File holding the auth replicas' etcd password"
    )
    etcd_http_user: str = setting(
        "GATEHOUSE_ETCD_HTTP_USER", "gatehouse-http", "etcd user (and role) of the HTTP pods"
    )
    etcd_http_password_file: str = setting(
        "GATEHOUSE_ETCD_HTTP_PASSWORD_FILE", help="File holding the HTTP pods' etcd password"
    )
    etcd_dedicated: bool = setting(
        "GATEHOUSE_ETCD_DEDICATED",
        False,
        "etcd is Gatehouse's alone (the chart's sets it): each run deletes every user and role but root's and the two tiers', and the run that turns authentication on deletes the signing keys and rotation state found, all of which anyone who reached etcd while it was off could have planted; leave it off on an etcd other applications share",
    )

    def __post_init__(self) -> None:
        problems = bounds_problems(self)
        problems += access_problems(self.etcd_access)
        for env, path in (
            ("GATEHOUSE_ETCD_ROOT_PASSWORD_FILE", self.etcd_root_password_file),
            ("GATEHOUSE_ETCD_AUTH_PASSWORD_FILE", self.etcd_auth_password_file),
            ("GATEHOUSE_ETCD_HTTP_PASSWORD_FILE", self.etcd_http_password_file),
        ):
            if not Path(path).is_file():
                problems.append(f"{env}={path!r} is not a readable file")
        if len({"root", self.etcd_auth_user, self.etcd_http_user}) != 3:
            problems.append(
                "GATEHOUSE_ETCD_AUTH_USER and GATEHOUSE_ETCD_HTTP_USER must differ from each"
                " other and from root"
            )
        report_problems(problems)


def _parse_pepper_version(raw: str) -> int | None:
    """GATEHOUSE_PEPPER_CURRENT: empty (as a chart or env file writes an unset value) is unset;
    else a version as GATEHOUSE_PEPPERS writes them, ASCII digits only (int() also takes
    '1_0', '+1' and other scripts' digits)."""
    text = raw.strip()
    if not text:
        return None
    if not (text.isascii() and text.isdecimal()):
        raise ValueError("write a pepper version of GATEHOUSE_PEPPERS, digits only")
    return int(text)


@dataclass(frozen=True, kw_only=True)
class AuthSettings(RpcListenSettings, AuthEtcdSettings, DatabaseSettings):
    # Identity and listening
    instance_id: str = setting(
        "GATEHOUSE_INSTANCE_ID",
        "",
        "Name of this replica in discovery (pod name); default hostname-pid",
    )
    release: str = setting(
        "GATEHOUSE_RELEASE", "dev", "Release label published in the discovery record"
    )
    advertise_host: str = setting(
        "GATEHOUSE_AUTH_ADVERTISE_HOST",
        "",
        "Address published in etcd (pod IP); default the bind address",
    )
    ops_port: int = setting(
        "GATEHOUSE_OPS_PORT",
        9100,
        "Side HTTP port for /healthz, /readyz, /metrics",
        at_least=1,
        at_most=65535,
    )

    # etcd
    lease_ttl: int = setting(
        "GATEHOUSE_LEASE_TTL",
        10,
        "TTL in seconds of the discovery and worker-id leases",
        at_least=2,
    )
    user_id_block_size: int = setting(
        "GATEHOUSE_USER_ID_BLOCK_SIZE",
        256,
        "User ids taken from the MySQL primary at once while no etcd worker id is held (1-4096)",
        at_least=1,
        at_most=4096,
    )

    # Redis
    redis_url: str = setting(
        "GATEHOUSE_REDIS_URL",
        "redis://127.0.0.1:6379/0",
        "Redis URL; rediss://host:port/0?ssl_ca_certs=/path/ca.crt for TLS,"
        " unix:///path/redis.sock?db=0 for a unix socket",
        secret=True,
        parse=checked_redis_url,
    )
    redis_timeout: float = setting(
        "GATEHOUSE_REDIS_TIMEOUT",
        0.25,
        "Seconds allowed for one Redis command",
        above=0,
        at_most=60,
    )
    profile_cache_ttl: int = setting(
        "GATEHOUSE_PROFILE_CACHE_TTL", 3600, "Seconds a cached profile lives", at_least=1
    )
    local_cache: bool = setting(
        "GATEHOUSE_LOCAL_CACHE",
        True,
        "Keep in-process copies of the Redis values reads use, invalidated by Redis (CLIENT TRACKING); used only while the invalidations prove to arrive",
    )
    local_cache_heartbeat_interval: float = setting(
        "GATEHOUSE_LOCAL_CACHE_HEARTBEAT_INTERVAL",
        0.5,
        "Seconds within which Redis's invalidation stream must have proven itself (a heartbeat key written and its invalidation received) for the in-process copies to answer",
        above=0,
        at_most=60,
    )
    local_cache_entries: int = setting(
        "GATEHOUSE_LOCAL_CACHE_ENTRIES",
        20_000,
        "Redis values one auth replica copies in process at most (each at most 2 KiB); the oldest copy goes first",
        at_least=1,
        at_most=1_000_000,
    )

    # A MySQL primary outage (docs/design.md, "A primary outage")
    primary_probe_timeout: float = setting(
        "GATEHOUSE_PRIMARY_PROBE_TIMEOUT",
        1.0,
        "Seconds a heartbeat may take before the MySQL primary counts as down: writes, logins and signups are then refused at once (503) until a heartbeat succeeds",
        above=0,
    )
    logout_confirm_timeout: float = setting(
        "GATEHOUSE_LOGOUT_CONFIRM_TIMEOUT",
        3.0,
        "Seconds a logout whose tombstone Redis did not take, or a profile change whose record it did not take, waits for every read replica to apply its revocation flag or write floor; past it the call answers 503 and the client retries it",
        above=0,
    )

    # Purging expired sessions (services/auth/store/session_purge.py)
    session_purge_interval: float = setting(
        "GATEHOUSE_SESSION_PURGE_INTERVAL",
        300.0,
        "Seconds between two purges of expired sessions; one auth replica at a time purges",
        at_least=1,
    )
    session_purge_after: int = setting(
        "GATEHOUSE_SESSION_PURGE_AFTER",
        3600,
        "Seconds past its expiry before a session's row is purged; covers clock differences between hosts (60-2592000)",
        at_least=60,
        at_most=30 * 86400,
    )
    session_purge_batch_size: int = setting(
        "GATEHOUSE_SESSION_PURGE_BATCH_SIZE",
        500,
        "Expired session rows deleted per statement (1-10000)",
        at_least=1,
        at_most=10_000,
    )
    session_purge_rows_per_second: int = setting(
        "GATEHOUSE_SESSION_PURGE_ROWS_PER_SECOND",
        1000,
        "Most expired session rows purged per second (1-50000)",
        at_least=1,
        at_most=50_000,
    )

    # Passwords and tokens
    bcrypt_cost: int = setting(
        "GATEHOUSE_BCRYPT_COST", 10, "bcrypt cost factor (4-31)", at_least=4, at_most=31
    )
    peppers: Mapping[int, bytes] = setting(
        "GATEHOUSE_PEPPERS",
        help="Password peppers as version:secret pairs, comma-separated; the highest version is current unless GATEHOUSE_PEPPER_CURRENT names another",
        secret=True,
        parse=parse_peppers,
    )
    pepper_current: int | None = setting(
        "GATEHOUSE_PEPPER_CURRENT",
        None,
        "Pepper version new password hashes use (unset: the highest in GATEHOUSE_PEPPERS). Roll a new pepper out with this at the old version, then unset it once every replica holds the new one: a replica that meets a hash under a pepper it lacks refuses that login",
        parse=_parse_pepper_version,
    )
    hash_threads: int = setting(
        "GATEHOUSE_HASH_THREADS", 0, "Hashing threads; 0 = CPUs this process may use", at_least=0
    )
    hash_queue_limit: int = setting(
        "GATEHOUSE_HASH_QUEUE_LIMIT",
        256,
        "Hashes queued per replica before OVERLOADED; they run in turns by client address",
        at_least=1,
    )
    jwt_private_key: Ed25519PrivateKey | None = setting(
        "GATEHOUSE_JWT_PRIVATE_KEY",
        None,
        "Ed25519 private key (PEM) that signs session tokens, for deployments that do not rotate keys; set this or GATEHOUSE_JWT_KEYS_DIR, not both",
        secret=True,
        parse=load_private_key,
    )
    jwt_keys_dir: str = setting(
        "GATEHOUSE_JWT_KEYS_DIR",
        "",
        "Folder of Ed25519 private keys (PEM, one per file; the chart mounts a Secret there), re-read while running: the keys `gatehouse keys rotate` rotates between; set this or GATEHOUSE_JWT_PRIVATE_KEY, not both",
        parse=checked_key_folder,
    )
    jwt_keys_poll_interval: float = setting(
        "GATEHOUSE_JWT_KEYS_POLL_INTERVAL",
        10.0,
        "Seconds between two reads of the key folder and of the rotation state in etcd (0.1-300)",
        at_least=0.1,
        at_most=300,
    )
    jwt_propagation_delay: float = setting(
        "GATEHOUSE_JWT_PROPAGATION_DELAY",
        300.0,
        "Seconds `gatehouse keys rotate` waits between publishing the next key and signing with it: at least the JWKS max-age (300), so every verifier holds it first (0-86400)",
        at_least=0,
        at_most=86400,
    )
    token_ttl: int = setting(
        "GATEHOUSE_TOKEN_TTL", 86400, "Session token lifetime in seconds", at_least=1
    )
    token_issuer: str = setting(
        "GATEHOUSE_TOKEN_ISSUER", "gatehouse", "`iss` claim of the session tokens"
    )
    token_audience: str = setting(
        "GATEHOUSE_TOKEN_AUDIENCE", "gatehouse", "`aud` claim of the session tokens"
    )

    # Deleted accounts (services/auth/account_deletion.py, README "Deleted accounts")
    reuse_deleted_usernames: bool = setting(
        "GATEHOUSE_REUSE_DELETED_USERNAMES",
        False,
        "Free a deleted account's username for new signups (else it stays reserved)",
    )

    # Login throttle and device cookies (services/auth/throttle.py, README "Security")
    device_cookie_secret: str = setting(
        "GATEHOUSE_DEVICE_COOKIE_SECRET",
        help="Secret that signs device cookies (a random string, at least 32 characters)",
        secret=True,
    )
    device_cookie_lifetime: int = setting(
        "GATEHOUSE_DEVICE_COOKIE_LIFETIME",
        90 * 86400,
        "Seconds a device cookie (set at each login) stays valid",
        at_least=60,
    )
    login_failure_limit: int = setting(
        "GATEHOUSE_LOGIN_FAILURE_LIMIT",
        5,
        "Failed logins per (username, client IP) or device in the window before delays",
        at_least=1,
    )
    login_failure_window: int = setting(
        "GATEHOUSE_LOGIN_FAILURE_WINDOW",
        900,
        "Seconds over which failed logins are counted",
        at_least=1,
    )
    login_first_delay: float = setting(
        "GATEHOUSE_LOGIN_FIRST_DELAY",
        1.0,
        "Seconds of the first login delay past the limit; each next one doubles",
        above=0,
    )
    login_max_delay: float = setting(
        "GATEHOUSE_LOGIN_MAX_DELAY", 900.0, "Longest login delay in seconds", above=0
    )
    login_ip_failure_limit: int = setting(
        "GATEHOUSE_LOGIN_IP_FAILURE_LIMIT",
        100,
        "Failed logins from one client IP (any usernames) in the window before refusals",
        at_least=1,
    )
    signup_conflict_limit: int = setting(
        "GATEHOUSE_SIGNUP_CONFLICT_LIMIT",
        100,
        "username_taken answers to one client IP per signup window before refusals",
        at_least=1,
    )
    signup_conflict_window: int = setting(
        "GATEHOUSE_SIGNUP_CONFLICT_WINDOW",
        3600,
        "Seconds over which username_taken answers are counted",
        at_least=1,
    )
    throttle_redis_timeout: float = setting(
        "GATEHOUSE_THROTTLE_REDIS_TIMEOUT",
        1.0,
        "Seconds a login throttle call may wait for Redis before counting in memory",
        above=0,
    )
    throttle_memory_keys: int = setting(
        "GATEHOUSE_THROTTLE_MEMORY_KEYS",
        100_000,
        "Throttle keys one replica keeps in memory while Redis is unreachable",
        at_least=1,
    )

    # Sessions as their owner sees them (services/auth/store/last_seen.py)
    record_last_seen: bool = setting(
        "GATEHOUSE_RECORD_LAST_SEEN",
        True,
        "Record when each session was last used (at most once a minute per session, batched)",
    )
    last_seen_interval: float = setting(
        "GATEHOUSE_LAST_SEEN_INTERVAL",
        10.0,
        "Seconds between the writes of recorded session use (UPDATEs of 500 rows)",
        above=0,
    )
    last_seen_max_pending: int = setting(
        "GATEHOUSE_LAST_SEEN_MAX_PENDING",
        10_000,
        "Sessions whose recorded use may wait for the next write; more are not recorded",
        at_least=1,
    )

    # Connections and shutdown
    max_connections: int = setting(
        "GATEHOUSE_MAX_CONNECTIONS", 1024, "RPC connections accepted at once", at_least=1
    )
    max_connections_per_peer: int = setting(
        "GATEHOUSE_MAX_CONNECTIONS_PER_PEER",
        128,
        "RPC connections accepted at once from one source IP address; more are refused at once (behind a mesh sidecar every peer is 127.0.0.1: raise it to GATEHOUSE_MAX_CONNECTIONS)",
        at_least=1,
    )
    max_tls_handshakes_per_peer: int = setting(
        "GATEHOUSE_MAX_TLS_HANDSHAKES_PER_PEER",
        32,
        "With mTLS: RPC connections of one source IP address still in their TLS handshake (not yet authenticated) at once; more are closed at once. Each HTTP worker opens one connection at a time per replica: at least the workers behind one address",
        at_least=1,
    )
    max_calls_per_connection: int = setting(
        "GATEHOUSE_MAX_CALLS_PER_CONNECTION",
        128,
        "Calls one RPC connection may have in flight, advertised in the handshake; at the cap the server holds one more call unstarted and reads on for cancels, and stops reading that connection at the next call until a call ends (1-65535)",
        at_least=1,
        at_most=65535,
    )
    max_calls_per_peer: int = setting(
        "GATEHOUSE_MAX_CALLS_PER_PEER",
        1024,
        "Calls in flight of one source IP address over all its RPC connections; at the cap each of its connections holds its next call unstarted (reading on for cancels) until one of the address's calls ends. An HTTP worker has about 256 at most (its admission slots and as many hashing, and their hedges): at least that times the workers behind one address (behind a mesh sidecar every peer is 127.0.0.1)",
        at_least=1,
    )
    max_frame_bytes: int = setting(
        "GATEHOUSE_MAX_FRAME_BYTES",
        DEFAULT_MAX_FRAME_BYTES,
        "Largest RPC frame accepted or sent; the HTTP tier's setting of the same name must match"
        " (an account export and a stored picture must fit)",
        at_least=SMALLEST_MAX_FRAME_BYTES,
    )
    max_large_frame_bytes_per_peer: int = setting(
        "GATEHOUSE_MAX_LARGE_FRAME_BYTES_PER_PEER",
        ServerLimits.max_large_frame_bytes_per_peer,
        "RPC frames over 64 KiB (pictures) still arriving, or held unstarted at a call cap, from one source IP address, in bytes by their announced lengths; a connection whose frames would pass it is closed, with its calls in flight (behind a mesh sidecar every peer is 127.0.0.1: raise it to GATEHOUSE_MAX_LARGE_FRAME_BYTES_TOTAL); at least twice GATEHOUSE_MAX_FRAME_BYTES (a connection may hold one call and read the next)",
        at_least=LARGE_FRAME_BYTES,
    )
    max_large_frame_bytes_total: int = setting(
        "GATEHOUSE_MAX_LARGE_FRAME_BYTES_TOTAL",
        ServerLimits.max_large_frame_bytes_total,
        "RPC frames over 64 KiB still arriving, or held unstarted, from all peers together, in bytes by their announced lengths: what picture uploads under way may hold of the replica's memory; at least GATEHOUSE_MAX_LARGE_FRAME_BYTES_PER_PEER",
        at_least=LARGE_FRAME_BYTES,
    )
    write_high_water_bytes: int = setting(
        "GATEHOUSE_WRITE_HIGH_WATER_BYTES",
        1024 * 1024,
        "Replies waiting to be sent on one RPC connection, in bytes, past which the server stops reading it (its peer is not reading its replies)",
        at_least=64 * 1024,
    )
    write_stall_timeout: float = setting(
        "GATEHOUSE_WRITE_STALL_TIMEOUT",
        10.0,
        "Seconds an RPC connection's unsent replies may stay above GATEHOUSE_WRITE_HIGH_WATER_BYTES before the connection is dropped",
        above=0,
    )
    max_write_buffer_bytes: int = setting(
        "GATEHOUSE_MAX_WRITE_BUFFER_BYTES",
        32 * 1024 * 1024,
        "Replies waiting to be sent on one RPC connection, in bytes, past which it is dropped at once (a backstop: replies to the calls in flight when the high-water mark was passed still go out); at least GATEHOUSE_WRITE_HIGH_WATER_BYTES + GATEHOUSE_MAX_FRAME_BYTES",
        at_least=65536,
    )
    max_write_buffer_total_bytes: int = setting(
        "GATEHOUSE_MAX_WRITE_BUFFER_TOTAL_BYTES",
        64 * 1024 * 1024,
        "Replies waiting to be sent on all the RPC connections above GATEHOUSE_WRITE_HIGH_WATER_BYTES together, in bytes, past which the one holding the most is dropped at once: what many peers that do not read their replies may hold of the replica's memory; at least GATEHOUSE_MAX_WRITE_BUFFER_BYTES",
        at_least=65536,
    )
    handshake_timeout: float = setting(
        "GATEHOUSE_HANDSHAKE_TIMEOUT",
        5.0,
        "Seconds to complete the handshake, or a started frame",
        above=0,
        at_most=300,
    )
    idle_timeout: float = setting(
        "GATEHOUSE_IDLE_TIMEOUT", 300.0, "Seconds an idle connection is kept", above=0
    )
    clock_skew_allowance: float = setting(
        "GATEHOUSE_CLOCK_SKEW_ALLOWANCE",
        0.05,
        "Seconds by which this replica's clock may lag an HTTP tier's: a call is refused unrun "
        "once its caller's deadline, less this, has passed by this replica's clock",
        at_least=0.0,
        at_most=1.0,
    )
    drain_delay: float = setting(
        "GATEHOUSE_DRAIN_DELAY",
        2.0,
        "Seconds after SIGTERM during which calls are still served",
        at_least=0,
    )
    drain_grace: float = setting(
        "GATEHOUSE_DRAIN_GRACE",
        20.0,
        "Seconds in-flight calls get to finish on shutdown",
        at_least=0,
    )

    def __post_init__(self) -> None:
        if not self.instance_id:
            object.__setattr__(self, "instance_id", _default_instance_id())
        problems = bounds_problems(self)
        if not is_instance_id(self.instance_id):
            problems.append(
                "GATEHOUSE_INSTANCE_ID must be 1-253 letters, digits, '.', '_' or '-' starting"
                " with a letter or digit (a pod name): HTTP tiers ignore any other record"
            )
        if self.advertise_host and not is_host(self.advertise_host):
            problems.append(
                "GATEHOUSE_AUTH_ADVERTISE_HOST must be an IP address or a DNS name (no brackets,"
                " no port): HTTP tiers ignore any other record"
            )
        problems += self.rpc_tls_problems()
        problems += self.operator_socket_problems()
        problems += access_problems(self.etcd_access)
        if not self.token_issuer or not self.token_audience:
            problems.append("GATEHOUSE_TOKEN_ISSUER and GATEHOUSE_TOKEN_AUDIENCE must not be empty")
        if (self.jwt_private_key is None) == (not self.jwt_keys_dir):
            problems.append(
                "set exactly one of GATEHOUSE_JWT_PRIVATE_KEY (one key, no rotation) and"
                " GATEHOUSE_JWT_KEYS_DIR (a folder of keys, for rotation)"
            )
        if len(self.device_cookie_secret) < 32:
            problems.append(
                "GATEHOUSE_DEVICE_COOKIE_SECRET must be at least 32 characters; use a random string"
            )
        if self.max_write_buffer_bytes < self.write_high_water_bytes + self.max_frame_bytes:
            problems.append(
                "GATEHOUSE_MAX_WRITE_BUFFER_BYTES must be at least GATEHOUSE_WRITE_HIGH_WATER_BYTES"
                " + GATEHOUSE_MAX_FRAME_BYTES: replies to the calls in flight when the high-water"
                " mark is passed still go out, and the largest one must fit"
            )
        if self.max_large_frame_bytes_per_peer < 2 * self.max_frame_bytes:
            problems.append(
                "GATEHOUSE_MAX_LARGE_FRAME_BYTES_PER_PEER must be at least twice"
                " GATEHOUSE_MAX_FRAME_BYTES: a connection at its call cap holds one call of that"
                " size unstarted while it reads the next"
            )
        if self.max_large_frame_bytes_total < self.max_large_frame_bytes_per_peer:
            problems.append(
                "GATEHOUSE_MAX_LARGE_FRAME_BYTES_TOTAL must be at least"
                " GATEHOUSE_MAX_LARGE_FRAME_BYTES_PER_PEER: one address may hold that much"
            )
        if self.max_write_buffer_total_bytes < self.max_write_buffer_bytes:
            problems.append(
                "GATEHOUSE_MAX_WRITE_BUFFER_TOTAL_BYTES must be at least"
                " GATEHOUSE_MAX_WRITE_BUFFER_BYTES: one connection may hold that much"
            )
        if self.pepper_current is not None and self.pepper_current not in self.peppers:
            problems.append(
                f"GATEHOUSE_PEPPER_CURRENT={self.pepper_current} is not a version of"
                f" GATEHOUSE_PEPPERS (it holds {', '.join(map(str, sorted(self.peppers)))})"
            )
        if self.login_first_delay > self.login_max_delay:
            problems.append("need GATEHOUSE_LOGIN_FIRST_DELAY <= GATEHOUSE_LOGIN_MAX_DELAY")
        if self.session_purge_batch_size > self.session_purge_rows_per_second * MAX_PURGE_PAUSE:
            problems.append(
                "GATEHOUSE_SESSION_PURGE_BATCH_SIZE is more rows than"
                f" GATEHOUSE_SESSION_PURGE_ROWS_PER_SECOND allows in {MAX_PURGE_PAUSE} s; the purge"
                " would hold its lock idle that long between batches: lower the batch size"
            )
        report_problems(problems)

    @property
    def current_pepper_version(self) -> int:
        """The pepper version new hashes use, and logins under any other rehash to."""
        return max(self.peppers) if self.pepper_current is None else self.pepper_current

    def throttle_limits(self) -> ThrottleLimits:
        return ThrottleLimits(
            failures=self.login_failure_limit,
            window_seconds=self.login_failure_window,
            first_delay_seconds=self.login_first_delay,
            max_delay_seconds=self.login_max_delay,
            ip_failures=self.login_ip_failure_limit,
            signup_conflicts=self.signup_conflict_limit,
            signup_window_seconds=self.signup_conflict_window,
        )
